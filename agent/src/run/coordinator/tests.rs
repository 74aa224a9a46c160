//! The coordinator over a fake EC2: claims, read-verify-write.

use super::*;
use crate::core::failover::Move;
use crate::edge::ec2::fake::FakeEc2;
use crate::model::RouteTarget;
use natron_contract::status::MoveKind;
use tokio::sync::Notify;

fn instance(id: &str, az: &str) -> GroupInstance {
    GroupInstance {
        private_ip: Some("10.0.0.10".parse().unwrap()),
        heartbeat_ms: Some(unix_ms()),
        ..GroupInstance::running(id, az)
    }
}

fn coordinator(ec2: Arc<FakeEc2>, shared: Arc<Shared>) -> Coordinator {
    Coordinator::new(
        ec2,
        shared,
        Arc::new(Watch::default()),
        FailoverConfig::default(),
        Duration::from_secs(10),
        instance("i-a", "az-a"),
        "vpc-1".into(),
        "g".into(),
        Arc::new(Notify::new()),
    )
}

/// A fake EC2 with one instance and table rtb-a of az-a, unclaimed.
fn fake_with_table_a(i: GroupInstance) -> Arc<FakeEc2> {
    let ec2 = Arc::new(FakeEc2::default());
    ec2.instances.lock().unwrap().push(i);
    ec2.tables.lock().unwrap().insert("rtb-a".into(), None);
    ec2.table_az
        .lock()
        .unwrap()
        .insert("rtb-a".into(), "az-a".into());
    ec2
}

fn ready(shared: &Shared) {
    shared.update(|s| {
        s.identity = Some(crate::edge::identity::Identity {
            instance_id: "i-a".into(),
            region: "r".into(),
            availability_zone: "az-a".into(),
            mac: "m".into(),
            interface_id: "eni-i-a".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "s".into(),
            local_ipv4: "10.0.0.10".parse().unwrap(),
            public_ipv4: None,
            vpc_cidrs: vec![],
            vpc_ipv6_cidrs: vec![],
            group_tag: None,
        });
        s.dataplane.forwarding = true;
        s.dataplane.ruleset_in_place = true;
        s.dataplane.source_dest_check_disabled = true;
        s.egress.healthy = true;
        s.proven_at = Some(std::time::Instant::now());
    });
}

#[tokio::test]
async fn read_verify_write_skips_a_table_that_moved_meanwhile() {
    let ec2 = Arc::new(FakeEc2::default());
    let shared = Arc::new(Shared::new());
    let c = coordinator(ec2.clone(), shared);
    let other = RouteTarget {
        interface_id: Some("eni-other".into()),
        ..Default::default()
    };
    ec2.tables
        .lock()
        .unwrap()
        .insert("rtb-1".into(), Some(other));
    let mv = Move {
        table: "rtb-1".into(),
        kind: MoveKind::Takeover,
        to_instance: "i-a".into(),
        to_interface: "eni-i-a".into(),
        expect: Some(RouteTarget {
            interface_id: Some("eni-dead".into()),
            ..Default::default()
        }),
        reason: "test".into(),
    };
    assert!(
        !c.execute(&mv).await.unwrap(),
        "the route no longer targets the failed NAT"
    );
    assert!(!ec2
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.starts_with("ReplaceRoute")));
    let mv = Move {
        expect: Some(RouteTarget {
            interface_id: Some("eni-other".into()),
            ..Default::default()
        }),
        ..mv
    };
    assert!(c.execute(&mv).await.unwrap());
    assert!(ec2
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c == "ReplaceRoute rtb-1 eni-i-a"));
}

#[tokio::test]
async fn home_claims_once_ready_and_not_before() {
    let ec2 = fake_with_table_a(instance("i-a", "az-a"));
    let shared = Arc::new(Shared::new());
    let c = coordinator(ec2.clone(), shared.clone());
    assert_eq!(c.pass(false).await.unwrap(), 0, "not ready: no claim");
    ready(&shared);
    assert_eq!(c.pass(false).await.unwrap(), 1);
    let calls = ec2.calls.lock().unwrap().clone();
    assert!(
        calls.iter().any(|c| c == "CreateRoute rtb-a eni-i-a"),
        "{calls:?}"
    );
    let status = shared.snapshot();
    assert_eq!(status.failover.events.len(), 1);
    assert_eq!(status.failover.events[0].kind, MoveKind::Claim);
    assert_eq!(status.routes.owned, vec!["rtb-a".to_string()]);
    // Nothing more to do on the next pass.
    assert_eq!(c.pass(false).await.unwrap(), 0);
}

