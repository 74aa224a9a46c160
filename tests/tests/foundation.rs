//! End-to-end tests of one NAT instance's agent in the lab (issue 2).
//! Each test builds its own lab (namespaces + emulator) and drops it, which
//! deletes everything even when an assertion fails.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use natron_contract::client;
use natron_contract::readyz::Area;
use natron_contract::status::ElasticIpState;
use natron_lab::exec;
use natron_lab::internet;
use natron_lab::lab::{AgentId, Lab, LabSpec};
use natron_lab::vpc::Target;
use nix::sys::signal::Signal;
use serde_json::Value;

fn lab() -> Lab {
    Lab::start(LabSpec::with_azs(1)).expect("lab starts")
}

/// Waits until the private route table's default route targets NAT 0.
fn wait_claimed(lab: &Lab, agent: AgentId) {
    let (table, eni) = (&lab.private_tables[0], &lab.nats[0].interface_id);
    lab.wait_for("route claimed", Duration::from_secs(30), || {
        matches!(lab.default_route_of(table), Some(Target::Interface(ref e)) if e == eni)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(agent)));
}

fn wait_client_ok(lab: &Lab, agent: AgentId) -> String {
    lab.wait_for(
        "client reaches the internet",
        Duration::from_secs(15),
        || lab.client_get(0, "/whoami").ok(),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(agent)))
}

fn sysctl(ns: &str, key: &str) -> String {
    exec::in_ns(ns, "sysctl", &["-n", key])
        .expect("sysctl")
        .trim()
        .to_string()
}

/// The natron table's JSON with counter values zeroed; handles kept unless
/// `strip_handles`.
fn table_shape(lab: &Lab, strip_handles: bool) -> Option<Value> {
    fn walk(v: &mut Value, strip_handles: bool) {
        match v {
            Value::Object(m) => {
                if strip_handles {
                    m.remove("handle");
                }
                if let Some(Value::Object(c)) = m.get_mut("counter") {
                    c.insert("packets".into(), 0.into());
                    c.insert("bytes".into(), 0.into());
                }
                m.values_mut().for_each(|x| walk(x, strip_handles));
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, strip_handles)),
            _ => {}
        }
    }
    let mut v = lab.nft_table(&lab.nats[0].ns, "ip", "natron")?;
    if let Some(items) = v["nftables"].as_array_mut() {
        items.retain(|o| o.get("metainfo").is_none());
    }
    walk(&mut v, strip_handles);
    Some(v)
}

fn metric(lab: &Lab, name: &str) -> f64 {
    let (_, body) = lab.agent_get(0, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("metric {name} not in\n{body}"))
}

#[test]
fn client_reaches_the_internet_only_through_the_agent() {
    let lab = lab();
    let err = lab
        .client_get(0, "/whoami")
        .expect_err("no route before the agent");
    assert!(
        err.contains("unreachable") || err.contains("no answer"),
        "{err}"
    );

    let agent = lab.start_agent(0, lab.agent_config(), &[]).unwrap();
    wait_claimed(&lab, agent);
    let seen = wait_client_ok(&lab, agent);
    let eip = lab.spec.azs[0].eip;
    assert!(
        seen.starts_with(&format!("{eip}:")),
        "server saw {seen:?}, expected the NAT's Elastic IP {eip}"
    );
    // The lab leaves the tagged address free: the agent took it.
    assert_eq!(
        lab.elastic_ip_holder(0).as_deref(),
        Some(lab.nats[0].instance_id.as_str())
    );
    let status = lab.agent_status(0).unwrap();
    assert_eq!(
        status.dataplane.elastic_ip.as_ref().map(|e| e.state),
        Some(ElasticIpState::Associated),
        "{status:?}"
    );
    assert_eq!(metric(&lab, "natron_elastic_ip_associated"), 1.0);

    // Packets and bytes are counted (read by the agent each reconcile pass).
    for _ in 0..5 {
        lab.client_get(0, "/").unwrap();
    }
    lab.wait_for("NAT counters exported", Duration::from_secs(5), || {
        (metric(&lab, "natron_nat_packets_total") > 0.0
            && metric(&lab, "natron_nat_bytes_total") > 0.0
            && metric(&lab, "natron_nat_connections_total") >= 5.0)
            .then_some(())
    })
    .unwrap();
    assert_eq!(metric(&lab, "natron_routes_owned"), 1.0);
    assert_eq!(metric(&lab, "natron_ready"), 1.0);

    // Not an open relay: a packet from outside the VPC's CIDRs is not forwarded.
    let status = lab.agent_status(0).unwrap();
    assert!(status.ready, "{status:?}");
    assert_eq!(
        status.config["effective"]["ruleset"]["sources"],
        serde_json::json!(["10.0.0.0/16"])
    );
}

