//! Failover between two AZs' NAT instances, with failures injected in the
//! lab and the outage seen by a 50 ms prober in each private subnet
//! (issue 3). Bounds are generous (CI machines are noisy); the figures are
//! measured by `cargo xtask bench` and recorded in BENCHMARKS.md.

use std::time::{Duration, Instant};

use natron_lab::lab::{AgentId, Lab, LabSpec};
use natron_lab::prober::Records;
use nix::sys::signal::Signal;

struct Setup {
    lab: Lab,
    agents: Vec<AgentId>,
    probes: Vec<Records>,
}

/// Two AZs, both agents ready and serving their home tables, peers seen
/// ready by each other, a prober in each private subnet.
fn two_azs(hold_down: Duration) -> Setup {
    let lab = Lab::start(LabSpec::with_azs(2)).expect("lab starts");
    let config = lab.failover_config(hold_down);
    let agents: Vec<AgentId> = (0..2)
        .map(|az| lab.start_agent(az, &config, &[]).unwrap())
        .collect();
    for (az, agent) in agents.iter().enumerate() {
        let (table, me) = (
            lab.private_tables[az].clone(),
            lab.nats[az].instance_id.clone(),
        );
        lab.wait_for("home tables claimed", Duration::from_secs(30), || {
            (lab.table_owner(&table).as_deref() == Some(me.as_str())).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log(*agent)));
    }
    for (az, agent) in agents.iter().enumerate() {
        lab.wait_for("each sees its peer ready", Duration::from_secs(15), || {
            let s = lab.agent_status(az).ok()?;
            (s["failover"]["peers"][0]["health"]["state"] == "ready").then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log(*agent)));
    }
    let probes: Vec<Records> = (0..2).map(|az| lab.start_prober(az)).collect();
    std::thread::sleep(Duration::from_millis(500));
    Setup {
        lab,
        agents,
        probes,
    }
}

fn eip(lab: &Lab, az: usize) -> String {
    lab.spec.azs[az].eip.to_string()
}

/// Waits until client `az`'s probes go out through NAT `via`; the outage.
fn outage_until_via(s: &Setup, az: usize, via: usize, t0: Instant) -> Duration {
    let public = eip(&s.lab, via);
    s.lab
        .wait_for(
            "probes answered through the other NAT",
            Duration::from_secs(20),
            || s.probes[az].first_via_after(t0, &public),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- nat-{via} agent ---\n{}",
                s.lab.agent_log(s.agents[via])
            )
        })
}

fn owner_is(s: &Setup, table_az: usize, nat_az: usize, timeout: Duration) -> Result<(), String> {
    let (table, want) = (
        s.lab.private_tables[table_az].clone(),
        s.lab.nats[nat_az].instance_id.clone(),
    );
    s.lab.wait_for("table owner", timeout, || {
        (s.lab.table_owner(&table).as_deref() == Some(want.as_str())).then_some(())
    })
}

fn readyz(s: &Setup, az: usize) -> Option<(u16, String)> {
    s.lab.agent_get(az, "/readyz").ok()
}

#[test]
fn dead_nat_is_replaced_by_the_other_az() {
    let s = two_azs(Duration::from_secs(30));
    let t0 = Instant::now();
    s.lab.kill_nat(0).unwrap();
    owner_is(&s, 0, 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.lab.agent_log(s.agents[1])));
    let outage = outage_until_via(&s, 0, 1, t0);
    println!("NAT-A killed: AZ a's clients served through NAT-B after {outage:?}");
    assert!(outage < Duration::from_secs(10), "{outage:?}");
    // AZ b's clients never noticed.
    std::thread::sleep(Duration::from_millis(1200));
    let b_loss = s.probes[1].longest_loss(t0, Instant::now());
    assert!(b_loss < Duration::from_millis(500), "AZ b lost {b_loss:?}");
    let log = s.lab.agent_log(s.agents[1]);
    assert!(
        log.contains("kind=Takeover") && log.contains("unreachable"),
        "{log}"
    );
    let status = s.lab.agent_status(1).unwrap();
    assert_eq!(
        status["failover"]["events"][0]["kind"], "takeover",
        "{status}"
    );
}

