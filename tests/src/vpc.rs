//! The emulator's state as plain data: what the lab's router, internet
//! gateway and metadata stub are driven by.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::LabError;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VpcView {
    pub vpc_id: String,
    pub cidrs: Vec<Ipv4Net>,
    /// The VPC's IPv6 blocks (the lab asks for Amazon's /56).
    pub ipv6_cidrs: Vec<Ipv6Net>,
    pub instances: Vec<InstanceView>,
    pub route_tables: Vec<RouteTableView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub id: String,
    pub state: String,
    pub subnet_id: String,
    pub availability_zone: String,
    pub private_ip: Ipv4Addr,
    pub public_ip: Option<Ipv4Addr>,
    pub interface_id: String,
    pub mac: String,
    pub source_dest_check: bool,
    pub tags: BTreeMap<String, String>,
    /// Instance tags exposed in IMDS (MetadataOptions.InstanceMetadataTags).
    pub metadata_tags: bool,
    /// The primary interface's secondary private addresses (a NAT's
    /// address pool), each with the Elastic IP associated with it.
    pub secondary: Vec<(Ipv4Addr, Option<Ipv4Addr>)>,
    /// The primary interface's IPv6 addresses (none in a subnet without
    /// IPv6).
    pub ipv6s: Vec<std::net::Ipv6Addr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteTableView {
    pub id: String,
    pub main: bool,
    pub subnets: Vec<String>,
    pub routes: Vec<(Ipv4Net, Target)>,
    /// Its IPv6 routes (the VPC block's local route, `::/0` to an
    /// egress-only gateway, `64:ff9b::/96` to a NAT).
    pub routes6: Vec<(Ipv6Net, Target)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local,
    InternetGateway(String),
    EgressOnlyGateway(String),
    Interface(String),
    Instance(String),
    Other(String),
}

impl VpcView {
    pub fn instance_by_ip(&self, ip: Ipv4Addr) -> Option<&InstanceView> {
        self.instances.iter().find(|i| i.private_ip == ip)
    }

    /// The route table that applies to `subnet`: its explicit association,
    /// else the VPC's main table (as in AWS).
    pub fn table_of_subnet(&self, subnet: &str) -> Option<&RouteTableView> {
        self.route_tables
            .iter()
            .find(|t| t.subnets.iter().any(|s| s == subnet))
            .or_else(|| self.route_tables.iter().find(|t| t.main))
    }