#[test]
fn emulator_reads_back_the_check_and_the_route_and_systemd_hears_ready() {
    let lab = lab();
    let nat = lab.nats[0].clone();
    assert_eq!(lab.source_dest_check(&nat.instance_id), Some(true));
    let sock_path = lab.log_dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock_env = sock_path.display().to_string();
    let agent = lab
        .start_agent_with_env(
            0,
            lab.agent_config(),
            &[],
            &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "2000000")],
        )
        .unwrap();
    wait_claimed(&lab, agent);
    assert_eq!(
        lab.source_dest_check(&nat.instance_id),
        Some(false),
        "SourceDestCheck read back"
    );
    match lab.default_route_of(&lab.private_tables[0]) {
        Some(Target::Interface(eni)) => assert_eq!(eni, nat.interface_id),
        other => panic!("default route targets {other:?}"),
    }
    // The agent's own view agrees.
    let status = lab.agent_status(0).unwrap();
    assert_eq!(status.routes.owned, vec![lab.private_tables[0].clone()]);
    assert!(status.dataplane.source_dest_check_disabled);
    assert_eq!(status.identity.unwrap().instance_id, nat.instance_id);
    assert_eq!(
        status.group.as_deref(),
        Some("lab"),
        "group read from the instance's natron:group tag via IMDS"
    );
    assert_eq!(sysctl(&nat.ns, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&nat.ns, "net.ipv4.conf.all.send_redirects"), "0");
    assert_eq!(sysctl(&nat.ns, "net.ipv4.conf.eth0.send_redirects"), "0");

    // systemd's notify protocol: READY=1 once the data plane is up, and
    // watchdog pings while the loop runs.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    assert!(seen.contains("READY=1"), "notify messages: {seen}");
    assert!(seen.contains("WATCHDOG=1"), "notify messages: {seen}");
}

#[test]
fn without_disabling_the_source_dest_check_traffic_fails() {
    let lab = lab();
    let nat = lab.nats[0].clone();
    let agent = lab
        .start_agent(0, lab.agent_config(), &["--test-skip-source-dest-check"])
        .unwrap();
    wait_claimed(&lab, agent);
    assert_eq!(lab.source_dest_check(&nat.instance_id), Some(true));
    // Route and NAT are in place, but the VPC router drops forwarded packets.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let err = lab
            .client_get(0, "/whoami")
            .expect_err("the source/dest check must drop forwarded traffic");
        assert!(err.contains("no answer"), "{err}");
    }
    // Turning the check off in the emulator is all it takes.
    let id = nat.instance_id.clone();
    lab.ec2(|ec2| async move {
        ec2.modify_instance_attribute()
            .instance_id(id)
            .source_dest_check(
                aws_sdk_ec2::types::AttributeBooleanValue::builder()
                    .value(false)
                    .build(),
            )
            .send()
            .await
            .unwrap()
    });
    wait_client_ok(&lab, agent);
}

