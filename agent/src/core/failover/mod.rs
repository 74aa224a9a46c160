//! Who should serve each route table, decided by a pure function.
//!
//! Every agent of a group runs [`decide`] over the same kind of view (the
//! group's instances, their health as this agent sees it, the group's route
//! tables) and acts only on the moves that are its own. The rules:
//!
//! - **Home.** A table tagged `natron:az=X` belongs to the NAT in AZ X. A
//!   ready home claims its table at once when the table has no default
//!   route, points at something that is not a NAT of the group, or points at
//!   a NAT that has failed.
//! - **Takeover.** When a table's owner has failed (or it has no route) and
//!   its home has failed too (or there is none), exactly one ready NAT,
//!   chosen by rendezvous hashing of (table, instance), points the table at
//!   itself; but only once it has proven its own egress since the failure
//!   (a failure every NAT sees moves nothing), and, for a NAT that reported
//!   its own failure, only if the taker was ready before it failed or has
//!   been ready for `settle` (NATs that fail and recover together keep
//!   their tables).
//! - **Failed** means (`core::peer`): not running in EC2, or answering
//!   /readyz with 503, or its agent refusing connections for longer than the
//!   agent-down grace, or unreachable `fall` times in a row *and* not having
//!   written its heartbeat since contact was lost (within the proof window)
//!   or recently. Unreachable with a fresh heartbeat is a partition (a
//!   security group or NACL mistake), not a failure: nobody takes over, so
//!   routes never flap between two live NATs. A restarted agent answers
//!   503 `starting` while it proves its data plane: not failed, for the
//!   boot grace.
//! - **Failback.** A home that has been ready for the hold-down takes its
//!   table back from a live peer, if the table has not changed owner within
//!   the hold-down either. Forced moves (the owner failed) are never delayed.
//! - **Handoff.** A draining agent (SIGTERM) gives each table it serves to
//!   the table's home if that is ready, else to the chosen ready peer; with
//!   no ready peer it keeps them.
//!
//! Each move carries the target it was decided on; the caller re-reads the
//! table and writes only if the target is still that one (read-verify-write),
//! so two agents never fight over a table.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

pub mod nat64;

pub use natron_contract::status::{Health, MoveKind};

use crate::model::instance::GroupInstance;
use crate::model::{RouteTable, RouteTarget};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub table: String,
    pub kind: MoveKind,
    pub to_instance: String,
    pub to_interface: String,
    /// The default route the move was decided on (None: absent).
    pub expect: Option<RouteTarget>,
    pub reason: String,
}

/// What [`decide`] looks at.
pub struct View<'a> {
    pub me: &'a str,
    /// Ready for this long (None: not ready).
    pub me_ready_for: Option<Duration>,
    pub draining: bool,
    /// The group's instances, this one included.
    pub instances: &'a [GroupInstance],
    /// Peers' health by instance id (this instance excluded).
    pub health: &'a BTreeMap<String, Health>,
    pub tables: &'a [RouteTable],
    /// How long each table has had its current owner, when known.
    pub owner_since: &'a BTreeMap<String, Duration>,
    pub hold_down: Duration,
    /// Time since the start of this agent's last passing egress round
    /// (None: none has passed).
    pub me_proof_ago: Option<Duration>,
    /// How long each failed peer has been seen failed.
    pub failed_for: &'a BTreeMap<String, Duration>,
    /// How long a NAT that became ready after a peer failed waits before
    /// taking that peer's tables.
    pub settle: Duration,
}

/// Who a default route points at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner<'a> {
    Nothing,
    /// A gateway or another non-instance target.
    Foreign(String),
    /// An instance or ENI that is no NAT of the group (or a blackhole).
    Gone(String),
    Nat(&'a GroupInstance),
}

impl View<'_> {
    fn owner(&self, target: Option<&RouteTarget>) -> Owner<'_> {
        let Some(t) = target else {
            return Owner::Nothing;
        };
        let nat = self.instances.iter().find(|i| i.is_target_of(t));
        match nat {
            _ if t.is_blackhole() => Owner::Gone(t.describe()),
            Some(i) => Owner::Nat(i),
            None if t.instance_id.is_none() && t.interface_id.is_none() => {
                Owner::Foreign(t.describe())
            }
            None => Owner::Gone(t.describe()),
        }
    }

    fn ready(&self, id: &str) -> bool {
        if id == self.me {
            return self.me_ready_for.is_some() && !self.draining;
        }
        self.instances
            .iter()
            .any(|i| i.instance_id == id && i.is_running())
            && self.health.get(id) == Some(&Health::Ready)
    }

    fn health_of(&self, i: &GroupInstance) -> Health {
        if !i.is_running() {
            return Health::NotRunning {
                ec2_state: i.state.clone(),
            };
        }
        self.health
            .get(&i.instance_id)
            .cloned()
            .unwrap_or(Health::Unknown)
    }

    /// The NAT in `az` (see [`home_of`]).
    fn home(&self, az: Option<&str>) -> Option<&GroupInstance> {
        home_of(self.instances, az?, |id| self.ready(id))
    }

    fn interface_of(&self, id: &str) -> String {
        self.instances
            .iter()
            .find(|i| i.instance_id == id)
            .and_then(|i| i.primary_interface())
            .unwrap_or_default()
            .to_string()
    }

    /// Whether this agent may replace the failed NAT `id`. It must have
    /// proven its own egress since `id` failed, so that one failure seen by
    /// all (the probe targets gone, the internet cut) moves nothing. And
    /// when `id` reports its own failure (503), this agent must have been
    /// ready since before it, or for `settle`: NATs that failed together and
    /// recover together do not take each other's tables.
    fn may_replace(&self, id: &str, health: &Health) -> bool {
        let Some(ready_for) = self.me_ready_for else {
            return false;
        };
        let failed_for = self.failed_for.get(id).copied().unwrap_or(Duration::MAX);
        let proven = self.me_proof_ago.is_some_and(|p| p <= failed_for);
        let witnessed = match health {
            Health::NotReady { .. } => ready_for > failed_for || ready_for >= self.settle,
            _ => true,
        };
        proven && witnessed
    }

    /// The ready NAT that should take `table` (never `except`).
    fn choose(&self, table: &str, except: Option<&str>) -> Option<String> {
        self.instances
            .iter()
            .filter(|i| Some(i.instance_id.as_str()) != except && self.ready(&i.instance_id))
            .max_by_key(|i| rendezvous(table, &i.instance_id))
            .map(|i| i.instance_id.clone())
    }

    fn mv(&self, table: &RouteTable, kind: MoveKind, to: &str, reason: String) -> Move {
        Move {
            table: table.id.clone(),
            kind,
            to_instance: to.to_string(),
            to_interface: self.interface_of(to),
            expect: table.default_route.clone(),
            reason,
        }
    }
}

