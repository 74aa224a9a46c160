//! Watching the other NATs of the group: each peer's /readyz is asked over
//! the VPC every `failover.peer_interval`, and again at once after a probe
//! that got no answer, so silence is confirmed in `peer_fall` timeouts
//! rather than `peer_fall` intervals. Its tracker (`core::peer`) turns the
//! answers into a stable health.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natron_contract::client::{self, GetError};
use natron_contract::readyz::ReadyzBody;
use tokio::task::JoinSet;

use super::unix_ms;
use crate::core::peer::{Observation, Timings, Tracker};

/// How often the loop looks for a peer that is due.
const TICK: Duration = Duration::from_millis(20);

/// Asks a peer's /readyz once.
pub async fn observe(ip: Ipv4Addr, port: u16, timeout: Duration) -> Observation {
    match client::get(&ip.to_string(), port, "/readyz", timeout).await {
        Ok((code @ (200 | 503), body)) => match serde_json::from_str::<ReadyzBody>(&body) {
            Ok(b) if code == 200 => Observation::Ready {
                cannot_reach: b.unreachable_peers,
            },
            Ok(b) => Observation::NotReady {
                reason: b.summary(),
                starting: b.starting,
                cannot_reach: b.unreachable_peers,
            },
            Err(_) if code == 200 => Observation::Ready {
                cannot_reach: vec![],
            },
            Err(_) => Observation::NotReady {
                reason: body,
                starting: false,
                cannot_reach: vec![],
            },
        },
        Ok((status, _)) => Observation::Unreachable {
            why: format!("/readyz answered {status}"),
        },
        Err(GetError::Refused) => Observation::Refused,
        Err(e) => Observation::Unreachable { why: e.to_string() },
    }
}

/// Peers to watch (instance id -> private IP) and their trackers.
#[derive(Default)]
pub struct Watch {
    pub targets: Mutex<BTreeMap<String, Ipv4Addr>>,
    pub trackers: Mutex<BTreeMap<String, Tracker>>,
}

impl Watch {
    pub fn trackers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tracker>> {
        self.trackers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_targets(&self, targets: BTreeMap<String, Ipv4Addr>) {
        *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = targets;
    }

    fn targets(&self) -> BTreeMap<String, Ipv4Addr> {
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Probes every target when it is due, concurrently, forever.
pub async fn run(
    watch: Arc<Watch>,
    port: u16,
    interval: Duration,
    timeout: Duration,
    timings: Timings,
) {
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut probes: JoinSet<(String, Observation)> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let targets = watch.targets();
                watch.trackers().retain(|id, _| targets.contains_key(id));
                due.retain(|id, _| targets.contains_key(id));
                let now = Instant::now();
                for (id, ip) in targets {
                    let at = *due.entry(id.clone()).or_insert(now);
                    if at <= now && in_flight.insert(id.clone()) {
                        probes.spawn(async move { (id, observe(ip, port, timeout).await) });
                    }
                }
            }
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                let Ok((id, obs)) = done else { continue };
                in_flight.remove(&id);
                // Silence is confirmed at once, not an interval later.
                let again = if matches!(obs, Observation::Unreachable { .. }) {
                    Duration::ZERO
                } else {
                    interval
                };
                due.insert(id.clone(), Instant::now() + again);
                let now_ms = unix_ms();
                watch
                    .trackers()
                    .entry(id)
                    .or_insert_with(|| Tracker::new(now_ms))
                    .observe(obs, now_ms, &timings);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::status::Shared;
    use natron_contract::readyz::Area;

    #[tokio::test]
    async fn observes_ready_not_ready_refused_and_silence() {
        let shared = Arc::new(Shared::new());
        shared.set_problem(Area::Metadata, "connection refused");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(crate::report::http::serve(
            listener,
            shared.clone(),
            std::future::pending(),
        ));
        let lo = Ipv4Addr::LOCALHOST;
        match observe(lo, port, Duration::from_secs(2)).await {
            Observation::NotReady {
                reason, starting, ..
            } => {
                assert!(
                    reason.starts_with("metadata: connection refused"),
                    "{reason}"
                );
                assert!(starting, "never ready since it started");
            }
            other => panic!("{other:?}"),
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cport = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            observe(lo, cport, Duration::from_secs(2)).await,
            Observation::Refused,
            "a kernel without the agent refuses"
        );
        // A listener that never answers: silence.
        let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mport = mute.local_addr().unwrap().port();
        assert!(matches!(
            observe(lo, mport, Duration::from_millis(200)).await,
            Observation::Unreachable { .. }
        ));
        drop(mute);
    }
}
