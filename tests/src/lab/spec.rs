//! The lab's topology as data: its AZs, subnets and addresses.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::emulator::REGION;
use crate::vm::{Arch, Firmware};

pub const VPC_CIDR: &str = "10.0.0.0/16";
/// The EC2 endpoint as instances reach it (an interface endpoint in the VPC).
pub const EC2_ENDPOINT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 10);
/// The port agents reach EC2 on: the counting proxy in front of moto.
pub const EC2_PROXY_PORT: u16 = 5001;

/// The EC2 endpoint URL the agents are given.
pub fn ec2_endpoint_url() -> String {
    format!("http://{EC2_ENDPOINT_IP}:{EC2_PROXY_PORT}")
}
pub(super) const CTL_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 1);
pub use natron_contract::AGENT_PORT;

#[derive(Debug, Clone)]
pub struct AzSpec {
    pub name: String,
    pub letter: char,
    pub public_cidr: Ipv4Net,
    pub private_cidr: Ipv4Net,
    pub nat_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    /// The IPv6-only client's IPv4 address in the emulator, which every
    /// instance there has; its namespace holds none ([`LabSpec::with_ipv6_clients`]).
    pub client6_ip: Ipv4Addr,
    /// The NAT's Elastic IP (TEST-NET-3).
    pub eip: Ipv4Addr,
}

impl AzSpec {
    /// The Elastic IP of the address pool's `slot` (1 to N-1) in this AZ,
    /// 203.0.113.(100 + 10 x AZ index + slot).
    pub fn slot_eip(&self, slot: u32) -> Ipv4Addr {
        let az = u32::from(self.letter) - u32::from('a');
        Ipv4Addr::new(203, 0, 113, (100 + 10 * az + slot) as u8)
    }
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub group: String,
    pub azs: Vec<AzSpec>,
    /// The AZs whose NAT instance is natron's disk image under QEMU
    /// instead of an agent in a namespace (one VM each).
    pub vm_nats: Vec<VmNatSpec>,
    /// Each private subnet's route table as the user had it before natron:
    /// untagged (no agent claims it). natron's tables then come from
    /// elsewhere (a CloudFormation stack).
    pub user_tables: bool,
    /// Each AZ's address pool (`nat.addresses`): 1 + the slot Elastic IPs
    /// allocated and tagged as `natron apply --addresses` does.
    pub addresses: u32,
    /// Each private subnet also holds an IPv6-only client (NAT64's).
    pub ipv6_clients: bool,
}

/// The NAT of AZ `az` is `image` booted under QEMU, on a TAP device
/// bridged to its router link (see `lab::vm`).
#[derive(Debug, Clone)]
pub struct VmNatSpec {
    pub az: usize,
    pub image: PathBuf,
    pub arch: Arch,
    pub firmware: Firmware,
    /// The lab's word reaches the guest (see `lab::vm::control_args`):
    /// test machines only, never the image as shipped.
    pub control: bool,
}

impl LabSpec {
    /// `n` AZs (us-east-1a, -1b, ...), each with a public subnet holding a
    /// NAT instance and a private subnet holding a client.
    pub fn with_azs(n: u8) -> LabSpec {
        let azs = (0..n)
            .map(|i| {
                let letter = (b'a' + i) as char;
                AzSpec {
                    name: format!("{REGION}{letter}"),
                    letter,
                    public_cidr: format!("10.0.{i}.0/24").parse().expect("cidr"),
                    private_cidr: format!("10.0.{}.0/24", 10 + i).parse().expect("cidr"),
                    nat_ip: Ipv4Addr::new(10, 0, i, 10),
                    client_ip: Ipv4Addr::new(10, 0, 10 + i, 10),
                    client6_ip: Ipv4Addr::new(10, 0, 10 + i, 20),
                    eip: Ipv4Addr::new(203, 0, 113, 10 + i),
                }
            })
            .collect();
        LabSpec {
            group: "lab".into(),
            azs,
            vm_nats: Vec::new(),
            user_tables: false,
            addresses: 1,
            ipv6_clients: false,
        }
    }

    /// Each AZ has `n - 1` Elastic IPs for the address pool's slots (at
    /// most 9: see [`AzSpec::slot_eip`]).
    pub fn with_addresses(mut self, n: u32) -> LabSpec {
        assert!((1..10).contains(&n), "the lab has room for 9 slots an AZ");
        self.addresses = n;
        self
    }

    /// Each private subnet also holds an IPv6-only client: an instance in
    /// the emulator (the router routes by instance) whose namespace has an
    /// address in its subnet's /64 of the VPC's IPv6 block and no IPv4 at
    /// all ([`Lab::clients6`]), as a Lambda function in an IPv6-only
    /// subnet.
    ///
    /// [`Lab::clients6`]: super::Lab::clients6
    pub fn with_ipv6_clients(mut self) -> LabSpec {
        self.ipv6_clients = true;
        self
    }

    /// The private subnets' route tables are the user's own, untagged.
    pub fn with_user_tables(mut self) -> LabSpec {
        self.user_tables = true;
        self
    }

    /// AZ `az`'s NAT is the x86_64 `image` under QEMU, booting UEFI (one
    /// call per AZ whose NAT is a VM).
    pub fn with_vm_nat(self, az: usize, image: PathBuf) -> LabSpec {
        self.with_vm_nat_on(az, image, Arch::X86_64, Firmware::Uefi)
    }

    /// AZ `az`'s NAT is `image` under QEMU, as `arch` booting `firmware`.
    pub fn with_vm_nat_on(
        mut self,
        az: usize,
        image: PathBuf,
        arch: Arch,
        firmware: Firmware,
    ) -> LabSpec {
        assert!(
            self.vm_nats.iter().all(|v| v.az != az),
            "AZ {az} has one NAT"
        );
        self.vm_nats.push(VmNatSpec {
            az,
            image,
            arch,
            firmware,
            control: false,
        });
        self
    }

    /// Every VM NAT takes the lab's word ([`Lab::vm_nat_say`]): an extra
    /// unit, passed as a credential at power-on, reads it from a second
    /// serial port and restarts the agent on `restart`.
    ///
    /// [`Lab::vm_nat_say`]: super::Lab::vm_nat_say
    pub fn with_vm_control(mut self) -> LabSpec {
        for v in &mut self.vm_nats {
            v.control = true;
        }
        self
    }
}

/// An instance of the lab: its namespace and its identity in the emulator.
#[derive(Debug, Clone)]
pub struct Host {
    pub role: String,
    pub ns: String,
    pub instance_id: String,
    pub interface_id: String,
    pub subnet_id: String,
    pub ip: Ipv4Addr,
    /// Its link's name on the router side.
    pub router_dev: String,
    /// A virtual machine whose TAP device is bridged, in `ns`, to the
    /// router link; `ns` then holds no address of the instance's.
    pub vm: bool,
}
