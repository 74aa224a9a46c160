//! IdleTimeoutCount (with `metrics.cloudwatch`): conntrack counts no
//! timeouts, but it tells a listener of every connection it destroys. This
//! task keeps `conntrack -E` watching the translated TCP connections
//! destroyed while still established (the kernel filters out the rest) and
//! counts them; a watcher that ends is a `conntrack_events` warning and is
//! started again after a backoff. Nothing here touches the data plane or
//! readiness.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natron_contract::readyz::Area;
use tracing::{info, warn};

use crate::core::kernel::is_idle_timeout;
use crate::core::schedule::Repeats;
use crate::edge::flows::Flows;
use crate::report::status::Shared;

/// A watcher running this long is taken as watching (a missing or refused
/// `conntrack` ends at once): CloudWatch gets IdleTimeoutCount from then on.
const SETTLED: Duration = Duration::from_secs(2);
/// Restarts back off from the first to the last, doubling; a watcher that
/// ran a minute restarts at the first again.
const RESTART_FIRST: Duration = Duration::from_secs(5);
const RESTART_LAST: Duration = Duration::from_secs(60);

/// Watches until the agent stops; never returns.
pub async fn watch(flows: Arc<dyn Flows>, shared: Arc<Shared>) {
    let m = &shared.metrics;
    let mut restart = RESTART_FIRST;
    let mut failing = Repeats::default();
    loop {
        let started = Instant::now();
        let mut count = |line: &str| {
            if is_idle_timeout(line) {
                m.idle_timeouts.inc();
            }
        };
        let watching = flows.watch_established_ends(&mut count);
        tokio::pin!(watching);
        let ended = tokio::select! {
            ended = &mut watching => ended,
            _ = tokio::time::sleep(SETTLED) => {
                m.idle_timeouts_watched.store(true, Ordering::Relaxed);
                m.idle_timeouts_watching.set(1);
                if failing.over() {
                    info!("conntrack's events are watched again");
                }
                shared.update(|s| s.set_warning(Area::ConntrackEvents, None));
                watching.await
            }
        };
        m.idle_timeouts_watching.set(0);
        if started.elapsed() >= RESTART_LAST {
            restart = RESTART_FIRST;
        }
        let message = format!(
            "the conntrack event watcher counting idle timeouts ended: {ended}; restarting in {restart:?}"
        );
        if failing.due(&ended.to_string(), Instant::now()) {
            warn!("{message} (said once a minute while it lasts)");
        }
        shared.update(|s| s.set_warning(Area::ConntrackEvents, Some(message)));
        tokio::time::sleep(restart).await;
        restart = (restart * 2).min(RESTART_LAST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::flows::fake::FakeFlows;

    const IDLE: &str = "[DESTROY] tcp      6 ESTABLISHED src=10.0.1.5 dst=198.51.100.7 sport=40000 dport=443 src=198.51.100.7 dst=10.0.0.10 sport=443 dport=40000 [ASSURED]";
    const CLOSED: &str =
        "[DESTROY] tcp      6 TIME_WAIT src=10.0.1.5 dst=198.51.100.7 sport=40001 dport=443";

    fn warning(shared: &Shared) -> Option<String> {
        shared
            .snapshot()
            .warnings
            .into_iter()
            .find(|w| w.area == Area::ConntrackEvents)
            .map(|w| w.message)
    }

    /// Idle timeouts are counted; CloudWatch gets the count once the
    /// watcher has settled; a watcher that ends warns and is restarted.
    #[tokio::test(start_paused = true)]
    async fn counts_established_ends_and_restarts_a_watcher_that_ends() {
        let flows = Arc::new(FakeFlows::default());
        *flows.events.lock().unwrap() = vec![IDLE.into(), CLOSED.into(), IDLE.into()];
        *flows.runs_for.lock().unwrap() = Duration::from_secs(30);
        let shared = Arc::new(Shared::new());
        let task = tokio::spawn(watch(flows.clone(), shared.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(shared.metrics.idle_timeouts.get(), 2);
        assert_eq!(
            shared.metrics.cloudwatch_sample().idle_timeouts,
            None,
            "not settled yet"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(shared.metrics.cloudwatch_sample().idle_timeouts, Some(2));
        assert_eq!(shared.metrics.idle_timeouts_watching.get(), 1);
        assert_eq!(warning(&shared), None);

        // It ends after 30 s: a warning naming conntrack, a restart 5 s on.
        tokio::time::sleep(Duration::from_secs(28)).await;
        let message = warning(&shared).expect("a conntrack_events warning");
        assert!(
            message.contains("conntrack") && message.contains("5s"),
            "{message}"
        );
        assert_eq!(shared.metrics.idle_timeouts_watching.get(), 0);
        assert_eq!(*flows.watches.lock().unwrap(), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(*flows.watches.lock().unwrap(), 2);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(warning(&shared), None, "watching again");
        task.abort();
    }

    /// A watcher that cannot start backs off, doubling, and CloudWatch is
    /// never told a count it does not have.
    #[tokio::test(start_paused = true)]
    async fn a_watcher_that_cannot_start_backs_off() {
        let flows = Arc::new(FakeFlows::default());
        let shared = Arc::new(Shared::new());
        let task = tokio::spawn(watch(flows.clone(), shared.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*flows.watches.lock().unwrap(), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(*flows.watches.lock().unwrap(), 2, "after 5 s");
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(*flows.watches.lock().unwrap(), 2, "then 10 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*flows.watches.lock().unwrap(), 3);
        assert!(warning(&shared).unwrap().contains("20s"));
        assert_eq!(shared.metrics.cloudwatch_sample().idle_timeouts, None);
        task.abort();
    }
}
