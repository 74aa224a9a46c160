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
//!   its home has failed too (or there is none), exactly one ready NAT, chosen by rendezvous hashing of
//!   (table, instance), points the table at itself.
//! - **Failed** means: not running in EC2, or answering /readyz with 503
//!   (`fall` times in a row), or unreachable `fall` times in a row *and* its
//!   heartbeat tag older than the heartbeat timeout. Unreachable with a fresh
//!   heartbeat is a partition (a security group or NACL mistake), not a
//!   failure: nobody takes over, so routes never flap between two live NATs.
//!   A peer that has never been ready answers 503 while it boots: that is
//!   "starting", not failed, for the boot grace.
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

use crate::ec2::{GroupInstance, RouteTable, RouteTarget};

/// A peer's health as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Not enough observations yet.
    Unknown,
    Ready,
    /// Its /readyz answers 503.
    NotReady {
        reason: String,
    },
    /// Answers 503 but has never been ready yet (within the boot grace):
    /// it is coming up, not failing.
    Starting {
        reason: String,
    },
    /// No answer; `stale` when its heartbeat is older than the timeout too.
    Unreachable {
        why: String,
        heartbeat_age_ms: Option<u64>,
        stale: bool,
    },
    /// EC2 says it is not running.
    NotRunning {
        ec2_state: String,
    },
}