#[test]
fn nat_with_broken_egress_demotes_itself_and_recovers_after_hold_down() {
    let hold_down = Duration::from_secs(5);
    let s = two_azs(hold_down);
    let table_a = s.lab.private_tables[0].clone();
    let t0 = Instant::now();
    s.lab.break_egress(0).unwrap();
    let (_, body) = s
        .lab
        .wait_for("NAT-A reports 503", Duration::from_secs(10), || {
            readyz(&s, 0).filter(|(code, _)| *code == 503)
        })
        .unwrap();
    assert!(body.contains("egress"), "{body}");
    owner_is(&s, 0, 1, Duration::from_secs(20)).unwrap();
    let outage = outage_until_via(&s, 0, 1, t0);
    println!("NAT-A egress broken: AZ a served through NAT-B after {outage:?}");
    assert!(outage < Duration::from_secs(10), "{outage:?}");

    // Recovery: NAT-A becomes ready again, and after the hold-down its
    // table comes back to it, once.
    let t1 = Instant::now();
    s.lab.restore_egress(0).unwrap();
    s.lab
        .wait_for("NAT-A ready again", Duration::from_secs(10), || {
            readyz(&s, 0).filter(|(c, _)| *c == 200)
        })
        .unwrap();
    let ready_at = Instant::now();
    owner_is(&s, 0, 0, hold_down + Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.lab.agent_log(s.agents[0])));
    let back_at = Instant::now();
    assert!(
        back_at >= ready_at + hold_down - Duration::from_millis(500),
        "failback {:?} after ready, before the {hold_down:?} hold-down",
        back_at - ready_at
    );
    // No flapping afterwards.
    std::thread::sleep(hold_down + Duration::from_secs(2));
    let changes: Vec<_> = s
        .lab
        .route_changes(&table_a)
        .into_iter()
        .filter(|(t, _)| *t >= t1)
        .collect();
    assert_eq!(
        changes.len(),
        1,
        "table a changed owner {} times after recovery: {changes:?}",
        changes.len()
    );
    let loss = s.probes[0].longest_loss(t1, Instant::now());
    assert!(loss < Duration::from_millis(1000), "failback lost {loss:?}");
    assert!(s.lab.agent_log(s.agents[0]).contains("kind=Failback"));
}

#[test]
fn sigterm_hands_routes_over_with_at_most_a_couple_of_lost_probes() {
    let s = two_azs(Duration::from_secs(30));
    let t0 = Instant::now();
    s.lab.signal_agent(s.agents[0], Signal::SIGTERM);
    let code = s
        .lab
        .wait_agent_exit(s.agents[0], Duration::from_secs(15))
        .expect("agent exits");
    assert_eq!(code, Some(0), "{}", s.lab.agent_log(s.agents[0]));
    owner_is(&s, 0, 1, Duration::from_secs(2)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let lost = s.probes[0].lost_between(t0, Instant::now() - Duration::from_millis(1100));
    println!("planned handoff: {lost} probes lost");
    assert!(lost <= 3, "{lost} probes lost during a planned handoff");
    let log = s.lab.agent_log(s.agents[0]);
    assert!(
        log.contains("kind=Handoff") && log.contains("handoff complete"),
        "{log}"
    );
    // The peer keeps it: nobody hands it back while its home is gone.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.lab
            .route_changes(&s.lab.private_tables[0])
            .iter()
            .filter(|(t, _)| *t >= t0)
            .count(),
        1
    );
}

#[test]
fn partitioned_nats_do_not_flap() {
    let secs: u64 = std::env::var("NATRON_PARTITION_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let s = two_azs(Duration::from_secs(30));
    let t0 = Instant::now();
    s.lab.partition(0, 1).unwrap();
    // Both see the other unreachable with a fresh heartbeat.
    for az in 0..2 {
        s.lab
            .wait_for(
                "peer seen unreachable, heartbeat fresh",
                Duration::from_secs(10),
                || {
                    let st = s.lab.agent_status(az).ok()?;
                    let h = &st["failover"]["peers"][0]["health"];
                    (h["state"] == "unreachable" && h["stale"] == false).then_some(())
                },
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", s.lab.agent_log(s.agents[az])));
    }
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed()));
    let end = Instant::now();
    for az in 0..2 {
        let changes = s
            .lab
            .route_changes(&s.lab.private_tables[az])
            .into_iter()
            .filter(|(t, _)| *t >= t0)
            .count();
        assert!(
            changes <= 1,
            "table {az} changed owner {changes} times in {secs}s of partition"
        );
        let loss = s.probes[az].longest_loss(t0, end);
        assert!(
            loss < Duration::from_secs(2),
            "AZ {az} clients lost {loss:?}"
        );
    }
    s.lab.heal_partitions().unwrap();
}

#[test]
fn both_down_changes_nothing_and_the_first_back_takes_all() {
    let s = two_azs(Duration::from_secs(30));
    s.lab.break_egress(0).unwrap();
    s.lab.break_egress(1).unwrap();
    for az in 0..2 {
        s.lab
            .wait_for("503", Duration::from_secs(10), || {
                readyz(&s, az).filter(|(c, _)| *c == 503)
            })
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(4));
    for az in 0..2 {
        assert!(
            s.lab
                .wait_agent_exit(s.agents[az], Duration::from_millis(10))
                .is_none(),
            "agent {az} crashed"
        );
        assert_eq!(
            s.lab.table_owner(&s.lab.private_tables[az]).as_deref(),
            Some(s.lab.nats[az].instance_id.as_str()),
            "routes stay put while nobody is healthy"
        );
    }
    let t0 = Instant::now();
    s.lab.restore_egress(1).unwrap();
    owner_is(&s, 0, 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.lab.agent_log(s.agents[1])));
    owner_is(&s, 1, 1, Duration::from_secs(1)).unwrap();
    for az in 0..2 {
        let outage = outage_until_via(&s, az, 1, t0);
        assert!(outage < Duration::from_secs(10), "AZ {az}: {outage:?}");
    }
}
