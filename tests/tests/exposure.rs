//! What a NAT exposes and counts (issue 12's faults found on the image,
//! proven here on the namespace lab; the image's own kernel is covered by
//! `cargo xtask test`'s VM part): the agent's port seen from the internet,
//! the MSS clamp on a jumbo-frame VPC behind a 1,500-byte path that filters
//! ICMP, the NAT counters against what a client sent, and an instance
//! without credentials.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use natron_contract::client;
use natron_contract::readyz::Area;
use natron_lab::internet;
use natron_lab::lab::{masked_lines, AgentId, Lab, LabSpec, AGENT_PORT, NO_ENV_CREDENTIALS};
use natron_lab::stats;
use nix::sys::signal::Signal;

fn lab(azs: u8) -> Lab {
    Lab::start(LabSpec::with_azs(azs)).expect("lab starts")
}

/// The agent's /readyz answered (any status), from `ns`.
fn readyz_from(lab: &Lab, ns: &str, nat: std::net::Ipv4Addr) -> Result<u16, String> {
    lab.run_in(ns, async move {
        client::get(
            &nat.to_string(),
            AGENT_PORT,
            "/readyz",
            Duration::from_secs(2),
        )
        .await
        .map(|(code, _)| code)
        .map_err(|e| e.to_string())
    })
}

#[test]
fn the_agent_port_is_closed_to_the_internet_and_open_to_the_vpc() {
    let lab = lab(2);
    let agents: Vec<AgentId> = (0..2)
        .map(|az| lab.start_agent(az, lab.agent_config(), &[]).unwrap())
        .collect();
    lab.wait_egress(0, agents[0]);
    let nat = lab.nats[0].ip;
    let eip = lab.spec.azs[0].eip;
    // A port of the NAT other than the agent's answers from the internet
    // through the Elastic IP (the security group's job, not natron's):
    // the path in works, so a closed agent port is natron's doing.
    let other = lab.spawn_in(&lab.nats[0].ns.clone(), async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", AGENT_PORT + 1)).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
        Ok::<_, std::io::Error>(())
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        lab.connects(&lab.inet_ns, SocketAddrV4::new(eip, AGENT_PORT + 1)),
        "the internet reaches another port of the NAT through its Elastic IP"
    );
    lab.join(other).unwrap();
    assert!(
        !lab.connects(&lab.inet_ns, SocketAddrV4::new(eip, AGENT_PORT)),
        "the agent's port must not answer the internet"
    );
    // The served networks and the peers reach it.
    assert_eq!(readyz_from(&lab, &lab.clients[0].ns, nat), Ok(200));
    assert_eq!(readyz_from(&lab, &lab.nats[1].ns, nat), Ok(200));
    // The drops are counted by the guard rule.
    let dropped = lab.rule_packets(0, "guard-agent-port");
    assert!(dropped >= 1.0, "guard-agent-port counted {dropped}");
}

#[test]
fn nat_counters_match_what_the_client_sent_and_count_only_its_connections() {
    let lab = lab(1);
    let agent = lab.start_agent(0, lab.agent_config(), &[]).unwrap();
    lab.wait_egress(0, agent);
    // Idle: the agent probes the internet, calls EC2 and IMDS all along;
    // none of it is a connection it translates. (First let it count the
    // client's requests made while waiting.)
    let pass = lab.agent_config().nat.reconcile_interval;
    std::thread::sleep(pass * 3);
    let m0 = lab.agent_metrics(0).unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let m1 = lab.agent_metrics(0).unwrap();
    let passed = |m: &BTreeMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("natron_probe_results_total") && k.contains("pass"))
            .map(|(_, v)| v)
            .sum()
    };
    let probes = passed(&m1) - passed(&m0);
    assert!(probes >= 5.0, "the agent probed meanwhile ({probes})");
    assert_eq!(
        m1["natron_nat_connections_total"], m0["natron_nat_connections_total"],
        "the NAT's own connections are not NAT connections"
    );
    let client = lab.clients[0].ns.clone();
    let before = lab.link_totals(&client).unwrap();
    for _ in 0..5 {
        lab.client_get(0, "/").unwrap();
    }
    lab.run_in(
        &client,
        internet::download(20 << 20, Duration::from_secs(10)),
    )
    .unwrap();
    lab.run_in(&client, internet::upload(5 << 20, Duration::from_secs(10)))
        .unwrap();
    let after = lab.link_totals(&client).unwrap();
    std::thread::sleep(pass * 3);
    let m2 = lab.agent_metrics(0).unwrap();
    let sent_packets = (after.0 - before.0) as f64;
    let sent_bytes = (after.1 - before.1) as f64;
    let nat_packets = m2["natron_nat_packets_total"] - m1["natron_nat_packets_total"];
    let nat_bytes = m2["natron_nat_bytes_total"] - m1["natron_nat_bytes_total"];
    assert!(
        stats::within(nat_bytes, sent_bytes, 0.05),
        "natron_nat_bytes_total grew {nat_bytes}, the client's interface {sent_bytes}"
    );
    assert!(
        stats::within(nat_packets, sent_packets, 0.05),
        "natron_nat_packets_total grew {nat_packets}, the client's interface {sent_packets}"
    );
    assert_eq!(
        m2["natron_nat_connections_total"] - m1["natron_nat_connections_total"],
        7.0,
        "5 HTTP requests and 2 bulk transfers"
    );
}

