//! natron's disk image as a NAT instance of the lab: its own kernel (with
//! the flowtable fast path the host lacks), its systemd units, its
//! configuration from user data, forwarding the lab's clients' traffic.
//!
//! These need the built x86_64 image: `cargo xtask test` builds it and runs
//! them with `NATRON_IMAGE` set (`--ignored`, one at a time: each boots a VM
//! under TCG on the machine's two cores). NAT64 on the image is
//! `vm_nat64.rs`.

mod vm;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use natron_agent::core::config::Config;
use natron_contract::readyz::Area;
use natron_contract::status::Outcome;
use natron_lab::lab::{default_config, masked_lines, Lab, LabSpec, Until, AGENT_PORT};
use natron_lab::{internet, longlived, stats};
use vm::*;

/// What the client's link and the NAT's counters grew by while `traffic`
/// ran: (client packets, client bytes, NAT packets, NAT bytes, NAT
/// connections). The client sends wire-sized frames, so that both count
/// wire packets. The NAT's counters are read `settle` after the traffic
/// before and after (they are read from the kernel every reconcile pass).
fn counted(lab: &Lab, settle: Duration, traffic: impl FnOnce()) -> [f64; 5] {
    let client = lab.clients[0].ns.clone();
    lab.wire_sized_frames(&client).unwrap();
    // Whatever crossed before is in the counters by then.
    std::thread::sleep(settle);
    let m0 = lab.agent_metrics(0).unwrap();
    let before = lab.link_totals(&client).unwrap();
    traffic();
    let after = lab.link_totals(&client).unwrap();
    std::thread::sleep(settle);
    let m1 = lab.agent_metrics(0).unwrap();
    let grew = |k: &str| m1[k] - m0[k];
    [
        (after.0 - before.0) as f64,
        (after.1 - before.1) as f64,
        grew("natron_nat_packets_total"),
        grew("natron_nat_bytes_total"),
        grew("natron_nat_connections_total"),
    ]
}

