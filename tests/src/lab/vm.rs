//! A NAT instance that is natron's disk image under QEMU: the image's own
//! kernel (with the flowtable fast path the host lacks), its systemd unit
//! and its configuration from user data, forwarding the lab's traffic.
//!
//! ```text
//!  rtr: i-nat-a (gateway/32, proxy ARP) ══ veth ══ nat-a: eth0 ─┐
//!       dnsmasq: the VPC's DHCP                                 br0
//!                                                   tap0 ───────┘
//!                                                    └─ QEMU (virtio NIC with the ENI's MAC, MTU 9001)
//! ```
//!
//! The router side of the link is an instance's like any other; the NAT's
//! namespace holds no address, only a bridge between its link and the TAP
//! device QEMU runs on (QEMU runs in that namespace). A DHCP server on the
//! router side answers as the VPC's does: the instance's address, the
//! subnet's gateway, the VPC resolver, EC2's 9,001-byte MTU. IMDS and the
//! EC2 endpoint are reached through the router as from any namespace.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use natron_agent::core::config::Config;

use super::paths::VPC_MTU;
use super::spec::*;
use super::wiring::link_to_router;
use super::Lab;
use crate::vm::{Arch, Machine, Nic};
use crate::{exec, LabError};

const BRIDGE: &str = "br0";
const TAP: &str = "tap0";

/// What [`Lab::boot_vm_nat`] waits for after power-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// /readyz answers 200.
    Ready,
    /// /readyz answers at all (the agent is up; ready or not).
    Answers,
}

/// The lab's VM NAT: its machine (volume kept across power cycles) and
/// the QEMU process while it is on.
pub(super) struct VmNat {
    pub(super) az: usize,
    /// Its ENI's MAC address, which the VM's NIC carries.
    mac: String,
    machine: Machine,
    qemu: Mutex<Option<Child>>,
    log: PathBuf,
    /// The socket of the serial port the guest takes the lab's word from,
    /// when the spec asks for one.
    control: Option<PathBuf>,
}

impl VmNat {
    /// A fresh machine as `spec` says, in `dir`: a 2 GiB volume (bigger
    /// than the image, so the first boot grows into it), `cpus` virtual
    /// CPUs.
    pub(super) fn new(
        spec: &VmNatSpec,
        mac: &str,
        dir: &Path,
        cpus: u32,
    ) -> Result<VmNat, LabError> {
        if spec.control && spec.arch != Arch::X86_64 {
            return Err(LabError::Setup(format!(
                "VM NAT of AZ {}: the lab's control port is x86_64's second serial port",
                spec.az
            )));
        }
        let dir = dir.join(format!("vm-{}", spec.az));
        let mut machine = Machine::create(&spec.image, spec.arch, spec.firmware, &dir, "2G")?;
        machine.cpus = cpus;
        Ok(VmNat {
            az: spec.az,
            mac: mac.to_string(),
            machine,
            qemu: Mutex::new(None),
            log: dir.join("qemu.log"),
            control: spec.control.then(|| dir.join("control.sock")),
        })
    }

    /// QEMU's process, for the lab's cleanup.
    pub(super) fn take_process(&self) -> Option<Child> {
        self.qemu.lock().expect("vm").take()
    }
}

