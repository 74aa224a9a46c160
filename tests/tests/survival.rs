//! Failover users do not notice (issue 13): what the agents do to open
//! connections and to EC2 across the events an operator meets. Bounds are
//! the goals where they are exact (no move, no broken connection);
//! the timings are measured by `cargo xtask bench` (BENCHMARKS.md).

use std::time::{Duration, Instant};

use natron_contract::status::Health;
use natron_lab::ec2proxy::Mode;
use natron_lab::longlived;
use natron_lab::scenario::TwoAzs;
use nix::sys::signal::Signal;

fn two_azs() -> TwoAzs {
    TwoAzs::start(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
}

fn wait_ready(s: &TwoAzs, az: usize, what: &str) {
    s.lab
        .wait_for(what, Duration::from_secs(15), || {
            s.readyz(az).filter(|(c, _)| *c == 200)
        })
        .unwrap_or_else(|e| panic!("{}", s.with_log(az, e)));
}

#[test]
fn restarts_move_nothing_and_open_connections_survive() {
    let mut s = two_azs();
    let held = s.lab.run_in(
        &s.lab.clients[0].ns.clone(),
        longlived::hold(200, Duration::from_secs(1), Duration::from_secs(3)),
    );
    assert_eq!(held.alive(), 200, "{:?}", held.broken());
    let t0 = Instant::now();
    // systemctl restart: SIGTERM, then started again at once.
    let a = s
        .lab
        .restart_agent(s.agents[0], Signal::SIGTERM, Duration::ZERO, None)
        .unwrap();
    s.agents[0] = a;
    wait_ready(&s, 0, "ready after a restart");
    // A crash: SIGKILL, systemd restarts it 2 s later (RestartSec=2).
    let a = s
        .lab
        .restart_agent(s.agents[0], Signal::SIGKILL, Duration::from_secs(2), None)
        .unwrap();
    s.agents[0] = a;
    wait_ready(&s, 0, "ready after a crash");
    // A configuration change, then a restart.
    let mut changed = s.lab.failover_config(Duration::from_secs(30));
    changed.nat.reconcile_interval = Duration::from_millis(1500);
    let a = s
        .lab
        .restart_agent(s.agents[0], Signal::SIGTERM, Duration::ZERO, Some(&changed))
        .unwrap();
    s.agents[0] = a;
    wait_ready(&s, 0, "ready after a configuration change");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (s.changes_since(0, t0), s.changes_since(1, t0)),
        (0, 0),
        "{}",
        s.with_log(1, String::new())
    );
    assert_eq!(held.alive(), 200, "broken: {:?}", held.broken());
    held.stop();
    // The peer saw an agent down, never a dead NAT: it took nothing.
    let st = s.lab.agent_status(1).unwrap();
    assert!(
        st.failover
            .events
            .iter()
            .all(|e| e.kind == natron_contract::status::MoveKind::Claim),
        "{:?}",
        st.failover.events
    );
}

