//! Failover between two AZs' NAT instances, with failures injected in the
//! lab and the outage seen by a 50 ms prober in each private subnet
//! (issue 3). Bounds are generous (CI machines are noisy); the figures are
//! measured by `cargo xtask bench` and recorded in BENCHMARKS.md.

use std::time::{Duration, Instant};

use natron_contract::readyz::Area;
use natron_contract::status::{ElasticIpState, Health, MoveKind, TableRole};
use natron_lab::scenario::TwoAzs;
use nix::sys::signal::Signal;

fn two_azs(hold_down: Duration) -> TwoAzs {
    TwoAzs::start(hold_down).unwrap_or_else(|e| panic!("{e}"))
}

/// Every call the agents made (all go through the lab's EC2 proxy) is an
/// action their IAM policy allows, as `natron apply` writes it. This is
/// the part of IAM the emulator could enforce (moto's authorizer checks a
/// request's action against the Action elements only: neither Resource
/// nor Condition), checked here without turning authorization on.
fn only_calls_the_policy_allows(s: &TwoAzs) {
    let policy = natron::documents::agent_policy(&s.lab.spec.group, "aws", &Default::default());
    let allowed = natron::documents::allowed_actions(&policy);
    let called: std::collections::BTreeSet<String> = s
        .lab
        .ec2_proxy
        .requests()
        .iter()
        .map(|r| format!("ec2:{}", r.action))
        .collect();
    let outside: Vec<&String> = called.difference(&allowed).collect();
    assert!(
        outside.is_empty(),
        "the agents called {outside:?}, which their IAM policy does not allow ({allowed:?})"
    );
    println!(
        "agents' calls {called:?}; allowed and not called here: {:?}",
        allowed.difference(&called).collect::<Vec<_>>()
    );
}

