//! IPv6 in the lab, for NAT64: IPv6-only clients (one per private subnet,
//! no IPv4 at all) with addresses in the VPC's IPv6 block, the router
//! forwarding IPv6, and `64:ff9b::/96` delivered to the VM NAT (the image,
//! whose kernel has Jool).
//!
//! The VPC's DNS64 resolver answers at Route 53 Resolver's IPv6 address on
//! the router ([`crate::dns64`]). The router renders the route tables'
//! IPv6 routes from the emulator (`crate::router`), `::/0` to the lab's
//! egress-only gateway among them ([`Lab::route_ipv6_out`]).
//!
//! A NAT64 client's `64:ff9b::/96` is the route its NAT's agent keeps in
//! the emulator ([`Lab::nat64_client`]).

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

pub use crate::vpc::link_local;

use super::provision::emu;
use super::Lab;
use crate::{exec, LabError};

/// Route 53 Resolver's IPv6 address in every VPC (Nitro instances).
pub const RESOLVER_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x253);
/// The lab's internet server by name: IPv4 only, so DNS64 synthesizes its
/// `AAAA`.
pub const SERVER_NAME: &str = "internet.natron.lab";

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

/// An IPv6-only client of the lab ([`super::LabSpec::with_ipv6_clients`]).
#[derive(Debug, Clone)]
pub struct Ipv6Client {
    /// Its namespace: `eth0` holds [`Ipv6Client::ip`], no IPv4 address.
    pub ns: String,
    /// Its address, in its subnet's /64 of the VPC's IPv6 block.
    pub ip: Ipv6Addr,
    /// Its link's name on the router side.
    pub router_dev: String,
    pub instance_id: String,
}

/// Links `host` (AZ `az`'s IPv6-only client) to the router: its address is
/// the 10th of its subnet's /64 in `block` (the router holds the 1st, the
/// client's gateway), and nothing of IPv4 is on its side.
pub(super) fn wire_ipv6_only(
    rtr: &str,
    host: &super::Host,
    mac: &str,
    block: Ipv6Net,
    az: usize,
) -> Result<Ipv6Client, LabError> {
    let subnet = nth_64(block, 16 + az as u32)?;
    let gateway = subnet.hosts().nth(1).expect("a /64 has hosts");
    let ip = subnet.hosts().nth(10).expect("a /64 has hosts");
    let (dev, ns) = (host.router_dev.as_str(), host.ns.as_str());
    // `nodad` on both ends: a tentative address cannot be bound or used
    // as a source until the kernel's DAD work has run.
    exec::ip_batch(
        rtr,
        &[
            format!("link add {dev} type veth peer name eth0 netns {ns}"),
            format!("addr add {gateway}/64 dev {dev} nodad"),
            format!("link set {dev} up"),
        ],
    )?;
    super::wiring::wire_eth0(ns, mac, &format!("{ip}/64 nodad"), gateway.into())?;
    Ok(Ipv6Client {
        ns: host.ns.clone(),
        ip,
        router_dev: host.router_dev.clone(),
        instance_id: host.instance_id.clone(),
    })
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

    /// AZ `az`'s IPv6-only client, its table made to serve NAT64: the
    /// table is tagged `natron:nat64` as `natron apply --nat64` tags it, so
    /// the agent whose NAT its default route names adds `64:ff9b::/96` to
    /// that NAT, and the router follows the emulator.
    pub fn nat64_client(&self, az: usize) -> Result<&Ipv6Client, LabError> {
        let client = self.client6(az)?;
        self.serve_nat64(&self.private_tables[az])?;
        Ok(client)
    }

    /// AZ `az`'s IPv6-only client.
    pub fn client6(&self, az: usize) -> Result<&Ipv6Client, LabError> {
        self.clients6.get(az).ok_or_else(|| {
            LabError::Setup(format!(
                "the lab has no IPv6-only client in AZ {az} (LabSpec::with_ipv6_clients)"
            ))
        })
    }

    /// Sends `table`'s `::/0` to the VPC's egress-only internet gateway in
    /// the emulator (creating the gateway the first time), as `natron
    /// apply --nat64` does; the router follows within its sync. Returns
    /// the gateway's id.
    pub fn route_ipv6_out(&self, table: &str) -> Result<String, LabError> {
        let (table, vpc) = (table.to_string(), self.vpc_id.clone());
        self.ec2(|ec2| async move {
            let existing = ec2
                .describe_egress_only_internet_gateways()
                .send()
                .await
                .map_err(emu("DescribeEgressOnlyInternetGateways"))?;
            let found = existing
                .egress_only_internet_gateways()
                .iter()
                .find(|g| g.attachments().iter().any(|a| a.vpc_id() == Some(&vpc)))
                .and_then(|g| g.egress_only_internet_gateway_id())
                .map(str::to_string);
            let id = match found {
                Some(id) => id,
                None => ec2
                    .create_egress_only_internet_gateway()
                    .vpc_id(&vpc)
                    .send()
                    .await
                    .map_err(emu("CreateEgressOnlyInternetGateway"))?
                    .egress_only_internet_gateway()
                    .and_then(|g| g.egress_only_internet_gateway_id())
                    .map(str::to_string)
                    .ok_or_else(|| LabError::Emulator("no egress-only gateway id".into()))?,
            };
            ec2.create_route()
                .route_table_id(&table)
                .destination_ipv6_cidr_block(natron_contract::ec2::IPV6_DEFAULT_ROUTE)
                .egress_only_internet_gateway_id(&id)
                .send()
                .await
                .map_err(emu("CreateRoute ::/0"))?;
            Ok(id)
        })
    }

    /// Starts the VPC's DNS64 resolver on the router at [`RESOLVER_IPV6`]
    /// (the clients' IPv6 default route goes there), knowing the internet
    /// server as [`SERVER_NAME`]. Returns its address.
    pub fn dns64_resolver(&self) -> Result<std::net::IpAddr, LabError> {
        exec::ip_batch(
            &self.router_ns,
            // `nodad`: without it the address stays tentative until the
            // kernel's DAD work runs, even on lo, and a bind in between
            // fails with "Cannot assign requested address" (seen in CI).
            &[format!("addr replace {RESOLVER_IPV6}/128 dev lo nodad")],
        )?;
        let addr = std::net::SocketAddr::from((RESOLVER_IPV6, 53));
        let socket = self
            .run_in(&self.router_ns, tokio::net::UdpSocket::bind(addr))
            .map_err(|e| LabError::Setup(format!("DNS64 resolver on {addr}: {e}")))?;
        let names = [(SERVER_NAME.to_string(), crate::internet::SERVER)].into();
        // Lives as long as the router's runtime, the lab's.
        drop(self.spawn_in(&self.router_ns, crate::dns64::serve(socket, names)));
        Ok(RESOLVER_IPV6.into())
    }

    /// A second address on AZ `az`'s IPv6-only client, outside every IPv6
    /// block of the VPC (a source NAT64 must refuse); the router routes it
    /// back.
    pub fn foreign_ipv6(&self, az: usize) -> Result<Ipv6Addr, LabError> {
        let cli = self.client6(az)?;
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
