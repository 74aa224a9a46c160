//! Commands that need no cloud.

use std::process::Command;

fn natron(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_natron"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn cost_compares_with_nat_gateways() {
    let (code, out, err) = natron(&["cost", "--gb-per-month", "1000", "--azs", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("prices recorded 2025-01"), "{out}");
    assert!(out.contains("3 × t4g.nano / NAT gateway hours"), "{out}");
    assert!(out.contains("natron costs"), "{out}");
    let (code, out, _) = natron(&[
        "--output",
        "json",
        "cost",
        "--gb-per-month",
        "1000",
        "--instance-type",
        "c7gn.medium",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (natron, gateway) = (
        v["natron_total"].as_f64().unwrap(),
        v["nat_gateway_total"].as_f64().unwrap(),
    );
    // 2 × 0.045 × 730 + 1000 × 0.045 more for the gateways, and the
    // instances' hours instead: 2 × 0.0624 × 730 + 4 GiB volumes.
    let expected = (2.0 * 0.045 * 730.0 + 45.0) - (2.0 * 0.0624 * 730.0 + 2.0 * 4.0 * 0.08);
    assert!((gateway - natron - expected).abs() < 1e-6, "{v}");
}

#[test]
fn unknown_instance_type_is_bad_input() {
    let (code, _, err) = natron(&["cost", "--gb-per-month", "1", "--instance-type", "x9.tiny"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("x9.tiny"), "{err}");
}

#[test]
fn region_is_required_for_cloud_commands() {
    let (code, _, err) = natron(&["status", "--vpc", "vpc-1", "--group", "g"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no AWS region"), "{err}");
}

#[test]
fn cost_needs_at_least_one_az() {
    let (code, _, err) = natron(&["cost", "--gb-per-month", "1", "--azs", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--azs"), "{err}");
}

#[test]
fn a_closed_or_full_stdout_is_an_error_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_natron"))
        .args(["cost", "--gb-per-month", "1000"])
        .env_clear()
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("could not write the output"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_unknown_region_is_bad_input_before_any_call() {
    let (code, _, err) = natron(&[
        "status",
        "--vpc",
        "vpc-1",
        "--group",
        "g",
        "--region",
        "xx-nowhere-9",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("region \"xx-nowhere-9\": not an AWS region"),
        "{err}"
    );
}
