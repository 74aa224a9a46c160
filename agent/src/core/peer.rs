//! A peer's health from its /readyz answers (or their absence) and its
//! heartbeat. Pure: every function takes the time it reasons about.
//!
//! - **Ready / not ready.** `rise` ready answers in a row make it ready; a
//!   single 503 is its own debounced verdict and counts at once.
//! - **Starting.** A 503 that says `starting` (an agent that has not been
//!   ready since it started, nothing known wrong) is not a failure, for
//!   `boot_grace`.
//! - **Agent down.** A refused connection means the NAT's kernel answers but
//!   its agent does not listen: it restarts, or crashed, while the kernel
//!   keeps forwarding. Not a failure until `agent_down_grace` has passed.
//! - **Unreachable.** No answer `fall` times in a row: dead, or cut off.
//!   The heartbeat decides ([`liveness`]): a live peer cut off from us
//!   writes its heartbeat from its first missed answer, so a peer that has
//!   not beaten since we lost contact, `proof_window` after it, is gone.

use std::time::Duration;

use natron_contract::status::Health;
use serde::Serialize;

/// One answer from a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Observation {
    Ready {
        /// Peers it says it cannot reach.
        cannot_reach: Vec<String>,
    },
    NotReady {
        reason: String,
        starting: bool,
        cannot_reach: Vec<String>,
    },
    /// The connection was refused: the kernel is up, the agent is not.
    Refused,
    /// No answer (a timeout, or the connection dropped).
    Unreachable { why: String },
}

impl Observation {
    fn answered(&self) -> bool {
        !matches!(self, Observation::Unreachable { .. })
    }

    fn cannot_reach(&self) -> &[String] {
        match self {
            Observation::Ready { cannot_reach } | Observation::NotReady { cannot_reach, .. } => {
                cannot_reach
            }
            _ => &[],
        }
    }
}

/// What the heartbeat says of an unreachable peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// No read made late enough to tell yet.
    Waiting,
    /// It has beaten since contact was lost, recently: cut off, alive.
    Alive,
    /// It has not: gone.
    Gone,
}

/// Clock skew tolerated between two NATs' clocks (Amazon Time Sync keeps
/// them within a millisecond or so).
pub const SKEW_MS: u64 = 250;

/// The heartbeat's verdict on a peer unreachable since `lost_ms` (the last
/// answer), from a group read made at `read_ms` that showed `beat_ms`.
pub fn liveness(
    lost_ms: u64,
    read_ms: u64,
    beat_ms: Option<u64>,
    proof_window: Duration,
    timeout: Duration,
) -> Liveness {
    let since_loss = beat_ms.is_some_and(|b| b + SKEW_MS >= lost_ms);
    let recent = beat_ms.is_some_and(|b| b + timeout.as_millis() as u64 >= read_ms);
    if since_loss && recent {
        return Liveness::Alive;
    }
    if read_ms < lost_ms + proof_window.as_millis() as u64 {
        return Liveness::Waiting;
    }
    Liveness::Gone
}

/// The timings a tracker judges with (the `failover` configuration).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub rise: u32,
    pub fall: u32,
    pub boot_grace: Duration,
    pub agent_down_grace: Duration,
    pub proof_window: Duration,
    pub heartbeat_timeout: Duration,
}

/// One peer as this agent has seen it.
#[derive(Debug, Clone, Serialize)]
pub struct Tracker {
    pub up: Option<bool>,
    pub last: Option<Observation>,
    /// The last bad observation while down.
    pub last_bad: Option<Observation>,
    ok_streak: u32,
    bad_streak: u32,
    /// Unix ms of the first observation, the last answer of any kind, the
    /// start of the current run of refusals and of `starting` answers.
    first_ms: u64,
    last_answer_ms: Option<u64>,
    refused_since_ms: Option<u64>,
    starting_since_ms: Option<u64>,
}

impl Tracker {
    pub fn new(now_ms: u64) -> Tracker {
        Tracker {
            up: None,
            last: None,
            last_bad: None,
            ok_streak: 0,
            bad_streak: 0,
            first_ms: now_ms,
            last_answer_ms: None,
            refused_since_ms: None,
            starting_since_ms: None,
        }
    }

