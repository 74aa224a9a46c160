//! The data-plane steps over fake edges.

use super::*;
use crate::edge::ec2::fake::{throttled, FakeEc2};
use crate::edge::identity::fake::FakeMetadata;
use crate::run::tests::{edges, resolved};

struct World {
    edges: Edges,
    fakes: crate::run::tests::Fakes,
    ec2: FakeEc2,
    shared: Shared,
    resolved: Resolved,
    options: Options,
}

fn world() -> World {
    let (edges, fakes) = edges(FakeMetadata::typical());
    World {
        edges,
        fakes,
        ec2: FakeEc2::default(),
        shared: Shared::new(),
        resolved: resolved(),
        options: Options::default(),
    }
}

impl World {
    fn steps(&self) -> Steps<'_> {
        Steps {
            edges: &self.edges,
            shared: &self.shared,
            resolved: &self.resolved,
            options: &self.options,
            ec2: &self.ec2,
        }
    }
}

#[tokio::test]
async fn a_pass_puts_the_data_plane_in_place() {
    let w = world();
    let mut m = Memory::default();
    w.steps().pass(&mut m).await;
    let s = w.shared.snapshot();
    assert!(s.dataplane.ruleset_in_place && s.dataplane.forwarding);
    assert!(s.dataplane.source_dest_check_disabled);
    assert!(s.dataplane_ready());
    assert_eq!(
        w.fakes.sysctl.values.lock().unwrap()["net.ipv4.ip_forward"],
        "1"
    );
    let calls = w.ec2.calls.lock().unwrap().clone();
    assert_eq!(
        calls[..3],
        [
            "DescribeInstances i-0abc".to_string(),
            "ModifyInstanceAttribute i-0abc".into(),
            "DescribeInstances i-0abc".into()
        ],
        "disable, then read back"
    );
    // A second pass changes nothing and asks EC2 nothing more.
    let before = w.ec2.calls.lock().unwrap().len();
    let writes = w.fakes.sysctl.writes.lock().unwrap().len();
    w.steps().pass(&mut m).await;
    assert_eq!(w.ec2.calls.lock().unwrap().len(), before);
    assert_eq!(w.fakes.sysctl.writes.lock().unwrap().len(), writes);
    assert_eq!(*w.fakes.nft.applies.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_drifted_table_is_repaired_and_counted() {
    let w = world();
    let mut m = Memory::default();
    w.steps().ruleset(&mut m).await;
    w.fakes.nft.table.lock().unwrap().as_mut().unwrap().pop();
    w.steps().ruleset(&mut m).await;
    let s = w.shared.snapshot();
    assert_eq!(s.dataplane.drift_repairs, 1);
    assert!(s.dataplane.last_repair.is_some());
    assert_eq!(w.shared.metrics.drift_repairs.get(), 1);
}

#[tokio::test]
async fn a_required_sysctl_that_cannot_be_written_holds_readiness_back() {
    let mut w = world();
    w.fakes.sysctl_read_only("net.ipv4.ip_forward");
    w.fakes.sysctl_read_only("net.netfilter.nf_conntrack_max");
    w.resolved.sysctls = crate::core::kernel::desired_settings("ens5", 131072, 7440);
    w.steps().sysctls();
    let s = w.shared.snapshot();
    assert!(!s.dataplane.forwarding);
    assert!(s.problems[&Area::Sysctl].contains("ip_forward"));
    assert!(
        s.warnings
            .iter()
            .any(|x| x.area == Area::Sysctl && x.message.contains("conntrack_max")),
        "optional settings are warnings: {:?}",
        s.warnings
    );
}

#[tokio::test]
async fn a_failed_source_dest_check_is_retried_next_pass() {
    let w = world();
    let mut m = Memory::default();
    w.ec2
        .fail_next
        .lock()
        .unwrap()
        .push(throttled("DescribeInstances"));
    w.steps().source_dest_check(&mut m).await;
    let s = w.shared.snapshot();
    assert!(!s.dataplane.source_dest_check_disabled);
    assert!(s.problems[&Area::SourceDestCheck].contains("RequestLimitExceeded"));
    m.sdc_next = None;
    w.steps().source_dest_check(&mut m).await;
    assert!(w.shared.read(|s| s.dataplane.source_dest_check_disabled));
    assert!(!w
        .shared
        .read(|s| s.problems.contains_key(&Area::SourceDestCheck)));
}

/// An instance without an instance profile: every EC2 call fails before
/// it is sent. /readyz names it and says the fix; the step backs off (each
/// attempt asks IMDS for credentials again); an answer clears it.
#[tokio::test]
async fn missing_credentials_are_a_named_problem_until_a_call_gets_through() {
    let w = world();
    let mut m = Memory::default();
    let no_credentials = AwsError::new(
        "EC2",
        "DescribeInstances",
        "i-0abc",
        natron_contract::aws::ErrorKind::Credentials,
        "no credentials found in chain",
    );
    w.ec2.fail_next.lock().unwrap().push(no_credentials);
    w.steps().source_dest_check(&mut m).await;
    let s = w.shared.snapshot();
    let why = &s.problems[&Area::Credentials];
    assert!(why.contains("instance profile"), "{why}");
    assert!(!s.is_ready());
    assert!(m.sdc_next.unwrap() > Instant::now() + Duration::from_millis(900));
    m.sdc_next = None;
    w.steps().source_dest_check(&mut m).await;
    assert!(!w
        .shared
        .read(|s| s.problems.contains_key(&Area::Credentials)));
}

#[tokio::test]
async fn a_throttled_step_backs_off_instead_of_asking_every_pass() {
    let w = world();
    let mut m = Memory::default();
    w.ec2
        .fail_next
        .lock()
        .unwrap()
        .push(throttled("DescribeInstances"));
    w.steps().source_dest_check(&mut m).await;
    let calls = w.ec2.calls.lock().unwrap().len();
    // The next passes (every reconcile interval) wait out the backoff.
    for _ in 0..5 {
        w.steps().source_dest_check(&mut m).await;
    }
    assert_eq!(w.ec2.calls.lock().unwrap().len(), calls);
    assert!(m.sdc_next.unwrap() > Instant::now() + Duration::from_millis(900));
}

#[tokio::test]
async fn conntrack_drops_become_counters() {
    let w = world();
    let mut m = Memory::default();
    set_conntrack(&w, 950, 1000, 0, 5);
    w.steps().conntrack(&mut m);
    set_conntrack(&w, 950, 1000, 0, 12);
    w.steps().conntrack(&mut m);
    assert_eq!(w.shared.metrics.conntrack_drops.get(), 12);
    assert_eq!(w.shared.metrics.port_allocation_errors.get(), 0);
    let ct = w.shared.read(|s| s.dataplane.conntrack.clone()).unwrap();
    assert!(ct.nearly_full);
    assert_eq!(ct.drops.drop, 12);
}

#[tokio::test]
async fn offloaded_flows_are_counted_every_ten_seconds_with_a_flowtable_only() {
    let mut w = world();
    let mut m = Memory::default();
    let line = "tcp 6 431999 ESTABLISHED src=10.0.1.5 dst=198.51.100.7 sport=51000 dport=443 src=198.51.100.7 dst=10.0.0.10 sport=443 dport=40000 [OFFLOAD] mark=0 use=2\n";
    *w.fakes.flows.listing.lock().unwrap() = line.repeat(7);
    w.steps().listing(&mut m).await;
    assert_eq!(*w.fakes.flows.calls.lock().unwrap(), 0, "no flowtable");
    w.resolved.spec.flowtable = true;
    w.steps().listing(&mut m).await;
    w.steps().listing(&mut m).await;
    assert_eq!(*w.fakes.flows.calls.lock().unwrap(), 1, "not every pass");
    assert_eq!(w.shared.metrics.conntrack_offloaded.get(), 7);
    assert_eq!(m.conntrack.offloaded, Some(7));
    let next = m.conntrack.listing_next.unwrap();
    assert!(next >= Instant::now() + Duration::from_secs(9));
    m.conntrack.listing_next = Some(Instant::now());
    w.steps().listing(&mut m).await;
    assert_eq!(*w.fakes.flows.calls.lock().unwrap(), 2);
}

/// /proc/net/stat/nf_conntrack with `insert_failed` and `drop` as given,
/// `count` of `max` flows tracked.
fn set_conntrack(w: &World, count: u64, max: u64, insert_failed: u64, drop: u64) {
    let header = "entries clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n";
    let mut v = w.fakes.sysctl.values.lock().unwrap();
    v.insert("net.netfilter.nf_conntrack_count".into(), count.to_string());
    v.insert("net.netfilter.nf_conntrack_max".into(), max.to_string());
    v.insert(
        "stat:nf_conntrack".into(),
        format!("{header}0 0 0 0 0 0 0 0 0 {insert_failed:x} {drop:x} 0\n"),
    );
}

#[tokio::test]
async fn exhausted_source_ports_are_counted_and_their_destinations_named() {
    let mut w = world();
    w.resolved.spec.port_range = (40000, 40999);
    let mut m = Memory::default();
    let to = |dst: &str, sport: u32| {
        format!("tcp 6 431999 ESTABLISHED src=10.0.1.5 dst={dst} sport={sport} dport=443 src={dst} dst=10.0.0.10 sport=443 dport={sport} [ASSURED] mark=0 use=1\n")
    };
    let mut listing: String = (0..1000).map(|i| to("198.51.100.7", 40000 + i)).collect();
    listing.push_str(&to("198.51.100.8", 50000));
    *w.fakes.flows.listing.lock().unwrap() = listing;

    // Few flows, no refusals: nothing listed, no warning.
    set_conntrack(&w, 100, 100_000, 0, 0);
    w.steps().conntrack(&mut m);
    w.steps().listing(&mut m).await;
    assert_eq!(*w.fakes.flows.calls.lock().unwrap(), 0);
    let ports = w.shared.read(|s| s.dataplane.source_ports.clone()).unwrap();
    assert_eq!(ports.capacity, 1000);
    assert!(ports.busiest.is_empty());
    assert_eq!(w.shared.metrics.source_port_capacity.get(), 1000);

    // Ports run out: 40 SYNs refused, counted apart from a full table, and
    // the busiest destination named.
    set_conntrack(&w, 1001, 100_000, 40, 40);
    w.steps().conntrack(&mut m);
    w.steps().listing(&mut m).await;
    assert_eq!(*w.fakes.flows.calls.lock().unwrap(), 1);
    assert_eq!(w.shared.metrics.port_allocation_errors.get(), 40);
    let status = w.shared.snapshot();
    let ports = status.dataplane.source_ports.clone().unwrap();
    assert_eq!(ports.allocation_errors, 40);
    assert_eq!(ports.busiest[0].to_string(), "198.51.100.7:443/tcp");
    assert_eq!(ports.busiest[0].connections, 1000);
    let warning = status
        .warnings
        .iter()
        .find(|x| x.area == Area::SourcePorts)
        .expect("a source-port warning");
    assert!(
        warning
            .message
            .starts_with("no free source port: 40 packet(s)"),
        "{}",
        warning.message
    );
    // On the instance's tag, for `natron status`: once a minute at most.
    let tagged = |w: &World| {
        w.ec2
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("CreateTags i-0abc natron:source-ports="))
            .cloned()
            .collect::<Vec<_>>()
    };
    let tags = tagged(&w);
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert!(tags[0].contains("198.51.100.7:443/tcp"), "{}", tags[0]);
    m.conntrack.listing_next = Some(Instant::now());
    set_conntrack(&w, 1001, 100_000, 50, 50);
    w.steps().conntrack(&mut m);
    w.steps().listing(&mut m).await;
    assert_eq!(tagged(&w).len(), 1, "not again within a minute");

    // Connections closed: the warning goes.
    set_conntrack(&w, 10, 100_000, 50, 50);
    w.steps().conntrack(&mut m);
    let status = w.shared.snapshot();
    assert!(status.warnings.iter().all(|x| x.area != Area::SourcePorts));
    assert!(status.dataplane.source_ports.unwrap().busiest.is_empty());
}

/// The address pool reaches the table on the pass after EC2 gave it, the
/// capacity counts its addresses, and a restarted agent keeps the live
/// table's pool instead of rewriting the table before it has read EC2.
#[tokio::test]
async fn the_pool_is_translated_over_and_survives_a_restart() {
    let mut w = world();
    w.resolved.addresses = 2;
    let eni = w.resolved.identity.interface_id.clone();
    w.ec2.interfaces.lock().unwrap().insert(
        eni.clone(),
        crate::model::address::InterfaceAddresses {
            primary: Some(w.resolved.identity.local_ipv4),
            secondary: vec![],
        },
    );
    w.ec2
        .instances
        .lock()
        .unwrap()
        .push(crate::model::instance::GroupInstance {
            instance_id: w.resolved.identity.instance_id.clone(),
            availability_zone: w.resolved.identity.availability_zone.clone(),
            private_ip: Some(w.resolved.identity.local_ipv4),
            interface_ids: vec![eni],
            state: crate::model::InstanceState::Running,
            heartbeat_ms: None,
        });
    w.ec2
        .addresses
        .lock()
        .unwrap()
        .push(crate::model::address::Address {
            allocation_id: "eipalloc-s1".into(),
            public_ip: "203.0.113.101".into(),
            slot: Some(1),
            ..Default::default()
        });
    let mut m = Memory::default();
    w.steps().pass(&mut m).await;
    w.steps().pass(&mut m).await;
    let table = serde_json::to_string(&*w.fakes.nft.table.lock().unwrap()).unwrap();
    assert!(table.contains("numgen"), "{table}");
    let pool = m.pool.clone().unwrap();
    assert_eq!(pool.len(), 2);
    assert_eq!(m.conntrack.addresses, 2, "the capacity counts both");
    let applies = *w.fakes.nft.applies.lock().unwrap();
    // A restarted agent (fresh memory, EC2 failing) keeps the pool.
    w.ec2
        .fail_next
        .lock()
        .unwrap()
        .extend((0..8).map(|_| crate::edge::ec2::fake::throttled("DescribeInstances")));
    let mut fresh = Memory::default();
    w.steps().pass(&mut fresh).await;
    assert_eq!(fresh.pool, Some(pool));
    assert_eq!(*w.fakes.nft.applies.lock().unwrap(), applies);
}

#[tokio::test]
async fn with_nat64_a_pass_writes_jool_and_table_ip6_natron_and_a_restart_changes_nothing() {
    let mut w = world();
    w.resolved.spec.nat64 = Some(crate::core::ruleset::nat64::Nat64Spec {
        sources: vec!["2600:1f18:aa00::/56".parse().unwrap()],
        port_range: (61001, 65535),
    });
    let mut m = Memory::default();
    w.steps().pass(&mut m).await;
    let table = w.fakes.nft.table.lock().unwrap().clone().unwrap();
    assert!(
        table.iter().any(|o| o["table"]["family"] == "ip6"),
        "table ip6 natron written"
    );
    assert!(w.fakes.jool.instance.lock().unwrap().is_some());
    let s = w.shared.snapshot();
    let nat64 = s.dataplane.nat64.clone().expect("in /status");
    assert!(nat64.in_place, "{nat64:?}");
    assert!(s.dataplane_ready(), "{:?}", s.problems);
    // A restarted agent (fresh memory) finds both as it wants them.
    let mut restarted = Memory::default();
    w.steps().pass(&mut restarted).await;
    assert_eq!(*w.fakes.nft.applies.lock().unwrap(), 1);
    assert_eq!(*w.fakes.jool.applies.lock().unwrap(), 1);
}
