//! The cloud edge: reading a VPC into an [`Inventory`] and carrying out one
//! [`Action`], behind the [`Cloud`] trait. [`Aws`] is the one real
//! implementation (EC2, IAM, Auto Scaling); tests run it against the
//! emulator. Errors name the call and the resource.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as ec2t;
use base64::Engine;
use serde_json::Value;

use crate::layout::Names;
use crate::model::*;
use crate::plan::{Action, PlannedLaunch, Ref};

#[derive(Debug, thiserror::Error)]
#[error("{operation} {resource}: {}{message}", code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct CloudError {
    pub operation: &'static str,
    pub resource: String,
    pub code: Option<String>,
    pub message: String,
}

impl CloudError {
    pub fn is_not_found(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| c.contains("NotFound") || c == "NoSuchEntity")
    }

    /// An answer without the resource, where the API gives no error code
    /// (an empty list): it counts as not found like an API NotFound.
    fn not_found(operation: &'static str, resource: &str, message: &str) -> CloudError {
        CloudError {
            code: Some("NotFound".into()),
            ..CloudError::new(operation, resource, message)
        }
    }

    fn new(operation: &'static str, resource: &str, message: impl Into<String>) -> CloudError {
        CloudError {
            operation,
            resource: resource.to_string(),
            code: None,
            message: message.into(),
        }
    }
}

fn fail<E, R>(operation: &'static str, resource: &str) -> impl FnOnce(SdkError<E, R>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let resource = resource.to_string();
    move |err| {
        let code = err.code().map(str::to_string);
        let message = err
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(&err).to_string());
        CloudError {
            operation,
            resource,
            code,
            message,
        }
    }
}

/// How an AMI is chosen.
#[derive(Debug, Clone)]
pub enum ImageChoice {
    Id(String),
    /// The newest image whose name matches the pattern (`*` wildcards),
    /// owned by `owner` (`self`, `amazon` or an account id).
    /// Images whose architecture the API reports must be one of
    /// `architectures` (the instance type's).
    Newest {
        name: String,
        owner: String,
        architectures: Vec<String>,
    },
}

#[async_trait]
pub trait Cloud: Send + Sync {
    async fn inventory(&self, vpc_id: &str, group: &str) -> Result<Inventory, CloudError>;
    async fn find_image(&self, choice: &ImageChoice) -> Result<Image, CloudError>;
    /// Architectures of an instance type; empty when the type is unknown.
    async fn instance_architectures(&self, instance_type: &str) -> Result<Vec<String>, CloudError>;
    /// Carries out an action whose references are all [`Ref::Id`]; returns
    /// the id of what it created.
    async fn execute(
        &self,
        action: &Action,
        vpc_id: &str,
        group: &str,
    ) -> Result<Option<String>, CloudError>;
    async fn associate_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
    ) -> Result<(), CloudError>;
}

pub struct Aws {
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
}

impl Aws {
    pub fn new(config: &aws_config::SdkConfig) -> Aws {
        Aws {
            ec2: aws_sdk_ec2::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
        }
    }
}