    pub fn observe(&mut self, obs: Observation, now_ms: u64, t: &Timings) {
        if obs.answered() {
            self.last_answer_ms = Some(now_ms);
        }
        match &obs {
            Observation::Refused => {
                self.refused_since_ms.get_or_insert(now_ms);
            }
            _ => self.refused_since_ms = None,
        }
        match &obs {
            Observation::NotReady { starting: true, .. } => {
                self.starting_since_ms.get_or_insert(now_ms);
            }
            // Still coming up until it counts as ready: a first ready
            // answer keeps it starting, a real verdict ends it.
            Observation::Ready { .. } => {}
            _ => self.starting_since_ms = None,
        }
        if let Observation::Ready { .. } = obs {
            self.ok_streak += 1;
            self.bad_streak = 0;
            if self.ok_streak >= t.rise {
                self.up = Some(true);
                self.starting_since_ms = None;
            }
        } else {
            self.bad_streak += 1;
            self.ok_streak = 0;
            self.last_bad = Some(obs.clone());
            // A 503 is the peer's own verdict and a refusal a fact; silence
            // needs `fall` in a row.
            let definite = !matches!(obs, Observation::Unreachable { .. });
            if definite || self.bad_streak >= t.fall {
                self.up = Some(false);
            }
        }
        self.last = Some(obs);
    }

    /// Whether its last probe went unanswered: this agent is alerted (it
    /// writes its heartbeat) from the first missed answer.
    pub fn silent(&self) -> bool {
        matches!(self.last, Some(Observation::Unreachable { .. }))
    }

    /// Down because of silence: its heartbeat decides.
    pub fn unreachable(&self) -> bool {
        self.up == Some(false) && matches!(self.last_bad, Some(Observation::Unreachable { .. }))
    }

    /// When contact was lost: its last answer, or when it was first seen.
    pub fn lost_ms(&self) -> u64 {
        self.last_answer_ms.unwrap_or(self.first_ms)
    }

    /// Whether its last answer says it cannot reach `me`.
    pub fn cannot_reach(&self, me: &str) -> bool {
        self.last
            .as_ref()
            .is_some_and(|o| o.cannot_reach().iter().any(|p| p == me))
    }

