//! `natron export --format cloudformation`: the topology `apply` builds,
//! as one CloudFormation template for an existing VPC, so that users of
//! CloudFormation, CDK (`CfnInclude`) or Terraform
//! (`aws_cloudformation_stack`) adopt natron without running the CLI in
//! production. Pure: from the same [`Layout`] `apply` plans from.
//!
//! Same names, tags, documents and launch settings as `apply` (one source:
//! `layout::Names`, `documents`, the tag constants). Where CloudFormation
//! cannot do what `apply` does, the template says so in its outputs:
//!
//! - `apply` associates a subnet in use only once its NAT serves the new
//!   table. A stack cannot wait for that, so each natron table starts with
//!   a copy of the subnet's current default route (a NAT gateway, an old
//!   NAT instance…): the subnet keeps its way out until the AZ's agent
//!   replaces that route with itself. The agent does so for any route of
//!   its home table that is not a natron NAT.
//! - CloudFormation can create an association but not replace one: a
//!   subnet with its own route table keeps it, and the stack's
//!   `PendingAssociations` output gives the one command that moves it (or
//!   `natron apply` does it, once the NAT serves the table).
//! - An instance profile has no tags in CloudFormation.

use serde_json::{json, Map, Value};

use crate::documents;

mod alarms;
use crate::layout::{Layout, Names, PrivateSubnet, Zone};
use crate::model::{Inventory, Route, AZ_TAG, GROUP_TAG, PREVIOUS_TAG, SUBNET_TAG};

/// A template and what the operator should know about it.
#[derive(Debug, Clone)]
pub struct Export {
    pub template: Value,
    pub notes: Vec<String>,
}

/// What exists of the group already: a stack would collide with it.
pub fn existing(inv: &Inventory, group: &str) -> Vec<String> {
    let mut found = Vec::new();
    let sg = Names::security_group(group);
    if let Some(g) = inv.security_groups.iter().find(|g| g.name == sg) {
        found.push(format!("security group {sg} ({})", g.id));
    }
    if inv.role.is_some() {
        found.push(format!("IAM role {}", Names::role(group)));
    }
    if inv.instance_profile.is_some() {
        found.push(format!(
            "instance profile {}",
            Names::instance_profile(group)
        ));
    }
    if let Some(t) = &inv.launch_template {
        found.push(format!("launch template {} ({})", t.name, t.id));
    }
    for g in &inv.auto_scaling_groups {
        found.push(format!("auto scaling group {}", g.name));
    }
    for t in inv.group_route_tables(group) {
        found.push(format!("route table {}", t.id));
    }
    found
}

