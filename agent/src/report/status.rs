//! The agent's observable state: what /readyz decides from and /status
//! shows. Written by the loops, read by the HTTP server. The documents
//! themselves are the contract's types ([`ReadyzBody`], [`Status`]); this
//! module keeps the state they are projected from.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use natron_contract::aws::{AwsError, ErrorKind};
use natron_contract::readyz::{Area, ReadyzBody, Reason};
use natron_contract::status::{
    DataPlane, Ec2Calls, Egress, Failover, Identity, Routes, Status, Warning,
};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;

/// Everything the agent knows about itself, as the loops last saw it.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub identity: Option<Identity>,
    pub group: Option<String>,
    /// The configuration in effect, for /status.
    pub config: serde_json::Value,
    pub dataplane: DataPlane,
    pub egress: Egress,
    pub routes: Routes,
    pub failover: Failover,
    /// What currently holds readiness back or needs attention, by area.
    pub problems: BTreeMap<Area, String>,
    pub warnings: Vec<Warning>,
    pub ec2: Ec2Calls,
    /// Whether the agent has been ready since it started.
    pub ever_ready: bool,
    /// When the last passing egress round started.
    pub proven_at: Option<Instant>,
    /// Peers this NAT cannot reach (told to them in /readyz).
    pub unreachable_peers: Vec<String>,
    /// The egress verdict remembered from before a restart was "failed".
    pub egress_failed_before_start: bool,
}

fn reason(area: Area, message: impl Into<String>) -> Reason {
    Reason {
        area,
        message: message.into(),
    }
}

impl State {
    /// Ready when the data plane is in place and egress is proven; otherwise
    /// the reasons why not.
    pub fn readiness(&self) -> Result<(), Vec<Reason>> {
        let mut reasons: Vec<Reason> = self
            .problems
            .iter()
            .map(|(a, m)| reason(*a, m.clone()))
            .collect();
        let mut missing = |area: Area, present: bool, message: &str| {
            if !present && !self.problems.contains_key(&area) {
                reasons.push(reason(area, message));
            }
        };
        let dp = &self.dataplane;
        missing(
            Area::Metadata,
            self.identity.is_some(),
            "identity not read yet",
        );
        missing(
            Area::Sysctl,
            dp.forwarding,
            "IPv4 forwarding not enabled yet",
        );
        missing(
            Area::Ruleset,
            dp.ruleset_in_place,
            "nftables table not in place yet",
        );
        missing(
            Area::SourceDestCheck,
            dp.source_dest_check_disabled,
            "not verified disabled yet",
        );
        missing(
            Area::Egress,
            self.egress.healthy,
            "probes have not passed yet",
        );
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// The data plane alone (forwarding, ruleset, source/dest check).
    /// Forwarding on and the ruleset loaded: what needs no EC2 call.
    pub fn local_dataplane_ready(&self) -> bool {
        self.dataplane.forwarding && self.dataplane.ruleset_in_place
    }

    pub fn dataplane_ready(&self) -> bool {
        let dp = &self.dataplane;
        dp.forwarding && dp.ruleset_in_place && dp.source_dest_check_disabled
    }

    /// What an EC2 call's outcome says about credentials: a call that
    /// lacked them makes [`Area::Credentials`] a problem (with the fix in
    /// its message); any other outcome, failed or not, got past signing, so
    /// clears it.
    pub fn note_ec2(&mut self, error: Option<&AwsError>) {
        match error {
            Some(e) if e.kind == ErrorKind::Credentials => {
                self.problems.insert(
                    Area::Credentials,
                    format!(
                        "no AWS credentials for EC2 calls ({e}); give the instance natron's \
                         instance profile (`natron apply` creates it), the agent retries on its own"
                    ),
                );
            }
            _ => {
                self.problems.remove(&Area::Credentials);
            }
        }
    }

    /// Records a warning once; true when it is new.
    pub fn warn(&mut self, area: Area, message: impl Into<String>) -> bool {
        let w = Warning {
            area,
            message: message.into(),
        };
        if self.warnings.contains(&w) {
            return false;
        }
        self.warnings.push(w);
        true
    }

    /// Replaces the warnings of `area` with `message` (None: clears them).
    pub fn set_warning(&mut self, area: Area, message: Option<String>) {
        self.warnings.retain(|w| w.area != area);
        if let Some(m) = message {
            self.warn(area, m);
        }
    }

    /// Not ready yet since the agent started, and not known bad: what an
    /// agent proving its data plane and egress says (a NAT booting, whose
    /// Elastic IP may not be on it yet, fails probes meanwhile), so that
    /// peers do not take its tables. Known bad: its egress had failed
    /// before it restarted, or it is draining, broken or misconfigured.
    pub fn starting(&self) -> bool {
        !self.ever_ready
            && !self.egress_failed_before_start
            && !self
                .problems
                .keys()
                .any(|a| matches!(a, Area::Draining | Area::Supervisor | Area::Group))
    }

    pub fn readyz(&self) -> ReadyzBody {
        let unreachable_peers = self.unreachable_peers.clone();
        match self.readiness() {
            Ok(()) => ReadyzBody {
                ready: true,
                unreachable_peers,
                ..Default::default()
            },
            Err(reasons) => ReadyzBody {
                ready: false,
                reasons,
                starting: self.starting(),
                unreachable_peers,
            },
        }
    }

    /// The /status document.
    pub fn view(&self) -> Status {
        let readyz = self.readyz();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ready: readyz.ready,
            reasons: readyz.reasons,
            identity: self.identity.clone(),
            group: self.group.clone(),
            config: self.config.clone(),
            dataplane: self.dataplane.clone(),
            egress: self.egress.clone(),
            routes: self.routes.clone(),
            failover: self.failover.clone(),
            problems: self.problems.clone(),
            warnings: self.warnings.clone(),
            ec2: self.ec2.clone(),
        }
    }
}