#[tokio::test]
async fn claims_its_table_even_when_describe_instances_omits_it() {
    // The instance lacks the natron:group tag (group set in the config
    // file instead): DescribeInstances by tag does not return it.
    let ec2 = fake_with_table_a(instance("i-b", "az-b"));
    let shared = Arc::new(Shared::new());
    let c = coordinator(ec2.clone(), shared.clone());
    ready(&shared);
    assert_eq!(c.pass(false).await.unwrap(), 1);
    let calls = ec2.calls.lock().unwrap().clone();
    assert!(
        calls.iter().any(|c| c == "CreateRoute rtb-a eni-i-a"),
        "{calls:?}"
    );
    let peers: Vec<String> = shared
        .snapshot()
        .failover
        .peers
        .iter()
        .map(|p| p.instance_id.clone())
        .collect();
    assert_eq!(peers, vec!["i-b".to_string()], "itself is no peer");
}

fn beats(ec2: &FakeEc2) -> usize {
    ec2.calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.starts_with("CreateTags"))
        .count()
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_written_only_while_a_peer_is_out_of_sight() {
    use crate::core::peer::{Observation, Tracker};
    let ec2 = Arc::new(FakeEc2::default());
    let c = Arc::new(coordinator(ec2.clone(), Arc::new(Shared::new())));
    tokio::spawn(c.clone().heartbeat());
    c.update_alert();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(beats(&ec2), 0, "steady state: no heartbeat at all");

    // A peer stops answering: a beat at once, then one per interval.
    let timings = c.timings();
    let mut t = Tracker::new(unix_ms());
    t.observe(
        Observation::Unreachable {
            why: "no answer".into(),
        },
        unix_ms(),
        &timings,
    );
    c.watch.trackers().insert("i-b".into(), t);
    c.update_alert();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(beats(&ec2), 1, "the first beat goes at once");
    tokio::time::sleep(c.config.heartbeat_interval * 3).await;
    assert_eq!(beats(&ec2), 4);
    assert_eq!(
        c.shared.read(|s| s.unreachable_peers.clone()),
        vec!["i-b".to_string()],
        "and /readyz tells the peer"
    );

    // Back in sight: the beats stop.
    c.watch.trackers().clear();
    c.update_alert();
    tokio::time::sleep(c.config.heartbeat_interval * 3).await;
    assert_eq!(beats(&ec2), 4);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_cannot_reach_this_nat_makes_it_beat() {
    use crate::core::peer::{Observation, Tracker};
    let ec2 = Arc::new(FakeEc2::default());
    let c = Arc::new(coordinator(ec2.clone(), Arc::new(Shared::new())));
    tokio::spawn(c.clone().heartbeat());
    // b answers this NAT, but says it cannot reach it (an asymmetric cut).
    let mut t = Tracker::new(unix_ms());
    t.observe(
        Observation::Ready {
            cannot_reach: vec!["i-a".into()],
        },
        unix_ms(),
        &c.timings(),
    );
    c.watch.trackers().insert("i-b".into(), t);
    c.update_alert();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(beats(&ec2), 1);
}

#[tokio::test(start_paused = true)]
async fn while_every_call_is_throttled_the_coordinator_asks_less_than_in_steady_state() {
    let ec2 = fake_with_table_a(instance("i-a", "az-a"));
    let shared = Arc::new(Shared::new());
    ready(&shared);
    let c = Arc::new(coordinator(ec2.clone(), shared.clone()));
    tokio::spawn(c.clone().run());
    // Steady state over 5 minutes: one read of each kind per 10 s.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let steady = ec2.calls.lock().unwrap().len();
    ec2.calls.lock().unwrap().clear();
    ec2.fail_next
        .lock()
        .unwrap()
        .extend((0..10_000).map(|_| crate::edge::ec2::fake::throttled("DescribeInstances")));
    // Force the next reads to be due at once, as after a restart.
    c.state.lock().await.instances_at = None;
    tokio::time::sleep(Duration::from_secs(300)).await;
    let throttled = ec2.calls.lock().unwrap().len();
    assert!(
        throttled <= steady,
        "{throttled} calls in 5 throttled minutes, {steady} in 5 steady ones"
    );
    assert!(shared.read(|s| s.ec2.backoff_ms).is_some());
}

/// A coordinator of NAT i-a over `ec2`, ready.
fn ready_coordinator(ec2: &Arc<FakeEc2>) -> (Coordinator, Arc<Shared>) {
    let shared = Arc::new(Shared::new());
    let c = coordinator(ec2.clone(), shared.clone());
    ready(&shared);
    (c, shared)
}

/// `table`'s NAT64 route through `eni`.
fn nat64_at(ec2: &FakeEc2, table: &str, eni: &str) {
    ec2.nat64
        .lock()
        .unwrap()
        .insert(table.into(), RouteTarget::interface(eni));
}

fn writes(ec2: &FakeEc2) -> Vec<String> {
    ec2.calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.starts_with("CreateRoute") || c.starts_with("ReplaceRoute"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_claim_of_a_table_serving_nat64_makes_both_routes() {
    let ec2 = fake_with_table_a(instance("i-a", "az-a"));
    ec2.nat64_tagged.lock().unwrap().insert("rtb-a".into());
    let (c, _) = ready_coordinator(&ec2);
    assert_eq!(c.pass(false).await.unwrap(), 1);
    assert_eq!(
        writes(&ec2),
        [
            "CreateRoute rtb-a eni-i-a",
            "CreateRoute rtb-a 64:ff9b::/96 eni-i-a"
        ]
    );
}

#[tokio::test]
async fn a_claim_moves_the_tables_nat64_route_with_its_default_route() {
    let ec2 = fake_with_table_a(instance("i-a", "az-a"));
    nat64_at(&ec2, "rtb-a", "eni-gone");
    let (c, shared) = ready_coordinator(&ec2);
    assert_eq!(c.pass(false).await.unwrap(), 1);
    assert_eq!(
        writes(&ec2),
        [
            "CreateRoute rtb-a eni-i-a",
            "ReplaceRoute rtb-a 64:ff9b::/96 eni-i-a"
        ]
    );
    // At once, on the table's read-verify-write, not a pass later.
    let calls = ec2.calls.lock().unwrap().clone();
    let default_at = calls
        .iter()
        .position(|c| c.starts_with("CreateRoute"))
        .unwrap();
    assert!(calls[default_at + 1].contains("64:ff9b::/96"), "{calls:?}");
    let table = &shared.snapshot().routes.tables[0];
    assert_eq!(table.nat64_route, Some(RouteTarget::interface("eni-i-a")));
    // In line: nothing more to write.
    assert_eq!(c.pass(false).await.unwrap(), 0);
    assert_eq!(writes(&ec2).len(), 2);
}

#[tokio::test]
async fn a_nat64_route_left_elsewhere_is_brought_in_line_and_none_is_made() {
    // rtb-a is already this NAT's, its NAT64 route still at another NAT
    // (an agent that stopped between the two writes); rtb-b is this NAT's
    // too and has no NAT64 route; rtb-c is this NAT's, serves NAT64 and
    // has no NAT64 route yet (tagged after it was claimed).
    let ec2 = fake_with_table_a(instance("i-a", "az-a"));
    ec2.nat64_tagged.lock().unwrap().insert("rtb-c".into());
    for t in ["rtb-a", "rtb-b", "rtb-c"] {
        ec2.tables
            .lock()
            .unwrap()
            .insert(t.into(), Some(RouteTarget::interface("eni-i-a")));
    }
    nat64_at(&ec2, "rtb-a", "eni-i-b");
    let (c, _) = ready_coordinator(&ec2);
    assert_eq!(c.pass(false).await.unwrap(), 0, "no default route moved");
    assert_eq!(
        writes(&ec2),
        [
            "ReplaceRoute rtb-a 64:ff9b::/96 eni-i-a",
            "CreateRoute rtb-c 64:ff9b::/96 eni-i-a"
        ]
    );
    assert!(!ec2.nat64.lock().unwrap().contains_key("rtb-b"));
    c.pass(false).await.unwrap();
    assert_eq!(writes(&ec2).len(), 2, "once in line, left alone");
}

#[tokio::test]
async fn a_nat64_route_is_not_followed_once_its_table_moved_away() {
    let ec2 = Arc::new(FakeEc2::default());
    let c = coordinator(ec2.clone(), Arc::new(Shared::new()));
    // Decided while the table was this NAT's; read again, it is b's now.
    ec2.tables
        .lock()
        .unwrap()
        .insert("rtb-a".into(), Some(RouteTarget::interface("eni-i-b")));
    nat64_at(&ec2, "rtb-a", "eni-i-c");
    let f = crate::core::failover::nat64::Follow {
        table: "rtb-a".into(),
        to_interface: "eni-i-a".into(),
        expect: Some(RouteTarget::interface("eni-i-c")),
    };
    let me = instance("i-a", "az-a");
    assert!(!c.follow(&f, &me).await.unwrap());
    assert!(writes(&ec2).is_empty());
    // Still this NAT's, but the NAT64 route changed since: not written
    // either.
    ec2.tables
        .lock()
        .unwrap()
        .insert("rtb-a".into(), Some(RouteTarget::interface("eni-i-a")));
    nat64_at(&ec2, "rtb-a", "eni-i-d");
    assert!(!c.follow(&f, &me).await.unwrap());
    assert!(writes(&ec2).is_empty());
}
