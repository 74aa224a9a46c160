//! IPv6 in the lab, for NAT64: a client with an address in the VPC's
//! IPv6 block, the router forwarding IPv6, and `64:ff9b::/96` delivered to
//! the VM NAT (the image, whose kernel has Jool).
//!
//! Not yet built: IPv6 routes rendered from the emulator's route tables
//! (the router's `64:ff9b::/96` route is set here, to the VM NAT, not
//! synced), an egress-only internet gateway and a DNS64 resolver.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::Lab;
use crate::{exec, LabError};

/// The well-known NAT64 prefix's address for an IPv4 address (RFC 6052).
pub fn nat64_address(v4: std::net::Ipv4Addr) -> Ipv6Addr {
    let [a, b, c, d] = v4.octets();
    Ipv6Addr::new(
        0x64,
        0xff9b,
        0,
        0,
        0,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    )
}

/// The link-local address the kernel derives from a MAC (modified EUI-64).
pub fn link_local(mac: &str) -> Result<Ipv6Addr, LabError> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| LabError::Setup(format!("{mac:?} is not a MAC address")))?;
    let [a, b, c, d, e, f] = bytes[..] else {
        return Err(LabError::Setup(format!("{mac:?} is not a MAC address")));
    };
    Ok(Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([a ^ 0x02, b]),
        u16::from_be_bytes([c, 0xff]),
        u16::from_be_bytes([0xfe, d]),
        u16::from_be_bytes([e, f]),
    ))
}

/// The `n`th /64 of `block`.
fn nth_64(block: Ipv6Net, n: u32) -> Result<Ipv6Net, LabError> {
    block
        .subnets(64)
        .map_err(|e| LabError::Setup(format!("{block}: {e}")))?
        .nth(n as usize)
        .ok_or_else(|| LabError::Setup(format!("{block} has no /64 number {n}")))
}

impl Lab {
    /// The VPC's first IPv6 block (the emulator's /56).
    pub fn vpc_ipv6(&self) -> Result<Ipv6Net, LabError> {
        self.view
            .read()
            .expect("view")
            .ipv6_cidrs
            .first()
            .copied()
            .ok_or_else(|| LabError::Setup("the lab's VPC has no IPv6 block".into()))
    }

    /// Gives AZ `az`'s client an address in the VPC's IPv6 block (its
    /// subnet's /64) and a default route to the router, makes the router
    /// forward IPv6, and sends `64:ff9b::/96` to the VM NAT by its
    /// link-local address (as the VPC router delivers to an ENI). Returns
    /// the client's address.
    pub fn nat64_client(&self, az: usize) -> Result<Ipv6Addr, LabError> {
        let vm = self.vm_nat()?;
        let subnet = nth_64(self.vpc_ipv6()?, 16 + az as u32)?;
        let gateway = subnet.hosts().nth(1).expect("a /64 has hosts");
        let client = subnet.hosts().nth(10).expect("a /64 has hosts");
        let (rtr, cli) = (&self.router_ns, &self.clients[az]);
        exec::in_ns(
            rtr,
            "sysctl",
            &["-q", "-w", "net.ipv6.conf.all.forwarding=1"],
        )?;
        exec::ip_batch(
            rtr,
            &[
                format!("addr add {gateway}/64 dev {} nodad", cli.router_dev),
                format!(
                    "route replace 64:ff9b::/96 via {} dev {}",
                    link_local(vm.mac())?,
                    self.nats[vm.az].router_dev
                ),
            ],
        )?;
        exec::ip_batch(
            &cli.ns,
            &[
                format!("addr add {client}/64 dev eth0 nodad"),
                format!("route add default via {gateway} dev eth0"),
            ],
        )?;
        Ok(client)
    }

    /// A second address on AZ `az`'s client, outside every IPv6 block of
    /// the VPC (a source NAT64 must refuse); the router routes it back.
    pub fn foreign_ipv6(&self, az: usize) -> Result<Ipv6Addr, LabError> {
        let cli = &self.clients[az];
        let net: Ipv6Net = format!("fd00:bad:0:{az}::/64").parse().expect("prefix");
        let addr = net.hosts().nth(10).expect("a /64 has hosts");
        exec::ip_batch(&cli.ns, &[format!("addr add {addr}/64 dev eth0 nodad")])?;
        exec::ip_batch(
            &self.router_ns,
            &[format!("route replace {net} dev {}", cli.router_dev)],
        )?;
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_the_kernel_and_rfc_6052_make_them() {
        assert_eq!(
            link_local("0e:11:22:33:44:55").unwrap(),
            "fe80::c11:22ff:fe33:4455".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            nat64_address("198.51.100.10".parse().unwrap()),
            "64:ff9b::c633:640a".parse::<Ipv6Addr>().unwrap()
        );
        let block: Ipv6Net = "2600:1f18:aa00::/56".parse().unwrap();
        assert_eq!(
            nth_64(block, 16).unwrap().to_string(),
            "2600:1f18:aa00:10::/64"
        );
    }
}