/// AZ `table_az`'s table gets a NAT64 route through NAT `nat_az`, as
/// `natron apply --nat64` writes it.
fn with_nat64_route(s: &TwoAzs, table_az: usize, nat_az: usize) {
    let table = &s.lab.private_tables[table_az];
    s.lab
        .add_nat64_route(table, &s.lab.nats[nat_az].interface_id)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// AZ `table_az`'s NAT64 route points at NAT `nat_az`, as its default
/// route does (it moves right after it, in the same read-verify-write).
fn nat64_follows(s: &TwoAzs, table_az: usize, nat_az: usize) {
    let table = &s.lab.private_tables[table_az];
    let want = s.lab.nats[nat_az].interface_id.clone();
    s.lab
        .wait_for("the NAT64 route to follow", Duration::from_secs(5), || {
            (s.lab.nat64_target(table).ok().flatten().as_deref() == Some(want.as_str()))
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{}", s.with_log(nat_az, e)));
}

#[test]
fn dead_nat_is_replaced_by_the_other_az() {
    let s = two_azs(Duration::from_secs(30));
    // AZ a's table serves NAT64 too; AZ b's table does not.
    with_nat64_route(&s, 0, 0);
    let t0 = Instant::now();
    s.lab.kill_nat(0).unwrap();
    s.owner_is(0, 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{}", s.with_log(1, e)));
    nat64_follows(&s, 0, 1);
    assert_eq!(
        s.lab.nat64_target(&s.lab.private_tables[1]).unwrap(),
        None,
        "a table that does not serve NAT64 gets no NAT64 route"
    );
    // AZ b's table starts serving NAT64: its NAT makes the route.
    s.lab
        .serve_nat64(&s.lab.private_tables[1])
        .unwrap_or_else(|e| panic!("{e}"));
    nat64_follows(&s, 1, 1);
    let outage = s
        .served_via(0, 1, t0, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("NAT-A killed: AZ a's clients served through NAT-B after {outage:?}");
    assert!(outage < Duration::from_secs(10), "{outage:?}");
    // AZ b's clients never noticed.
    std::thread::sleep(Duration::from_millis(1200));
    let b_loss = s.probes[1].longest_loss(t0, Instant::now());
    assert!(b_loss < Duration::from_millis(500), "AZ b lost {b_loss:?}");
    let status = s.lab.agent_status(1).unwrap();
    let event = &status.failover.events[0];
    assert_eq!(event.kind, MoveKind::Takeover, "{status:?}");
    assert!(event.reason.contains("unreachable"), "{event:?}");
    let table_a = status
        .table(&s.lab.private_tables[0])
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(table_a.role, TableRole::TakenOver, "{table_a:?}");
    assert_eq!(table_a.owner, s.lab.nats[1].instance_id, "{table_a:?}");
    assert_eq!(
        table_a.home.as_deref(),
        Some(s.lab.nats[0].instance_id.as_str()),
        "{table_a:?}"
    );
    only_calls_the_policy_allows(&s);
}

#[test]
fn nat_with_broken_egress_demotes_itself_and_recovers_after_hold_down() {
    let hold_down = Duration::from_secs(5);
    let s = two_azs(hold_down);
    // A NAT64 route left at the wrong NAT is brought in line by the NAT
    // its table's default route names.
    with_nat64_route(&s, 0, 1);
    nat64_follows(&s, 0, 0);
    let t0 = Instant::now();
    s.lab.break_egress(0).unwrap();
    let (_, body) = s
        .lab
        .wait_for("NAT-A reports 503", Duration::from_secs(10), || {
            s.lab.agent_readyz(0).ok().filter(|(c, _)| *c == 503)
        })
        .unwrap();
    assert!(body.has(Area::Egress), "{body:?}");
    s.owner_is(0, 1, Duration::from_secs(20)).unwrap();
    nat64_follows(&s, 0, 1);
    let outage = s
        .served_via(0, 1, t0, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("NAT-A egress broken: AZ a served through NAT-B after {outage:?}");
    assert!(outage < Duration::from_secs(10), "{outage:?}");

    // Recovery: NAT-A becomes ready again, and after the hold-down its
    // table comes back to it, once.
    let t1 = Instant::now();
    s.lab.restore_egress(0).unwrap();
    s.lab
        .wait_for("NAT-A ready again", Duration::from_secs(10), || {
            s.readyz(0).filter(|(c, _)| *c == 200)
        })
        .unwrap();
    let ready_at = Instant::now();
    s.owner_is(0, 0, hold_down + Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{}", s.with_log(0, e)));
    let back_at = Instant::now();
    nat64_follows(&s, 0, 0);
    assert!(
        back_at >= ready_at + hold_down - Duration::from_millis(500),
        "failback {:?} after ready, before the {hold_down:?} hold-down",
        back_at - ready_at
    );
    // No flapping afterwards.
    std::thread::sleep(hold_down + Duration::from_secs(2));
    assert_eq!(
        s.changes_since(0, t1),
        1,
        "{:?}",
        s.lab.route_changes(&s.lab.private_tables[0])
    );
    let loss = s.probes[0].longest_loss(t1, Instant::now());
    assert!(loss < Duration::from_millis(1000), "failback lost {loss:?}");
    assert!(s.lab.agent_log(s.agents[0]).contains("kind=Failback"));
}

#[test]
fn a_handoff_at_shutdown_hands_routes_over_losing_nothing() {
    let s = two_azs(Duration::from_secs(30));
    with_nat64_route(&s, 0, 0);
    let t0 = Instant::now();
    let (code, out) = s.lab.handoff(s.agents[0]);
    assert_eq!(code, Some(0), "{out}\n{}", s.lab.agent_log(s.agents[0]));
    assert!(
        out.contains("handoff complete: 1 route table(s) handed over"),
        "{out}"
    );
    s.owner_is(0, 1, Duration::from_secs(2)).unwrap();
    nat64_follows(&s, 0, 1);
    std::thread::sleep(Duration::from_millis(1500));
    let lost = s.probes[0].lost_between(t0, Instant::now() - Duration::from_millis(1100));
    println!("planned handoff: {lost} probes lost");
    assert!(lost <= 2, "{lost} probes lost during a planned handoff");
    // Draining until the instance goes: never claims the table back.
    let (code, body) = s.lab.agent_readyz(0).unwrap();
    assert_eq!(code, 503, "{body:?}");
    assert!(body.has(Area::Draining), "{body:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.changes_since(0, t0), 1);
    // Then the system stops the agent: it exits at once and moves nothing.
    let stop = Instant::now();
    s.lab.signal_agent(s.agents[0], Signal::SIGTERM);
    let code = s
        .lab
        .wait_agent_exit(s.agents[0], Duration::from_secs(5))
        .expect("agent exits");
    assert_eq!(code, Some(0));
    assert!(
        stop.elapsed() < Duration::from_secs(2),
        "{:?}",
        stop.elapsed()
    );
    assert_eq!(s.changes_since(0, t0), 1);
}

#[test]
fn auto_scaling_termination_hands_routes_over_while_the_nat_still_runs() {
    let s = two_azs(Duration::from_secs(3));
    let t0 = Instant::now();
    s.lab.start_termination(0).unwrap();
    s.owner_is(0, 1, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{}", s.with_log(0, e)));
    std::thread::sleep(Duration::from_millis(1500));
    let lost = s.probes[0].lost_between(t0, Instant::now() - Duration::from_millis(1100));
    println!("lifecycle handoff: {lost} probes lost");
    assert!(lost <= 3, "{lost} probes lost during a lifecycle handoff");
    // Still running, draining: not ready, and it never takes the table
    // back (the hold-down here is 3 s).
    let (code, body) = s.lab.agent_get(0, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        s.changes_since(0, t0),
        1,
        "{}",
        s.lab.agent_log(s.agents[0])
    );
    let status = s.lab.agent_status(0).unwrap();
    assert!(status.failover.draining, "{status:?}");
    assert_eq!(
        status.failover.events[0].kind,
        MoveKind::Handoff,
        "{status:?}"
    );
    let log = s.lab.agent_log(s.agents[0]);
    assert!(
        log.contains("auto scaling is terminating this instance"),
        "{log}"
    );
    // Its Elastic IP is free for the replacement; AZ b's stays put.
    assert_eq!(s.lab.elastic_ip_holder(0), None, "{log}");
    assert!(log.contains("released this AZ's Elastic IP"), "{log}");
    assert_eq!(
        s.lab.elastic_ip_holder(1).as_deref(),
        Some(s.lab.nats[1].instance_id.as_str())
    );
    only_calls_the_policy_allows(&s);
}

#[test]
fn a_replacement_nat_takes_the_azs_elastic_ip_and_table_without_apply() {
    let hold_down = Duration::from_secs(3);
    let mut s = two_azs(hold_down);
    let old = s.lab.nats[0].instance_id.clone();
    assert_eq!(s.lab.elastic_ip_holder(0).as_deref(), Some(old.as_str()));
    s.lab.kill_nat(0).unwrap();
    s.owner_is(0, 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{}", s.with_log(1, e)));
    // Auto Scaling's replacement: the dead NAT is stopped (its address
    // stays on it, as in EC2) and a new instance of the group starts.
    s.lab.replace_nat(0).unwrap();
    let new = s.lab.nats[0].instance_id.clone();
    assert_ne!(new, old);
    assert_eq!(s.lab.elastic_ip_holder(0).as_deref(), Some(old.as_str()));
    let t0 = Instant::now();
    let agent = s
        .lab
        .start_agent(0, s.lab.failover_config(hold_down), &[])
        .unwrap();
    let log = || s.lab.agent_log(agent);
    s.lab
        .wait_for(
            "the address on the new NAT",
            Duration::from_secs(20),
            || (s.lab.elastic_ip_holder(0).as_deref() == Some(new.as_str())).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    assert!(
        log().contains("associating this AZ's Elastic IP") && log().contains(old.as_str()),
        "{}",
        log()
    );
    // Its home table comes back after the hold-down, and AZ a's clients
    // leave from the AZ's own address again, through the new NAT.
    s.owner_is(0, 0, hold_down + Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    s.served_via(0, 0, t0, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let status = s.lab.agent_status(0).unwrap();
    assert_eq!(
        status.identity.as_ref().map(|i| i.instance_id.as_str()),
        Some(new.as_str()),
        "{status:?}"
    );
    assert_eq!(
        status.dataplane.elastic_ip.as_ref().map(|e| e.state),
        Some(ElasticIpState::Associated),
        "{status:?}"
    );
    // AZ b's address never moved.
    assert_eq!(
        s.lab.elastic_ip_holder(1).as_deref(),
        Some(s.lab.nats[1].instance_id.as_str())
    );
    only_calls_the_policy_allows(&s);
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
                    let h = &st.failover.peers.first()?.health;
                    matches!(h, Health::Unreachable { stale: false, .. }).then_some(())
                },
            )
            .unwrap_or_else(|e| panic!("{}", s.with_log(az, e)));
    }
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed()));
    let end = Instant::now();
    for az in 0..2 {
        let changes = s.changes_since(az, t0);
        assert_eq!(
            changes, 0,
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
fn failing_and_recovering_together_moves_nothing_and_the_first_back_takes_all() {
    let s = two_azs(Duration::from_secs(30));
    let t0 = Instant::now();
    s.lab.break_egress_of(&[0, 1]).unwrap();
    for az in 0..2 {
        s.lab
            .wait_for("503", Duration::from_secs(10), || {
                s.readyz(az).filter(|(c, _)| *c == 503)
            })
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (s.changes_since(0, t0), s.changes_since(1, t0)),
        (0, 0),
        "a failure both see moves nothing\n{}",
        s.with_log(1, String::new())
    );
    // Both back together: still nothing moves (past the settle, too).
    s.lab.restore_egress_of(&[0, 1]).unwrap();
    for az in 0..2 {
        s.lab
            .wait_for("ready again", Duration::from_secs(10), || {
                s.readyz(az).filter(|(c, _)| *c == 200)
            })
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        (s.changes_since(0, t0), s.changes_since(1, t0)),
        (0, 0),
        "recovering together moves nothing"
    );
    // Both down again, only b comes back: after the settle b serves a too.
    s.lab.break_egress_of(&[0, 1]).unwrap();
    s.lab
        .wait_for("b 503", Duration::from_secs(10), || {
            s.readyz(1).filter(|(c, _)| *c == 503)
        })
        .unwrap();
    let t1 = Instant::now();
    s.lab.restore_egress(1).unwrap();
    s.owner_is(0, 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{}", s.with_log(1, e)));
    let waited = t1.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "taken after {waited:?}, before the settle"
    );
    for az in 0..2 {
        let outage = s
            .served_via(az, 1, t1, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(outage < Duration::from_secs(15), "AZ {az}: {outage:?}");
    }
    for az in 0..2 {
        assert!(
            s.lab
                .wait_agent_exit(s.agents[az], Duration::from_millis(10))
                .is_none(),
            "agent {az} crashed"
        );
    }
}

#[test]
fn a_handoff_without_a_ready_peer_keeps_the_routes() {
    use natron_lab::lab::{Lab, LabSpec};
    let lab = Lab::start(LabSpec::with_azs(1)).unwrap();
    let agent = lab
        .start_agent(0, lab.failover_config(Duration::from_secs(30)), &[])
        .unwrap();
    let (table, me) = (
        lab.private_tables[0].clone(),
        lab.nats[0].instance_id.clone(),
    );
    lab.wait_for("claimed", Duration::from_secs(30), || {
        (lab.table_owner(&table).as_deref() == Some(me.as_str())).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log(agent)));
    let t0 = Instant::now();
    let (code, out) = lab.handoff(agent);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no ready peer"), "{out}");
    // Nothing moved, and the data plane keeps forwarding.
    assert_eq!(lab.table_owner(&table).as_deref(), Some(me.as_str()));
    assert!(lab.route_changes(&table).iter().all(|(t, _)| *t < t0));
    lab.wait_for("client still served", Duration::from_secs(5), || {
        lab.client_get(0, "/whoami").ok()
    })
    .unwrap();
}
