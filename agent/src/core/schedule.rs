//! When the coordinator reads EC2: a pure schedule over how long ago each
//! read was made and what the peers' state calls for. EC2 is called only
//! when something is due, so the decision can run every 100 ms for free.

use std::time::{Duration, Instant};

use natron_contract::aws::ErrorKind;

/// What to read on this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reads {
    /// DescribeInstances of the group (states, heartbeats).
    pub instances: bool,
    /// DescribeRouteTables of the group.
    pub tables: bool,
}

/// The inputs of [`due`].
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Handing tables over: read everything, every pass.
    pub draining: bool,
    /// Time since the group's instances were read (None: never).
    pub since_instances: Option<Duration>,
    /// Time since the route tables were read (None: never).
    pub since_tables: Option<Duration>,
    /// When contact was lost (unix ms) with each peer unreachable now.
    pub unreachable_since_ms: Vec<u64>,
    /// Wall clock of the last instances read, and now.
    pub instances_read_ms: u64,
    pub now_ms: u64,
    pub peer_refresh: Duration,
    pub heartbeat_interval: Duration,
    pub proof_window: Duration,
    pub route_interval: Duration,
}

/// The reads due now. Instances: every `peer_refresh`; while a peer is
/// unreachable its heartbeat decides, so once the moment its proof window
/// ends (a live peer has beaten by then) and every `heartbeat_interval`
/// after. Tables: every `route_interval`. Everything while draining.
pub fn due(s: &Schedule) -> Reads {
    let older = |since: Option<Duration>, period: Duration| since.is_none_or(|t| t >= period);
    let heartbeat_due = !s.unreachable_since_ms.is_empty()
        && (older(s.since_instances, s.heartbeat_interval)
            || window_ended(
                &s.unreachable_since_ms,
                s.instances_read_ms,
                s.now_ms,
                s.proof_window,
            ));
    Reads {
        instances: s.draining || heartbeat_due || older(s.since_instances, s.peer_refresh),
        tables: s.draining || older(s.since_tables, s.route_interval),
    }
}

/// Whether the proof window of a peer lost at one of `lost_ms` ended after
/// the last read: the read made now decides whether it is alive.
pub fn window_ended(lost_ms: &[u64], read_ms: u64, now_ms: u64, window: Duration) -> bool {
    let window = window.as_millis() as u64;
    lost_ms.iter().any(|lost| {
        let end = lost.saturating_add(window);
        read_ms < end && now_ms >= end
    })
}

/// Backoff after failed EC2 work (coordination passes, the data plane's
/// EC2 steps): the first retry after `BACKOFF_BASE`, doubling to
/// `BACKOFF_MAX`, with up to half of it as jitter so that agents throttled
/// together do not retry together. While EC2 refuses every call, the agent
/// asks less often than in steady state.
///
/// Missing credentials wait at most `CREDENTIALS_RETRY`: such a call never
/// reaches EC2 (nothing there to spare), it costs one or two requests to
/// the instance's own metadata service, and the operator who attaches the
/// instance profile expects the NAT to serve within seconds, not a minute
/// later (each loop backing off alone once put a minute between them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    pub failures: u32,
}

pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const CREDENTIALS_RETRY: Duration = Duration::from_secs(8);

impl Backoff {
    /// The wait after one more failure of `kind`, with `jitter` in [0, 1).
    pub fn fail(&mut self, kind: ErrorKind, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let mut full = (BACKOFF_BASE * 2u32.saturating_pow(self.failures - 1)).min(BACKOFF_MAX);
        if kind == ErrorKind::Credentials {
            full = full.min(CREDENTIALS_RETRY);
        }
        full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
    }

    pub fn succeed(&mut self) {
        self.failures = 0;
    }
}

/// When a problem that a loop meets on every attempt is logged: when it
/// starts, when it changes (`key`), and once a minute while it lasts, so a
/// loop retrying every few seconds does not flood the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repeats {
    said: Option<(Instant, String)>,
}

pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