/// A table's home: the running NAT of the group in `az`; of two (a
/// replacement overlapping the instance it replaces) the ready one, then
/// the lowest instance id. The one notion of "home" for decisions and for
/// what /status shows.
pub fn home_of<'a>(
    instances: &'a [GroupInstance],
    az: &str,
    ready: impl Fn(&str) -> bool,
) -> Option<&'a GroupInstance> {
    instances
        .iter()
        .filter(|i| i.availability_zone == az && i.is_running())
        .min_by_key(|i| (!ready(&i.instance_id), i.instance_id.clone()))
}

/// FNV-1a over "table/instance": stable across versions and machines, so
/// every agent picks the same NAT for a table.
fn rendezvous(table: &str, instance: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in table.bytes().chain([b'/']).chain(instance.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// This agent's moves. Pure.
pub fn decide(v: &View) -> Vec<Move> {
    let mut moves = Vec::new();
    for table in v.tables {
        let owner = v.owner(table.default_route.as_ref());
        let home = v.home(table.az.as_deref());
        let i_am_home = home.is_some_and(|h| h.instance_id == v.me);
        if v.draining {
            if let Owner::Nat(o) = owner {
                if o.instance_id == v.me {
                    let to = home
                        .filter(|h| h.instance_id != v.me && v.ready(&h.instance_id))
                        .map(|h| h.instance_id.clone())
                        .or_else(|| v.choose(&table.id, Some(v.me)));
                    if let Some(to) = to {
                        moves.push(v.mv(
                            table,
                            MoveKind::Handoff,
                            &to,
                            "this agent is stopping".into(),
                        ));
                    }
                }
            }
            continue;
        }
        if i_am_home {
            let Some(ready_for) = v.me_ready_for else {
                continue;
            };
            let reason = match &owner {
                Owner::Nat(o) if o.instance_id == v.me => continue,
                Owner::Nothing => "home AZ table has no default route".to_string(),
                Owner::Foreign(t) => format!("home AZ table points at {t}, not a natron NAT"),
                Owner::Gone(t) => {
                    format!("home AZ table points at {t}, which is no running NAT of the group")
                }
                Owner::Nat(o) => {
                    let health = v.health_of(o);
                    if health.failed() {
                        format!(
                            "home AZ table's owner {} {}",
                            o.instance_id,
                            health.describe()
                        )
                    } else {
                        let since = v
                            .owner_since
                            .get(&table.id)
                            .copied()
                            .unwrap_or(Duration::MAX);
                        if ready_for < v.hold_down || since < v.hold_down {
                            continue;
                        }
                        let reason = format!(
                            "home ready for {}s (hold-down {}s); taking it back from {}",
                            ready_for.as_secs(),
                            v.hold_down.as_secs(),
                            o.instance_id
                        );
                        moves.push(v.mv(table, MoveKind::Failback, v.me, reason));
                        continue;
                    }
                }
            };
            moves.push(v.mv(table, MoveKind::Claim, v.me, reason));
            continue;
        }
        // Not this agent's home: only a failed owner is ever replaced, and
        // only when the home cannot claim it.
        let (failed_owner, why) = match &owner {
            Owner::Nat(o) if o.instance_id == v.me => continue,
            Owner::Foreign(_) => continue,
            Owner::Nat(o) => {
                let health = v.health_of(o);
                if !health.failed() {
                    continue;
                }
                (
                    Some(o.instance_id.as_str()),
                    format!("owner {} {}", o.instance_id, health.describe()),
                )
            }
            Owner::Nothing => (None, "no default route".to_string()),
            Owner::Gone(t) => (
                None,
                format!("default route points at {t}, which is no running NAT of the group"),
            ),
        };
        // A home that is alive, starting or merely cut off from us claims
        // its own table.
        if home.is_some_and(|h| !v.health_of(h).failed()) {
            continue;
        }
        let home_state = match home {
            Some(h) => format!("home {} {}", h.instance_id, v.health_of(h).describe()),
            None => "no NAT runs in its AZ".to_string(),
        };
        // Of a failed owner, or else a failed home: the NAT replaced.
        let replaced = failed_owner
            .and_then(|id| v.instances.iter().find(|i| i.instance_id == id))
            .or(home);
        if replaced.is_some_and(|r| !v.may_replace(&r.instance_id, &v.health_of(r))) {
            continue;
        }
        if v.choose(&table.id, failed_owner).as_deref() == Some(v.me) {
            moves.push(v.mv(
                table,
                MoveKind::Takeover,
                v.me,
                format!("{why}; {home_state}"),
            ));
        }
    }
    moves
}

#[cfg(test)]
mod tests;
