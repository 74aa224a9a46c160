//! Egress health from noisy probe rounds: the rise/fall hysteresis. Pure.

use serde::Serialize;

/// Rise/fall hysteresis: `rise` passing rounds in a row make a failed
/// state healthy, `fall` failing rounds in a row make a healthy one failed.
/// It starts failed: egress is unproven until it has passed.
#[derive(Debug, Clone, Serialize)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    pub healthy: bool,
    streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> Self {
        RiseFall {
            rise,
            fall,
            healthy: false,
            streak: 0,
        }
    }

    /// Starting from a verdict already known (a restarted agent adopting
    /// the one it wrote before it stopped).
    pub fn resumed(rise: u32, fall: u32, healthy: bool) -> Self {
        RiseFall {
            healthy,
            ..RiseFall::new(rise, fall)
        }
    }

    /// Whether the rounds since the last change disagree with the verdict.
    pub fn wavering(&self) -> bool {
        self.streak > 0
    }

    /// Records one round; returns true when the state changed.
    pub fn observe(&mut self, pass: bool) -> bool {
        if pass == self.healthy {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if pass { self.rise } else { self.fall };
        if self.streak >= needed {
            self.healthy = pass;
            self.streak = 0;
            return true;
        }
        false
    }
}

/// How old a remembered verdict may be for a restarted agent to adopt it.
pub const MEMO_MAX_AGE_MS: u64 = 30_000;

/// The egress verdict a restarted agent starts from: the one it wrote
/// before it stopped, when that was on this instance and recent. None:
/// prove egress from scratch (rise passing rounds).
pub fn resume_verdict(
    memo_instance: &str,
    memo_healthy: bool,
    memo_ms: u64,
    instance: &str,
    now_ms: u64,
) -> Option<bool> {
    (memo_instance == instance && now_ms.saturating_sub(memo_ms) <= MEMO_MAX_AGE_MS)
        .then_some(memo_healthy)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_recent_verdict_of_this_instance_is_resumed() {
        assert_eq!(
            resume_verdict("i-1", true, 10_000, "i-1", 20_000),
            Some(true)
        );
        assert_eq!(
            resume_verdict("i-1", false, 10_000, "i-1", 20_000),
            Some(false)
        );
        assert_eq!(
            resume_verdict("i-1", true, 10_000, "i-1", 50_000),
            None,
            "too old"
        );
        assert_eq!(
            resume_verdict("i-old", true, 10_000, "i-1", 11_000),
            None,
            "another instance's"
        );
        let mut rf = RiseFall::resumed(2, 3, true);
        assert!(rf.healthy);
        assert!(!rf.observe(false));
        assert!(rf.wavering());
    }

    use super::*;

    #[test]
    fn rise_fall_hysteresis() {
        let mut rf = RiseFall::new(2, 3);
        assert!(!rf.healthy);
        assert!(!rf.observe(true));
        assert!(rf.observe(true));
        assert!(rf.healthy);
        // Two failures then a pass: still healthy, streak reset.
        rf.observe(false);
        rf.observe(false);
        rf.observe(true);
        assert!(rf.healthy);
        rf.observe(false);
        rf.observe(false);
        assert!(rf.observe(false));
        assert!(!rf.healthy);
    }
}