/// Five HTTP requests, then `down` bytes down and `up` bytes up: 7
/// connections through the NAT.
fn seven_connections(lab: &Lab, down: u64, up: u64) {
    let client = lab.clients[0].ns.clone();
    for _ in 0..5 {
        lab.client_get(0, "/").unwrap();
    }
    lab.run_in(&client, internet::download(down, Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("download of {down} bytes: {e}"));
    lab.run_in(&client, internet::upload(up, Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("upload of {up} bytes: {e}"));
}

fn assert_counted(what: &str, [packets, bytes, nat_packets, nat_bytes, connections]: [f64; 5]) {
    assert!(
        stats::within(nat_bytes, bytes, 0.05),
        "{what}: natron_nat_bytes_total grew {nat_bytes}, the client's link {bytes}"
    );
    assert!(
        stats::within(nat_packets, packets, 0.05),
        "{what}: natron_nat_packets_total grew {nat_packets}, the client's link {packets}"
    );
    assert_eq!(
        connections, 7.0,
        "{what}: 5 HTTP requests and 2 bulk transfers, nothing of the NAT's own"
    );
}

/// The image NATs a private subnet on a jumbo-frame VPC behind a filtered
/// 1,500-byte internet path, with its flowtable: the ruleset as rendered,
/// the redirect sysctls already right at boot, a 100 MB transfer, flows
/// offloaded and still counted, large transfers both ways through the MSS
/// clamp, and its port closed to the internet but open to the VPC.
#[test]
#[ignore = "needs the built image: cargo xtask test runs it"]
fn the_image_nats_with_its_flowtable_and_counts_what_it_offloads() {
    let lab = Lab::start(LabSpec::with_azs(1).with_vm_nat(0, image())).unwrap();
    lab.jumbo_vpc_behind_a_filtered_path().unwrap();
    let mut config = lab.vm_nat_config();
    config.nat.reconcile_interval = Duration::from_secs(2);
    let ready = lab
        .boot_vm_nat(0, &config, Until::Ready, BOOT_BOUND)
        .unwrap();
    eprintln!("VM NAT: power-on to ready {:.1} s", ready.as_secs_f64());
    let eip = lab.spec.azs[0].eip;
    wait_egress_via(&lab, 0, eip, Duration::from_secs(30));

    let s = status(&lab);
    assert_eq!(
        s.dataplane.flowtable,
        Some(true),
        "the image's kernel has flowtables"
    );
    assert_eq!(
        s.dataplane.listing_matches_render,
        Some(true),
        "the kernel lists table ip natron exactly as rendered (no fallback reference)"
    );
    for applied in &s.dataplane.sysctls {
        if applied.setting.key.contains("redirects") {
            assert_eq!(
                applied.outcome,
                Outcome::Unchanged,
                "{} already {} when the agent started (the image's sysctl.d)",
                applied.setting.key,
                applied.setting.value
            );
        }
    }
    assert!(
        s.dataplane
            .sysctls
            .iter()
            .any(|a| a.setting.key.contains("eth0.accept_redirects")),
        "the egress interface's own redirect setting is checked: {:?}",
        s.dataplane.sysctls
    );

    // The agent's port: closed to the internet through the Elastic IP,
    // open to the served network.
    assert!(
        !lab.connects(&lab.inet_ns, SocketAddrV4::new(eip, AGENT_PORT)),
        "the agent's port must not answer the internet"
    );
    let client = lab.clients[0].ns.clone();
    assert!(lab.connects(&client, SocketAddrV4::new(lab.nats[0].ip, AGENT_PORT)));

    // Open flows are offloaded to the fast path; the agent reads how many
    // every 10 s.
    let held = lab.run_in(
        &client,
        longlived::hold(20, Duration::from_secs(1), Duration::from_secs(3)),
    );
    assert_eq!(held.alive(), 20, "{:?}", held.broken());
    let offloaded = lab
        .wait_for(
            "flows offloaded, in /status",
            Duration::from_secs(30),
            || {
                status(&lab)
                    .dataplane
                    .conntrack?
                    .offloaded
                    .filter(|n| *n >= 20)
            },
        )
        .unwrap();
    let metric = lab.agent_metrics(0).unwrap()["natron_conntrack_offloaded"];
    assert!(metric >= 20.0, "natron_conntrack_offloaded {metric}");
    eprintln!("VM NAT: {offloaded} flows offloaded");

    // Counted although offloaded: 100 MB down, 10 MB up.
    let settle = config.nat.reconcile_interval * 3;
    let grown = counted(&lab, settle, || {
        seven_connections(&lab, 100 << 20, 10 << 20)
    });
    assert_counted("flowtable on", grown);
    assert_eq!(held.alive(), 20, "{:?}", held.broken());
    held.stop();

    // Jumbo frames in the VPC, 1,500 bytes and no ICMP on the internet path:
    // the transfers above crossed it (they would stall without the clamp,
    // as the namespace lab's test shows); the clamp counted both ways.
    assert!(
        lab.rule_packets(0, "clamp-mss") >= 7.0,
        "client SYNs clamped"
    );
    assert!(
        lab.rule_packets(0, "clamp-mss-reply") >= 7.0,
        "server SYN-ACKs clamped"
    );
    lab.power_off_vm_nat(0).unwrap();
}

/// The image beside a namespace NAT in the other AZ: without an instance
/// profile at first (it says so, backs off, is not restarted), then
/// without a flowtable (counters still right), powered off (the peer takes
/// its table) and on again (it takes the table back after the hold-down).
#[test]
#[ignore = "needs the built image: cargo xtask test runs it"]
fn the_image_fails_over_to_a_namespace_nat_and_back() {
    let lab = Lab::start(LabSpec::with_azs(2).with_vm_nat(0, image())).unwrap();
    // The production failover timings with a shorter hold-down, and peers
    // given 1 s to answer (a VM under TCG answers slower than an instance).
    let hold_down = Duration::from_secs(10);
    let mut peer_config = default_config();
    let f = &mut peer_config.failover;
    f.hold_down = hold_down;
    f.peer_timeout = Duration::from_secs(1);
    f.proof_window = Duration::from_secs(2);
    lab.start_agent(1, peer_config.clone(), &[]).unwrap();
    let mut config: Config = lab.vm_nat_config();
    config.failover = peer_config.failover.clone();
    config.nat.reconcile_interval = Duration::from_secs(1);
    config.nat.flowtable = false;

    // First boot without an instance profile.
    lab.without_instance_profile(0).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.boot_vm_nat(0, &config, Until::Answers, BOOT_BOUND)
        .unwrap();
    let (code, why) = lab
        .wait_for(
            "/readyz names the credentials",
            Duration::from_secs(30),
            || {
                lab.agent_readyz(0)
                    .ok()
                    .filter(|(_, b)| b.reasons.iter().any(|r| r.area == Area::Credentials))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&lab, 0)));
    assert_eq!(code, 503, "{why:?}");
    let vm_ip = lab.nats[0].ip;
    let t0 = Instant::now();
    let (asked0, console0) = (lab.imds_requests.from(vm_ip), lab.vm_nat_console(0).len());
    std::thread::sleep(Duration::from_secs(70));
    let asked = lab.imds_requests.from(vm_ip) - asked0;
    let console = lab.vm_nat_console(0)[console0..].to_string();
    assert!(
        asked <= 120,
        "{asked} IMDS requests in {:?} without credentials",
        t0.elapsed()
    );
    for (line, n) in masked_lines(&console, "credentials") {
        assert!(n <= 2, "said {n} times in {:?}: {line}", t0.elapsed());
    }
    for restart in [
        "Watchdog timeout",
        "Scheduled restart job",
        "Main process exited",
    ] {
        assert!(
            !console.contains(restart),
            "systemd restarted the agent ({restart}):\n{console}"
        );
    }
    // The profile back: ready without a restart, within seconds (missing
    // credentials are retried every 4 to 8 s however long they lasted).
    lab.restore_instance_profile(0).unwrap();
    lab.wait_for(
        "ready once credentials come",
        Duration::from_secs(30),
        || matches!(lab.agent_readyz(0), Ok((200, _))).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&lab, 0)));
    let (eip_a, eip_b) = (lab.spec.azs[0].eip, lab.spec.azs[1].eip);
    wait_egress_via(&lab, 0, eip_a, Duration::from_secs(30));
    wait_egress_via(&lab, 1, eip_b, Duration::from_secs(30));

    // Counted without the flowtable too.
    assert_eq!(status(&lab).dataplane.flowtable, Some(false));
    let grown = counted(&lab, Duration::from_secs(3), || {
        seven_connections(&lab, 20 << 20, 5 << 20)
    });
    assert_counted("flowtable off", grown);

    // Powered off: the namespace NAT takes AZ a's table.
    let (table_a, vm_id, peer_id) = (
        lab.private_tables[0].clone(),
        lab.nats[0].instance_id.clone(),
        lab.nats[1].instance_id.clone(),
    );
    lab.power_off_vm_nat(0).unwrap();
    let off = Instant::now();
    lab.wait_for("NAT-B takes AZ a's table", Duration::from_secs(20), || {
        (lab.table_owner(&table_a)? == peer_id).then_some(())
    })
    .unwrap();
    eprintln!(
        "VM NAT off: taken over in {:.2} s",
        off.elapsed().as_secs_f64()
    );
    wait_egress_via(&lab, 0, eip_b, Duration::from_secs(10));

    // On again (flowtable back on): ready, then its table back once the
    // hold-down has passed.
    config.nat.flowtable = true;
    let ready = lab
        .boot_vm_nat(0, &config, Until::Ready, BOOT_BOUND)
        .unwrap();
    eprintln!("VM NAT: power-on to ready {:.1} s", ready.as_secs_f64());
    let ready_at = Instant::now();
    assert_eq!(lab.table_owner(&table_a).as_deref(), Some(peer_id.as_str()));
    lab.wait_for("the VM takes its table back", hold_down * 3, || {
        (lab.table_owner(&table_a)? == vm_id).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&lab, 0)));
    let back = ready_at.elapsed();
    assert!(
        back + Duration::from_secs(2) >= hold_down,
        "failback {back:?} after ready, before the {hold_down:?} hold-down"
    );
    wait_egress_via(&lab, 0, eip_a, Duration::from_secs(10));
    assert_eq!(status(&lab).dataplane.flowtable, Some(true));
    lab.power_off_vm_nat(0).unwrap();
}