/// The template for `layout` in the VPC `inv` describes.
pub fn cloudformation(
    layout: &Layout,
    inv: &Inventory,
    partition: &str,
    health_port: u16,
) -> Export {
    let group = layout.group.as_str();
    let mut resources = Map::new();
    let mut outputs = Map::new();
    let mut notes = Vec::new();
    let mut pending = Vec::new();
    let tags = |pairs: &[(&str, Value)]| -> Value {
        Value::Array(
            pairs
                .iter()
                .map(|(k, v)| json!({ "Key": k, "Value": v }))
                .collect(),
        )
    };

    // Subnets to create, and every served CIDR (for the ingress rules).
    let mut ingress = Vec::new();
    for zone in &layout.zones {
        for (i, s) in zone.private.iter().enumerate() {
            // Ports -1 (all, as for any protocol -1): CloudFormation takes
            // them, and the emulator needs them.
            ingress.push(json!({
                "IpProtocol": "-1",
                "FromPort": -1,
                "ToPort": -1,
                "CidrIp": s.cidr.to_string(),
                "Description": format!("natron: all traffic from {}", s.key()),
            }));
            if s.id.is_none() {
                resources.insert(
                    subnet_logical(zone, i),
                    json!({
                        "Type": "AWS::EC2::Subnet",
                        "Properties": {
                            "VpcId": layout.vpc_id,
                            "AvailabilityZone": zone.az,
                            "CidrBlock": s.cidr.to_string(),
                            "Tags": tags(&[
                                (GROUP_TAG, json!(group)),
                                (AZ_TAG, json!(zone.az)),
                                ("Name", json!(Names::private_subnet(group, &zone.az))),
                            ]),
                        }
                    }),
                );
            }
        }
    }

    // The NATs' security group; the health port from itself is a separate
    // resource, as a group cannot name itself in its own properties.
    let sg_name = Names::security_group(group);
    resources.insert(
        "NatSecurityGroup".into(),
        json!({
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupName": sg_name,
                "GroupDescription": format!("natron NAT instances of group {group}"),
                "VpcId": layout.vpc_id,
                "SecurityGroupIngress": ingress,
                "SecurityGroupEgress": [{ "IpProtocol": "-1", "CidrIp": "0.0.0.0/0" }],
                "Tags": tags(&[(GROUP_TAG, json!(group)), ("Name", json!(sg_name))]),
            }
        }),
    );
    let sg_id = json!({ "Ref": "NatSecurityGroup" });
    resources.insert(
        "NatHealthIngress".into(),
        json!({
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Properties": {
                "GroupId": sg_id,
                "IpProtocol": "tcp",
                "FromPort": health_port,
                "ToPort": health_port,
                "SourceSecurityGroupId": sg_id,
                "Description": "natron: the agents' health port, from each other",
            }
        }),
    );

    // IAM.
    resources.insert(
        "AgentRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Properties": {
                "RoleName": Names::role(group),
                "Description": format!("natron agent of group {group}"),
                "AssumeRolePolicyDocument": documents::trust_policy(),
                "Tags": tags(&[(GROUP_TAG, json!(group))]),
            }
        }),
    );
    // The inline policy as its own resource (the same inline policy as a
    // role's `Policies` would be).
    resources.insert(
        "AgentPolicy".into(),
        json!({
            "Type": "AWS::IAM::Policy",
            "Properties": {
                "PolicyName": Names::POLICY,
                "PolicyDocument": documents::agent_policy(group, partition, &layout.agent_options()),
                "Roles": [{ "Ref": "AgentRole" }],
            }
        }),
    );
    resources.insert(
        "AgentInstanceProfile".into(),
        json!({
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {
                "InstanceProfileName": Names::instance_profile(group),
                "Roles": [{ "Ref": "AgentRole" }],
            }
        }),
    );

    // The launch template, as `apply` writes it (cloud/fleet.rs).
    let group_tag =
        |kind: &str| json!({ "ResourceType": kind, "Tags": tags(&[(GROUP_TAG, json!(group))]) });
    resources.insert(
        "LaunchTemplate".into(),
        json!({
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {
                "LaunchTemplateName": Names::launch_template(group),
                "VersionDescription": "natron export",
                "LaunchTemplateData": {
                    "ImageId": layout.image.id,
                    "InstanceType": layout.instance_type,
                    "IamInstanceProfile": { "Name": { "Ref": "AgentInstanceProfile" } },
                    "NetworkInterfaces": [{
                        "DeviceIndex": 0,
                        "AssociatePublicIpAddress": true,
                        "DeleteOnTermination": true,
                        "Groups": [sg_id],
                    }],
                    "MetadataOptions": {
                        "HttpTokens": "required",
                        "HttpPutResponseHopLimit": 1,
                        "HttpEndpoint": "enabled",
                        "InstanceMetadataTags": "enabled",
                    },
                    "UserData": base64(&documents::agent_config(group, &layout.agent_options())),
                    "TagSpecifications": [
                        group_tag("instance"),
                        group_tag("volume"),
                        group_tag("network-interface"),
                    ],
                },
                "TagSpecifications": [group_tag("launch-template")],
            }
        }),
    );

    // Per AZ: one NAT in an auto scaling group with its termination hook,
    // and the AZ's Elastic IP.
    for zone in &layout.zones {
        let name = Names::auto_scaling_group(group, &zone.az);
        let propagated =
            |k: &str, v: &str| json!({ "Key": k, "Value": v, "PropagateAtLaunch": true });
        resources.insert(
            format!("NatGroup{}", logical(&zone.az)),
            json!({
                "Type": "AWS::AutoScaling::AutoScalingGroup",
                "Properties": {
                    "AutoScalingGroupName": name,
                    "MinSize": "1",
                    "MaxSize": "1",
                    "DesiredCapacity": "1",
                    "VPCZoneIdentifier": [zone.public_subnet],
                    "LaunchTemplate": {
                        "LaunchTemplateId": { "Ref": "LaunchTemplate" },
                        "Version": { "Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"] },
                    },
                    "LifecycleHookSpecificationList": [{
                        "LifecycleHookName": Names::HOOK,
                        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                        "HeartbeatTimeout": 30,
                        "DefaultResult": "CONTINUE",
                    }],
                    "Tags": [
                        propagated(GROUP_TAG, group),
                        propagated(AZ_TAG, &zone.az),
                        propagated("Name", &format!("natron-{group}-{}", zone.az)),
                    ],
                }
            }),
        );
        if layout.elastic_ips {
            resources.insert(
                format!("ElasticIp{}", logical(&zone.az)),
                json!({
                    "Type": "AWS::EC2::EIP",
                    "Properties": {
                        "Domain": "vpc",
                        "Tags": tags(&[(GROUP_TAG, json!(group)), (AZ_TAG, json!(zone.az))]),
                    }
                }),
            );
        }
        for slot in 1..layout.addresses {
            resources.insert(
                format!("ElasticIp{}Slot{slot}", logical(&zone.az)),
                json!({
                    "Type": "AWS::EC2::EIP",
                    "Properties": {
                        "Domain": "vpc",
                        "Tags": tags(&[
                            (GROUP_TAG, json!(group)),
                            (AZ_TAG, json!(zone.az)),
                            (natron_contract::tags::SLOT, json!(slot.to_string())),
                        ]),
                    }
                }),
            );
        }
    }

    // Per private subnet: natron's table, starting with the subnet's
    // current way out, then the association where a stack can make it.
    for zone in &layout.zones {
        for (i, s) in zone.private.iter().enumerate() {
            let key = table_logical(zone, i, s);
            let subnet_ref = match &s.id {
                Some(id) => json!(id),
                None => json!({ "Ref": subnet_logical(zone, i) }),
            };
            let explicit =
                s.id.as_deref()
                    .and_then(|id| inv.explicit_route_table_of(id));
            let current = s.id.as_deref().and_then(|id| inv.route_table_of(id));
            let mut table_tags = vec![
                (GROUP_TAG, json!(group)),
                (AZ_TAG, json!(zone.az)),
                (SUBNET_TAG, subnet_ref.clone()),
                (
                    "Name",
                    json!({ "Fn::Join": ["", [format!("natron-{group}-"), subnet_ref.clone()]] }),
                ),
            ];
            if let Some(t) = explicit {
                table_tags.push((PREVIOUS_TAG, json!(t.id)));
            }
            resources.insert(
                key.clone(),
                json!({
                    "Type": "AWS::EC2::RouteTable",
                    "Properties": { "VpcId": layout.vpc_id, "Tags": tags(&table_tags) }
                }),
            );
            let mut depends = Vec::new();
            if let Some(route) = current.and_then(|t| t.default_route()) {
                match route_target(route) {
                    Some((property, target)) => {
                        let name = format!("{key}Default");
                        resources.insert(
                            name.clone(),
                            json!({
                                "Type": "AWS::EC2::Route",
                                "Properties": {
                                    "RouteTableId": { "Ref": key },
                                    "DestinationCidrBlock": "0.0.0.0/0",
                                    property: target,
                                }
                            }),
                        );
                        depends.push(name);
                    }
                    None => notes.push(format!(
                        "{}: its current default route ({}) is not copied (a blackhole or a target a route cannot name); until the NAT of {} claims natron's table, the subnet has no way out once associated",
                        s.key(),
                        route.target(),
                        zone.az
                    )),
                }
            }
            match explicit {
                None => {
                    let mut association = json!({
                        "Type": "AWS::EC2::SubnetRouteTableAssociation",
                        "Properties": { "SubnetId": subnet_ref, "RouteTableId": { "Ref": key } }
                    });
                    if !depends.is_empty() {
                        association["DependsOn"] = json!(depends);
                    }
                    resources.insert(format!("{key}Association"), association);
                }
                Some(t) => {
                    let id = s.id.as_deref().unwrap_or_default();
                    let association = t
                        .associations
                        .iter()
                        .find(|x| x.subnet_id.as_deref() == Some(id))
                        .map(|x| x.id.as_str())
                        .unwrap_or_default();
                    pending.push(json!({
                        "Fn::Join": ["", [
                            format!("aws ec2 replace-route-table-association --association-id {association} --route-table-id "),
                            { "Ref": key },
                        ]]
                    }));
                    notes.push(format!(
                        "{id} has its own route table {}: a stack cannot replace an association, so it stays there; once the stack's NAT serves natron's table, run the command in the stack's PendingAssociations output (or `natron apply`, which does it)",
                        t.id
                    ));
                }
            }
            outputs.insert(
                key.clone(),
                json!({
                    "Description": format!("natron's route table for {}", s.key()),
                    "Value": { "Ref": key },
                }),
            );
        }
    }
    if !pending.is_empty() {
        outputs.insert(
            "PendingAssociations".into(),
            json!({
                "Description": "Commands that move subnets with their own route table to natron's, once its NAT serves it",
                "Value": { "Fn::Join": [" ; ", pending] },
            }),
        );
    }
    alarms::insert(layout, &mut resources);
    outputs.insert(
        "SecurityGroupId".into(),
        json!({ "Description": "The NATs' security group", "Value": sg_id }),
    );

    let template = json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "natron NAT instances of group {group} in {} ({} AZs, image {}); written by `natron export`",
            layout.vpc_id,
            layout.zones.len(),
            layout.image.id
        ),
        "Metadata": { "natron": { "group": group, "vpc": layout.vpc_id, "notes": notes } },
        "Resources": resources,
        "Outputs": outputs,
    });
    Export { template, notes }
}