/// Download and upload 10 MB each from a jumbo-frame internet server
/// behind a 1,500-byte hop; Err names the first that stalled.
fn transfers(lab: &Lab) -> Result<(), String> {
    let client = lab.clients[0].ns.clone();
    lab.run_in(
        &client,
        internet::download(10 << 20, Duration::from_secs(5)),
    )?;
    lab.run_in(&client, internet::upload(10 << 20, Duration::from_secs(5)))?;
    Ok(())
}

#[test]
fn large_transfers_cross_a_filtered_1500_byte_path_only_with_the_mss_clamp() {
    let lab = lab(1);
    lab.jumbo_vpc_behind_a_filtered_path().unwrap();
    // Without the clamp (nat.mss = 0): both ends offer 8,961 and the
    // IGW's hop silently drops every full segment.
    let mut off = lab.agent_config();
    off.nat.mss = 0;
    let agent = lab.start_agent(0, off, &[]).unwrap();
    lab.wait_egress(0, agent);
    let err = transfers(&lab).expect_err("without the clamp a large transfer stalls");
    assert!(err.contains("stalled"), "{err}");
    lab.signal_agent(agent, Signal::SIGTERM);
    assert!(lab.wait_agent_exit(agent, Duration::from_secs(5)).is_some());
    // The default clamps SYNs and SYN-ACKs to 1,460 both ways.
    let agent = lab.start_agent(0, lab.agent_config(), &[]).unwrap();
    lab.wait_for(
        "the ruleset with the clamp",
        Duration::from_secs(15),
        || {
            let listed = lab.nft_table(&lab.nats[0].ns, "ip", "natron")?.to_string();
            let up = lab.agent_status(0).ok()?.dataplane.ruleset_in_place;
            (up && listed.contains("clamp-mss")).then_some(())
        },
    )
    .unwrap();
    transfers(&lab).unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(agent)));
    // The agent reads the kernel's counters every reconcile pass.
    std::thread::sleep(lab.agent_config().nat.reconcile_interval * 3);
    assert!(
        lab.rule_packets(0, "clamp-mss") >= 2.0,
        "client SYNs clamped"
    );
    assert!(
        lab.rule_packets(0, "clamp-mss-reply") >= 2.0,
        "server SYN-ACKs clamped"
    );
}

#[test]
fn without_credentials_the_agent_says_so_backs_off_and_stays_up() {
    let lab = lab(2);
    lab.without_instance_profile(0).unwrap();
    // The sync loop carries the tag to IMDS within 100 ms.
    std::thread::sleep(Duration::from_millis(500));
    let sock_path = lab.log_dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock_env = sock_path.display().to_string();
    let mut env = NO_ENV_CREDENTIALS.to_vec();
    env.push(("NOTIFY_SOCKET", &sock_env));
    let t0 = Instant::now();
    let a = lab
        .start_agent_with_env(0, lab.agent_config(), &[], &env)
        .unwrap();
    // The peer has its instance profile: credentials through IMDS.
    let b = lab
        .start_agent_with_env(1, lab.agent_config(), &[], NO_ENV_CREDENTIALS)
        .unwrap();
    lab.wait_egress(1, b);
    let (code, body) = lab
        .wait_for(
            "/readyz names the credentials",
            Duration::from_secs(20),
            || {
                lab.agent_readyz(0)
                    .ok()
                    .filter(|(_, b)| b.reasons.iter().any(|r| r.area == Area::Credentials))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(a)));
    assert_eq!(code, 503);
    let why = body
        .reasons
        .iter()
        .find(|r| r.area == Area::Credentials)
        .unwrap();
    assert!(why.message.contains("instance profile"), "{why:?}");
    // systemd hears READY anyway: a restart would not bring credentials.
    let mut ready = false;
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready && Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            ready = String::from_utf8_lossy(&buf[..n]).contains("READY=1");
        }
    }
    assert!(ready, "READY=1 without credentials");
    // IMDS, side by side over one minute: the NAT without credentials asks
    // not much more than its peer (whose calls are the lifecycle checks).
    std::thread::sleep(Duration::from_secs(20).saturating_sub(t0.elapsed()));
    let (nat_a, nat_b) = (lab.nats[0].ip, lab.nats[1].ip);
    let (a0, b0) = (lab.imds_requests.from(nat_a), lab.imds_requests.from(nat_b));
    std::thread::sleep(Duration::from_secs(60));
    let (a1, b1) = (lab.imds_requests.from(nat_a), lab.imds_requests.from(nat_b));
    let (rate_a, rate_b) = (a1 - a0, b1 - b0);
    assert!(
        rate_a <= rate_b + 30,
        "IMDS requests in a minute: {rate_a} without credentials, {rate_b} with"
    );
    // Logged when it starts and once a minute after, not per attempt.
    let log = lab.agent_log(a);
    let lines = masked_lines(&log, "credentials");
    assert!(!lines.is_empty(), "the problem is logged\n{log}");
    for (line, n) in &lines {
        assert!(
            *n <= 2,
            "said {n} times in {:?}: {line}\n--- all ---\n{lines:#?}",
            t0.elapsed()
        );
    }
    assert!(
        lab.wait_agent_exit(a, Duration::ZERO).is_none(),
        "the agent stays up"
    );
    let peer = masked_lines(&lab.agent_log(b), "credentials");
    assert!(
        peer.keys()
            .all(|l| !l.contains("WARN") && !l.contains("ERROR")),
        "the peer has its instance profile: {peer:#?}"
    );
}
