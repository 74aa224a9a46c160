//! Watching the other NATs of the group: each peer's /readyz is probed over
//! the VPC every `failover.peer_interval`, and a tracker turns the answers
//! into a stable state (rise/fall, like the egress probes).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::failover::Health;
use crate::probe;

/// One answer from a peer. Tracking: Unknown until `rise` ready answers
/// (up) or `fall` silences or a single 503 (down).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Observation {
    Ready,
    NotReady { reason: String },
    Unreachable { why: String },
}

/// A peer's stable state: Unknown until `rise` ready answers (Up) or `fall`
/// bad ones (Down, remembering the last bad answer).
#[derive(Debug, Clone, Serialize)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    pub up: Option<bool>,
    pub last_bad: Option<Observation>,
    pub last: Option<Observation>,
    ok_streak: u32,
    bad_streak: u32,
    /// Whether it has ever counted as ready, and since when it is watched.
    pub ever_up: bool,
    #[serde(skip)]
    first_seen: Option<Instant>,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            rise,
            fall,
            up: None,
            last_bad: None,
            last: None,
            ok_streak: 0,
            bad_streak: 0,
            ever_up: false,
            first_seen: None,
        }
    }

    pub fn observe(&mut self, obs: Observation) {
        self.first_seen.get_or_insert_with(Instant::now);
        if obs == Observation::Ready {
            self.ok_streak += 1;
            self.bad_streak = 0;
            if self.ok_streak >= self.rise {
                self.up = Some(true);
                self.ever_up = true;
            }
        } else {
            self.bad_streak += 1;
            self.ok_streak = 0;
            self.last_bad = Some(obs.clone());
            // A 503 is the peer's own verdict, already debounced by its
            // rise/fall: one is enough. Silence needs `fall` in a row.
            let is_verdict = matches!(obs, Observation::NotReady { .. });
            if is_verdict || self.bad_streak >= self.fall {
                self.up = Some(false);
            }
        }
        self.last = Some(obs);
    }

    /// The health [`crate::failover::decide`] uses; for an unreachable peer
    /// the heartbeat decides whether it is gone (`heartbeat_age` None: none
    /// was ever seen). A peer never ready yet is "starting" for `boot_grace`.
    pub fn health(
        &self,
        heartbeat_age: Option<Duration>,
        heartbeat_timeout: Duration,
        boot_grace: Duration,
    ) -> Health {
        let booting = !self.ever_up && self.first_seen.is_none_or(|t| t.elapsed() < boot_grace);
        match (self.up, &self.last_bad) {
            (Some(true), _) => Health::Ready,
            (Some(false), Some(Observation::NotReady { reason })) if booting => Health::Starting {
                reason: reason.clone(),
            },
            (Some(false), Some(Observation::NotReady { reason })) => Health::NotReady {
                reason: reason.clone(),
            },
            (Some(false), Some(Observation::Unreachable { why })) => Health::Unreachable {
                why: why.clone(),
                heartbeat_age_ms: heartbeat_age.map(|a| a.as_millis() as u64),
                stale: heartbeat_age.is_none_or(|a| a > heartbeat_timeout),
            },
            _ => Health::Unknown,
        }
    }

    pub fn unreachable(&self) -> bool {
        self.up == Some(false) && matches!(self.last_bad, Some(Observation::Unreachable { .. }))
    }
}

/// Whether the group must be read again now because an unreachable peer's
/// heartbeat, still fresh when the group was last read (`read_at_ms`), has
/// since passed `timeout` on this clock: the next read then decides at
/// once, so a dead NAT is taken over the moment its heartbeat goes stale
/// rather than at the next periodic read. A peer still beating shows a
/// newer heartbeat in that read, and its deadline moves on.
pub fn staleness_due(
    unreachable_heartbeats_ms: impl IntoIterator<Item = u64>,
    read_at_ms: u64,
    now_ms: u64,
    timeout: Duration,
) -> bool {
    let timeout = timeout.as_millis() as u64;
    unreachable_heartbeats_ms.into_iter().any(|beat| {
        let stale_at = beat.saturating_add(timeout);
        read_at_ms <= stale_at && now_ms > stale_at
    })
}

/// Asks a peer's /readyz once.
pub async fn observe(ip: Ipv4Addr, port: u16, timeout: Duration) -> Observation {
    match tokio::time::timeout(timeout, probe::http_get(&ip.to_string(), port, "/readyz")).await {
        Ok(Ok((200, _))) => Observation::Ready,
        Ok(Ok((503, body))) => {
            let reason = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v["reasons"].as_array().map(|r| {
                        r.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                })
                .unwrap_or(body);
            Observation::NotReady { reason }
        }
        Ok(Ok((status, _))) => Observation::Unreachable {
            why: format!("/readyz answered {status}"),
        },
        Ok(Err(e)) => Observation::Unreachable { why: e },
        Err(_) => Observation::Unreachable {
            why: format!("no answer within {timeout:?}"),
        },
    }
}