/// Wires `host` (a VM NAT) to the router: the router side as for any
/// instance, a bridge from its link to a TAP device in its namespace, and
/// the subnet's DHCP server on the router side (returned, to be stopped
/// with the lab).
pub(super) fn wire(
    rtr: &str,
    host: &Host,
    mac: &str,
    subnet: Ipv4Net,
    dir: &Path,
) -> Result<Child, LabError> {
    let gateway = link_to_router(rtr, host, subnet, Some(VPC_MTU))?;
    // IPv6 on the link, as the VPC router gives it: router advertisements
    // (a default route; the instance's address by SLAAC here, by DHCPv6
    // on AWS), which NAT64's translated replies leave by.
    let v6 = link_ipv6_prefix(subnet);
    exec::ip_batch(
        rtr,
        &[format!("addr add {}1/64 dev {} nodad", v6, host.router_dev)],
    )?;
    let (dev, ns, mtu) = (
        host.router_dev.as_str(),
        host.ns.as_str(),
        VPC_MTU.to_string(),
    );
    exec::ip_batch(
        ns,
        &[
            format!("link add {BRIDGE} mtu {mtu} type bridge"),
            format!("tuntap add dev {TAP} mode tap"),
            format!("link set {TAP} mtu {mtu} master {BRIDGE} up"),
            format!("link set eth0 master {BRIDGE} up"),
            format!("link set {BRIDGE} up"),
        ],
    )?;
    // The VPC's DHCP: a fixed address per MAC, nothing dynamic, no DNS
    // service of its own (port 0); the resolver it names is the VPC's
    // base + 2, as on AWS.
    let resolver = std::net::Ipv4Addr::from(
        u32::from(VPC_CIDR.parse::<Ipv4Net>().expect("cidr").network()) + 2,
    );
    let leases = dir.join(format!("dnsmasq-{}.leases", host.role));
    let args: Vec<String> = vec![
        "--keep-in-foreground".into(),
        "--port=0".into(),
        "--conf-file=/dev/null".into(),
        format!("--interface={dev}"),
        "--bind-interfaces".into(),
        "--dhcp-authoritative".into(),
        format!(
            "--dhcp-range={},static,{}",
            subnet.network(),
            subnet.netmask()
        ),
        format!("--dhcp-host={mac},{}", host.ip),
        format!("--dhcp-option=option:router,{gateway}"),
        format!("--dhcp-option=option:dns-server,{resolver}"),
        format!("--dhcp-option=option:mtu,{mtu}"),
        "--enable-ra".into(),
        format!("--dhcp-range={v6},ra-only,64"),
        // An unsolicited advertisement every 10 s (dnsmasq's default is
        // minutes): a guest that missed the first, booting slowly under
        // TCG, still gets its IPv6 default route, which NAT64's answers
        // to the VPC's clients leave by.
        format!("--ra-param={dev},10"),
        format!("--dhcp-leasefile={}", leases.display()),
        "--log-dhcp".into(),
    ];
    exec::spawn_in_ns(
        rtr,
        Path::new("dnsmasq"),
        &args,
        &[],
        &dnsmasq_log(dir, &host.role),
    )
}

/// The /64 of the VM NAT's link (a ULA derived from its IPv4 subnet),
/// as the text before the interface identifier: `fd00:ec2:0:N::`.
pub(super) fn link_ipv6_prefix(subnet: Ipv4Net) -> String {
    format!("fd00:ec2:0:{}::", subnet.network().octets()[2])
}

impl Lab {
    /// What `natron apply` writes as user data (the group; every other key
    /// at its default), plus what the lab must differ in: its EC2 endpoint
    /// (an interface endpoint in the VPC), its internet server as the
    /// egress probe target ([`default_config`](super::default_config)),
    /// and a 1 s probe timeout (a guest under TCG
    /// answers tens of times slower than an instance; the default 200 ms
    /// would fail rounds while it forwards a bulk transfer). Tests change
    /// timings from here.
    pub fn vm_nat_config(&self) -> Config {
        let mut c = Config {
            group: Some(self.spec.group.clone()),
            ..super::default_config()
        };
        c.ec2.endpoint_url = Some(ec2_endpoint_url());
        c.health.timeout = Duration::from_secs(1);
        c
    }

    /// AZ `az`'s VM NAT, or an error naming the AZ when its NAT is not one.
    pub(super) fn vm_nat(&self, az: usize) -> Result<&VmNat, LabError> {
        self.vms
            .iter()
            .find(|vm| vm.az == az)
            .ok_or_else(|| LabError::Setup(format!("the lab's AZ {az} has no VM NAT")))
    }

