//! Planned termination by Auto Scaling. natron's auto scaling groups hold a
//! terminating NAT in `Terminating:Wait` (a lifecycle hook) while IMDS says
//! `autoscaling/target-lifecycle-state` = `Terminated`; the agent sees it
//! here and hands its route tables over while it still forwards traffic,
//! instead of during the shutdown that follows.

use std::time::Duration;

use tracing::debug;

use crate::identity::Metadata;

pub const PATH: &str = "meta-data/autoscaling/target-lifecycle-state";

/// Returns once Auto Scaling is terminating this instance. Never returns on
/// an instance outside an auto scaling group (IMDS answers 404).
pub async fn terminating(metadata: &dyn Metadata, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match metadata.get(PATH).await {
            Ok(Some(state)) if state.trim() == "Terminated" => return,
            Ok(_) => {}
            // IMDS hiccups must not look like a termination.
            Err(e) => debug!(error = %e, "lifecycle state unreadable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::fake::FakeMetadata;

    #[tokio::test(start_paused = true)]
    async fn returns_only_on_terminated() {
        let mut m = FakeMetadata::typical();
        m.values.insert(PATH.into(), "InService".into());
        let every = Duration::from_secs(5);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), terminating(&m, every))
                .await
                .is_err(),
            "InService: keeps watching"
        );
        *m.down.lock().unwrap() = 3;
        m.values.insert(PATH.into(), "Terminated".into());
        tokio::time::timeout(Duration::from_secs(60), terminating(&m, every))
            .await
            .expect("Terminated: returns (after IMDS comes back)");
        m.values.remove(PATH);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), terminating(&m, every))
                .await
                .is_err(),
            "no auto scaling group: never returns"
        );
    }
}