/// The property of `AWS::EC2::Route` that names a route's target, and the
/// target; None for a blackhole or a target a route cannot name.
fn route_target(route: &Route) -> Option<(&'static str, String)> {
    if route.state == Some(crate::model::RouteState::Blackhole) {
        return None;
    }
    if let Some(id) = &route.nat_gateway_id {
        return Some(("NatGatewayId", id.clone()));
    }
    if let Some(id) = &route.instance_id {
        return Some(("InstanceId", id.clone()));
    }
    if let Some(id) = &route.interface_id {
        return Some(("NetworkInterfaceId", id.clone()));
    }
    if let Some(id) = route.gateway_id.as_ref().filter(|g| *g != "local") {
        return Some(("GatewayId", id.clone()));
    }
    let other = route.other.as_ref()?;
    let property = match other.split('-').next()? {
        "tgw" => "TransitGatewayId",
        "pcx" => "VpcPeeringConnectionId",
        "vpce" => "VpcEndpointId",
        "cagw" => "CarrierGatewayId",
        "lgw" => "LocalGatewayId",
        _ => return None,
    };
    Some((property, other.clone()))
}

/// A CloudFormation logical id part: letters and digits only,
/// `us-east-1a` → `UsEast1a`.
fn logical(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn subnet_logical(zone: &Zone, i: usize) -> String {
    format!("PrivateSubnet{}{i}", logical(&zone.az))
}

fn table_logical(zone: &Zone, i: usize, s: &PrivateSubnet) -> String {
    match &s.id {
        Some(id) => table_output(id),
        None => format!("RouteTable{}", subnet_logical(zone, i)),
    }
}

/// The logical id (and output) of natron's route table for an existing
/// subnet.
pub fn table_output(subnet_id: &str) -> String {
    format!("RouteTable{}", logical(subnet_id))
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[cfg(test)]
mod tests;