    /// Powers AZ `az`'s VM NAT on with `config` as its user data and waits
    /// until its agent's /readyz answers as `until` says (asked from the
    /// control namespace, as a peer would): the time from power-on, or an
    /// error with the console's end after `bound`.
    pub fn boot_vm_nat(
        &self,
        az: usize,
        config: &Config,
        until: Until,
        bound: Duration,
    ) -> Result<Duration, LabError> {
        let vm = self.vm_nat(az)?;
        let host = &self.nats[vm.az];
        self.imds_user_data.set(&host.instance_id, config.to_toml());
        let mut qemu = vm.qemu.lock().expect("vm");
        if qemu.is_some() {
            return Err(LabError::Setup(format!(
                "VM NAT {} is already on",
                host.role
            )));
        }
        let (binary, mut args) = vm.machine.command(&Nic::Tap {
            ifname: TAP.into(),
            mac: vm.mac.clone(),
            mtu: VPC_MTU,
        });
        if let Some(socket) = &vm.control {
            args.extend(control_args(socket));
        }
        let started = Instant::now();
        *qemu = Some(exec::spawn_in_ns(
            &host.ns,
            Path::new(binary),
            &args,
            &[],
            &vm.log,
        )?);
        drop(qemu);
        loop {
            if let Some(status) = vm
                .qemu
                .lock()
                .expect("vm")
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(&vm.log).unwrap_or_default();
                vm.qemu.lock().expect("vm").take();
                return Err(LabError::Setup(format!(
                    "QEMU exited ({status}) before the agent was ready: {log}\n{}",
                    vm.machine.console_tail(60)
                )));
            }
            match (until, self.agent_get(vm.az, "/readyz")) {
                (Until::Ready, Ok((200, _))) | (Until::Answers, Ok(_)) => {
                    return Ok(started.elapsed())
                }
                _ => {}
            }
            if started.elapsed() > bound {
                let status = self.agent_get(vm.az, "/status").map(|(_, b)| b);
                return Err(LabError::Setup(format!(
                    "VM NAT {}: not ready {bound:?} after power-on\n/status: {status:?}\n--- console (end) ---\n{}",
                    host.role,
                    vm.machine.console_tail(80)
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Pulls AZ `az`'s VM NAT's plug (its process killed: no shutdown, no
    /// handoff, as when an instance dies).
    pub fn power_off_vm_nat(&self, az: usize) -> Result<(), LabError> {
        if let Some(mut child) = self.vm_nat(az)?.take_process() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Says `word` to AZ `az`'s VM NAT through its control port (a lab
    /// built [`with_vm_control`](LabSpec::with_vm_control)): `restart`
    /// restarts its agent as `systemctl restart` does. The guest echoes
    /// each word it takes on its console (`natron-lab control: WORD`).
    pub fn vm_nat_say(&self, az: usize, word: &str) -> Result<(), LabError> {
        use std::io::Write;
        let vm = self.vm_nat(az)?;
        let socket = vm
            .control
            .as_ref()
            .ok_or_else(|| LabError::Setup(format!("VM NAT of AZ {az} has no control port")))?;
        let fail = |e: std::io::Error| LabError::Command(format!("{}: {e}", socket.display()));
        let mut port = std::os::unix::net::UnixStream::connect(socket).map_err(fail)?;
        port.write_all(format!("{word}\n").as_bytes()).map_err(fail)
    }

    /// What AZ `az`'s VM NAT link's dnsmasq logged (its DHCP answers and
    /// router advertisements); empty when it has no VM NAT or no log yet.
    pub fn vm_nat_link_log(&self, az: usize) -> String {
        self.vm_nat(az)
            .ok()
            .and_then(|vm| {
                std::fs::read_to_string(dnsmasq_log(&self.dir, &self.nats[vm.az].role)).ok()
            })
            .unwrap_or_default()
    }

    /// Everything AZ `az`'s VM NAT printed on its console, across its
    /// boots (empty when its NAT is not a VM).
    pub fn vm_nat_console(&self, az: usize) -> String {
        self.vm_nat(az)
            .map(|vm| vm.machine.console())
            .unwrap_or_default()
    }
}

/// The unit a controlled guest runs: each line the lab writes to its
/// second serial port (ttyS1) is echoed on the console, and `restart`
/// restarts the agent. (`$$` is a literal `$` in a unit file.)
const CONTROL_UNIT: &str = "[Unit]
Description=natron lab control (test machines only)

[Service]
StandardOutput=journal+console
ExecStart=/bin/sh -c 'stty -F /dev/ttyS1 raw -echo; exec 3</dev/ttyS1; \
  while read -r word <&3; do echo \"natron-lab control: $$word\"; \
  case \"$$word\" in restart) systemctl restart natron-agent.service;; esac; done'
";

/// QEMU's arguments for the control port: a second serial port on a
/// socket the lab connects to, and the unit that reads it passed as
/// system credentials in SMBIOS (type 11), which the guest's systemd
/// turns into an extra unit and a drop-in making `multi-user.target`
/// want it. The image itself carries nothing of this.
fn control_args(socket: &Path) -> Vec<String> {
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let credential = |name: &str, text: &str| {
        format!(
            "type=11,value=io.systemd.credential.binary:{name}={}",
            b64(text)
        )
    };
    vec![
        "-chardev".into(),
        format!(
            "socket,id=control,path={},server=on,wait=off",
            socket.display()
        ),
        "-serial".into(),
        "chardev:control".into(),
        "-smbios".into(),
        credential(
            "systemd.extra-unit.natron-lab-control.service",
            CONTROL_UNIT,
        ),
        "-smbios".into(),
        credential(
            "systemd.unit-dropin.multi-user.target",
            "[Unit]\nWants=natron-lab-control.service\n",
        ),
    ]
}

/// Where the dnsmasq of `role`'s link logs, in the lab's directory.
fn dnsmasq_log(dir: &Path, role: &str) -> std::path::PathBuf {
    dir.join(format!("dnsmasq-{role}.log"))
}
