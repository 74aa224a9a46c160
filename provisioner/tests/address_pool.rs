//! `natron apply --addresses N` against the EC2 emulator: the slots'
//! Elastic IPs are allocated once and tagged for the agents, the user data
//! and policy carry the pool, a pool the instance type cannot hold is
//! refused before any change, a smaller pool releases its extra slots, and
//! destroy leaves nothing.

mod common;

use common::*;
use natron::cloud::{Aws, Cloud};
use natron_lab::emulator::Loopback;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_pool_is_applied_kept_shrunk_and_destroyed() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let args = |addresses: &str| apply_args(&v, "g1", &["--addresses", addresses]);

    // t4g.nano has 2 private addresses per interface: 3 is refused, and
    // nothing is created.
    let out = natron_with(&emu, &args("3")).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains("--addresses 3") && out.stderr.contains("allows 2"),
        "{out}"
    );
    assert_eq!(tagged(&emu, &v.id, "g1").await, Vec::<String>::new());

    let agents = fake_agents(ec2.clone(), "g1");
    let out = natron_with(&emu, &args("2")).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("address pool, slot 1"), "{out}");
    let cloud = Aws::new(&emu.sdk_config().await);
    let inv = cloud.inventory(&v.id, "g1").await.unwrap();
    let mut slots: Vec<(String, Option<u32>)> = inv
        .addresses
        .iter()
        .map(|a| (a.tags["natron:az"].clone(), a.slot()))
        .collect();
    slots.sort();
    assert_eq!(
        slots,
        [(AZ_A.to_string(), Some(1)), (AZ_B.to_string(), Some(1))],
        "one slot address per AZ, no AZ address without --elastic-ip"
    );
    assert_user_data(&inv, "[nat]\naddresses = 2");
    let options = natron::documents::AgentOptions {
        addresses: 2,
        ..Default::default()
    };
    assert_eq!(
        inv.role.as_ref().unwrap().policies["natron-agent"],
        natron::documents::agent_policy("g1", "aws", &options)
    );

    // Again: nothing to change.
    let out = natron_with(&emu, &args("2")).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("nothing to change"), "{out}");

    // Back to one address: the slots are released, nothing else changes
    // but the launch settings.
    let out = natron_with(&emu, &args("1")).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout.matches("] release Elastic IP").count(),
        2,
        "{out}"
    );
    let inv = cloud.inventory(&v.id, "g1").await.unwrap();
    assert!(inv.addresses.is_empty(), "{:?}", inv.addresses);
    agents.abort();

    let out = natron(&emu, &["destroy", "--vpc", &v.id, "--group", "g1", "--yes"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(tagged(&emu, &v.id, "g1").await, Vec::<String>::new());
}

/// `natron cost --addresses 3` prices the extra addresses on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_prices_the_pools_addresses() {
    let emu = Loopback::start().await.unwrap();
    let one = natron(&emu, &["cost", "--gb-per-month", "100", "--output", "json"]).await;
    let three = natron(
        &emu,
        &[
            "cost",
            "--gb-per-month",
            "100",
            "--addresses",
            "3",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!((one.code, three.code), (0, 0), "{one}\n{three}");
    let (one, three): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&one.stdout).unwrap(),
        serde_json::from_str(&three.stdout).unwrap(),
    );
    // 2 AZs x 2 more addresses x $0.005 x 730 h, on both sides.
    for side in ["natron_total", "nat_gateway_total"] {
        let more = three[side].as_f64().unwrap() - one[side].as_f64().unwrap();
        assert!((more - 14.6).abs() < 1e-6, "{side}: {more}");
    }
}