/// Peers to watch (instance id -> private IP) and their trackers.
#[derive(Default)]
pub struct Watch {
    pub targets: Mutex<BTreeMap<String, Ipv4Addr>>,
    pub trackers: Mutex<BTreeMap<String, Tracker>>,
}

/// Probes every target each `interval`, concurrently, forever.
pub async fn run(
    watch: Arc<Watch>,
    port: u16,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets = watch.targets.lock().expect("peers").clone();
        let results = futures_util::future::join_all(
            targets
                .iter()
                .map(|(id, ip)| async move { (id.clone(), observe(*ip, port, timeout).await) }),
        )
        .await;
        let mut trackers = watch.trackers.lock().expect("peers");
        trackers.retain(|id, _| targets.contains_key(id));
        for (id, obs) in results {
            trackers
                .entry(id)
                .or_insert_with(|| Tracker::new(rise, fall))
                .observe(obs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(3);
    const G: Duration = Duration::from_secs(60);

    #[test]
    fn tracker_needs_rise_and_fall() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.health(None, T, G), Health::Unknown);
        t.observe(Observation::Ready);
        assert_eq!(t.health(None, T, G), Health::Unknown);
        t.observe(Observation::Ready);
        assert_eq!(t.health(None, T, G), Health::Ready);
        assert!(t.ever_up);
        let silence = || Observation::Unreachable {
            why: "timeout".into(),
        };
        t.observe(silence());
        t.observe(silence());
        assert_eq!(
            t.health(None, T, G),
            Health::Ready,
            "two silences are not enough"
        );
        t.observe(silence());
        assert!(t.unreachable());
        t.observe(Observation::Ready);
        t.observe(Observation::Ready);
        assert_eq!(t.health(None, T, G), Health::Ready);
        // One 503 is the peer's own debounced verdict.
        t.observe(Observation::NotReady {
            reason: "egress".into(),
        });
        assert_eq!(
            t.health(None, T, G),
            Health::NotReady {
                reason: "egress".into()
            }
        );
    }

    #[test]
    fn never_ready_is_starting_until_the_grace_ends() {
        let mut t = Tracker::new(2, 1);
        t.observe(Observation::NotReady {
            reason: "metadata".into(),
        });
        assert_eq!(
            t.health(None, T, G),
            Health::Starting {
                reason: "metadata".into()
            }
        );
        assert_eq!(
            t.health(None, T, Duration::ZERO),
            Health::NotReady {
                reason: "metadata".into()
            }
        );
    }

    #[test]
    fn a_fresh_heartbeat_of_an_unreachable_peer_is_read_again_when_it_turns_stale() {
        let timeout = Duration::from_millis(2500);
        // Read at 10_000 with a beat from 9_000: stale after 11_500.
        let due = |now| staleness_due([9_000], 10_000, now, timeout);
        assert!(!due(11_000), "still fresh");
        assert!(!due(11_500), "exactly at the timeout is not older than it");
        assert!(due(11_501), "stale since the last read: read again");
        // Already stale when read: the read in hand decided; no extra read.
        assert!(!staleness_due([5_000], 10_000, 12_000, timeout));
        // No unreachable peer, nothing to read for.
        assert!(!staleness_due([], 10_000, 99_000, timeout));
    }

    #[test]
    fn unreachable_is_failed_only_with_a_stale_heartbeat() {
        let mut t = Tracker::new(1, 1);
        t.observe(Observation::Unreachable {
            why: "timeout".into(),
        });
        assert!(t.unreachable());
        assert!(
            !t.health(Some(Duration::from_millis(500)), T, G).failed(),
            "fresh heartbeat: partition"
        );
        assert!(t.health(Some(Duration::from_secs(4)), T, G).failed());
        assert!(t.health(None, T, G).failed(), "never beat");
    }

    #[tokio::test]
    async fn observes_ready_not_ready_and_silence() {
        let shared = Arc::new(crate::state::Shared::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(crate::http::serve(
            listener,
            shared.clone(),
            std::future::pending(),
        ));
        let lo = Ipv4Addr::LOCALHOST;
        match observe(lo, port, Duration::from_secs(2)).await {
            Observation::NotReady { reason } => assert!(reason.contains("metadata"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cport = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(matches!(
            observe(lo, cport, Duration::from_secs(2)).await,
            Observation::Unreachable { .. }
        ));
    }
}
