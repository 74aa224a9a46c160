//! Notice that this instance is going away, from IMDS: Auto Scaling
//! terminating it (natron's groups hold a terminating NAT in
//! `Terminating:Wait` with a lifecycle hook while
//! `autoscaling/target-lifecycle-state` reads `Terminated`), an EC2 Spot
//! interruption (`spot/instance-action`, two minutes ahead), or a Spot
//! rebalance recommendation (`events/recommendations/rebalance`). The agent
//! then hands its route tables over while the NAT still forwards, instead
//! of during the shutdown that follows.

use std::time::Duration;

use tracing::debug;

use super::imds::Metadata;

pub const LIFECYCLE: &str = "meta-data/autoscaling/target-lifecycle-state";
pub const SPOT_ACTION: &str = "meta-data/spot/instance-action";
pub const REBALANCE: &str = "meta-data/events/recommendations/rebalance";

/// Why the instance is going away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoingAway {
    AutoScalingTermination,
    SpotInterruption { action: String },
    RebalanceRecommendation,
}

impl std::fmt::Display for GoingAway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GoingAway::AutoScalingTermination => {
                f.write_str("auto scaling is terminating this instance")
            }
            GoingAway::SpotInterruption { action } => {
                write!(f, "EC2 will interrupt this spot instance ({action})")
            }
            GoingAway::RebalanceRecommendation => {
                f.write_str("EC2 recommends rebalancing this spot instance away")
            }
        }
    }
}

/// Returns once IMDS says the instance is going away. Never returns on an
/// instance outside an auto scaling group and not on spot (404s).
pub async fn going_away(metadata: &dyn Metadata, every: Duration) -> GoingAway {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(why) = look(metadata).await {
            return why;
        }
    }
}

async fn look(metadata: &dyn Metadata) -> Option<GoingAway> {
    // IMDS hiccups must not look like a notice: errors are "no".
    let read = |path: &'static str| async move {
        match metadata.get(path).await {
            Ok(v) => v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()),
            Err(e) => {
                debug!(path, error = %e, "instance metadata unreadable");
                None
            }
        }
    };
    if read(LIFECYCLE).await.as_deref() == Some("Terminated") {
        return Some(GoingAway::AutoScalingTermination);
    }
    if let Some(action) = read(SPOT_ACTION).await {
        return Some(GoingAway::SpotInterruption { action });
    }
    if read(REBALANCE).await.is_some() {
        return Some(GoingAway::RebalanceRecommendation);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::identity::fake::FakeMetadata;

    #[tokio::test(start_paused = true)]
    async fn returns_only_on_a_notice() {
        let mut m = FakeMetadata::typical();
        m.values.insert(LIFECYCLE.into(), "InService".into());
        let every = Duration::from_secs(5);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), going_away(&m, every))
                .await
                .is_err(),
            "InService: keeps watching"
        );
        *m.down.lock().unwrap() = 3;
        m.values.insert(LIFECYCLE.into(), "Terminated".into());
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), going_away(&m, every))
                .await
                .expect("Terminated: returns (after IMDS comes back)"),
            GoingAway::AutoScalingTermination
        );
        m.values.remove(LIFECYCLE);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), going_away(&m, every))
                .await
                .is_err(),
            "no notice: never returns"
        );
        m.values.insert(
            SPOT_ACTION.into(),
            r#"{"action": "terminate", "time": "2026-12-02T18:00:00Z"}"#.into(),
        );
        assert!(matches!(
            going_away(&m, every).await,
            GoingAway::SpotInterruption { .. }
        ));
        m.values.remove(SPOT_ACTION);
        m.values
            .insert(REBALANCE.into(), r#"{"noticeTime": "x"}"#.into());
        assert_eq!(
            going_away(&m, every).await,
            GoingAway::RebalanceRecommendation
        );
    }
}