/// A request to hand this NAT's route tables over (`natron-agent
/// handoff`, at system shutdown), answered when it is done.
pub type HandoffRequest = oneshot::Sender<String>;

/// Everything the tasks share.
pub struct Shared {
    state: RwLock<State>,
    pub metrics: Metrics,
    /// When the control loop last completed a pass (the watchdog's evidence).
    pub last_pass: Mutex<Instant>,
    /// Where /handoff sends its requests; the agent's main loop takes them.
    handoff_tx: mpsc::Sender<HandoffRequest>,
    handoff_rx: Mutex<Option<mpsc::Receiver<HandoffRequest>>>,
}

impl Shared {
    pub fn new() -> Shared {
        let (handoff_tx, handoff_rx) = mpsc::channel(4);
        Shared {
            state: RwLock::new(State::default()),
            metrics: Metrics::new(),
            last_pass: Mutex::new(Instant::now()),
            handoff_tx,
            handoff_rx: Mutex::new(Some(handoff_rx)),
        }
    }

    /// Changes the state; the readiness gauge follows.
    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut s);
        let ready = s.is_ready();
        s.ever_ready |= ready;
        self.metrics.ready.set(i64::from(ready));
        r
    }

    /// Asks the agent to hand its route tables over; the answer says what
    /// was done. None: the agent is not taking requests (stopping).
    pub async fn request_handoff(&self) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.handoff_tx.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// The receiving end of handoff requests, for the main loop (once).
    pub fn take_handoff_requests(&self) -> Option<mpsc::Receiver<HandoffRequest>> {
        self.handoff_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn snapshot(&self) -> State {
        self.read(State::clone)
    }

    /// Reads part of the state without copying all of it.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set_problem(&self, area: Area, message: impl Into<String>) {
        let message = message.into();
        self.update(|s| s.problems.insert(area, message));
    }

    pub fn clear_problem(&self, area: Area) {
        self.update(|s| s.problems.remove(&area));
    }

    pub fn mark_pass(&self) {
        *self.last_pass.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn since_last_pass(&self) -> std::time::Duration {
        self.last_pass
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_every_missing_piece() {
        let reasons = State::default().readiness().unwrap_err();
        let areas: Vec<Area> = reasons.iter().map(|r| r.area).collect();
        assert_eq!(
            areas,
            vec![
                Area::Metadata,
                Area::Sysctl,
                Area::Ruleset,
                Area::SourceDestCheck,
                Area::Egress
            ]
        );
    }

    #[test]
    fn problems_take_the_place_of_generic_reasons() {
        let mut s = State::default();
        s.problems
            .insert(Area::Metadata, "connection refused".into());
        let reasons = s.readiness().unwrap_err();
        assert!(reasons.contains(&reason(Area::Metadata, "connection refused")));
        assert!(!reasons
            .iter()
            .any(|r| r.message.contains("identity not read yet")));
        let body = s.readyz();
        assert!(!body.ready && body.has(Area::Metadata));
    }

    #[test]
    fn warnings_are_kept_once_and_replaced_by_area() {
        let mut s = State::default();
        assert!(s.warn(Area::Sysctl, "conntrack_max: read-only"));
        assert!(!s.warn(Area::Sysctl, "conntrack_max: read-only"));
        s.set_warning(Area::Routes, Some("EC2 throttled".into()));
        s.set_warning(Area::Routes, Some("EC2 down".into()));
        assert_eq!(s.warnings.len(), 2);
        s.set_warning(Area::Routes, None);
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn a_never_ready_agent_is_starting_until_something_is_known_wrong() {
        let mut s = State::default();
        assert!(s.readyz().starting);
        s.problems.insert(Area::Metadata, "IMDS not up yet".into());
        assert!(s.readyz().starting, "still coming up");
        s.problems.insert(Area::Egress, "all probes failed".into());
        assert!(s.readyz().starting, "probes fail while a NAT comes up");
        s.egress_failed_before_start = true;
        assert!(
            !s.readyz().starting,
            "egress known failed before the restart"
        );
        s.egress_failed_before_start = false;
        s.problems.clear();
        s.ever_ready = true;
        assert!(
            !s.readyz().starting,
            "was ready once: a 503 now is a verdict"
        );
    }

    #[test]
    fn readyz_tells_whom_this_nat_cannot_reach() {
        let s = State {
            unreachable_peers: vec!["i-b".into()],
            ..Default::default()
        };
        assert_eq!(s.readyz().unreachable_peers, vec!["i-b".to_string()]);
    }

    #[test]
    fn the_view_carries_readiness() {
        let shared = Shared::new();
        shared.set_problem(Area::Egress, "all probes failing");
        let view = shared.read(State::view);
        assert!(!view.ready);
        assert_eq!(view.problems[&Area::Egress], "all probes failing");
        assert_eq!(shared.metrics.ready.get(), 0);
    }
}
