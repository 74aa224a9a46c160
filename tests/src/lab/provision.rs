//! The seed's topology, created in the emulator.

use std::net::Ipv4Addr;

use aws_sdk_ec2::types::{
    Filter, InstanceMetadataOptionsRequest, InstanceMetadataTagsState, ResourceType, Tag,
    TagSpecification,
};
use ipnet::Ipv4Net;

use crate::LabError;

use super::spec::*;

pub(super) struct Launched {
    pub(super) instance_id: String,
    pub(super) interface_id: String,
    pub(super) subnet_id: String,
    pub(super) mac: String,
    pub(super) ip: Ipv4Addr,
}

impl Launched {
    /// The lab's host for this instance: namespace `ns`, router link
    /// `i-<role>`.
    pub(super) fn host(&self, ns: String, role: String, vm: bool) -> Host {
        Host {
            ns,
            router_dev: format!("i-{role}"),
            role,
            instance_id: self.instance_id.clone(),
            interface_id: self.interface_id.clone(),
            subnet_id: self.subnet_id.clone(),
            ip: self.ip,
            vm,
        }
    }
}

pub(super) struct Provisioned {
    pub(super) vpc_id: String,
    pub(super) public_table: String,
    pub(super) private_tables: Vec<String>,
    pub(super) nats: Vec<Launched>,
    pub(super) clients: Vec<Launched>,
    /// The IPv6-only clients, when the spec asks for them.
    pub(super) clients6: Vec<Launched>,
}

pub(super) fn emu<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> LabError + '_ {
    move |e| LabError::Emulator(format!("{what}: {e}"))
}

pub(super) fn tags(kind: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            pairs
                .iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build()
}

