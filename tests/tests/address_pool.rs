//! The address pool (issue 15): with `nat.addresses = 3` a NAT spreads
//! new connections over its primary address and two secondary ones, each
//! with an Elastic IP tagged with its slot, so one client address calling
//! one destination holds three times the ports; a replacement NAT takes
//! the slots' addresses over as it takes the AZ's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use natron_contract::status::SlotState;
use natron_lab::exec;
use natron_lab::lab::{Lab, LabSpec};

/// A port of the internet server's namespace nothing else listens on.
const HOLD_PORT: u16 = 9005;

/// Connections the internet server holds on `HOLD_PORT`, by the public
/// address they came from.
fn peers_seen(lab: &Lab) -> BTreeMap<Ipv4Addr, usize> {
    let out = exec::in_ns(
        &lab.inet_ns,
        "ss",
        &[
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{HOLD_PORT} )"),
        ],
    )
    .expect("ss in the internet namespace");
    let mut by_peer = BTreeMap::new();
    for line in out.lines() {
        // Recv-Q Send-Q Local:Port Peer:Port
        let Some(peer) = line.split_whitespace().nth(3) else {
            continue;
        };
        if let Some(ip) = peer.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()) {
            *by_peer.entry(ip).or_insert(0) += 1;
        }
    }
    by_peer
}

/// The agents called only what `natron apply --addresses` lets them.
fn only_calls_the_pool_policy_allows(lab: &Lab, addresses: u32) {
    let options = natron::documents::AgentOptions {
        addresses,
        ..Default::default()
    };
    let policy = natron::documents::agent_policy(&lab.spec.group, "aws", &options);
    let allowed = natron::documents::allowed_actions(&policy);
    let called: std::collections::BTreeSet<String> = lab
        .ec2_proxy
        .requests()
        .iter()
        .map(|r| format!("ec2:{}", r.action))
        .collect();
    assert!(
        called.contains("ec2:AssignPrivateIpAddresses"),
        "the pool was built: {called:?}"
    );
    let outside: Vec<&String> = called.difference(&allowed).collect();
    assert!(
        outside.is_empty(),
        "the agent called {outside:?}, which its IAM policy does not allow ({allowed:?})"
    );
}

/// Waits until NAT `az`'s pool translates over `n` addresses, in its
/// table too (the capacity counts them).
fn wait_pool(lab: &Lab, az: usize, n: usize, agent: natron_lab::lab::AgentId) {
    lab.wait_for("the address pool complete", Duration::from_secs(30), || {
        let s = lab.agent_status(az).ok()?;
        let pool = s.dataplane.address_pool?;
        let ports = s.dataplane.source_ports?;
        (pool.translating.len() == n && ports.addresses as usize == n).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(agent)));
}

/// With 1,000 ports and 3 addresses, one client holds about 3,000
/// connections to one destination, and the server sees them come from the
/// three public addresses, about 1,000 each.
#[test]
fn one_destination_holds_the_ports_of_every_address_in_the_pool() {
    let lab = Lab::start(LabSpec::with_azs(1).with_addresses(3)).expect("lab starts");
    let mut config = lab.agent_config();
    config.nat.port_range = "40000-40999".into();
    config.nat.addresses = 3;
    let agent = lab.start_agent(0, config, &[]).unwrap();
    lab.wait_egress(0, agent);
    wait_pool(&lab, 0, 3, agent);
    let status = lab.agent_status(0).unwrap();
    let pool = status.dataplane.address_pool.clone().unwrap();
    assert!(
        pool.slots.iter().all(|s| s.state == SlotState::Associated),
        "{pool:?}"
    );
    assert_eq!(
        lab.agent_metrics(0).unwrap()["natron_nat_source_port_capacity"],
        3000.0
    );
    assert_eq!(status.dataplane.listing_matches_render, Some(true));

    let helper = std::path::Path::new(env!("CARGO_BIN_EXE_natron-lab"));
    let held = lab.hold_from_client(helper, 0, HOLD_PORT, 3_000).unwrap();
    let peers = peers_seen(&lab);
    eprintln!(
        "3 addresses x 1,000 ports: {} held; by public address {peers:?}",
        held.established
    );
    // A connection attempt may time out on the loaded machine although a
    // port was free: a few short is the client, not the NAT.
    assert!(
        held.established >= 2_850,
        "3 x 1,000 ports: {} connections held",
        held.established
    );
    let expected: Vec<Ipv4Addr> = std::iter::once(lab.spec.azs[0].eip)
        .chain((1..3).map(|slot| lab.spec.azs[0].slot_eip(slot)))
        .collect();
    let seen: Vec<Ipv4Addr> = peers.keys().copied().collect();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(
        seen, want,
        "the server sees exactly the three public addresses"
    );
    for (ip, n) in &peers {
        assert!(
            (900..=1_000).contains(n),
            "{ip}: {n} connections: {peers:?}"
        );
    }
    // `natron status`, which reads EC2 only, lists the pool's addresses.
    let (vpc, group) = (lab.vpc_id.clone(), lab.spec.group.clone());
    let shown = lab.ec2(|_| async move {
        let endpoint = format!("http://127.0.0.1:{}", natron_lab::emulator::PORT);
        let cloud = natron::cloud::Aws::new(&natron_lab::emulator::sdk_config(&endpoint).await);
        let inv = natron::cloud::Cloud::inventory(&cloud, &vpc, &group)
            .await
            .expect("inventory");
        natron::status::status(&inv, &group).to_string()
    });
    let pool = format!("address pool: {}, {}", expected[1], expected[2]);
    assert!(shown.contains(&pool), "natron status:\n{shown}");
    only_calls_the_pool_policy_allows(&lab, 3);
}

/// Auto Scaling replaces a dead NAT: its successor asks for secondary
/// addresses of its own, takes the slots' Elastic IPs from the stopped
/// instance and translates over all three again.
#[test]
fn a_replacement_nat_takes_the_pool_over() {
    let mut lab = Lab::start(LabSpec::with_azs(1).with_addresses(3)).expect("lab starts");
    let mut config = lab.agent_config();
    config.nat.addresses = 3;
    let agent = lab.start_agent(0, config.clone(), &[]).unwrap();
    lab.wait_egress(0, agent);
    wait_pool(&lab, 0, 3, agent);
    let old = lab.nats[0].instance_id.clone();
    lab.kill_nat(0).unwrap();
    lab.replace_nat(0).unwrap();
    let new = lab.nats[0].instance_id.clone();
    let agent = lab.start_agent(0, config, &[]).unwrap();
    lab.wait_egress(0, agent);
    wait_pool(&lab, 0, 3, agent);
    let log = lab.agent_log(agent);
    assert!(
        log.contains("associating the slot's Elastic IP") && log.contains(&old),
        "taken from the old instance:\n{log}"
    );
    let pool = lab.agent_status(0).unwrap().dataplane.address_pool.unwrap();
    assert!(
        pool.slots.iter().all(|s| s.state == SlotState::Associated),
        "{pool:?}"
    );
    // Connections leave by every address of the new NAT.
    let helper = std::path::Path::new(env!("CARGO_BIN_EXE_natron-lab"));
    let held = lab.hold_from_client(helper, 0, HOLD_PORT, 30).unwrap();
    assert_eq!(held.established, 30);
    let peers = peers_seen(&lab);
    assert_eq!(peers.len(), 3, "{peers:?} (new NAT {new})");
    assert!(peers.values().all(|&n| n == 10), "one by one: {peers:?}");
}