#[test]
fn an_agent_down_is_not_a_dead_nat_until_the_grace() {
    let s = two_azs();
    let t0 = Instant::now();
    s.lab.signal_agent(s.agents[0], Signal::SIGKILL);
    // The peer sees the kernel refuse the port: agent down, not dead.
    s.lab
        .wait_for("b sees a's agent down", Duration::from_secs(5), || {
            let st = s.lab.agent_status(1).ok()?;
            matches!(
                st.failover.peers.first()?.health,
                Health::AgentDown {
                    past_grace: false,
                    ..
                }
            )
            .then_some(())
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.changes_since(0, t0), 0, "taken within the grace");
    // Past the lab's 5 s grace the agent is presumed gone for good.
    s.owner_is(0, 1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{}", s.with_log(1, e)));
    assert!(
        t0.elapsed() >= Duration::from_secs(5),
        "{:?}\n{}",
        t0.elapsed(),
        s.with_log(1, String::new())
    );
}

#[test]
fn a_spot_interruption_notice_hands_the_routes_over() {
    let s = two_azs();
    let t0 = Instant::now();
    s.lab.spot_interruption(0).unwrap();
    s.owner_is(0, 1, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{}", s.with_log(0, e)));
    std::thread::sleep(Duration::from_millis(1500));
    let lost = s.probes[0].lost_between(t0, Instant::now() - Duration::from_millis(1100));
    assert!(lost <= 2, "{lost} probes lost");
    let st = s.lab.agent_status(0).unwrap();
    assert!(st.failover.draining, "{st:?}");
}

#[test]
fn an_asymmetric_partition_moves_nothing() {
    let secs: u64 = std::env::var("NATRON_PARTITION_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let s = two_azs();
    let t0 = Instant::now();
    // b cannot reach a; a still reaches b (and hears that b cannot see it).
    s.lab.partition_one_way(1, 0).unwrap();
    s.lab
        .wait_for("a heartbeats", Duration::from_secs(10), || {
            s.lab.agent_status(0).ok()?.ec2.heartbeating.then_some(())
        })
        .unwrap_or_else(|e| panic!("{}", s.with_log(0, e)));
    s.lab
        .wait_for(
            "b sees a unreachable and alive",
            Duration::from_secs(10),
            || {
                let st = s.lab.agent_status(1).ok()?;
                matches!(
                    st.failover.peers.first()?.health,
                    Health::Unreachable { stale: false, .. }
                )
                .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{}", s.with_log(1, e)));
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed()));
    for az in 0..2 {
        assert_eq!(s.changes_since(az, t0), 0, "table {az} moved");
    }
    s.lab.heal_partitions().unwrap();
    // In sight again: the heartbeats stop.
    s.lab
        .wait_for("heartbeats stop", Duration::from_secs(10), || {
            (!s.lab.agent_status(0).ok()?.ec2.heartbeating).then_some(())
        })
        .unwrap();
}

#[test]
fn a_throttled_ec2_is_asked_less_than_in_steady_state() {
    let s = two_azs();
    let window = Duration::from_secs(40);
    let ip = s.lab.nats[0].ip.into();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let (steady, steady_writes, _) = s.lab.ec2_proxy.count(ip, t0, Instant::now());
    assert_eq!(steady_writes, 0, "steady state writes nothing");
    s.lab.ec2_proxy.set_mode(Mode::ThrottleAll);
    // Give the agent time to notice, then count a window like the first.
    std::thread::sleep(Duration::from_secs(5));
    let t1 = Instant::now();
    std::thread::sleep(window);
    let (throttled, _, refused) = s.lab.ec2_proxy.count(ip, t1, Instant::now());
    s.lab.ec2_proxy.set_mode(Mode::PassThrough);
    println!(
        "EC2 requests in {window:?}: steady {steady}, throttled {throttled} ({refused} refused)"
    );
    assert!(refused > 0, "the proxy throttled nothing");
    assert!(
        throttled <= steady,
        "throttled: {throttled} requests, steady: {steady}"
    );
    let st = s.lab.agent_status(0).unwrap();
    let last = st.ec2.last_error.expect("the last EC2 error in /status");
    assert_eq!(last.code, "RequestLimitExceeded", "{last:?}");
    assert_eq!(
        (s.changes_since(0, t1), s.changes_since(1, t1)),
        (0, 0),
        "throttling moves nothing"
    );
}

#[test]
fn slow_http_clients_cannot_starve_the_agent() {
    let s = two_azs();
    let nat = s.lab.nats[0].ip;
    // 1,000 connections that never finish a request, from the VPC.
    let idle = s.lab.run_in(&s.lab.clients[0].ns.clone(), async move {
        let mut idle = Vec::new();
        for _ in 0..1000 {
            if let Ok(mut c) =
                tokio::net::TcpStream::connect((nat, natron_lab::lab::AGENT_PORT)).await
            {
                use tokio::io::AsyncWriteExt;
                let _ = c.write_all(b"GET /status HTTP/1.1\r\n").await;
                idle.push(c);
            }
        }
        idle
    });
    assert!(!idle.is_empty());
    // Its own egress probes and its peer's checks go on.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        s.readyz(0).map(|(c, _)| c),
        Some(200),
        "{}",
        s.with_log(0, String::new())
    );
    let st = s.lab.agent_status(1).unwrap();
    assert_eq!(st.failover.peers[0].health, Health::Ready, "{st:?}");
    assert_eq!(
        s.changes_since(0, Instant::now() - Duration::from_secs(4)),
        0
    );
    // And it stops within 2 s whatever its clients do.
    let stop = Instant::now();
    s.lab.signal_agent(s.agents[0], Signal::SIGTERM);
    s.lab
        .wait_agent_exit(s.agents[0], Duration::from_secs(5))
        .expect("agent exits");
    assert!(
        stop.elapsed() < Duration::from_secs(2),
        "{:?}",
        stop.elapsed()
    );
    drop(idle);
}