/// Creates the seed's topology in the emulator: a VPC with an internet
/// gateway, per AZ a public subnet (main route table: 0.0.0.0/0 -> IGW) with
/// a NAT instance holding an Elastic IP, and a private subnet with its own
/// route table tagged for natron (no default route yet; untagged with
/// `user_tables`) and a client.
pub(super) async fn provision(
    ec2: &aws_sdk_ec2::Client,
    spec: &LabSpec,
) -> Result<Provisioned, LabError> {
    let vpc = ec2
        .create_vpc()
        .cidr_block(VPC_CIDR)
        // An IPv6 /56 as on AWS: IPv6 clients in the lab (NAT64).
        .amazon_provided_ipv6_cidr_block(true)
        .send()
        .await
        .map_err(emu("CreateVpc"))?;
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .unwrap_or_default()
        .to_string();
    let igw = ec2
        .create_internet_gateway()
        .send()
        .await
        .map_err(emu("CreateInternetGateway"))?;
    let igw_id = igw
        .internet_gateway()
        .and_then(|g| g.internet_gateway_id())
        .unwrap_or_default()
        .to_string();
    ec2.attach_internet_gateway()
        .internet_gateway_id(&igw_id)
        .vpc_id(&vpc_id)
        .send()
        .await
        .map_err(emu("AttachInternetGateway"))?;
    let main = ec2
        .describe_route_tables()
        .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
        .filters(
            Filter::builder()
                .name("association.main")
                .values("true")
                .build(),
        )
        .send()
        .await
        .map_err(emu("DescribeRouteTables"))?;
    let public_table = main
        .route_tables()
        .first()
        .and_then(|t| t.route_table_id())
        .ok_or_else(|| LabError::Emulator(format!("{vpc_id} has no main route table")))?
        .to_string();
    ec2.create_route()
        .route_table_id(&public_table)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&igw_id)
        .send()
        .await
        .map_err(emu("CreateRoute to the IGW"))?;

    let mut out = Provisioned {
        vpc_id: vpc_id.clone(),
        public_table,
        private_tables: Vec::new(),
        nats: Vec::new(),
        clients: Vec::new(),
        clients6: Vec::new(),
    };
    for az in &spec.azs {
        let subnet = |cidr: Ipv4Net, name: String| {
            let (vpc_id, az_name) = (vpc_id.clone(), az.name.clone());
            async move {
                let s = ec2
                    .create_subnet()
                    .vpc_id(vpc_id)
                    .cidr_block(cidr.to_string())
                    .availability_zone(az_name)
                    .tag_specifications(tags(ResourceType::Subnet, &[("Name", &name)]))
                    .send()
                    .await
                    .map_err(emu("CreateSubnet"))?;
                Ok::<String, LabError>(
                    s.subnet()
                        .and_then(|s| s.subnet_id())
                        .unwrap_or_default()
                        .to_string(),
                )
            }
        };
        let public = subnet(az.public_cidr, format!("public-{}", az.letter)).await?;
        let private = subnet(az.private_cidr, format!("lambda-{}", az.letter)).await?;
        let name = format!("lambda-{}", az.letter);
        let natron_tags = [
            ("Name", name.as_str()),
            ("natron:group", spec.group.as_str()),
            ("natron:az", az.name.as_str()),
        ];
        let rt = ec2
            .create_route_table()
            .vpc_id(&vpc_id)
            .tag_specifications(tags(
                ResourceType::RouteTable,
                if spec.user_tables {
                    &natron_tags[..1]
                } else {
                    &natron_tags
                },
            ))
            .send()
            .await
            .map_err(emu("CreateRouteTable"))?;
        let rt_id = rt
            .route_table()
            .and_then(|t| t.route_table_id())
            .unwrap_or_default()
            .to_string();
        ec2.associate_route_table()
            .route_table_id(&rt_id)
            .subnet_id(&private)
            .send()
            .await
            .map_err(emu("AssociateRouteTable"))?;
        out.private_tables.push(rt_id);

        let nat = launch(
            ec2,
            &public,
            az.nat_ip,
            &[
                ("Name", &format!("nat-{}", az.letter)),
                ("natron:group", &spec.group),
            ],
        )
        .await?;
        // Tagged as `natron apply --elastic-ip` does, and left free: the
        // agent of the AZ associates it (agent/src/address.rs).
        ec2.allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .address(az.eip.to_string())
            .tag_specifications(tags(
                ResourceType::ElasticIp,
                &[("natron:group", &spec.group), ("natron:az", &az.name)],
            ))
            .send()
            .await
            .map_err(emu("AllocateAddress"))?;
        // The address pool's, tagged with their slot as `natron apply
        // --addresses` tags them.
        for slot in 1..spec.addresses {
            ec2.allocate_address()
                .domain(aws_sdk_ec2::types::DomainType::Vpc)
                .address(az.slot_eip(slot).to_string())
                .tag_specifications(tags(
                    ResourceType::ElasticIp,
                    &[
                        ("natron:group", &spec.group),
                        ("natron:az", &az.name),
                        (natron_contract::tags::SLOT, &slot.to_string()),
                    ],
                ))
                .send()
                .await
                .map_err(emu("AllocateAddress"))?;
        }
        out.nats.push(nat);
        out.clients.push(
            launch(
                ec2,
                &private,
                az.client_ip,
                &[("Name", &format!("client-{}", az.letter))],
            )
            .await?,
        );
        if spec.ipv6_clients {
            out.clients6.push(
                launch(
                    ec2,
                    &private,
                    az.client6_ip,
                    &[("Name", &format!("client6-{}", az.letter))],
                )
                .await?,
            );
        }
    }
    Ok(out)
}

pub(super) async fn launch(
    ec2: &aws_sdk_ec2::Client,
    subnet: &str,
    ip: Ipv4Addr,
    tag_pairs: &[(&str, &str)],
) -> Result<Launched, LabError> {
    let out = ec2
        .run_instances()
        .image_id("ami-00000000000000000")
        .instance_type(aws_sdk_ec2::types::InstanceType::T4gNano)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .private_ip_address(ip.to_string())
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                .build(),
        )
        .tag_specifications(tags(ResourceType::Instance, tag_pairs))
        .send()
        .await
        .map_err(emu("RunInstances"))?;
    let i = out
        .instances()
        .first()
        .ok_or_else(|| LabError::Emulator("RunInstances returned no instance".into()))?;
    let nic = i.network_interfaces().first();
    Ok(Launched {
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        interface_id: nic
            .and_then(|n| n.network_interface_id())
            .unwrap_or_default()
            .to_string(),
        subnet_id: subnet.to_string(),
        mac: nic
            .and_then(|n| n.mac_address())
            .unwrap_or_default()
            .to_string(),
        ip,
    })
}