    /// Its health. For an unreachable peer `read_ms` and `beat_ms` are the
    /// last group read and the heartbeat it showed.
    pub fn health(&self, now_ms: u64, read_ms: u64, beat_ms: Option<u64>, t: &Timings) -> Health {
        let age = |since: u64| now_ms.saturating_sub(since);
        let recovering = matches!(self.last, Some(Observation::Ready { .. }));
        match (self.up, &self.last_bad) {
            (Some(true), _) => Health::Ready,
            // It says it is ready again; `rise` answers make it so. Not a
            // failure meanwhile: its own verdict is the newest word.
            (Some(false), _) if recovering => Health::Unknown,
            (Some(false), Some(Observation::NotReady { reason, .. })) => {
                let starting = self
                    .starting_since_ms
                    .is_some_and(|s| age(s) < t.boot_grace.as_millis() as u64);
                if starting {
                    Health::Starting {
                        reason: reason.clone(),
                    }
                } else {
                    Health::NotReady {
                        reason: reason.clone(),
                    }
                }
            }
            (Some(false), Some(Observation::Refused)) => {
                let for_ms = age(self.refused_since_ms.unwrap_or(now_ms));
                Health::AgentDown {
                    for_ms,
                    past_grace: for_ms >= t.agent_down_grace.as_millis() as u64,
                }
            }
            (Some(false), Some(Observation::Unreachable { why })) => {
                let verdict = liveness(
                    self.lost_ms(),
                    read_ms,
                    beat_ms,
                    t.proof_window,
                    t.heartbeat_timeout,
                );
                Health::Unreachable {
                    why: why.clone(),
                    heartbeat_age_ms: beat_ms.map(|b| now_ms.saturating_sub(b)),
                    stale: verdict == Liveness::Gone,
                }
            }
            _ => Health::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timings = Timings {
        rise: 2,
        fall: 3,
        boot_grace: Duration::from_secs(60),
        agent_down_grace: Duration::from_secs(20),
        proof_window: Duration::from_millis(1200),
        heartbeat_timeout: Duration::from_secs(10),
    };

    fn ready() -> Observation {
        Observation::Ready {
            cannot_reach: vec![],
        }
    }

    fn silence() -> Observation {
        Observation::Unreachable {
            why: "no answer".into(),
        }
    }

    fn not_ready(starting: bool) -> Observation {
        Observation::NotReady {
            reason: "egress: probes have not passed yet".into(),
            starting,
            cannot_reach: vec![],
        }
    }

    #[test]
    fn rise_and_fall() {
        let mut t = Tracker::new(0);
        assert_eq!(t.health(0, 0, None, &T), Health::Unknown);
        t.observe(ready(), 0, &T);
        assert_eq!(t.health(0, 0, None, &T), Health::Unknown);
        t.observe(ready(), 250, &T);
        assert_eq!(t.health(250, 0, None, &T), Health::Ready);
        t.observe(silence(), 500, &T);
        t.observe(silence(), 700, &T);
        assert_eq!(t.health(700, 0, None, &T), Health::Ready, "two silences");
        assert!(t.silent(), "but alerted from the first");
        t.observe(silence(), 900, &T);
        assert!(t.unreachable());
        assert_eq!(t.lost_ms(), 250);
        // One 503 is enough.
        let mut t = Tracker::new(0);
        t.observe(not_ready(false), 0, &T);
        assert!(matches!(t.health(0, 0, None, &T), Health::NotReady { .. }));
    }

    #[test]
    fn a_starting_peer_is_not_failed_within_the_boot_grace() {
        let mut t = Tracker::new(0);
        t.observe(ready(), 0, &T);
        t.observe(ready(), 1, &T);
        // Restarted: it says it is starting, even though it was up before.
        t.observe(not_ready(true), 1_000, &T);
        let h = t.health(2_000, 0, None, &T);
        assert!(matches!(h, Health::Starting { .. }), "{h:?}");
        assert!(!h.failed());
        assert!(
            t.health(61_001, 0, None, &T).failed(),
            "past the boot grace"
        );
        t.observe(not_ready(false), 3_000, &T);
        assert!(t.health(3_000, 0, None, &T).failed(), "a real verdict");
    }

    #[test]
    fn a_peer_answering_ready_again_is_no_longer_failed() {
        let mut t = Tracker::new(0);
        t.observe(not_ready(true), 0, &T);
        t.observe(ready(), 500, &T);
        assert!(
            !t.health(500, 0, None, &T).failed(),
            "one ready answer after starting"
        );
        let mut t = Tracker::new(0);
        t.observe(not_ready(false), 0, &T);
        t.observe(ready(), 500, &T);
        assert!(!t.health(500, 0, None, &T).failed(), "and after a real 503");
        t.observe(ready(), 750, &T);
        assert_eq!(t.health(750, 0, None, &T), Health::Ready);
    }

    #[test]
    fn a_refusing_kernel_is_an_agent_down_until_the_grace() {
        let mut t = Tracker::new(0);
        t.observe(ready(), 0, &T);
        t.observe(ready(), 1, &T);
        t.observe(Observation::Refused, 1_000, &T);
        let h = t.health(5_000, 0, None, &T);
        assert_eq!(
            h,
            Health::AgentDown {
                for_ms: 4_000,
                past_grace: false
            }
        );
        assert!(!h.failed());
        t.observe(Observation::Refused, 21_000, &T);
        assert!(t.health(21_000, 0, None, &T).failed());
        // Its agent is back.
        t.observe(ready(), 22_000, &T);
        t.observe(ready(), 22_250, &T);
        assert_eq!(t.health(22_250, 0, None, &T), Health::Ready);
    }

    #[test]
    fn the_heartbeat_tells_a_partition_from_a_death() {
        let w = Duration::from_millis(1200);
        let to = Duration::from_secs(10);
        // Lost at 10 s. A read before the window ends cannot tell yet...
        assert_eq!(liveness(10_000, 11_000, None, w, to), Liveness::Waiting);
        // ...unless the peer has already beaten since.
        assert_eq!(
            liveness(10_000, 11_000, Some(10_400), w, to),
            Liveness::Alive
        );
        // After the window: no beat since the loss means gone.
        assert_eq!(liveness(10_000, 11_300, Some(5_000), w, to), Liveness::Gone);
        assert_eq!(liveness(10_000, 11_300, None, w, to), Liveness::Gone);
        // A beat a little before the loss (clock skew) still counts.
        assert_eq!(
            liveness(10_000, 11_300, Some(9_900), w, to),
            Liveness::Alive
        );
        // A long partition: alive while beats keep coming, gone once they stop.
        assert_eq!(
            liveness(10_000, 60_000, Some(55_000), w, to),
            Liveness::Alive
        );
        assert_eq!(
            liveness(10_000, 70_000, Some(55_000), w, to),
            Liveness::Gone
        );
    }

    #[test]
    fn an_unreachable_peer_is_stale_only_when_gone() {
        let mut t = Tracker::new(0);
        t.observe(ready(), 0, &T);
        t.observe(ready(), 250, &T);
        for ms in [500, 700, 900] {
            t.observe(silence(), ms, &T);
        }
        let waiting = t.health(900, 800, None, &T);
        assert!(!waiting.failed(), "{waiting:?}");
        let gone = t.health(1_500, 1_460, None, &T);
        assert!(gone.failed(), "{gone:?}");
        let alive = t.health(1_500, 1_460, Some(700), &T);
        assert!(!alive.failed(), "{alive:?}");
    }

    #[test]
    fn a_peer_saying_it_cannot_reach_us_is_heard() {
        let mut t = Tracker::new(0);
        t.observe(
            Observation::Ready {
                cannot_reach: vec!["i-me".into()],
            },
            0,
            &T,
        );
        assert!(t.cannot_reach("i-me") && !t.cannot_reach("i-other"));
    }
}