impl Repeats {
    /// Whether to log the problem `key` at `now`; remembered when so.
    pub fn due(&mut self, key: &str, now: Instant) -> bool {
        let due = match &self.said {
            None => true,
            Some((at, last)) => last != key || now.duration_since(*at) >= REPEAT_EVERY,
        };
        if due {
            self.said = Some((now, key.to_string()));
        }
        due
    }

    /// The problem is over; true when it had been logged (so its end is
    /// worth a line too).
    pub fn over(&mut self) -> bool {
        self.said.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_repeated_problem_is_said_on_change_and_once_a_minute() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        assert!(r.due("egress: x", t0));
        assert!(!r.due("egress: x", t0 + Duration::from_secs(30)));
        assert!(r.due("egress: y", t0 + Duration::from_secs(31)));
        assert!(!r.due("egress: y", t0 + Duration::from_secs(90)));
        assert!(r.due("egress: y", t0 + Duration::from_secs(91)));
        assert!(r.over());
        assert!(!r.over());
        assert!(r.due("egress: y", t0 + Duration::from_secs(92)));
    }

    #[test]
    fn failed_passes_back_off_and_a_success_resets() {
        let mut b = Backoff::default();
        let throttled = ErrorKind::Throttled;
        let waits: Vec<Duration> = (0..8).map(|_| b.fail(throttled, 0.999)).collect();
        assert!(waits[0] >= Duration::from_secs(1) && waits[0] < Duration::from_secs(2));
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(waits[7] <= BACKOFF_MAX);
        assert_eq!(
            b.fail(throttled, 0.0),
            BACKOFF_MAX / 2,
            "the floor is half the full wait"
        );
        b.succeed();
        assert!(b.fail(throttled, 0.0) < Duration::from_secs(2));
    }

    #[test]
    fn missing_credentials_are_retried_within_seconds_however_long_they_lasted() {
        let mut b = Backoff::default();
        for _ in 0..20 {
            assert!(b.fail(ErrorKind::Credentials, 0.999) <= CREDENTIALS_RETRY);
        }
        // The instance profile came back but EC2 throttles: the full backoff.
        assert!(b.fail(ErrorKind::Throttled, 0.0) >= BACKOFF_MAX / 2);
    }

    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            draining: false,
            since_instances: Some(Duration::from_secs(1)),
            since_tables: Some(Duration::from_secs(1)),
            unreachable_since_ms: vec![],
            instances_read_ms: 10_000,
            now_ms: 11_000,
            peer_refresh: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(4),
            proof_window: Duration::from_millis(1200),
            route_interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn steady_state_reads_nothing_until_a_period_passes() {
        let s = schedule();
        assert_eq!(due(&s), Reads::default());
        let s = Schedule {
            since_instances: Some(Duration::from_secs(10)),
            ..schedule()
        };
        assert_eq!(
            due(&s),
            Reads {
                instances: true,
                tables: false
            }
        );
        let s = Schedule {
            since_tables: None,
            ..schedule()
        };
        assert_eq!(
            due(&s),
            Reads {
                instances: false,
                tables: true
            }
        );
    }

    #[test]
    fn draining_reads_everything() {
        let s = Schedule {
            draining: true,
            ..schedule()
        };
        assert_eq!(
            due(&s),
            Reads {
                instances: true,
                tables: true
            }
        );
    }

    #[test]
    fn an_unreachable_peer_is_read_for_at_its_window_end_then_every_interval() {
        // Lost at 10_500, read at 10_000: the window ends at 11_700.
        let s = Schedule {
            unreachable_since_ms: vec![10_500],
            ..schedule()
        };
        assert!(!due(&s).instances, "inside the window, read 1 s ago");
        let s = Schedule {
            now_ms: 11_700,
            ..s
        };
        assert!(
            due(&s).instances,
            "the window has ended since the last read"
        );
        let s = Schedule {
            instances_read_ms: 11_700,
            now_ms: 12_000,
            since_instances: Some(Duration::from_millis(300)),
            ..s
        };
        assert!(
            !due(&s).instances,
            "read after the window: wait for the interval"
        );
        let s = Schedule {
            since_instances: Some(Duration::from_secs(4)),
            ..s
        };
        assert!(due(&s).instances);
    }
}
