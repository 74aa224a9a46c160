//! The egress prober: a round of probes to every target every
//! `health.interval`, rise/fall over the rounds, the verdict in [`Shared`].
//!
//! A round that disagrees with the verdict is confirmed at once rather than
//! an interval later: the next rounds follow [`CONFIRM_GAP`] apart, each
//! probing every target `health.confirm_probes` times in parallel (a
//! target passes when one of them does), so a broken egress is noticed in
//! about `fall` timeouts and one flaky probe target never fails a round. A
//! round also runs at once when the coordinator asks (a peer just failed:
//! this NAT proves its own egress before it takes the peer's tables over).
//! The verdict is remembered across agent restarts (`edge::memo`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natron_contract::readyz::Area;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::unix_ms;
use crate::core::health::{resume_verdict, RiseFall};
use crate::core::settings::Health;
use crate::edge::memo::{self, EgressMemo};
use crate::edge::probe::{self, ProbeResult, ProbeTarget};
use crate::report::status::Shared;

/// Pause between confirmation rounds: a momentary glitch does not fail
/// three rounds in a row.
pub const CONFIRM_GAP: Duration = Duration::from_millis(100);

pub struct Prober {
    pub health: Health,
    pub shared: Arc<Shared>,
    /// Rings for an immediate round.
    pub probe_now: Arc<Notify>,
    /// Where the verdict is remembered (None: nowhere).
    pub memo: Option<PathBuf>,
    pub instance_id: String,
}

impl Prober {
    /// Probes egress forever.
    pub async fn run(self) {
        let h = &self.health;
        if h.targets.is_empty() {
            info!("no egress probe targets configured; egress counts as healthy");
            self.shared.update(|s| {
                s.egress.healthy = true;
                s.proven_at = Some(Instant::now());
            });
            loop {
                self.probe_now.notified().await;
                self.shared.update(|s| s.proven_at = Some(Instant::now()));
            }
        }
        let mut state = self.resume();
        let mut tick = tokio::time::interval(h.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut confirm = false;
        loop {
            if confirm {
                tokio::time::sleep(CONFIRM_GAP).await;
            } else {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = self.probe_now.notified() => {}
                }
            }
            let started = Instant::now();
            let per_target = if confirm { h.confirm_probes } else { 1 };
            let results = round(&h.targets, per_target, h.timeout).await;
            record(h, &self.shared, &mut state, results, started);
            self.remember(state.healthy);
            confirm = state.wavering();
        }
    }

    /// The verdict to start from: the remembered one when recent.
    fn resume(&self) -> RiseFall {
        let h = &self.health;
        let memo = self.memo.as_deref().and_then(memo::read);
        let resumed = memo.and_then(|m| {
            resume_verdict(
                &m.instance_id,
                m.healthy,
                m.unix_ms,
                &self.instance_id,
                unix_ms(),
            )
        });
        match resumed {
            Some(healthy) => {
                info!(
                    healthy,
                    "egress verdict resumed from before the agent restarted"
                );
                self.shared.update(|s| {
                    s.egress.healthy = healthy;
                    s.egress_failed_before_start = !healthy;
                    if !healthy {
                        s.problems.insert(
                            Area::Egress,
                            "egress had failed before the agent restarted".into(),
                        );
                    }
                });
                RiseFall::resumed(h.rise, h.fall, healthy)
            }
            None => RiseFall::new(h.rise, h.fall),
        }
    }

    fn remember(&self, healthy: bool) {
        let Some(path) = &self.memo else { return };
        let memo = EgressMemo {
            instance_id: self.instance_id.clone(),
            healthy,
            unix_ms: unix_ms(),
        };
        if let Err(e) = memo::write(path, &memo) {
            warn!(path = %path.display(), error = %e, "cannot remember the egress verdict");
        }
    }
}

/// Every target probed `per_target` times at once; a target's result is
/// its best attempt.
async fn round(targets: &[ProbeTarget], per_target: u32, timeout: Duration) -> Vec<ProbeResult> {
    futures_util::future::join_all(targets.iter().map(|t| async move {
        let attempts =
            futures_util::future::join_all((0..per_target).map(|_| probe::probe(t, timeout))).await;
        let best = attempts.iter().position(|r| r.ok).unwrap_or(0);
        attempts
            .into_iter()
            .nth(best)
            .expect("at least one attempt")
    }))
    .await
}