impl Health {
    pub fn failed(&self) -> bool {
        match self {
            Health::NotReady { .. } | Health::NotRunning { .. } => true,
            Health::Unreachable { stale, .. } => *stale,
            Health::Unknown | Health::Ready | Health::Starting { .. } => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Health::Unknown => "health unknown".into(),
            Health::Ready => "ready".into(),
            Health::NotReady { reason } => format!("reports not ready ({reason})"),
            Health::Starting { reason } => format!("is starting ({reason})"),
            Health::Unreachable {
                why,
                heartbeat_age_ms,
                stale,
            } => {
                let beat = heartbeat_age_ms.map_or("no heartbeat".to_string(), |a| {
                    format!("heartbeat {a} ms old")
                });
                format!(
                    "unreachable ({why}; {beat}{})",
                    if *stale { ", stale" } else { ", fresh" }
                )
            }
            Health::NotRunning { ec2_state } => format!("instance {ec2_state}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The home points its table at itself (absent, foreign or failed owner).
    Claim,
    /// A peer replaces a failed owner of a table whose home is not ready.
    Takeover,
    /// The home takes its table back from a live peer after the hold-down.
    Failback,
    /// A draining agent gives a table it serves to a ready NAT.
    Handoff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub table: String,
    pub kind: Kind,
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
            _ if t.state.as_deref() == Some("blackhole") => Owner::Gone(t.describe()),
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
            .any(|i| i.instance_id == id && i.state == "running")
            && self.health.get(id) == Some(&Health::Ready)
    }

    fn health_of(&self, i: &GroupInstance) -> Health {
        if i.state != "running" {
            return Health::NotRunning {
                ec2_state: i.state.clone(),
            };
        }
        self.health
            .get(&i.instance_id)
            .cloned()
            .unwrap_or(Health::Unknown)
    }

    /// The NAT in `az` (the ready one when there are two, as during a
    /// replacement).
    fn home(&self, az: Option<&str>) -> Option<&GroupInstance> {
        let az = az?;
        let mut in_az: Vec<&GroupInstance> = self
            .instances
            .iter()
            .filter(|i| i.availability_zone == az && i.state == "running")
            .collect();
        in_az.sort_by_key(|i| (!self.ready(&i.instance_id), i.instance_id.clone()));
        in_az.first().copied()
    }

    fn interface_of(&self, id: &str) -> String {
        self.instances
            .iter()
            .find(|i| i.instance_id == id)
            .and_then(|i| i.interface_ids.first().cloned())
            .unwrap_or_default()
    }

    /// The ready NAT that should take `table` (never `except`).
    fn choose(&self, table: &str, except: Option<&str>) -> Option<String> {
        self.instances
            .iter()
            .filter(|i| Some(i.instance_id.as_str()) != except && self.ready(&i.instance_id))
            .max_by_key(|i| rendezvous(table, &i.instance_id))
            .map(|i| i.instance_id.clone())
    }

    fn mv(&self, table: &RouteTable, kind: Kind, to: &str, reason: String) -> Move {
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
                            Kind::Handoff,
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
                        moves.push(v.mv(table, Kind::Failback, v.me, reason));
                        continue;
                    }
                }
            };
            moves.push(v.mv(table, Kind::Claim, v.me, reason));
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
        if v.choose(&table.id, failed_owner).as_deref() == Some(v.me) {
            moves.push(v.mv(table, Kind::Takeover, v.me, format!("{why}; {home_state}")));
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(id: &str, az: &str) -> GroupInstance {
        GroupInstance {
            instance_id: id.into(),
            availability_zone: az.into(),
            private_ip: None,
            interface_ids: vec![format!("eni-{id}")],
            state: "running".into(),
            heartbeat_ms: None,
        }
    }

    fn table(id: &str, az: &str, owner: Option<&str>) -> RouteTable {
        RouteTable {
            id: id.into(),
            az: Some(az.into()),
            default_route: owner.map(|o| RouteTarget {
                interface_id: Some(format!("eni-{o}")),
                state: Some("active".into()),
                ..Default::default()
            }),
        }
    }

    struct World {
        instances: Vec<GroupInstance>,
        health: BTreeMap<String, Health>,
        tables: Vec<RouteTable>,
        owner_since: BTreeMap<String, Duration>,
    }

    impl World {
        /// a and b, one per AZ, each table with its home; all ready.
        fn two() -> World {
            World {
                instances: vec![nat("a", "az-a"), nat("b", "az-b")],
                health: BTreeMap::from([("a".into(), Health::Ready), ("b".into(), Health::Ready)]),
                tables: vec![
                    table("rtb-a", "az-a", Some("a")),
                    table("rtb-b", "az-b", Some("b")),
                ],
                owner_since: BTreeMap::new(),
            }
        }

        fn decide(&self, me: &str, ready_for: Option<u64>, draining: bool) -> Vec<Move> {
            let mut health = self.health.clone();
            health.remove(me);
            decide(&View {
                me,
                me_ready_for: ready_for.map(Duration::from_secs),
                draining,
                instances: &self.instances,
                health: &health,
                tables: &self.tables,
                owner_since: &self.owner_since,
                hold_down: Duration::from_secs(30),
            })
        }
    }

    fn kinds(moves: &[Move]) -> Vec<(String, Kind, String)> {
        moves
            .iter()
            .map(|m| (m.table.clone(), m.kind, m.to_instance.clone()))
            .collect()
    }

    #[test]
    fn steady_state_does_nothing() {
        let w = World::two();
        assert!(w.decide("a", Some(100), false).is_empty());
        assert!(w.decide("b", Some(100), false).is_empty());
    }

    #[test]
    fn home_claims_absent_and_foreign_routes_at_once() {
        let mut w = World::two();
        w.tables[0].default_route = None;
        w.tables[1].default_route = Some(RouteTarget {
            other: Some("igw-1".into()),
            ..Default::default()
        });
        assert_eq!(
            kinds(&w.decide("a", Some(0), false)),
            vec![("rtb-a".into(), Kind::Claim, "a".into())]
        );
        assert_eq!(
            kinds(&w.decide("b", Some(0), false)),
            vec![("rtb-b".into(), Kind::Claim, "b".into())]
        );
        // A not-ready home claims nothing.
        assert!(w.decide("a", None, false).is_empty());
    }

    #[test]
    fn dead_peer_is_taken_over_by_one_ready_peer() {
        let mut w = World::two();
        w.health.insert(
            "a".into(),
            Health::Unreachable {
                why: "timeout".into(),
                heartbeat_age_ms: Some(9000),
                stale: true,
            },
        );
        let moves = w.decide("b", Some(5), false);
        assert_eq!(
            kinds(&moves),
            vec![("rtb-a".into(), Kind::Takeover, "b".into())]
        );
        assert_eq!(moves[0].to_interface, "eni-b");
        assert_eq!(
            moves[0].expect.as_ref().unwrap().interface_id.as_deref(),
            Some("eni-a")
        );
        assert!(
            moves[0].reason.contains("unreachable"),
            "{}",
            moves[0].reason
        );
    }

    #[test]
    fn not_ready_peer_is_taken_over_but_a_not_ready_self_takes_nothing() {
        let mut w = World::two();
        w.health.insert(
            "a".into(),
            Health::NotReady {
                reason: "egress".into(),
            },
        );
        assert_eq!(
            kinds(&w.decide("b", Some(5), false)),
            vec![("rtb-a".into(), Kind::Takeover, "b".into())]
        );
        assert!(
            w.decide("b", None, false).is_empty(),
            "both down: routes stay put"
        );
    }

    #[test]
    fn partition_with_fresh_heartbeat_changes_nothing() {
        let mut w = World::two();
        let cut = Health::Unreachable {
            why: "timeout".into(),
            heartbeat_age_ms: Some(400),
            stale: false,
        };
        w.health.insert("a".into(), cut.clone());
        w.health.insert("b".into(), cut);
        assert!(w.decide("a", Some(500), false).is_empty());
        assert!(w.decide("b", Some(500), false).is_empty());
    }

    #[test]
    fn failback_waits_for_the_hold_down() {
        let mut w = World::two();
        w.tables[0] = table("rtb-a", "az-a", Some("b"));
        assert!(
            w.decide("a", Some(10), false).is_empty(),
            "home ready for 10s < 30s"
        );
        assert_eq!(
            kinds(&w.decide("a", Some(31), false)),
            vec![("rtb-a".into(), Kind::Failback, "a".into())]
        );
        // The table changed owner 5 s ago: wait.
        w.owner_since.insert("rtb-a".into(), Duration::from_secs(5));
        assert!(w.decide("a", Some(31), false).is_empty());
        // b, the current owner, never gives it back on its own.
        assert!(w.decide("b", Some(100), false).is_empty());
    }

    #[test]
    fn failed_owner_is_replaced_by_the_home_at_once() {
        let mut w = World::two();
        w.tables[0] = table("rtb-a", "az-a", Some("b"));
        w.health.insert(
            "b".into(),
            Health::NotReady {
                reason: "egress".into(),
            },
        );
        // a claims its own table back at once, and takes b's too.
        assert_eq!(
            kinds(&w.decide("a", Some(1), false)),
            vec![
                ("rtb-a".into(), Kind::Claim, "a".into()),
                ("rtb-b".into(), Kind::Takeover, "a".into())
            ]
        );
    }

    #[test]
    fn draining_hands_tables_to_the_home_or_a_ready_peer() {
        let mut w = World::two();
        w.tables[1] = table("rtb-b", "az-b", Some("a"));
        let moves = w.decide("a", Some(100), true);
        assert_eq!(
            kinds(&moves),
            vec![
                ("rtb-a".into(), Kind::Handoff, "b".into()),
                ("rtb-b".into(), Kind::Handoff, "b".into())
            ]
        );
        w.health.insert(
            "b".into(),
            Health::NotReady {
                reason: "egress".into(),
            },
        );
        assert!(
            w.decide("a", Some(100), true).is_empty(),
            "no ready peer: keep the routes"
        );
    }

    #[test]
    fn exactly_one_of_several_takes_over() {
        let mut w = World::two();
        w.instances.push(nat("c", "az-c"));
        w.health.insert("c".into(), Health::Ready);
        w.tables.push(table("rtb-c", "az-c", Some("c")));
        w.health.insert(
            "a".into(),
            Health::NotRunning {
                ec2_state: "stopped".into(),
            },
        );
        w.instances[0].state = "stopped".into();
        let takers: Vec<String> = ["b", "c"]
            .iter()
            .flat_map(|me| w.decide(me, Some(100), false))
            .map(|m| m.to_instance)
            .collect();
        assert_eq!(takers.len(), 1, "{takers:?}");
    }

    #[test]
    fn a_table_without_a_nat_in_its_az_is_served() {
        let mut w = World::two();
        w.tables.push(table("rtb-x", "az-x", None));
        let takers: Vec<Move> = ["a", "b"]
            .iter()
            .flat_map(|me| w.decide(me, Some(100), false))
            .collect();
        assert_eq!(takers.len(), 1);
        assert_eq!(takers[0].kind, Kind::Takeover);
    }

    #[test]
    fn a_starting_or_unknown_home_is_left_to_claim_its_table() {
        let mut w = World::two();
        w.tables[0].default_route = None;
        w.health.insert("a".into(), Health::Unknown);
        assert!(w.decide("b", Some(100), false).is_empty());
        w.health.insert(
            "a".into(),
            Health::Starting {
                reason: "metadata".into(),
            },
        );
        assert!(w.decide("b", Some(100), false).is_empty());
        w.health.insert(
            "a".into(),
            Health::NotReady {
                reason: "egress".into(),
            },
        );
        assert_eq!(
            kinds(&w.decide("b", Some(100), false)),
            vec![("rtb-a".into(), Kind::Takeover, "b".into())]
        );
    }

    #[test]
    fn unknown_and_fresh_peers_are_not_failed() {
        assert!(!Health::Unknown.failed());
        assert!(!Health::Unreachable {
            why: "x".into(),
            heartbeat_age_ms: Some(1),
            stale: false
        }
        .failed());
        assert!(Health::Unreachable {
            why: "x".into(),
            heartbeat_age_ms: None,
            stale: true
        }
        .failed());
    }
}
