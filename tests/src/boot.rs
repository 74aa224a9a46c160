//! The image boot test: the built disk image boots under QEMU (TCG, NVMe
//! volume, UEFI or BIOS, x86_64 or arm64) as the NAT instance of a one-AZ
//! lab, on a TAP link to the lab's VPC router (see `lab::vm`): its DHCP,
//! IMDS, the EC2 emulator and the internet server are reached as on AWS.
//! The agent runs from its real unit with the configuration `natron apply`
//! writes as user data; the test checks what it did, from its /status, the
//! emulator, the lab's client and the console.

use std::path::Path;
use std::time::Duration;

use crate::lab::{Lab, LabSpec, Until};
use crate::vpc::Target;
use crate::LabError;

pub use crate::vm::{Arch, Firmware};

#[derive(Debug)]
pub struct Report {
    /// From QEMU's start to the agent's /readyz answering 200.
    pub ready_after: Duration,
    pub checks: Vec<String>,
}

/// Boots `image` and checks the agent; `bound` is how long the agent may
/// take to be ready after power-on.
pub fn run(
    image: &Path,
    arch: Arch,
    firmware: Firmware,
    bound: Duration,
) -> Result<Report, LabError> {
    let lab = Lab::start(LabSpec::with_azs(1).with_vm_nat_on(0, image.into(), arch, firmware))?;
    let mut config = lab.vm_nat_config();
    config.ec2.route_interval = Duration::from_secs(2);
    let ready_after = lab.boot_vm_nat(0, &config, Until::Ready, bound)?;

    // The route claim follows readiness within a route interval; the
    // client then egresses through the VM.
    let (table, nat) = (&lab.private_tables[0], &lab.nats[0]);
    let eip = lab.spec.azs[0].eip;
    let egress = lab.wait_for(
        "the client egresses via the VM",
        Duration::from_secs(30),
        || lab.egress_via(0, eip),
    );
    let status = lab.agent_status(0).map_err(LabError::Setup)?;
    let mut checks = Vec::new();
    let mut expect = |ok: bool, what: String| {
        checks.push(format!("{} {what}", if ok { "ok  " } else { "FAIL" }));
    };
    let identity = status.identity.as_ref().map(|i| i.instance_id.as_str());
    expect(
        identity == Some(nat.instance_id.as_str()),
        format!("identity read from the metadata service ({identity:?})"),
    );
    let dp = &status.dataplane;
    expect(dp.forwarding, "IPv4 forwarding on".into());
    expect(
        dp.ruleset_in_place,
        "nftables table ip natron loaded".into(),
    );
    expect(
        dp.flowtable == Some(true),
        format!(
            "with the flowtable (the guest kernel has it): {:?}",
            dp.flowtable
        ),
    );
    expect(
        dp.listing_matches_render == Some(true),
        format!(
            "the kernel lists table ip natron as rendered: {:?}",
            dp.listing_matches_render
        ),
    );
    expect(
        dp.source_dest_check_disabled,
        "source/dest check disabled (agent's view)".into(),
    );
    let sdc = lab.source_dest_check(&nat.instance_id);
    expect(
        sdc == Some(false),
        format!("source/dest check off in EC2 ({sdc:?})"),
    );
    let target = lab.default_route_of(table);
    expect(
        matches!(&target, Some(Target::Interface(e)) if *e == nat.interface_id)
            || matches!(&target, Some(Target::Instance(i)) if *i == nat.instance_id),
        format!("route table {table} claimed: 0.0.0.0/0 → {target:?}"),
    );
    expect(
        egress.is_ok(),
        format!("the private client reaches the internet via {eip}: {egress:?}"),
    );
    let log = lab.vm_nat_console(0);
    expect(
        log.contains("Started natron-agent.service")
            || log.contains("Started natron NAT instance agent"),
        "started under systemd (console)".into(),
    );
    expect(
        log.contains("identity resolved"),
        "agent's log on the serial console".into(),
    );
    expect(
        log.contains("Initializing machine ID from random generator"),
        "machine-id made on first boot (none baked in)".into(),
    );
    // Built for this kernel at image build and loaded at boot (it
    // translates nothing until an instance is made: issue 16).
    let jool = log
        .lines()
        .find(|l| l.contains("NAT64 Jool v") && l.contains("module inserted"));
    expect(
        jool.is_some(),
        format!("NAT64's translator loaded by the image's kernel: {jool:?}"),
    );
    let grown = grown_blocks(&log);
    expect(
        grown.is_some_and(|(from, to)| to > from),
        format!("root filesystem grown to the volume (blocks {grown:?})"),
    );
    expect(
        ready_after <= bound,
        format!(
            "ready {:.1} s after power-on (bound {bound:?})",
            ready_after.as_secs_f64()
        ),
    );
    lab.power_off_vm_nat(0)?;
    let report = Report {
        ready_after,
        checks,
    };
    if report.checks.iter().any(|c| c.starts_with("FAIL")) {
        let lines: Vec<&str> = log.lines().collect();
        return Err(LabError::Setup(format!(
            "boot test failed:\n{}\n/status: {}\n--- console (end) ---\n{}",
            report.checks.join("\n"),
            serde_json::to_string(&status).unwrap_or_default(),
            lines[lines.len().saturating_sub(60)..].join("\n")
        )));
    }
    Ok(report)
}

/// (from, to) of the kernel's "resizing filesystem from A to B blocks".
fn grown_blocks(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .find(|l| l.contains("resizing filesystem from"))?;
    let rest = line.split("resizing filesystem from ").nth(1)?;
    let mut words = rest.split_whitespace();
    let from = words.next()?.parse().ok()?;
    let to = words.nth(1)?.parse().ok()?;
    Some((from, to))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_grown_filesystem_is_read_off_the_kernel_log() {
        let log = "[ 3.1] EXT4-fs (nvme0n1p2): resizing filesystem from 141312 to 491264 blocks\n";
        assert_eq!(super::grown_blocks(log), Some((141312, 491264)));
        assert_eq!(super::grown_blocks("nothing"), None);
    }
}
