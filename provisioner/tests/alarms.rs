//! `natron apply --alarms` against the emulator (CloudWatch's alarms are
//! moto's too): both alarms put with the group's query, kept on a second
//! apply, deleted by destroy; `--alarms` without the metrics is a usage
//! error; and the exported template with alarms and an address pool
//! passes cfn-lint.

mod common;

use common::*;
use natron_lab::emulator::Loopback;

async fn alarms(emu: &Loopback) -> Vec<aws_sdk_cloudwatch::types::MetricAlarm> {
    aws_sdk_cloudwatch::Client::new(&emu.sdk_config().await)
        .describe_alarms()
        .alarm_name_prefix("natron-g1-")
        .send()
        .await
        .unwrap()
        .metric_alarms()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_put_kept_and_destroyed() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let out = natron_with(&emu, &apply_args(&v, "g1", &["--alarms"])).await;
    assert_eq!(out.code, 2, "--alarms needs --cloudwatch-metrics: {out}");
    assert!(out.stderr.contains("--cloudwatch-metrics"), "{out}");
    let args = apply_args(&v, "g1", &["--alarms", "--cloudwatch-metrics"]);

    let agents = fake_agents(ec2.clone(), "g1");
    let out = natron_with(&emu, &args).await;
    assert_eq!(out.code, 0, "{out}");
    let put = alarms(&emu).await;
    let mut names: Vec<&str> = put.iter().filter_map(|a| a.alarm_name()).collect();
    names.sort();
    assert_eq!(names, ["natron-g1-not-ready", "natron-g1-port-allocation"]);
    let not_ready = put
        .iter()
        .find(|a| a.alarm_name() == Some("natron-g1-not-ready"))
        .unwrap();
    assert_eq!(not_ready.threshold(), Some(2.0), "two NATs");
    let query = not_ready.metrics()[0].expression().unwrap();
    assert!(
        query.contains("SUM(Ready)") && query.contains("WHERE Group = 'g1'"),
        "{query}"
    );
    let out = natron_with(&emu, &args).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("nothing to change"), "{out}");
    agents.abort();

    let out = natron(&emu, &["destroy", "--vpc", &v.id, "--group", "g1", "--yes"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(alarms(&emu).await.is_empty());
    assert_eq!(tagged(&emu, &v.id, "g1").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_with_alarms_and_a_pool_passes_cfn_lint() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let new_private = format!("{AZ_B}=10.0.11.0/24");
    let out = natron(
        &emu,
        &[
            "export",
            "--format",
            "cloudformation",
            "--vpc",
            &v.id,
            "--group",
            "g1",
            "--private",
            &new_private,
            "--addresses",
            "2",
            "--cloudwatch-metrics",
            "--alarms",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    let template: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let resources = template["Resources"].as_object().unwrap();
    let count = |kind: &str| resources.values().filter(|r| r["Type"] == kind).count();
    assert_eq!(count("AWS::CloudWatch::Alarm"), 2);
    assert_eq!(count("AWS::EC2::EIP"), 2, "one slot address per AZ");
    let file = std::env::temp_dir().join(format!("natron-alarms-{}.json", std::process::id()));
    std::fs::write(&file, &out.stdout).unwrap();
    let errors = cfn_lint_errors(&file);
    let _ = std::fs::remove_file(&file);
    assert_eq!(errors, None, "cfn-lint errors");
}
