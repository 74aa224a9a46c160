//! The failover rules, case by case.

use super::*;
use crate::model::{InstanceState, RouteState};

fn nat(id: &str, az: &str) -> GroupInstance {
    GroupInstance::running(id, az)
}

fn table(id: &str, az: &str, owner: Option<&str>) -> RouteTable {
    RouteTable {
        id: id.into(),
        az: Some(az.into()),
        default_route: owner.map(|o| RouteTarget {
            interface_id: Some(format!("eni-{o}")),
            state: Some(RouteState::Active),
            ..Default::default()
        }),
        nat64_route: None,
        nat64: false,
    }
}

struct World {
    instances: Vec<GroupInstance>,
    health: BTreeMap<String, Health>,
    tables: Vec<RouteTable>,
    owner_since: BTreeMap<String, Duration>,
    proof_ago: Option<Duration>,
    failed_for: BTreeMap<String, Duration>,
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
            // Proven just now; every failure seen a second ago.
            proof_ago: Some(Duration::ZERO),
            failed_for: ["a", "b", "c"]
                .iter()
                .map(|id| (id.to_string(), Duration::from_secs(1)))
                .collect(),
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
            me_proof_ago: self.proof_ago,
            failed_for: &self.failed_for,
            settle: Duration::from_secs(10),
        })
    }
}

fn kinds(moves: &[Move]) -> Vec<(String, MoveKind, String)> {
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
        vec![("rtb-a".into(), MoveKind::Claim, "a".into())]
    );
    assert_eq!(
        kinds(&w.decide("b", Some(0), false)),
        vec![("rtb-b".into(), MoveKind::Claim, "b".into())]
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
        vec![("rtb-a".into(), MoveKind::Takeover, "b".into())]
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
        vec![("rtb-a".into(), MoveKind::Takeover, "b".into())]
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
        vec![("rtb-a".into(), MoveKind::Failback, "a".into())]
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
    // a claims its own table back at once, and takes b's too (it was
    // ready before b failed).
    assert_eq!(
        kinds(&w.decide("a", Some(2), false)),
        vec![
            ("rtb-a".into(), MoveKind::Claim, "a".into()),
            ("rtb-b".into(), MoveKind::Takeover, "a".into())
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
            ("rtb-a".into(), MoveKind::Handoff, "b".into()),
            ("rtb-b".into(), MoveKind::Handoff, "b".into())
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
            ec2_state: InstanceState::Stopped,
        },
    );
    w.instances[0].state = InstanceState::Stopped;
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
    assert_eq!(takers[0].kind, MoveKind::Takeover);
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
        vec![("rtb-a".into(), MoveKind::Takeover, "b".into())]
    );
}

#[test]
fn the_home_of_two_in_an_az_is_the_ready_one() {
    let instances = vec![nat("old", "az-a"), nat("new", "az-a"), nat("b", "az-b")];
    assert_eq!(
        home_of(&instances, "az-a", |_| false).unwrap().instance_id,
        "new",
        "none ready: the lowest id"
    );
    assert_eq!(
        home_of(&instances, "az-a", |id| id == "old")
            .unwrap()
            .instance_id,
        "old"
    );
    assert!(home_of(&instances, "az-x", |_| true).is_none());
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

#[test]
fn a_failure_every_nat_sees_moves_nothing() {
    let mut w = World::two();
    w.health.insert(
        "a".into(),
        Health::NotReady {
            reason: "egress".into(),
        },
    );
    // b has not proven its egress since a failed (its probe round after
    // the failure has not passed): it takes nothing.
    w.proof_ago = Some(Duration::from_secs(2));
    assert!(w.decide("b", Some(100), false).is_empty());
    // Proven since: it takes a's table.
    w.proof_ago = Some(Duration::from_millis(100));
    assert_eq!(
        kinds(&w.decide("b", Some(100), false)),
        vec![("rtb-a".into(), MoveKind::Takeover, "b".into())]
    );
}

#[test]
fn nats_recovering_together_keep_their_tables_until_the_settle() {
    let mut w = World::two();
    w.health.insert(
        "a".into(),
        Health::NotReady {
            reason: "egress".into(),
        },
    );
    // a failed 5 s ago; b has been ready for 2 s only (it recovered first).
    w.failed_for.insert("a".into(), Duration::from_secs(5));
    assert!(w.decide("b", Some(2), false).is_empty());
    // Still failing when b has been ready for the settle: b takes over.
    assert_eq!(
        kinds(&w.decide("b", Some(10), false)),
        vec![("rtb-a".into(), MoveKind::Takeover, "b".into())]
    );
    // A dead NAT (not its own verdict) needs no settle.
    w.health.insert(
        "a".into(),
        Health::NotRunning {
            ec2_state: InstanceState::Stopped,
        },
    );
    assert_eq!(w.decide("b", Some(2), false).len(), 1);
}

#[test]
fn an_agent_down_nat_keeps_its_table_until_the_grace() {
    let mut w = World::two();
    w.health.insert(
        "a".into(),
        Health::AgentDown {
            for_ms: 3_000,
            past_grace: false,
        },
    );
    assert!(w.decide("b", Some(100), false).is_empty());
    w.health.insert(
        "a".into(),
        Health::AgentDown {
            for_ms: 21_000,
            past_grace: true,
        },
    );
    assert_eq!(w.decide("b", Some(100), false).len(), 1);
}
