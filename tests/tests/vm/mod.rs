//! What every test of the image as a NAT of the lab shares: the image,
//! how long it may take to boot, and what to print when it fails.

use std::path::PathBuf;
use std::time::Duration;

use natron_contract::status::Status;
use natron_lab::lab::Lab;

/// Power-on to ready, under TCG, must stay within this (the goal is 30 s;
/// the bound leaves room for a loaded CI machine).
pub const BOOT_BOUND: Duration = Duration::from_secs(120);

/// The x86_64 disk image, as `cargo xtask test` names it.
pub fn image() -> PathBuf {
    std::env::var_os("NATRON_IMAGE")
        .map(PathBuf::from)
        .expect("NATRON_IMAGE: the x86_64 disk image (cargo xtask test sets it)")
}

/// Waits until AZ `az`'s client reaches the internet server through the
/// NAT whose Elastic IP is `eip`.
pub fn wait_egress_via(lab: &Lab, az: usize, eip: std::net::Ipv4Addr, within: Duration) {
    lab.wait_for("the client egresses via the NAT", within, || {
        lab.egress_via(az, eip)
    })
    .unwrap_or_else(|e| panic!("{e}\n--- console (end) ---\n{}", tail(lab, 0)));
}

/// The end of AZ `az`'s VM NAT's console.
pub fn tail(lab: &Lab, az: usize) -> String {
    let console = lab.vm_nat_console(az);
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// AZ a's NAT's /status, or a panic with the end of its console.
pub fn status(lab: &Lab) -> Status {
    lab.agent_status(0)
        .unwrap_or_else(|e| panic!("{e}\n--- console (end) ---\n{}", tail(lab, 0)))
}
