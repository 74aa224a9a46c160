//! Reading one VPC, as natron sees it, into an [`Inventory`]: EC2's
//! network and instances, the group's IAM role and profile, its launch
//! template and auto scaling groups.

use std::collections::BTreeMap;

use aws_sdk_ec2::types as ec2t;
use natron_contract::aws::AwsError;

use super::convert::*;
use super::{fail, Aws, AUTOSCALING, EC2, IAM};
use crate::layout::Names;
use crate::model::*;

impl Aws {
    pub(super) async fn read_inventory(
        &self,
        vpc_id: &str,
        group: &str,
    ) -> Result<Inventory, AwsError> {
        let vpc_filter = || filter("vpc-id", &[vpc_id]);
        let vpcs = self
            .ec2
            .describe_vpcs()
            .vpc_ids(vpc_id)
            .send()
            .await
            .map_err(fail(EC2, "DescribeVpcs", vpc_id))?;
        let vpc = vpcs
            .vpcs()
            .first()
            .ok_or_else(|| AwsError::not_found(EC2, "DescribeVpcs", vpc_id, "no such VPC"))?;
        let mut vpc_cidrs: Vec<ipnet::Ipv4Net> = vpc
            .cidr_block_association_set()
            .iter()
            .filter(|a| {
                a.cidr_block_state().and_then(|s| s.state())
                    == Some(&ec2t::VpcCidrBlockStateCode::Associated)
            })
            .filter_map(|a| a.cidr_block()?.parse().ok())
            .collect();
        if vpc_cidrs.is_empty() {
            vpc_cidrs.extend(
                vpc.cidr_block()
                    .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok()),
            );
        }
        let vpc_ipv6_cidrs = vpc
            .ipv6_cidr_block_association_set()
            .iter()
            .filter(|a| {
                a.ipv6_cidr_block_state().and_then(|s| s.state())
                    == Some(&ec2t::VpcCidrBlockStateCode::Associated)
            })
            .filter_map(|a| a.ipv6_cidr_block()?.parse().ok())
            .collect();
        let zones = self
            .ec2
            .describe_availability_zones()
            .send()
            .await
            .map_err(fail(EC2, "DescribeAvailabilityZones", "region"))?
            .availability_zones()
            .iter()
            .filter(|z| z.state() == Some(&ec2t::AvailabilityZoneState::Available))
            .filter_map(|z| z.zone_name().map(str::to_string))
            .collect();
        let subnets = self
            .ec2
            .describe_subnets()
            .filters(vpc_filter())
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(fail(EC2, "DescribeSubnets", vpc_id))?
            .iter()
            .filter_map(|s| {
                Some(Subnet {
                    id: s.subnet_id()?.to_string(),
                    az: s.availability_zone()?.to_string(),
                    cidr: s.cidr_block()?.parse().ok()?,
                    ipv6_cidr: s
                        .ipv6_cidr_block_association_set()
                        .iter()
                        .filter(|a| {
                            a.ipv6_cidr_block_state().and_then(|s| s.state())
                                == Some(&ec2t::SubnetCidrBlockStateCode::Associated)
                        })
                        .find_map(|a| a.ipv6_cidr_block()?.parse().ok()),
                    dns64: s.enable_dns64() == Some(true),
                    tags: ec2_tags(s.tags()),
                })
            })
            .collect();
        let route_tables = self
            .ec2
            .describe_route_tables()
            .filters(vpc_filter())
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(fail(EC2, "DescribeRouteTables", vpc_id))?
            .iter()
            .map(|t| RouteTable {
                id: t.route_table_id().unwrap_or_default().to_string(),
                main: t.associations().iter().any(|a| a.main() == Some(true)),
                associations: t
                    .associations()
                    .iter()
                    .filter(|a| {
                        a.association_state().and_then(|s| s.state())
                            != Some(&ec2t::RouteTableAssociationStateCode::Disassociated)
                    })
                    .filter(|a| a.main() != Some(true))
                    .filter_map(|a| {
                        Some(Association {
                            id: a.route_table_association_id()?.to_string(),
                            subnet_id: a.subnet_id().map(str::to_string),
                        })
                    })
                    .filter(|a| a.subnet_id.is_some())
                    .collect(),
                routes: t.routes().iter().filter_map(parse_route).collect(),
                tags: ec2_tags(t.tags()),
            })
            .collect();
        let internet_gateways = self
            .ec2
            .describe_internet_gateways()
            .filters(filter("attachment.vpc-id", &[vpc_id]))
            .send()
            .await
            .map_err(fail(EC2, "DescribeInternetGateways", vpc_id))?
            .internet_gateways()
            .iter()
            .filter_map(|g| g.internet_gateway_id().map(str::to_string))
            .collect();
        let egress_only_gateways = self
            .ec2
            .describe_egress_only_internet_gateways()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(fail(EC2, "DescribeEgressOnlyInternetGateways", vpc_id))?
            .iter()
            .filter(|g| {
                g.attachments().iter().any(|a| {
                    a.vpc_id() == Some(vpc_id)
                        && a.state() == Some(&ec2t::AttachmentStatus::Attached)
                })
            })
            .filter_map(|g| {
                Some(EgressOnlyGateway {
                    id: g.egress_only_internet_gateway_id()?.to_string(),
                    tags: ec2_tags(g.tags()),
                })
            })
            .collect();
        let security_groups = self
            .ec2
            .describe_security_groups()
            .filters(vpc_filter())
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(fail(EC2, "DescribeSecurityGroups", vpc_id))?
            .iter()
            .map(|g| SecurityGroup {
                id: g.group_id().unwrap_or_default().to_string(),
                name: g.group_name().unwrap_or_default().to_string(),
                tags: ec2_tags(g.tags()),
                ingress: parse_permissions(g.ip_permissions()),
                egress: parse_permissions(g.ip_permissions_egress()),
            })
            .collect();
        let network_acls = self
            .ec2
            .describe_network_acls()
            .filters(vpc_filter())
            .send()
            .await
            .map_err(fail(EC2, "DescribeNetworkAcls", vpc_id))?
            .network_acls()
            .iter()
            .map(|a| NetworkAcl {
                id: a.network_acl_id().unwrap_or_default().to_string(),
                default: a.is_default().unwrap_or(false),
                subnet_ids: a
                    .associations()
                    .iter()
                    .filter_map(|x| x.subnet_id().map(str::to_string))
                    .collect(),
                entries: a.entries().iter().filter_map(parse_acl_entry).collect(),
            })
            .collect();
        let instances = self
            .ec2
            .describe_instances()
            .filters(vpc_filter())
            .filters(filter(&format!("tag:{GROUP_TAG}"), &[group]))
            .filters(filter(
                "instance-state-name",
                &["pending", "running", "stopping", "stopped", "shutting-down"],
            ))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(fail(EC2, "DescribeInstances", group))?
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| Instance {
                id: i.instance_id().unwrap_or_default().to_string(),
                az: i
                    .placement()
                    .and_then(|p| p.availability_zone())
                    .unwrap_or_default()
                    .to_string(),
                subnet_id: i.subnet_id().map(str::to_string),
                state: InstanceState::parse(
                    i.state()
                        .and_then(|s| s.name())
                        .map_or("unknown", |s| s.as_str()),
                ),
                private_ip: i.private_ip_address().and_then(|a| a.parse().ok()),
                public_ip: i.public_ip_address().and_then(|a| a.parse().ok()),
                interface_ids: i
                    .network_interfaces()
                    .iter()
                    .filter_map(|n| n.network_interface_id().map(str::to_string))
                    .collect(),
                source_dest_check: i.source_dest_check(),
                security_groups: {
                    let mut g: Vec<String> = i
                        .security_groups()
                        .iter()
                        .chain(i.network_interfaces().iter().flat_map(|n| n.groups()))
                        .filter_map(|g| g.group_id().map(str::to_string))
                        .collect();
                    g.sort();
                    g.dedup();
                    g
                },
                tags: ec2_tags(i.tags()),
            })
            .collect();
        let addresses = self
            .ec2
            .describe_addresses()
            .filters(filter(&format!("tag:{GROUP_TAG}"), &[group]))
            .send()
            .await
            .map_err(fail(EC2, "DescribeAddresses", group))?
            .addresses()
            .iter()
            .map(|a| Address {
                allocation_id: a.allocation_id().unwrap_or_default().to_string(),
                public_ip: a.public_ip().and_then(|p| p.parse().ok()),
                instance_id: a
                    .instance_id()
                    .filter(|i| !i.is_empty())
                    .map(str::to_string),
                association_id: a
                    .association_id()
                    .filter(|i| !i.is_empty())
                    .map(str::to_string),
                tags: ec2_tags(a.tags()),
            })
            .collect();
        Ok(Inventory {
            vpc_id: vpc_id.to_string(),
            vpc_cidrs,
            vpc_ipv6_cidrs,
            zones,
            subnets,
            route_tables,
            internet_gateways,
            egress_only_gateways,
            security_groups,
            network_acls,
            instances,
            addresses,
            launch_template: self.launch_template(group).await?,
            auto_scaling_groups: self.auto_scaling_groups(group).await?,
            role: self.role(group).await?,
            instance_profile: self.instance_profile(group).await?,
            alarms: self.alarms(group).await?,
        })
    }

    async fn launch_template(&self, group: &str) -> Result<Option<LaunchTemplate>, AwsError> {
        let name = Names::launch_template(group);
        let found = self
            .ec2
            .describe_launch_templates()
            .filters(filter("launch-template-name", &[&name]))
            .send()
            .await
            .map_err(fail(EC2, "DescribeLaunchTemplates", &name))?;
        let Some(t) = found.launch_templates().first() else {
            return Ok(None);
        };
        let id = t.launch_template_id().unwrap_or_default().to_string();
        let versions = self
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&id)
            .versions("$Latest")
            .send()
            .await
            .map_err(fail(EC2, "DescribeLaunchTemplateVersions", &id))?;
        let latest = versions
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
            .and_then(parse_launch);
        Ok(Some(LaunchTemplate {
            id,
            name,
            latest_version: t.latest_version_number().unwrap_or(0),
            latest,
            tags: ec2_tags(t.tags()),
        }))
    }

    async fn auto_scaling_groups(&self, group: &str) -> Result<Vec<AutoScalingGroup>, AwsError> {
        let prefix = Names::auto_scaling_group_prefix(group);
        let all = self
            .autoscaling
            .describe_auto_scaling_groups()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(fail(AUTOSCALING, "DescribeAutoScalingGroups", &prefix))?;
        let mut out = Vec::new();
        for g in all {
            let name = g.auto_scaling_group_name().unwrap_or_default().to_string();
            let tags: Tags = g
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect();
            if !name.starts_with(&prefix) && !has_tag(&tags, GROUP_TAG, group) {
                continue;
            }
            let hooks = self
                .autoscaling
                .describe_lifecycle_hooks()
                .auto_scaling_group_name(&name)
                .send()
                .await
                .map_err(fail(AUTOSCALING, "DescribeLifecycleHooks", &name))?;
            out.push(AutoScalingGroup {
                subnet_ids: g
                    .vpc_zone_identifier()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                launch_template_id: g
                    .launch_template()
                    .and_then(|t| t.launch_template_id())
                    .map(str::to_string),
                launch_template_version: g
                    .launch_template()
                    .and_then(|t| t.version())
                    .map(str::to_string),
                min_size: g.min_size().unwrap_or(0),
                max_size: g.max_size().unwrap_or(0),
                desired: g.desired_capacity().unwrap_or(0),
                instance_ids: g
                    .instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string))
                    .collect(),
                termination_hooks: hooks
                    .lifecycle_hooks()
                    .iter()
                    .filter(|h| {
                        h.lifecycle_transition() == Some("autoscaling:EC2_INSTANCE_TERMINATING")
                    })
                    .filter_map(|h| h.lifecycle_hook_name().map(str::to_string))
                    .collect(),
                name,
                tags,
            });
        }
        Ok(out)
    }

    async fn role(&self, group: &str) -> Result<Option<Role>, AwsError> {
        let name = Names::role(group);
        let role = match self.iam.get_role().role_name(&name).send().await {
            Ok(r) => r,
            Err(e) => {
                let e = fail(IAM, "GetRole", &name)(e);
                return if e.is_not_found() { Ok(None) } else { Err(e) };
            }
        };
        let tags = role
            .role()
            .map(|r| {
                r.tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let names = self
            .iam
            .list_role_policies()
            .role_name(&name)
            .send()
            .await
            .map_err(fail(IAM, "ListRolePolicies", &name))?;
        let mut policies = BTreeMap::new();
        for policy in names.policy_names() {
            let doc = self
                .iam
                .get_role_policy()
                .role_name(&name)
                .policy_name(policy)
                .send()
                .await
                .map_err(fail(IAM, "GetRolePolicy", &format!("{name}/{policy}")))?;
            policies.insert(policy.clone(), parse_policy(doc.policy_document()));
        }
        Ok(Some(Role {
            name,
            tags,
            policies,
        }))
    }

    async fn instance_profile(&self, group: &str) -> Result<Option<InstanceProfile>, AwsError> {
        let name = Names::instance_profile(group);
        match self
            .iam
            .get_instance_profile()
            .instance_profile_name(&name)
            .send()
            .await
        {
            Ok(r) => Ok(r.instance_profile().map(|p| InstanceProfile {
                name: name.clone(),
                roles: p
                    .roles()
                    .iter()
                    .map(|r| r.role_name().to_string())
                    .collect(),
                tags: p
                    .tags()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string()))
                    .collect(),
            })),
            Err(e) => {
                let e = fail(IAM, "GetInstanceProfile", &name)(e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}