    /// Where `table`'s default route points, as an id (ENI, instance, igw).
    pub fn default_target(&self, table: &str) -> Option<Target> {
        self.route_tables
            .iter()
            .find(|t| t.id == table)?
            .routes
            .iter()
            .find(|(d, _)| d.prefix_len() == 0)
            .map(|(_, t)| t.clone())
    }
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

fn target(r: &aws_sdk_ec2::types::Route) -> Target {
    if let Some(eni) = r.network_interface_id() {
        Target::Interface(eni.into())
    } else if let Some(i) = r.instance_id() {
        Target::Instance(i.into())
    } else if r.gateway_id() == Some("local") {
        Target::Local
    } else if let Some(g) = r.gateway_id().filter(|g| g.starts_with("igw-")) {
        Target::InternetGateway(g.into())
    } else if let Some(g) = r.egress_only_internet_gateway_id() {
        Target::EgressOnlyGateway(g.into())
    } else {
        Target::Other(format!("{r:?}"))
    }
}

fn err(op: &str, e: impl std::fmt::Display) -> LabError {
    LabError::Emulator(format!("{op}: {e}"))
}

/// Reads the VPC's instances and route tables from the emulator.
pub async fn read(ec2: &Client, vpc_id: &str) -> Result<VpcView, LabError> {
    let vpc_filter = Filter::builder().name("vpc-id").values(vpc_id).build();
    let vpcs = ec2
        .describe_vpcs()
        .vpc_ids(vpc_id)
        .send()
        .await
        .map_err(|e| err("DescribeVpcs", e))?;
    let cidrs = vpcs
        .vpcs()
        .iter()
        .flat_map(|v| v.cidr_block_association_set())
        .filter_map(|a| a.cidr_block()?.parse().ok())
        .collect();
    let ipv6_cidrs = vpcs
        .vpcs()
        .iter()
        .flat_map(|v| v.ipv6_cidr_block_association_set())
        .filter_map(|a| a.ipv6_cidr_block()?.parse().ok())
        .collect();
    let out = ec2
        .describe_instances()
        .filters(vpc_filter.clone())
        .send()
        .await
        .map_err(|e| err("DescribeInstances", e))?;
    // Elastic IPs on secondary private addresses, by (interface, address).
    let addresses = ec2
        .describe_addresses()
        .send()
        .await
        .map_err(|e| err("DescribeAddresses", e))?;
    let on_secondary: BTreeMap<(String, Ipv4Addr), Ipv4Addr> = addresses
        .addresses()
        .iter()
        .filter_map(|a| {
            Some((
                (
                    a.network_interface_id()?.to_string(),
                    a.private_ip_address()?.parse().ok()?,
                ),
                a.public_ip()?.parse().ok()?,
            ))
        })
        .collect();
    let mut instances = Vec::new();
    for i in out.reservations().iter().flat_map(|r| r.instances()) {
        let nic = i.network_interfaces().first();
        let (Some(id), Some(ip)) = (
            i.instance_id(),
            i.private_ip_address().and_then(|p| p.parse().ok()),
        ) else {
            continue;
        };
        let interface_id = nic
            .and_then(|n| n.network_interface_id())
            .unwrap_or_default()
            .to_string();
        let secondary = nic
            .map(|n| n.private_ip_addresses())
            .unwrap_or_default()
            .iter()
            .filter(|p| p.primary() != Some(true))
            .filter_map(|p| p.private_ip_address()?.parse().ok())
            .map(|ip: Ipv4Addr| (ip, on_secondary.get(&(interface_id.clone(), ip)).copied()))
            .collect();
        let ipv6s = nic
            .map(|n| n.ipv6_addresses())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.ipv6_address()?.parse().ok())
            .collect();
        instances.push(InstanceView {
            secondary,
            ipv6s,
            id: id.to_string(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default(),
            subnet_id: i.subnet_id().unwrap_or_default().to_string(),
            availability_zone: i
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_string(),
            private_ip: ip,
            public_ip: i.public_ip_address().and_then(|p| p.parse().ok()),
            interface_id,
            mac: nic
                .and_then(|n| n.mac_address())
                .unwrap_or_default()
                .to_string(),
            source_dest_check: i.source_dest_check().unwrap_or(true),
            tags: i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
            metadata_tags: i
                .metadata_options()
                .and_then(|m| m.instance_metadata_tags())
                .is_some_and(|t| t.as_str() == "enabled"),
        });
    }
    let out = ec2
        .describe_route_tables()
        .filters(vpc_filter)
        .send()
        .await
        .map_err(|e| err("DescribeRouteTables", e))?;
    let mut route_tables = Vec::new();
    for t in out.route_tables() {
        let routes = t
            .routes()
            .iter()
            .filter_map(|r| Some((r.destination_cidr_block()?.parse().ok()?, target(r))))
            .collect();
        let routes6 = t
            .routes()
            .iter()
            .filter_map(|r| Some((r.destination_ipv6_cidr_block()?.parse().ok()?, target(r))))
            .collect();
        route_tables.push(RouteTableView {
            id: t.route_table_id().unwrap_or_default().to_string(),
            main: t.associations().iter().any(|a| a.main() == Some(true)),
            subnets: t
                .associations()
                .iter()
                .filter_map(|a| a.subnet_id().map(str::to_string))
                .collect(),
            routes,
            routes6,
        });
    }
    route_tables.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(VpcView {
        vpc_id: vpc_id.to_string(),
        cidrs,
        ipv6_cidrs,
        instances,
        route_tables,
    })
}
