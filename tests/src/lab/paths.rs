//! Path MTUs as on AWS: jumbo frames inside the VPC, 1,500 bytes to the
//! internet, and ICMP filtered somewhere on the way.

use super::Lab;
use crate::router::{IGW_INET_DEV, IGW_VPC_DEV, ROUTER_IGW_DEV};
use crate::{exec, LabError};

/// EC2 instance interfaces' MTU.
pub const VPC_MTU: u16 = 9001;

impl Lab {
    /// Every VPC link (instances and the router's side of them) and the
    /// internet server's link get EC2's 9,001-byte MTU, as for a jumbo-frame
    /// server in another VPC; the router <-> IGW hop stays at 1,500, as the
    /// IGW's path does; and neither the router nor the IGW sends ICMP
    /// "fragmentation needed" (a path that filters ICMP). A segment larger
    /// than 1,460 bytes crossing it is silently lost: only MSS clamping at
    /// the NAT lets large transfers through.
    pub fn jumbo_vpc_behind_a_filtered_path(&self) -> Result<(), LabError> {
        let mtu = VPC_MTU.to_string();
        for host in self.nats.iter().chain(&self.clients) {
            exec::ip(&host.ns, &["link", "set", "eth0", "mtu", &mtu])?;
            exec::ip(
                &self.router_ns,
                &["link", "set", &host.router_dev, "mtu", &mtu],
            )?;
        }
        exec::ip(&self.igw_ns, &["link", "set", IGW_INET_DEV, "mtu", &mtu])?;
        exec::ip(&self.inet_ns, &["link", "set", "eth0", "mtu", &mtu])?;
        for (ns, dev) in [
            (&self.router_ns, ROUTER_IGW_DEV),
            (&self.igw_ns, IGW_VPC_DEV),
        ] {
            let out = exec::ip(ns, &["-o", "link", "show", dev])?;
            if !out.contains("mtu 1500 ") {
                return Err(LabError::Setup(format!(
                    "{ns} {dev}: expected MTU 1500: {out}"
                )));
            }
        }
        let no_frag_needed = "table ip lab-pmtu {\n\
             \tchain out {\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\ticmp type destination-unreachable icmp code frag-needed drop\n\
             \t}\n\
             }\n";
        exec::nft_script(&self.router_ns, no_frag_needed)?;
        exec::nft_script(&self.igw_ns, no_frag_needed)
    }

    /// Path MTU discovery's case: AZ `az`'s client link at EC2's 9,001
    /// bytes, and the router's side of the router <-> IGW hop narrowed to
    /// `mtu`, where the router answers a larger packet that may not be
    /// fragmented with ICMP "fragmentation needed" (nothing filters it).
    /// The error goes to the packet's source inside the VPC (the NAT's
    /// address), before the IGW's stateless rewrite, which would leave the
    /// error's inner packet with the wrong address.
    pub fn narrow_path_out(&self, az: usize, mtu: u16) -> Result<(), LabError> {
        let jumbo = VPC_MTU.to_string();
        let cli = &self.clients[az];
        exec::ip(&cli.ns, &["link", "set", "eth0", "mtu", &jumbo])?;
        exec::ip(
            &self.router_ns,
            &["link", "set", &cli.router_dev, "mtu", &jumbo],
        )?;
        exec::ip(
            &self.router_ns,
            &["link", "set", ROUTER_IGW_DEV, "mtu", &mtu.to_string()],
        )?;
        Ok(())
    }
}