/// One round's results: metrics, the rise/fall verdict, /status.
pub fn record(
    h: &Health,
    shared: &Shared,
    state: &mut RiseFall,
    results: Vec<ProbeResult>,
    started: Instant,
) {
    let passed = results.iter().filter(|r| r.ok).count();
    for r in &results {
        let labels = vec![("target".to_string(), r.target.clone())];
        let m = &shared.metrics;
        m.probe_up.get_or_create(&labels).set(i64::from(r.ok));
        m.probe_latency
            .get_or_create(&labels)
            .set(r.latency_ms / 1000.0);
        let mut by_result = labels.clone();
        by_result.push(("result".into(), if r.ok { "pass" } else { "fail" }.into()));
        m.probe_results.get_or_create(&by_result).inc();
    }
    let why = results
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.target)))
        .collect::<Vec<_>>()
        .join("; ");
    let round_passed = passed >= h.min_passing;
    if state.observe(round_passed) {
        if state.healthy {
            info!(passed, "egress healthy");
        } else {
            warn!(passed, "egress failed: {why}");
        }
    }
    let healthy = state.healthy;
    shared.update(|s| {
        s.egress.healthy = healthy;
        s.egress.probes = results;
        if round_passed {
            s.proven_at = Some(started);
        }
        if healthy || why.is_empty() {
            s.problems.remove(&Area::Egress);
        } else {
            s.problems.insert(Area::Egress, why);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::Settings;

    fn result(ok: bool) -> ProbeResult {
        ProbeResult {
            target: "tcp://198.51.100.10:80".into(),
            ok,
            latency_ms: 1.0,
            error: (!ok).then(|| "connect: refused".into()),
        }
    }

    #[test]
    fn rounds_rise_and_fall_into_the_egress_verdict() {
        let h = Settings::default().health;
        let shared = Shared::new();
        let mut state = RiseFall::new(h.rise, h.fall);
        let now = Instant::now();
        record(&h, &shared, &mut state, vec![result(true)], now);
        assert!(!shared.read(|s| s.egress.healthy), "rise is 2");
        assert_eq!(
            shared.read(|s| s.proven_at),
            Some(now),
            "a passing round proves egress"
        );
        record(&h, &shared, &mut state, vec![result(true)], now);
        assert!(shared.read(|s| s.egress.healthy));
        record(&h, &shared, &mut state, vec![result(false)], now);
        assert!(state.wavering(), "a failing round is confirmed at once");
        for _ in 1..h.fall {
            record(&h, &shared, &mut state, vec![result(false)], now);
        }
        let s = shared.snapshot();
        assert!(!s.egress.healthy);
        assert!(s.problems[&Area::Egress].contains("refused"));
        assert!(shared.metrics.encode().contains("result=\"fail\""));
    }

    #[tokio::test]
    async fn a_confirmation_round_passes_a_target_if_one_attempt_does() {
        // A target that refuses every other connection attempt.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = ProbeTarget::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let results = round(std::slice::from_ref(&target), 3, Duration::from_millis(200)).await;
        assert_eq!(results.len(), 1, "one result per target");
        assert!(!results[0].ok);
    }

    #[tokio::test]
    async fn a_remembered_verdict_is_resumed_by_the_restarted_agent() {
        let dir = std::env::temp_dir().join(format!("natron-prober-{}", std::process::id()));
        let path = memo::egress_path(&dir);
        memo::write(
            &path,
            &EgressMemo {
                instance_id: "i-1".into(),
                healthy: true,
                unix_ms: unix_ms(),
            },
        )
        .unwrap();
        let prober = Prober {
            health: Settings::default().health,
            shared: Arc::new(Shared::new()),
            probe_now: Arc::new(Notify::new()),
            memo: Some(path),
            instance_id: "i-1".into(),
        };
        let state = prober.resume();
        assert!(state.healthy);
        assert!(prober.shared.read(|s| s.egress.healthy));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
