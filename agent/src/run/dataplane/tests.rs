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
            desired: crate::core::ruleset::render(&self.resolved.spec),
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
    let header = "entries clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n";
    let set = |drop: u64| {
        let mut v = w.fakes.sysctl.values.lock().unwrap();
        v.insert("net.netfilter.nf_conntrack_count".into(), "950".into());
        v.insert("net.netfilter.nf_conntrack_max".into(), "1000".into());
        v.insert(
            "stat:nf_conntrack".into(),
            format!("{header}0 0 0 0 0 0 0 0 0 0 {drop:x} 0\n"),
        );
    };
    set(5);
    w.steps().conntrack(&mut m);
    set(12);
    w.steps().conntrack(&mut m);
    assert_eq!(w.shared.metrics.conntrack_drops.get(), 12);
    let ct = w.shared.read(|s| s.dataplane.conntrack.clone()).unwrap();
    assert!(ct.nearly_full);
    assert_eq!(ct.drops.drop, 12);
}

#[tokio::test]
async fn offloaded_flows_are_counted_every_ten_seconds_with_a_flowtable_only() {
    let mut w = world();
    let mut m = Memory::default();
    *w.fakes.flows.offloaded.lock().unwrap() = 7;
    w.steps().offloaded(&mut m).await;
    assert_eq!(*w.fakes.flows.calls.lock().unwrap(), 0, "no flowtable");
    w.resolved.spec.flowtable = true;
    w.steps().offloaded(&mut m).await;
    w.steps().offloaded(&mut m).await;
    assert_eq!(*w.fakes.flows.calls.lock().unwrap(), 1, "not every pass");
    assert_eq!(w.shared.metrics.conntrack_offloaded.get(), 7);
    assert_eq!(m.conntrack.offloaded, Some(7));
    let next = m.conntrack.offloaded_next.unwrap();
    assert!(next >= Instant::now() + Duration::from_secs(9));
    m.conntrack.offloaded_next = Some(Instant::now());
    w.steps().offloaded(&mut m).await;
    assert_eq!(*w.fakes.flows.calls.lock().unwrap(), 2);
}
