//! A prober in a private subnet: one HTTP request to the internet server
//! (over IPv4, or over NAT64 at its `64:ff9b::` address) every 50 ms, each on a new connection (as a Lambda invocation would
//! open), recording when it was sent and whether and when it was answered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::internet;

pub const PERIOD: Duration = Duration::from_millis(50);
/// A request not answered within this counts as lost.
pub const TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Record {
    pub sent: Instant,
    pub answered: Option<Instant>,
    /// The address the server saw (the NAT's public IP), when answered.
    pub seen_from: Option<String>,
}

#[derive(Clone, Default)]
pub struct Records(pub Arc<Mutex<Vec<Record>>>);

impl Records {
    pub fn snapshot(&self) -> Vec<Record> {
        self.0.lock().expect("records").clone()
    }

    /// From `t0` to the answer of the first request sent at or after `t0`
    /// that was answered (None: none yet).
    pub fn outage_after(&self, t0: Instant) -> Option<Duration> {
        self.snapshot()
            .iter()
            .filter(|r| r.sent >= t0)
            .filter_map(|r| r.answered)
            .min()
            .map(|a| a - t0)
    }

    /// First answered request sent at or after `t0` that went out through
    /// `public` (a NAT's public IP), and when it was answered.
    pub fn first_via_after(&self, t0: Instant, public: &str) -> Option<Duration> {
        self.snapshot()
            .iter()
            .filter(|r| {
                r.sent >= t0
                    && r.seen_from
                        .as_deref()
                        .is_some_and(|s| s.starts_with(&format!("{public}:")))
            })
            .filter_map(|r| r.answered)
            .min()
            .map(|a| a - t0)
    }

    /// Requests sent in [from, to) that were lost (settled ones only).
    pub fn lost_between(&self, from: Instant, to: Instant) -> usize {
        self.snapshot()
            .iter()
            .filter(|r| {
                r.sent >= from
                    && r.sent < to
                    && r.sent + TIMEOUT < Instant::now()
                    && r.answered.is_none()
            })
            .count()
    }

    /// Longest run of consecutive lost requests, as time, in [from, to).
    pub fn longest_loss(&self, from: Instant, to: Instant) -> Duration {
        let mut longest = Duration::ZERO;
        let mut start: Option<Instant> = None;
        for r in self
            .snapshot()
            .iter()
            .filter(|r| r.sent >= from && r.sent < to && r.sent + TIMEOUT < Instant::now())
        {
            match (r.answered, start) {
                (None, None) => start = Some(r.sent),
                (Some(_), Some(s)) => {
                    longest = longest.max(r.sent - s);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            longest = longest.max(to.min(Instant::now()) - s);
        }
        longest
    }
}

/// Sends a request to the internet server every [`PERIOD`] until the
/// task is aborted.
pub async fn run(records: Records) {
    run_to(records, internet::SERVER.into()).await
}

/// [`run`] to `server`: the internet server's address, or its NAT64
/// address for an IPv6 client.
pub async fn run_to(records: Records, server: std::net::IpAddr) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let index = {
            let mut all = records.0.lock().expect("records");
            all.push(Record {
                sent: Instant::now(),
                answered: None,
                seen_from: None,
            });
            all.len() - 1
        };
        let records = records.clone();
        tokio::spawn(async move {
            if let Ok(body) = internet::http_get_from(server, "/whoami", TIMEOUT).await {
                let mut all = records.0.lock().expect("records");
                all[index].answered = Some(Instant::now());
                all[index].seen_from = Some(body.trim().to_string());
            }
        });
    }
}
