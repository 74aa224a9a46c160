//! The image boot test: the built disk image boots under QEMU (TCG, NVMe
//! disk, UEFI or BIOS) and the agent inside does its work against the EC2
//! emulator and an IMDS stub, both on the host's 127.0.0.1. The guest's only
//! network is QEMU's user network with `restrict=on`: it reaches nothing but
//! the forwards set here (IMDS at 169.254.169.254, the emulator, an egress
//! probe target), and the test reaches the agent's port through one host
//! forward on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::emulator::Loopback;
use crate::{imds, vpc, LabError};

const GROUP: &str = "boot";
const AZ: &str = "us-east-1a";
/// Where the guest finds the emulator and the probe target (QEMU guest
/// forwards inside its 169.254.0.0/16 user network).
const GUEST_EC2: &str = "169.254.0.100:5000";
// Distinct guest ports: QEMU names each forward after its port alone.
const GUEST_PROBE: &str = "169.254.0.101:8080";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Arch, String> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "arm64" => Ok(Arch::Arm64),
            _ => Err(format!("arch {s:?}: expected x86_64 or arm64")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Uefi,
    Bios,
}

impl Firmware {
    pub fn parse(s: &str) -> Result<Firmware, String> {
        match s {
            "uefi" => Ok(Firmware::Uefi),
            "bios" => Ok(Firmware::Bios),
            _ => Err(format!("firmware {s:?}: expected uefi or bios")),
        }
    }
}

#[derive(Debug)]
pub struct Report {
    /// From QEMU's start to the agent's /readyz answering 200.
    pub ready_after: Duration,
    pub checks: Vec<String>,
}

/// The agent configuration the stub serves as user data (what `natron
/// apply` would write, plus the test's endpoints). The egress interface is
/// named: QEMU's DHCP in a 169.254.0.0/16 network gives no default route
/// (on EC2 the VPC's DHCP does).
fn user_data() -> String {
    format!(
        "group = \"{GROUP}\"\n[nat]\negress_interface = \"eth0\"\n[ec2]\nendpoint_url = \"http://{GUEST_EC2}\"\nroute_interval = \"2s\"\n\
         [health]\ntargets = [\"http://{GUEST_PROBE}/\"]\n"
    )
}

fn err(what: &str, e: impl std::fmt::Display) -> LabError {
    LabError::Emulator(format!("{what}: {e}"))
}