fn filter(name: &str, values: &[&str]) -> ec2t::Filter {
    ec2t::Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

fn ec2_tags(tags: &[ec2t::Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

fn tag_spec(kind: ec2t::ResourceType, tags: &[(&str, &str)]) -> ec2t::TagSpecification {
    ec2t::TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| ec2t::Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build()
}

fn parse_route(r: &ec2t::Route) -> Option<Route> {
    Some(Route {
        destination: r.destination_cidr_block()?.to_string(),
        gateway_id: r.gateway_id().map(str::to_string),
        instance_id: r.instance_id().map(str::to_string),
        interface_id: r.network_interface_id().map(str::to_string),
        nat_gateway_id: r.nat_gateway_id().map(str::to_string),
        other: r
            .vpc_peering_connection_id()
            .or(r.transit_gateway_id())
            .or(r.egress_only_internet_gateway_id())
            .or(r.local_gateway_id())
            .map(str::to_string),
        state: r.state().map(|s| s.as_str().to_string()),
    })
    .filter(|r| !r.destination.is_empty())
}

fn parse_permissions(perms: &[ec2t::IpPermission]) -> Vec<Permission> {
    let mut out = Vec::new();
    for p in perms {
        let protocol = p.ip_protocol().unwrap_or("-1").to_string();
        let (from_port, to_port) = if protocol == "-1" {
            (None, None)
        } else {
            (p.from_port(), p.to_port())
        };
        for r in p.ip_ranges() {
            if let Some(Ok(cidr)) = r.cidr_ip().map(str::parse) {
                out.push(Permission {
                    protocol: protocol.clone(),
                    from_port,
                    to_port,
                    peer: Peer::Cidr(cidr),
                });
            }
        }
        for g in p.user_id_group_pairs() {
            if let Some(id) = g.group_id() {
                out.push(Permission {
                    protocol: protocol.clone(),
                    from_port,
                    to_port,
                    peer: Peer::Group(id.to_string()),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn to_ip_permissions(rules: &[Permission]) -> Vec<ec2t::IpPermission> {
    rules
        .iter()
        .map(|r| {
            let b = ec2t::IpPermission::builder()
                .ip_protocol(&r.protocol)
                .set_from_port(r.from_port)
                .set_to_port(r.to_port);
            match &r.peer {
                Peer::Cidr(c) => b.ip_ranges(
                    ec2t::IpRange::builder()
                        .cidr_ip(c.to_string())
                        .description(if c.prefix_len() == 0 {
                            "natron: egress to anywhere"
                        } else {
                            "natron: served private subnet"
                        })
                        .build(),
                ),
                Peer::Group(g) => b.user_id_group_pairs(
                    ec2t::UserIdGroupPair::builder()
                        .group_id(g)
                        .description("natron: health checks between NATs")
                        .build(),
                ),
            }
            .build()
        })
        .collect()
}

fn parse_acl_entry(e: &ec2t::NetworkAclEntry) -> Option<AclEntry> {
    Some(AclEntry {
        number: e.rule_number()?,
        egress: e.egress()?,
        protocol: e.protocol()?.to_string(),
        allow: e.rule_action()? == &ec2t::RuleAction::Allow,
        cidr: e.cidr_block()?.parse().ok()?,
        ports: e
            .port_range()
            .and_then(|p| Some((u16::try_from(p.from()?).ok()?, u16::try_from(p.to()?).ok()?))),
    })
}

fn parse_launch(data: &ec2t::ResponseLaunchTemplateData) -> Option<LaunchSpec> {
    let sg = data
        .network_interfaces()
        .first()
        .and_then(|n| n.groups().first().cloned())
        .or_else(|| data.security_group_ids().first().cloned())?;
    let user_data = data
        .user_data()
        .and_then(|u| base64::engine::general_purpose::STANDARD.decode(u).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    Some(LaunchSpec {
        image_id: data.image_id()?.to_string(),
        instance_type: data.instance_type()?.as_str().to_string(),
        instance_profile: data.iam_instance_profile()?.name()?.to_string(),
        security_group_id: sg,
        user_data,
    })
}

/// IAM returns policy documents URL-encoded.
fn parse_policy(text: &str) -> Value {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    serde_json::from_str(&decoded).unwrap_or(Value::String(text.to_string()))
}

impl Aws {
    async fn launch_template(&self, group: &str) -> Result<Option<LaunchTemplate>, CloudError> {
        let name = Names::launch_template(group);
        let found = self
            .ec2
            .describe_launch_templates()
            .filters(filter("launch-template-name", &[&name]))
            .send()
            .await
            .map_err(fail("DescribeLaunchTemplates", &name))?;
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
            .map_err(fail("DescribeLaunchTemplateVersions", &id))?;
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

    async fn auto_scaling_groups(&self, group: &str) -> Result<Vec<AutoScalingGroup>, CloudError> {
        let prefix = format!("natron-{group}-");
        let all = self
            .autoscaling
            .describe_auto_scaling_groups()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(fail("DescribeAutoScalingGroups", &prefix))?;
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
                .map_err(fail("DescribeLifecycleHooks", &name))?;
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

    async fn role(&self, group: &str) -> Result<Option<Role>, CloudError> {
        let name = Names::role(group);
        let role = match self.iam.get_role().role_name(&name).send().await {
            Ok(r) => r,
            Err(e) => {
                let e = fail("GetRole", &name)(e);
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
            .map_err(fail("ListRolePolicies", &name))?;
        let mut policies = BTreeMap::new();
        for policy in names.policy_names() {
            let doc = self
                .iam
                .get_role_policy()
                .role_name(&name)
                .policy_name(policy)
                .send()
                .await
                .map_err(fail("GetRolePolicy", &format!("{name}/{policy}")))?;
            policies.insert(policy.clone(), parse_policy(doc.policy_document()));
        }
        Ok(Some(Role {
            name,
            tags,
            policies,
        }))
    }

    async fn instance_profile(&self, group: &str) -> Result<Option<InstanceProfile>, CloudError> {
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
                let e = fail("GetInstanceProfile", &name)(e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn launch_data(&self, launch: &PlannedLaunch, group: &str) -> ec2t::RequestLaunchTemplateData {
        let sg = match &launch.security_group {
            Ref::Id(id) => id.clone(),
            Ref::New(key) => unreachable!("unresolved {key}"),
        };
        let tags = |kind| {
            ec2t::LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(kind)
                .tags(ec2t::Tag::builder().key(GROUP_TAG).value(group).build())
                .build()
        };
        ec2t::RequestLaunchTemplateData::builder()
            .image_id(&launch.image_id)
            .instance_type(ec2t::InstanceType::from(launch.instance_type.as_str()))
            .iam_instance_profile(
                ec2t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(&launch.instance_profile)
                    .build(),
            )
            // A public address for egress from the first second; an
            // Elastic IP, when asked for, replaces it.
            .network_interfaces(
                ec2t::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(true)
                    .delete_on_termination(true)
                    .groups(sg)
                    .build(),
            )
            // IMDSv2 only, one hop (no container on the NAT reaches it),
            // instance tags visible (the agent reads natron:group there).
            .metadata_options(
                ec2t::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(ec2t::LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .http_endpoint(ec2t::LaunchTemplateInstanceMetadataEndpointState::Enabled)
                    .instance_metadata_tags(ec2t::LaunchTemplateInstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .user_data(base64::engine::general_purpose::STANDARD.encode(&launch.user_data))
            .tag_specifications(tags(ec2t::ResourceType::Instance))
            .tag_specifications(tags(ec2t::ResourceType::Volume))
            // AssociateAddress is authorized on the ENI too (agent policy).
            .tag_specifications(tags(ec2t::ResourceType::NetworkInterface))
            .build()
    }

    async fn wait_terminated(&self, ids: &[String]) -> Result<(), CloudError> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let out = self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
                .map_err(fail("DescribeInstances", &ids.join(",")))?;
            let left: Vec<String> = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state().and_then(|s| s.name()) != Some(&ec2t::InstanceStateName::Terminated)
                })
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CloudError::new(
                    "DescribeInstances",
                    &left.join(","),
                    "still not terminated after 15 minutes",
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Deleting a security group or subnet fails while the ENIs of just
    /// terminated instances linger; AWS frees them within minutes.
    async fn retry_dependency<F, Fut>(&self, mut op: F) -> Result<Option<String>, CloudError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), CloudError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match op().await {
                Ok(()) => return Ok(None),
                Err(e)
                    if e.code.as_deref() == Some("DependencyViolation")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_secs(5)).await
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn id(r: &Ref) -> &str {
    match r {
        Ref::Id(id) => id,
        Ref::New(key) => unreachable!("unresolved {key}"),
    }
}

#[async_trait]
impl Cloud for Aws {
    async fn inventory(&self, vpc_id: &str, group: &str) -> Result<Inventory, CloudError> {
        let vpc_filter = || filter("vpc-id", &[vpc_id]);
        let vpcs = self
            .ec2
            .describe_vpcs()
            .vpc_ids(vpc_id)
            .send()
            .await
            .map_err(fail("DescribeVpcs", vpc_id))?;
        let vpc = vpcs
            .vpcs()
            .first()
            .ok_or_else(|| CloudError::not_found("DescribeVpcs", vpc_id, "no such VPC"))?;
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
        let zones = self
            .ec2
            .describe_availability_zones()
            .send()
            .await
            .map_err(fail("DescribeAvailabilityZones", "region"))?
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
            .map_err(fail("DescribeSubnets", vpc_id))?
            .iter()
            .filter_map(|s| {
                Some(Subnet {
                    id: s.subnet_id()?.to_string(),
                    az: s.availability_zone()?.to_string(),
                    cidr: s.cidr_block()?.parse().ok()?,
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
            .map_err(fail("DescribeRouteTables", vpc_id))?
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
            .map_err(fail("DescribeInternetGateways", vpc_id))?
            .internet_gateways()
            .iter()
            .filter_map(|g| g.internet_gateway_id().map(str::to_string))
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
            .map_err(fail("DescribeSecurityGroups", vpc_id))?
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
            .map_err(fail("DescribeNetworkAcls", vpc_id))?
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
            .map_err(fail("DescribeInstances", group))?
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
                state: i
                    .state()
                    .and_then(|s| s.name())
                    .map_or("unknown", |s| s.as_str())
                    .to_string(),
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
            .map_err(fail("DescribeAddresses", group))?
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
            zones,
            subnets,
            route_tables,
            internet_gateways,
            security_groups,
            network_acls,
            instances,
            addresses,
            launch_template: self.launch_template(group).await?,
            auto_scaling_groups: self.auto_scaling_groups(group).await?,
            role: self.role(group).await?,
            instance_profile: self.instance_profile(group).await?,
        })
    }

    async fn find_image(&self, choice: &ImageChoice) -> Result<Image, CloudError> {
        let (what, req) = match choice {
            ImageChoice::Id(id) => (id.clone(), self.ec2.describe_images().image_ids(id)),
            ImageChoice::Newest { name, owner, .. } => (
                format!("{name} owned by {owner}"),
                self.ec2
                    .describe_images()
                    .owners(owner)
                    .filters(filter("name", &[name]))
                    .filters(filter("state", &["available"])),
            ),
        };
        let out = req.send().await.map_err(fail("DescribeImages", &what))?;
        let mut images: Vec<_> = out
            .images()
            .iter()
            .filter(|i| match (choice, i.architecture()) {
                (ImageChoice::Newest { architectures, .. }, Some(a)) => {
                    architectures.iter().any(|x| x == a.as_str())
                }
                _ => true,
            })
            .collect();
        images.sort_by_key(|i| i.creation_date().unwrap_or_default().to_string());
        let image = images
            .last()
            .ok_or_else(|| CloudError::not_found("DescribeImages", &what, "no such image"))?;
        Ok(Image {
            id: image.image_id().unwrap_or_default().to_string(),
            name: image.name().unwrap_or_default().to_string(),
            architecture: image.architecture().map(|a| a.as_str().to_string()),
        })
    }

    async fn instance_architectures(&self, instance_type: &str) -> Result<Vec<String>, CloudError> {
        let out = self
            .ec2
            .describe_instance_types()
            .instance_types(ec2t::InstanceType::from(instance_type))
            .send()
            .await;
        match out {
            Ok(out) => Ok(out
                .instance_types()
                .iter()
                .flat_map(|t| {
                    t.processor_info()
                        .map(|p| p.supported_architectures().to_vec())
                        .unwrap_or_default()
                })
                .map(|a| a.as_str().to_string())
                .collect()),
            Err(e) => {
                let e = fail("DescribeInstanceTypes", instance_type)(e);
                if e.code.as_deref() == Some("InvalidInstanceType") {
                    Ok(vec![])
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn execute(
        &self,
        action: &Action,
        vpc_id: &str,
        group: &str,
    ) -> Result<Option<String>, CloudError> {
        use Action::*;
        let ec2 = &self.ec2;
        match action {
            CreateSubnet { az, cidr, .. } => {
                let name = format!("natron-{group}-private-{az}");
                let out = ec2
                    .create_subnet()
                    .vpc_id(vpc_id)
                    .availability_zone(az)
                    .cidr_block(cidr.to_string())
                    .tag_specifications(tag_spec(
                        ec2t::ResourceType::Subnet,
                        &[(GROUP_TAG, group), (AZ_TAG, az), ("Name", &name)],
                    ))
                    .send()
                    .await
                    .map_err(fail("CreateSubnet", &format!("{cidr} in {az}")))?;
                Ok(out.subnet().and_then(|s| s.subnet_id()).map(str::to_string))
            }
            CreateSecurityGroup { name } => {
                let out = ec2
                    .create_security_group()
                    .group_name(name)
                    .description(format!("natron NAT instances of group {group}"))
                    .vpc_id(vpc_id)
                    .tag_specifications(tag_spec(
                        ec2t::ResourceType::SecurityGroup,
                        &[(GROUP_TAG, group), ("Name", name)],
                    ))
                    .send()
                    .await
                    .map_err(fail("CreateSecurityGroup", name))?;
                Ok(out.group_id().map(str::to_string))
            }
            AuthorizeIngress { group: sg, rules } => {
                ec2.authorize_security_group_ingress()
                    .group_id(id(sg))
                    .set_ip_permissions(Some(to_ip_permissions(rules)))
                    .send()
                    .await
                    .map_err(fail("AuthorizeSecurityGroupIngress", id(sg)))?;
                Ok(None)
            }
            RevokeIngress { group: sg, rules } => {
                ec2.revoke_security_group_ingress()
                    .group_id(sg)
                    .set_ip_permissions(Some(to_ip_permissions(rules)))
                    .send()
                    .await
                    .map_err(fail("RevokeSecurityGroupIngress", sg))?;
                Ok(None)
            }
            AuthorizeEgress { group: sg, rules } => {
                ec2.authorize_security_group_egress()
                    .group_id(sg)
                    .set_ip_permissions(Some(to_ip_permissions(rules)))
                    .send()
                    .await
                    .map_err(fail("AuthorizeSecurityGroupEgress", sg))?;
                Ok(None)
            }
            CreateRole { name } => {
                self.iam
                    .create_role()
                    .role_name(name)
                    .description(format!("natron agent of group {group}"))
                    .assume_role_policy_document(crate::documents::trust_policy().to_string())
                    .tags(iam_tag(GROUP_TAG, group))
                    .send()
                    .await
                    .map_err(fail("CreateRole", name))?;
                Ok(None)
            }
            PutRolePolicy {
                role,
                name,
                document,
            } => {
                self.iam
                    .put_role_policy()
                    .role_name(role)
                    .policy_name(name)
                    .policy_document(document.to_string())
                    .send()
                    .await
                    .map_err(fail("PutRolePolicy", &format!("{role}/{name}")))?;
                Ok(None)
            }
            CreateInstanceProfile { name } => {
                self.iam
                    .create_instance_profile()
                    .instance_profile_name(name)
                    .tags(iam_tag(GROUP_TAG, group))
                    .send()
                    .await
                    .map_err(fail("CreateInstanceProfile", name))?;
                Ok(None)
            }
            AddRoleToInstanceProfile { profile, role } => {
                self.iam
                    .add_role_to_instance_profile()
                    .instance_profile_name(profile)
                    .role_name(role)
                    .send()
                    .await
                    .map_err(fail("AddRoleToInstanceProfile", profile))?;
                Ok(None)
            }
            CreateLaunchTemplate { name, launch } => {
                let out = ec2
                    .create_launch_template()
                    .launch_template_name(name)
                    .version_description("natron apply")
                    .launch_template_data(self.launch_data(launch, group))
                    .tag_specifications(tag_spec(
                        ec2t::ResourceType::LaunchTemplate,
                        &[(GROUP_TAG, group)],
                    ))
                    .send()
                    .await
                    .map_err(fail("CreateLaunchTemplate", name))?;
                Ok(out
                    .launch_template()
                    .and_then(|t| t.launch_template_id())
                    .map(str::to_string))
            }
            CreateLaunchTemplateVersion {
                template_id,
                launch,
            } => {
                let out = ec2
                    .create_launch_template_version()
                    .launch_template_id(template_id)
                    .version_description("natron apply")
                    .launch_template_data(self.launch_data(launch, group))
                    .send()
                    .await
                    .map_err(fail("CreateLaunchTemplateVersion", template_id))?;
                let version = out
                    .launch_template_version()
                    .and_then(|v| v.version_number())
                    .ok_or_else(|| {
                        CloudError::new(
                            "CreateLaunchTemplateVersion",
                            template_id,
                            "no version number in the answer",
                        )
                    })?;
                ec2.modify_launch_template()
                    .launch_template_id(template_id)
                    .default_version(version.to_string())
                    .send()
                    .await
                    .map_err(fail("ModifyLaunchTemplate", template_id))?;
                Ok(None)
            }
            AllocateAddress { az } => {
                let out = ec2
                    .allocate_address()
                    .domain(ec2t::DomainType::Vpc)
                    .tag_specifications(tag_spec(
                        ec2t::ResourceType::ElasticIp,
                        &[(GROUP_TAG, group), (AZ_TAG, az)],
                    ))
                    .send()
                    .await
                    .map_err(fail("AllocateAddress", az))?;
                Ok(out.allocation_id().map(str::to_string))
            }
            CreateRouteTable {
                az,
                subnet,
                previous,
                ..
            } => {
                let name = format!("natron-{group}-{}", id(subnet));
                let mut tags = vec![
                    (GROUP_TAG, group),
                    (AZ_TAG, az.as_str()),
                    (SUBNET_TAG, id(subnet)),
                    ("Name", &name),
                ];
                if let Some(p) = previous {
                    tags.push((PREVIOUS_TAG, p));
                }
                let out = ec2
                    .create_route_table()
                    .vpc_id(vpc_id)
                    .tag_specifications(tag_spec(ec2t::ResourceType::RouteTable, &tags))
                    .send()
                    .await
                    .map_err(fail("CreateRouteTable", id(subnet)))?;
                Ok(out
                    .route_table()
                    .and_then(|t| t.route_table_id())
                    .map(str::to_string))
            }
            AssociateRouteTable {
                table,
                subnet,
                replace_association,
                ..
            } => {
                match replace_association {
                    Some(a) => {
                        ec2.replace_route_table_association()
                            .association_id(a)
                            .route_table_id(id(table))
                            .send()
                            .await
                            .map_err(fail("ReplaceRouteTableAssociation", a))?;
                    }
                    None => {
                        ec2.associate_route_table()
                            .route_table_id(id(table))
                            .subnet_id(id(subnet))
                            .send()
                            .await
                            .map_err(fail("AssociateRouteTable", id(table)))?;
                    }
                }
                Ok(None)
            }
            CreateAutoScalingGroup {
                name,
                az,
                subnet,
                template,
            } => {
                let tag = |k: &str, v: &str| {
                    aws_sdk_autoscaling::types::Tag::builder()
                        .key(k)
                        .value(v)
                        .propagate_at_launch(true)
                        .resource_id(name)
                        .resource_type("auto-scaling-group")
                        .build()
                };
                self.autoscaling
                    .create_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_template(asg_template(id(template)))
                    .min_size(1)
                    .max_size(1)
                    .desired_capacity(1)
                    .vpc_zone_identifier(subnet)
                    .health_check_type("EC2")
                    .tags(tag(GROUP_TAG, group))
                    .tags(tag(AZ_TAG, az))
                    .tags(tag("Name", &format!("natron-{group}-{az}")))
                    .send()
                    .await
                    .map_err(fail("CreateAutoScalingGroup", name))?;
                Ok(None)
            }
            UpdateAutoScalingGroup {
                name,
                subnet,
                template,
            } => {
                self.autoscaling
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_template(asg_template(template))
                    .vpc_zone_identifier(subnet)
                    .send()
                    .await
                    .map_err(fail("UpdateAutoScalingGroup", name))?;
                Ok(None)
            }
            PutLifecycleHook { group: asg, name } => {
                // Time for the agent's handoff before the instance stops;
                // CONTINUE so a silent agent never blocks a replacement.
                self.autoscaling
                    .put_lifecycle_hook()
                    .auto_scaling_group_name(asg)
                    .lifecycle_hook_name(name)
                    .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
                    .heartbeat_timeout(30)
                    .default_result("CONTINUE")
                    .send()
                    .await
                    .map_err(fail("PutLifecycleHook", asg))?;
                Ok(None)
            }
            RestoreAssociation {
                association, to, ..
            } => {
                ec2.replace_route_table_association()
                    .association_id(association)
                    .route_table_id(to)
                    .send()
                    .await
                    .map_err(fail("ReplaceRouteTableAssociation", association))?;
                Ok(None)
            }
            Disassociate { association, .. } => {
                ec2.disassociate_route_table()
                    .association_id(association)
                    .send()
                    .await
                    .map_err(fail("DisassociateRouteTable", association))?;
                Ok(None)
            }
            DeleteAutoScalingGroup { name } => {
                self.autoscaling
                    .delete_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .force_delete(true)
                    .send()
                    .await
                    .map_err(fail("DeleteAutoScalingGroup", name))?;
                Ok(None)
            }
            WaitInstancesTerminated { ids } => {
                self.wait_terminated(ids).await?;
                Ok(None)
            }
            ReleaseAddress {
                allocation_id,
                association_id,
            } => {
                if let Some(a) = association_id {
                    if let Err(e) = ec2.disassociate_address().association_id(a).send().await {
                        let e = fail("DisassociateAddress", a)(e);
                        if !e.is_not_found() {
                            return Err(e);
                        }
                    }
                }
                ec2.release_address()
                    .allocation_id(allocation_id)
                    .send()
                    .await
                    .map_err(fail("ReleaseAddress", allocation_id))?;
                Ok(None)
            }
            DeleteRouteTable { id } => {
                ec2.delete_route_table()
                    .route_table_id(id)
                    .send()
                    .await
                    .map_err(fail("DeleteRouteTable", id))?;
                Ok(None)
            }
            DeleteLaunchTemplate { id, .. } => {
                ec2.delete_launch_template()
                    .launch_template_id(id)
                    .send()
                    .await
                    .map_err(fail("DeleteLaunchTemplate", id))?;
                Ok(None)
            }
            RemoveRoleFromInstanceProfile { profile, role } => {
                self.iam
                    .remove_role_from_instance_profile()
                    .instance_profile_name(profile)
                    .role_name(role)
                    .send()
                    .await
                    .map_err(fail("RemoveRoleFromInstanceProfile", profile))?;
                Ok(None)
            }
            DeleteInstanceProfile { name } => {
                self.iam
                    .delete_instance_profile()
                    .instance_profile_name(name)
                    .send()
                    .await
                    .map_err(fail("DeleteInstanceProfile", name))?;
                Ok(None)
            }
            DeleteRolePolicy { role, name } => {
                self.iam
                    .delete_role_policy()
                    .role_name(role)
                    .policy_name(name)
                    .send()
                    .await
                    .map_err(fail("DeleteRolePolicy", &format!("{role}/{name}")))?;
                Ok(None)
            }
            DeleteRole { name } => {
                self.iam
                    .delete_role()
                    .role_name(name)
                    .send()
                    .await
                    .map_err(fail("DeleteRole", name))?;
                Ok(None)
            }
            DeleteSecurityGroup { id } => {
                self.retry_dependency(|| async {
                    ec2.delete_security_group()
                        .group_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(fail("DeleteSecurityGroup", id))
                })
                .await
            }
            DeleteSubnet { id } => {
                self.retry_dependency(|| async {
                    ec2.delete_subnet()
                        .subnet_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(fail("DeleteSubnet", id))
                })
                .await
            }
        }
    }

    async fn associate_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
    ) -> Result<(), CloudError> {
        self.ec2
            .associate_address()
            .allocation_id(allocation_id)
            .instance_id(instance_id)
            .allow_reassociation(true)
            .send()
            .await
            .map_err(fail("AssociateAddress", allocation_id))?;
        Ok(())
    }
}

fn iam_tag(key: &str, value: &str) -> aws_sdk_iam::types::Tag {
    aws_sdk_iam::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .expect("key and value are set")
}

fn asg_template(template_id: &str) -> aws_sdk_autoscaling::types::LaunchTemplateSpecification {
    aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
        .launch_template_id(template_id)
        .version("$Default")
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_back_url_encoded_or_not() {
        let doc = r#"{"Version":"2012-10-17"}"#;
        let encoded =
            percent_encoding::utf8_percent_encode(doc, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert_eq!(parse_policy(doc), parse_policy(&encoded));
        assert_eq!(parse_policy(doc)["Version"], "2012-10-17");
    }
}
