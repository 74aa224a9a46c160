//! The NAT Gateway's metrics in CloudWatch (issue 15): agents publish to
//! the emulator's CloudWatch, the values read back with GetMetricData are
//! what the agent counted (each direction's bytes what crossed the wire),
//! and a NAT whose CloudWatch is unreachable serves as well as one whose
//! is not.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use natron_contract::readyz::Area;
use natron_lab::emulator;
use natron_lab::lab::{Lab, LabSpec};

/// Every datapoint of `name` for NAT `instance` in the emulator's
/// CloudWatch, by statistic (Sum, Maximum), over the last hour.
fn read_back(lab: &Lab, instance: &str, name: &str) -> BTreeMap<&'static str, Vec<f64>> {
    let (instance, name, group) = (
        instance.to_string(),
        name.to_string(),
        lab.spec.group.clone(),
    );
    let endpoint = format!("http://127.0.0.1:{}", emulator::PORT);
    lab.run_in(&lab.ctl_ns, async move {
        let cw = aws_sdk_cloudwatch::Client::new(&emulator::sdk_config(&endpoint).await);
        let metric = Metric::builder()
            .namespace("natron")
            .metric_name(&name)
            .dimensions(
                Dimension::builder()
                    .name("NatInstanceId")
                    .value(&instance)
                    .build(),
            )
            .dimensions(Dimension::builder().name("Group").value(&group).build())
            .build();
        let query = |id: &str, stat: &str| {
            MetricDataQuery::builder()
                .id(id)
                .metric_stat(
                    MetricStat::builder()
                        .metric(metric.clone())
                        .period(3600)
                        .stat(stat)
                        .build(),
                )
                .build()
        };
        let now = SystemTime::now();
        let answer = cw
            .get_metric_data()
            .metric_data_queries(query("sum", "Sum"))
            .metric_data_queries(query("max", "Maximum"))
            .start_time(DateTime::from(now - Duration::from_secs(3600)))
            .end_time(DateTime::from(now + Duration::from_secs(600)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetMetricData {name}: {e:?}"));
        let mut by = BTreeMap::new();
        for r in answer.metric_data_results() {
            let stat = if r.id() == Some("sum") {
                "Sum"
            } else {
                "Maximum"
            };
            by.insert(stat, r.values().to_vec());
        }
        by
    })
}

/// NAT a publishes every 2 s; its ConnectionAttemptCount, read back,
/// sums to exactly what it counted; NAT b's CloudWatch refuses
/// connections: b is ready, serves its AZ, warns and counts the failures.
#[test]
fn the_nat_gateway_metrics_reach_cloudwatch_and_an_outage_changes_nothing_else() {
    let lab = Lab::start(LabSpec::with_azs(2)).expect("lab starts");
    let mut config = lab.agent_config();
    config.metrics.cloudwatch.enabled = true;
    config.metrics.cloudwatch.interval = Duration::from_secs(2);
    // The least the agent takes: a connection left idle this long is the
    // NAT Gateway's IdleTimeoutCount.
    config.conntrack.tcp_timeout_established = Duration::from_secs(60);
    let a = lab.start_agent(0, config.clone(), &[]).unwrap();
    let b = lab
        .start_agent_with_env(
            1,
            config,
            &[],
            &[("AWS_ENDPOINT_URL_CLOUDWATCH", "http://127.0.0.1:9")],
        )
        .unwrap();
    lab.wait_egress(0, a);
    lab.wait_egress(1, b);
    // One connection through NAT a is opened, used once, then left idle.
    let idle = lab.spawn_in(&lab.clients[0].ns, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = (
            natron_lab::internet::SERVER,
            natron_lab::internet::ECHO_PORT,
        );
        let mut s = tokio::net::TcpStream::connect(server).await?;
        s.write_all(b"x").await?;
        s.read_exact(&mut [0u8; 1]).await?;
        Ok::<_, std::io::Error>(s)
    });
    let idle = lab.join(idle).expect("a connection through NAT a");
    for _ in 0..10 {
        lab.client_get(0, "/").unwrap();
    }
    // A known payload each way: 4 MiB down, 2 MiB up.
    const DOWN: f64 = 4.0 * 1048576.0;
    const UP: f64 = 2.0 * 1048576.0;
    lab.run_in(&lab.clients[0].ns, async {
        natron_lab::internet::download(DOWN as u64, Duration::from_secs(10)).await?;
        natron_lab::internet::upload(UP as u64, Duration::from_secs(10)).await
    })
    .unwrap();
    // Two publications after the traffic: everything counted is out.
    let published = |az| lab.agent_metrics(az).unwrap()["natron_cloudwatch_publications_total"];
    let p0 = published(0);
    lab.wait_for("two more publications", Duration::from_secs(20), || {
        (published(0) >= p0 + 2.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(a)));
    let counted = lab.agent_metrics(0).unwrap()["natron_nat_connections_total"];
    assert!(counted >= 10.0, "{counted} connections counted");

    let nat_a = lab.nats[0].instance_id.clone();
    let attempts: f64 = read_back(&lab, &nat_a, "ConnectionAttemptCount")["Sum"]
        .iter()
        .sum();
    assert_eq!(
        attempts, counted,
        "ConnectionAttemptCount in CloudWatch against natron_nat_connections_total"
    );
    let ready = read_back(&lab, &nat_a, "Ready");
    assert_eq!(ready["Maximum"].iter().cloned().fold(0.0, f64::max), 1.0);
    let errors: f64 = read_back(&lab, &nat_a, "ErrorPortAllocation")["Sum"]
        .iter()
        .sum();
    assert_eq!(errors, 0.0);
    let routes = read_back(&lab, &nat_a, "RoutesOwned");
    assert_eq!(routes["Maximum"].iter().cloned().fold(0.0, f64::max), 1.0);
    let bytes: f64 = read_back(&lab, &nat_a, "BytesForwarded")["Sum"]
        .iter()
        .sum();
    assert!(bytes > 0.0, "BytesForwarded {bytes}");

    // Each direction: at least the payload, at most its headers more; what
    // comes in from one side goes out to the other, byte for byte (IP
    // bytes both, the NAT's own traffic taken off: a 14-byte link header
    // per packet or the agent's own calls left in would show here).
    let sum = |name: &str| -> f64 { read_back(&lab, &nat_a, name)["Sum"].iter().sum() };
    let (in_src, out_dst) = (sum("BytesInFromSource"), sum("BytesOutToDestination"));
    let (in_dst, out_src) = (sum("BytesInFromDestination"), sum("BytesOutToSource"));
    let report = format!(
        "in from source {in_src}, out to destination {out_dst}, in from destination {in_dst}, out to source {out_src}"
    );
    eprintln!("{report}");
    assert!((DOWN..DOWN * 1.1).contains(&in_dst), "{report}");
    assert!((UP..UP * 1.1).contains(&in_src), "{report}");
    // Exact but for a packet of the agent's own in flight at the last
    // reading (a 14-byte header per packet would be thousands of bytes).
    let close = |a: f64, b: f64| (a - b).abs() <= 300.0;
    assert!(close(in_dst, out_src), "{report}");
    assert!(close(in_src, out_dst), "{report}");
    // The agent's own calls and probes crossed the wire too, and were
    // taken off.
    for own in ["own-in-outside", "own-out-outside"] {
        assert!(lab.rule_packets(0, own) > 0.0, "no {own} traffic counted");
    }
    let (p_in, p_out) = (sum("PacketsInFromDestination"), sum("PacketsOutToSource"));
    assert!(
        p_in > 0.0 && (p_in - p_out).abs() <= 5.0,
        "packets {p_in} in, {p_out} out"
    );
    // Every TCP connection made through NAT a was answered: at least the
    // twelve of this test, never more than the connections translated.
    let established = sum("ConnectionEstablishedCount");
    assert!(
        (12.0..=counted).contains(&established),
        "ConnectionEstablishedCount {established}, {counted} connections translated"
    );

    // Every connection so far closed as it should, or is young.
    assert_eq!(sum("IdleTimeoutCount"), 0.0);

    // Both tables, listed in one nft run every pass, compared equal to the
    // render the whole time: never a rewrite, so no counter was reset.
    assert_eq!(
        lab.agent_metrics(0).unwrap()["natron_drift_repairs_total"],
        0.0
    );

    // NAT b: its CloudWatch refuses, nothing else changes.
    let status = lab.agent_status(1).unwrap();
    assert!(status.ready, "{:?}", status.reasons);
    let warning = status
        .warnings
        .iter()
        .find(|w| w.area == Area::CloudWatch)
        .unwrap_or_else(|| panic!("no cloudwatch warning: {:?}", status.warnings));
    assert!(
        warning.message.contains("PutMetricData"),
        "{}",
        warning.message
    );
    let m = lab.agent_metrics(1).unwrap();
    assert!(m["natron_cloudwatch_failures_total"] >= 1.0);
    assert_eq!(m["natron_cloudwatch_publications_total"], 0.0);
    assert!(
        read_back(&lab, &lab.nats[1].instance_id, "Ready")["Sum"].is_empty(),
        "nothing of NAT b reached CloudWatch"
    );
    lab.wait_egress(1, b);

    // Every call is one the policy `apply --cloudwatch-metrics` writes allows.
    let policy = natron::documents::agent_policy(
        &lab.spec.group,
        "aws",
        &natron::documents::AgentOptions::with_metrics(true),
    );
    let allowed = natron::documents::allowed_actions(&policy);
    let called: std::collections::BTreeSet<String> = lab
        .ec2_proxy
        .requests()
        .iter()
        .map(|r| match r.action.as_str() {
            "PutMetricData" => "cloudwatch:PutMetricData".to_string(),
            ec2 => format!("ec2:{ec2}"),
        })
        .collect();
    assert!(called.contains("cloudwatch:PutMetricData"), "{called:?}");
    let outside: Vec<&String> = called.difference(&allowed).collect();
    assert!(outside.is_empty(), "not allowed: {outside:?}");

    // The idle connection, never closed, is counted once conntrack's 60 s
    // have run out on NAT a.
    let idle_timeouts = lab
        .wait_for(
            "IdleTimeoutCount in CloudWatch",
            Duration::from_secs(120),
            || {
                let n = sum("IdleTimeoutCount");
                (n >= 1.0).then_some(n)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(a)));
    assert_eq!(idle_timeouts, 1.0);
    assert_eq!(
        lab.agent_metrics(0).unwrap()["natron_nat_idle_timeouts_total"],
        1.0
    );
    drop(idle);
}