#[test]
fn data_plane_survives_the_agent_and_drift_is_repaired() {
    let lab = lab();
    let ns = lab.nats[0].ns.clone();
    exec::nft_script(
        &ns,
        "table inet foreign {\n chain input {\n  type filter hook input priority 10; policy accept;\n  tcp dport 22 accept\n }\n}\n",
    )
    .unwrap();
    let foreign_before = lab.nft_table(&ns, "inet", "foreign").unwrap();

    let agent = lab.start_agent(0, lab.agent_config(), &[]).unwrap();
    wait_claimed(&lab, agent);
    wait_client_ok(&lab, agent);
    let applied = table_shape(&lab, false).expect("natron table");

    // A long transfer keeps flowing across kill -9 of the agent.
    let transfer = lab.spawn_in(&lab.clients[0].ns, internet::stream(6000));
    std::thread::sleep(Duration::from_millis(1500));
    lab.signal_agent(agent, Signal::SIGKILL);
    assert!(
        lab.wait_agent_exit(agent, Duration::from_secs(5)).is_some(),
        "agent killed"
    );
    let report = lab.join(transfer);
    assert_eq!(report.error, None, "{report:?}");
    assert!(report.elapsed >= Duration::from_millis(5500), "{report:?}");
    assert!(
        report.longest_gap < Duration::from_secs(1),
        "traffic paused: {report:?}"
    );
    assert!(report.bytes >= 6 * 8192 * 100 * 8 / 10, "{report:?}");
    assert_eq!(
        sysctl(&ns, "net.ipv4.ip_forward"),
        "1",
        "forwarding stays on"
    );

    // A restart finds the table right and leaves it alone: same rules, same
    // handles (nothing was rewritten), no duplicates.
    let again = lab.start_agent(0, lab.agent_config(), &[]).unwrap();
    lab.wait_for("restarted agent ready", Duration::from_secs(15), || {
        lab.agent_get(0, "/readyz").ok().filter(|(c, _)| *c == 200)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log(again)));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        table_shape(&lab, false),
        Some(applied.clone()),
        "restart changed the table"
    );
    assert_eq!(metric(&lab, "natron_drift_repairs_total"), 0.0);
    assert_eq!(
        lab.nft_table(&ns, "inet", "foreign"),
        Some(foreign_before.clone()),
        "foreign table touched"
    );

    // Deleting natron's table is repaired within 5 s.
    let unhandled = table_shape(&lab, true);
    exec::in_ns(&ns, "nft", &["delete", "table", "ip", "natron"]).unwrap();
    let t0 = Instant::now();
    lab.wait_for("deleted table restored", Duration::from_secs(5), || {
        (table_shape(&lab, true) == unhandled).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log(again)));
    println!("deleted table repaired in {:?}", t0.elapsed());

    // So is an edit (a flushed chain).
    exec::in_ns(&ns, "nft", &["flush", "chain", "ip", "natron", "forward"]).unwrap();
    lab.wait_for("flushed chain restored", Duration::from_secs(5), || {
        (table_shape(&lab, true) == unhandled).then_some(())
    })
    .unwrap();
    lab.wait_for("repairs counted", Duration::from_secs(3), || {
        (metric(&lab, "natron_drift_repairs_total") == 2.0).then_some(())
    })
    .unwrap();
    wait_client_ok(&lab, again);
    assert_eq!(
        lab.nft_table(&ns, "inet", "foreign"),
        Some(foreign_before),
        "foreign table touched"
    );
}

#[test]
fn malformed_config_exits_2_naming_the_key_and_changes_nothing() {
    let lab = lab();
    let nat = lab.nats[0].clone();
    let text = lab.agent_config().to_toml();
    let line = 1 + text
        .lines()
        .position(|l| l == "rise = 2")
        .expect("the lab's configuration sets health.rise");
    let bad = text.replace("rise = 2", "rise = 0");
    let agent = lab.start_agent(0, bad, &[]).unwrap();
    let code = lab
        .wait_agent_exit(agent, Duration::from_secs(10))
        .expect("agent exits");
    assert_eq!(code, Some(2));
    let log = lab.agent_log(agent);
    assert!(
        log.contains("health.rise") && log.contains(&format!(":{line}:")),
        "message names key and line {line}: {log}"
    );
    let typo = text.replace("rise = 2", "rize = 2");
    let agent = lab.start_agent(0, typo, &["--validate"]).unwrap();
    assert_eq!(
        lab.wait_agent_exit(agent, Duration::from_secs(10))
            .expect("exits"),
        Some(2)
    );
    let log = lab.agent_log(agent);
    assert!(
        log.contains("rize") && log.contains(&format!("line {line}")),
        "{log}"
    );
    let agent = lab
        .start_agent(0, lab.agent_config(), &["--validate"])
        .unwrap();
    assert_eq!(
        lab.wait_agent_exit(agent, Duration::from_secs(10))
            .expect("exits"),
        Some(0)
    );

    // Nothing changed: no table, no forwarding, the check and routes as they were.
    assert!(lab.nft_table(&nat.ns, "ip", "natron").is_none());
    assert_eq!(sysctl(&nat.ns, "net.ipv4.ip_forward"), "0");
    assert_eq!(lab.source_dest_check(&nat.instance_id), Some(true));
    assert_eq!(lab.default_route_of(&lab.private_tables[0]), None);
}