/// Boots `image` and checks the agent; `bound` is how long the agent may
/// take to be ready after power-on.
pub async fn run(
    image: &Path,
    arch: Arch,
    firmware: Firmware,
    bound: Duration,
) -> Result<Report, LabError> {
    let emu = Loopback::start().await?;
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    let spec = |kind, tags: Vec<aws_sdk_ec2::types::Tag>| {
        aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(kind)
            .set_tags(Some(tags))
            .build()
    };
    let vpc_id = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .map_err(|e| err("CreateVpc", e))?
        .vpc()
        .and_then(|v| v.vpc_id())
        .unwrap_or_default()
        .to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.0.0.0/24")
        .availability_zone(AZ)
        .send()
        .await
        .map_err(|e| err("CreateSubnet", e))?
        .subnet()
        .and_then(|s| s.subnet_id())
        .unwrap_or_default()
        .to_string();
    let instance = ec2
        .run_instances()
        .image_id("ami-12345678")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Nano)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet)
        .tag_specifications(spec(
            aws_sdk_ec2::types::ResourceType::Instance,
            vec![tag("natron:group", GROUP), tag("natron:az", AZ)],
        ))
        .send()
        .await
        .map_err(|e| err("RunInstances", e))?
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .unwrap_or_default()
        .to_string();
    let table = ec2
        .create_route_table()
        .vpc_id(&vpc_id)
        .tag_specifications(spec(
            aws_sdk_ec2::types::ResourceType::RouteTable,
            vec![tag("natron:group", GROUP), tag("natron:az", AZ)],
        ))
        .send()
        .await
        .map_err(|e| err("CreateRouteTable", e))?
        .route_table()
        .and_then(|t| t.route_table_id())
        .unwrap_or_default()
        .to_string();

    // IMDS as this instance, whoever asks; user data carries the config.
    let view = vpc::read(&ec2, &vpc_id).await?;
    let mut stub = imds::Imds::new(Arc::new(RwLock::new(view)), crate::emulator::REGION);
    stub.fixed = Some(instance.clone());
    stub.user_data = Some(user_data());
    let imds_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| LabError::Setup(format!("IMDS stub: {e}")))?;
    let imds_port = imds_listener
        .local_addr()
        .map_err(|e| LabError::Setup(e.to_string()))?
        .port();
    tokio::spawn(stub.serve(imds_listener));
    // The egress probe target.
    let probe_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| LabError::Setup(format!("probe target: {e}")))?;
    let probe_port = probe_listener
        .local_addr()
        .map_err(|e| LabError::Setup(e.to_string()))?
        .port();
    tokio::spawn(async move {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok\n" }));
        let _ = axum::serve(probe_listener, app).await;
    });
    let moto_port = emu
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| LabError::Setup(format!("emulator endpoint {}", emu.endpoint)))?;
    let agent_port = crate::emulator::free_port()?;

    let dir = std::env::temp_dir().join(format!("natron-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| LabError::Setup(e.to_string()))?;
    let serial = dir.join("serial.log");
    let _ = std::fs::remove_file(&serial);
    let (ec2_host, ec2_port) = GUEST_EC2.split_once(':').expect("host:port");
    let (probe_host, probe_guest_port) = GUEST_PROBE.split_once(':').expect("host:port");
    // A `tcp:` guest forward is one stream for QEMU's whole life; `cmd:`
    // runs socat per connection, so each HTTP connection gets its own.
    let netdev = format!(
        "user,id=n0,net=169.254.0.0/16,restrict=on,\
         guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:{imds_port},\
         guestfwd=tcp:{ec2_host}:{ec2_port}-cmd:socat - TCP:127.0.0.1:{moto_port},\
         guestfwd=tcp:{probe_host}:{probe_guest_port}-cmd:socat - TCP:127.0.0.1:{probe_port},\
         hostfwd=tcp:127.0.0.1:{agent_port}-:9100"
    );
    // A 2 GiB volume over the image (as EC2 gives a bigger EBS volume than
    // the snapshot): first boot must grow the root filesystem into it.
    let disk = dir.join("volume.qcow2");
    let _ = std::fs::remove_file(&disk);
    let backing = image
        .canonicalize()
        .map_err(|e| LabError::Setup(format!("{}: {e}", image.display())))?;
    let made = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&backing)
        .arg(&disk)
        .arg("2G")
        .status()
        .await
        .map_err(|e| LabError::Setup(format!("qemu-img: {e}")))?;
    if !made.success() {
        return Err(LabError::Setup(format!(
            "qemu-img create {}: {made}",
            disk.display()
        )));
    }
    let (binary, machine, firmware_files) = match (arch, firmware) {
        (Arch::X86_64, Firmware::Uefi) => (
            "qemu-system-x86_64",
            ["-machine", "q35"],
            Some((
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            )),
        ),
        (Arch::X86_64, Firmware::Bios) => ("qemu-system-x86_64", ["-machine", "q35"], None),
        // Graviton boots UEFI only.
        (Arch::Arm64, _) => (
            "qemu-system-aarch64",
            ["-machine", "virt,gic-version=max"],
            Some((
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            )),
        ),
    };
    let mut qemu = tokio::process::Command::new(binary);
    qemu.args(machine)
        .args(["-accel", "tcg", "-m", "1024", "-smp", "2"]);
    let serial2 = dir.join("serial-ttyS0.log");
    if arch == Arch::Arm64 {
        // virt's own UART is ttyAMA0; Graviton's console, which the image
        // names last (so /dev/console, where the journal goes), is ttyS0: a
        // PCI 16550 gives the guest one.
        qemu.args(["-cpu", "max"])
            .arg("-chardev")
            .arg(format!("file,id=ttys0,path={}", serial2.display()))
            .args(["-device", "pci-serial,chardev=ttys0"]);
    }
    qemu.args(["-display", "none", "-no-reboot", "-nodefaults"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "if=none,id=disk,format=qcow2,file={}",
            disk.display()
        ))
        .args(["-device", "nvme,drive=disk,serial=natron-root"])
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
    if let Some((code, vars_template)) = firmware_files {
        let vars = dir.join("VARS.fd");
        std::fs::copy(vars_template, &vars).map_err(|e| {
            LabError::Setup(format!(
                "{vars_template}: {e} (apt install ovmf qemu-efi-aarch64)"
            ))
        })?;
        qemu.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    qemu.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .map_err(|e| LabError::Setup(format!("{binary}: {e}")))?;

    let http = |path: &'static str| async move {
        let get = natron_agent::probe::http_get("127.0.0.1", agent_port, path);
        tokio::time::timeout(Duration::from_secs(2), get)
            .await
            .ok()?
            .ok()
    };
    let ready_after = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut stderr).await;
            }
            return Err(LabError::Setup(format!(
                "QEMU exited ({status}) before the agent was ready: {stderr}\n{}",
                tail(&serial)
            )));
        }
        if let Some((200, _)) = http("/readyz").await {
            break started.elapsed();
        }
        if started.elapsed() > bound {
            let why = http("/status").await.map(|(_, b)| b).unwrap_or_default();
            return Err(LabError::Setup(format!(
                "the agent was not ready {bound:?} after power-on\n/status: {why}\n--- serial (end) ---\n{}",
                tail(&serial)
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The route claim follows readiness within a route interval.
    let mut checks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status: Value = loop {
        let (_, body) = http("/status").await.unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let owned = v["routes"]["owned"]
            .as_array()
            .is_some_and(|o| o.iter().any(|t| t == table.as_str()));
        if owned || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut expect = |ok: bool, what: String| {
        checks.push(format!("{} {what}", if ok { "ok  " } else { "FAIL" }));
    };
    expect(
        status["identity"]["instance_id"] == instance.as_str(),
        format!("identity read from the metadata service ({instance})"),
    );
    expect(
        status["dataplane"]["forwarding"] == true,
        "IPv4 forwarding on".into(),
    );
    expect(
        status["dataplane"]["ruleset_in_place"] == true,
        "nftables table ip natron loaded".into(),
    );
    expect(
        status["dataplane"]["flowtable"] == true,
        "with the flowtable (the guest kernel has it)".into(),
    );
    expect(
        status["dataplane"]["source_dest_check_disabled"] == true,
        "source/dest check disabled (agent's view)".into(),
    );
    let attr = ec2
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .map_err(|e| err("DescribeInstances", e))?;
    let sdc = attr
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.source_dest_check());
    expect(
        sdc == Some(false),
        format!("source/dest check off in EC2 ({sdc:?})"),
    );
    let rt = ec2
        .describe_route_tables()
        .route_table_ids(&table)
        .send()
        .await
        .map_err(|e| err("DescribeRouteTables", e))?;
    let target = rt
        .route_tables()
        .iter()
        .flat_map(|t| t.routes())
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .map(|r| format!("{:?}/{:?}", r.instance_id(), r.network_interface_id()));
    let eni = vpc::read(&ec2, &vpc_id)
        .await?
        .instances
        .iter()
        .find(|i| i.id == instance)
        .map(|i| i.interface_id.clone())
        .unwrap_or_default();
    expect(
        target
            .as_deref()
            .is_some_and(|t| t.contains(&instance) || t.contains(&eni)),
        format!("route table {table} claimed: 0.0.0.0/0 → {target:?}"),
    );
    let log = std::fs::read_to_string(&serial).unwrap_or_default()
        + &std::fs::read_to_string(&serial2).unwrap_or_default();
    expect(
        log.contains("Started natron-agent.service")
            || log.contains("Started natron NAT instance agent"),
        "started under systemd (serial log)".into(),
    );
    expect(
        log.contains("identity resolved"),
        "agent's log on the serial console".into(),
    );
    expect(
        log.contains("Initializing machine ID from random generator"),
        "machine-id made on first boot (none baked in)".into(),
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
    let _ = child.kill().await;
    let failed = checks.iter().any(|c| c.starts_with("FAIL"));
    let report = Report {
        ready_after,
        checks,
    };
    if failed {
        return Err(LabError::Setup(format!(
            "boot test failed:\n{}\n/status: {status}\n--- serial (end) ---\n{}",
            report.checks.join("\n"),
            tail(&serial)
        )));
    }
    let _ = std::fs::remove_dir_all(&dir);
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

fn tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