#[test]
fn unreachable_metadata_service_gives_503_with_the_reason() {
    let lab = lab();
    let agent = lab
        .start_agent_with_env(
            0,
            lab.agent_config(),
            &[],
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1/")],
        )
        .unwrap();
    let body = lab
        .wait_for(
            "503 naming the metadata service",
            Duration::from_secs(15),
            || {
                lab.agent_readyz(0).ok().filter(|(code, body)| {
                    *code == 503
                        && body.reasons.iter().any(|r| {
                            r.area == Area::Metadata && r.message.contains("/latest/meta-data")
                        })
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log(agent)))
        .1;
    assert!(!body.ready, "{body:?}");
    // Still alive several seconds later, and nothing was changed meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.wait_agent_exit(agent, Duration::from_millis(10))
            .is_none(),
        "agent crashed:\n{}",
        lab.agent_log(agent)
    );
    assert_eq!(lab.agent_get(0, "/healthz").unwrap().0, 200);
    assert!(lab.nft_table(&lab.nats[0].ns, "ip", "natron").is_none());
}

/// A conntrack table full of flows the kernel may not evict refuses new
/// flows, but not those to the agent's own port (ruleset rules
/// `untracked-*`): a scrape on the instance and a peer's check over the VPC
/// still get answers, and the refused flows are counted.
#[test]
fn a_full_conntrack_table_leaves_the_agents_endpoints_reachable() {
    let lab = lab();
    let agent = lab.start_agent(0, lab.agent_config(), &[]).unwrap();
    wait_claimed(&lab, agent);
    let max = lab
        .agent_status(0)
        .unwrap()
        .dataplane
        .conntrack
        .expect("conntrack in /status")
        .max;
    lab.fill_conntrack(0, max as usize, 5_000).unwrap();
    // Over loopback, as a scrape on the instance: the drops are counted.
    lab.wait_for("refused flows counted", Duration::from_secs(10), || {
        (metric(&lab, "natron_conntrack_drops_total") > 0.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(agent)));
    assert!(
        lab.agent_log(agent)
            .contains("conntrack table full: new flows are being dropped"),
        "{}",
        lab.agent_log(agent)
    );
    // From another host of the VPC, as a peer asks.
    let nat = lab.nats[0].ip.to_string();
    let answer = lab.run_in(&lab.clients[0].ns, async move {
        client::get(
            &nat,
            natron_lab::lab::AGENT_PORT,
            "/readyz",
            Duration::from_secs(3),
        )
        .await
    });
    let (code, body) = answer.unwrap_or_else(|e| panic!("agent over the VPC: {e}"));
    assert!(code == 200 || code == 503, "{code} {body}");
}

/// A supervised task that dies takes the agent down with a non-zero exit
/// (systemd restarts it), naming the task, and moves no route: the kernel
/// keeps forwarding.
#[test]
fn a_dead_task_stops_the_agent_and_moves_nothing() {
    let lab = lab();
    let agent = lab
        .start_agent(
            0,
            lab.agent_config(),
            &[
                "--test-panic-task",
                "heartbeat",
                "--test-panic-after-secs",
                "8",
            ],
        )
        .unwrap();
    wait_claimed(&lab, agent);
    let (table, me) = (
        lab.private_tables[0].clone(),
        lab.nats[0].instance_id.clone(),
    );
    let code = lab
        .wait_agent_exit(agent, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("agent still running\n{}", lab.agent_log(agent)));
    assert_eq!(code, Some(1), "{}", lab.agent_log(agent));
    let log = lab.agent_log(agent);
    assert!(log.contains("task heartbeat panicked"), "{log}");
    assert_eq!(lab.table_owner(&table).as_deref(), Some(me.as_str()));
    lab.wait_for("client still served", Duration::from_secs(5), || {
        lab.client_get(0, "/whoami").ok()
    })
    .unwrap();
}
