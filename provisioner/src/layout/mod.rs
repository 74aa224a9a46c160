//! What the operator asks for ([`Request`]) checked against the VPC
//! ([`Inventory`]) into a [`Layout`]: every AZ with its public subnet and
//! the private subnets it serves. Pure; all input errors are collected so
//! one run reports them all, before anything changes.
//!
//! Applies are additive: a subnet the group serves (it has the group's
//! route table) that a later apply does not name stays served and is
//! marked `kept`; only `--remove-private` releases one ([`Released`]).
//! Leaving a subnet out must never cut its way out.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::model::{has_tag, Image, InstanceTypeInfo, Inventory, GROUP_TAG, SUBNET_TAG};

mod options;

pub use options::Nat64;

pub const DEFAULT_INSTANCE_TYPE: &str = "t4g.nano";

/// A private subnet to serve: an existing one, or a CIDR to create in an AZ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivateRequest {
    Existing(String),
    New { az: String, cidr: Ipv4Net },
}

impl std::str::FromStr for PrivateRequest {
    type Err = String;

    /// `subnet-…` or `AZ=CIDR` (for example `us-east-1a=10.0.10.0/24`).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("subnet-") {
            return Ok(PrivateRequest::Existing(s.to_string()));
        }
        let (az, cidr) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected a subnet id or AZ=CIDR"))?;
        let cidr: Ipv4Net = cidr
            .parse()
            .map_err(|e| format!("{s:?}: {cidr:?} is not an IPv4 CIDR: {e}"))?;
        if cidr != cidr.trunc() {
            return Err(format!(
                "{s:?}: {cidr} has host bits set (did you mean {}?)",
                cidr.trunc()
            ));
        }
        Ok(PrivateRequest::New {
            az: az.to_string(),
            cidr,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub vpc_id: String,
    pub group: String,
    /// Empty: every AZ that has a public subnet.
    pub azs: Vec<String>,
    pub private: Vec<PrivateRequest>,
    /// Empty: per AZ, the subnets whose route table has an IGW route.
    pub public_subnets: Vec<String>,
    pub instance_type: String,
    pub elastic_ips: bool,
    /// The agents publish the NAT Gateway's metrics to CloudWatch.
    pub cloudwatch_metrics: bool,
    /// Each NAT's address pool (`--addresses`): 1 + an Elastic IP per slot.
    pub addresses: u32,
    /// CloudWatch alarms on the group (`--alarms`; needs the metrics).
    pub alarms: bool,
    /// Served subnets to stop serving (`--remove-private`).
    pub remove: Vec<String>,
    /// NAT64 for the served subnets' IPv6 clients (`--nat64`).
    pub nat64: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub vpc_id: String,
    pub group: String,
    pub image: Image,
    pub instance_type: String,
    pub elastic_ips: bool,
    pub cloudwatch_metrics: bool,
    /// Each NAT's address pool (`nat.addresses`).
    pub addresses: u32,
    pub alarms: bool,
    pub nat64: Nat64,
    pub zones: Vec<Zone>,
    /// Subnets the group serves today and stops serving.
    pub released: Vec<Released>,
    /// The group's route tables made for subnets that no longer exist:
    /// deleted.
    pub stale_tables: Vec<String>,
}

/// A served subnet to release: it gets its old route table back (or the
/// main one), natron's table is deleted, then its ingress rule revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Released {
    pub subnet: String,
    pub az: String,
    pub cidr: Ipv4Net,
    /// natron's route table of the subnet.
    pub table: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Zone {
    pub az: String,
    pub public_subnet: String,
    pub private: Vec<PrivateSubnet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrivateSubnet {
    /// None until created.
    pub id: Option<String>,
    pub cidr: Ipv4Net,
    /// Served since an earlier apply and not named by this one.
    pub kept: bool,
}

impl PrivateSubnet {
    /// The key a subnet created by this run is known by before it has an id.
    pub fn key(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => format!("subnet {}", self.cidr),
        }
    }
}

/// Names of the group's resources; one place so plan, destroy and the IAM
/// policy agree.
pub struct Names;

impl Names {
    pub fn security_group(group: &str) -> String {
        format!("natron-{group}")
    }
    pub fn role(group: &str) -> String {
        format!("natron-{group}-agent")
    }
    pub fn instance_profile(group: &str) -> String {
        format!("natron-{group}-agent")
    }
    pub const POLICY: &'static str = "natron-agent";
    pub fn launch_template(group: &str) -> String {
        format!("natron-{group}")
    }
    pub fn auto_scaling_group(group: &str, az: &str) -> String {
        format!("{}{az}", Names::auto_scaling_group_prefix(group))
    }
    pub const HOOK: &'static str = "natron-handoff";
    /// A private subnet natron creates (`--private AZ=CIDR`).
    pub fn private_subnet(group: &str, az: &str) -> String {
        format!("natron-{group}-private-{az}")
    }
    /// What every auto scaling group name of the group starts with.
    pub fn auto_scaling_group_prefix(group: &str) -> String {
        format!("natron-{group}-")
    }
}

/// Group names become part of IAM, launch template and ASG names.
pub fn validate_group(group: &str) -> Result<(), String> {
    let ok = !group.is_empty()
        && group.len() <= 32
        && group
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !group.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "group {group:?}: use 1 to 32 characters of a-z, 0-9 and '-', not starting with '-'"
        ))
    }
}

/// Checks the request against the VPC, the chosen image and the instance
/// type. `image` is the lookup's error when it failed, so that one run
/// still reports every other problem; `instance_type.architectures` is
/// empty for an unknown type.
pub fn resolve(
    req: &Request,
    inv: &Inventory,
    image: Result<Image, String>,
    instance_type: &InstanceTypeInfo,
) -> Result<Layout, Vec<String>> {
    let type_architectures = instance_type.architectures.as_slice();
    let mut errors = Vec::new();
    errors.extend(options::check_addresses(
        req,
        instance_type.addresses_per_interface,
    ));
    if let Err(e) = validate_group(&req.group) {
        errors.push(e);
    }
    let nat64 = Nat64::of(req, inv);
    errors.extend(options::check_nat64(nat64, inv));
    if let Err(e) = &image {
        errors.push(e.clone());
    }
    if type_architectures.is_empty() {
        errors.push(format!(
            "instance type {}: unknown in this region",
            req.instance_type
        ));
    } else if let Some(arch) = image.as_ref().ok().and_then(|i| i.architecture.as_ref()) {
        let image = image.as_ref().expect("checked above");
        if !type_architectures.contains(arch) {
            errors.push(format!(
                "image {} ({}) is {arch} but instance type {} runs {}",
                image.id,
                image.name,
                req.instance_type,
                type_architectures.join(", ")
            ));
        }
    }

    // Public subnet per AZ.
    let mut public: Vec<(String, String)> = Vec::new();
    if req.public_subnets.is_empty() {
        let mut candidates: Vec<_> = inv
            .subnets
            .iter()
            .filter(|s| inv.is_public(&s.id))
            .collect();
        candidates.sort_by(|a, b| a.az.cmp(&b.az).then(a.id.cmp(&b.id)));
        for s in candidates {
            if !public.iter().any(|(az, _)| *az == s.az) {
                public.push((s.az.clone(), s.id.clone()));
            }
        }
    } else {
        for id in &req.public_subnets {
            match inv.subnet(id) {
                None => errors.push(format!("public subnet {id}: not found in {}", inv.vpc_id)),
                Some(s) if !inv.is_public(id) => errors.push(format!(
                    "public subnet {id} ({}): its route table {} has no 0.0.0.0/0 route to an internet gateway",
                    s.az,
                    inv.route_table_of(id).map_or("(none)", |t| t.id.as_str())
                )),
                Some(s) if public.iter().any(|(az, _)| *az == s.az) => errors.push(format!(
                    "public subnet {id}: a second public subnet for {}; give one per AZ",
                    s.az
                )),
                Some(s) => public.push((s.az.clone(), s.id.clone())),
            }
        }
    }

    // AZs.
    let azs: Vec<String> = if req.azs.is_empty() {
        public.iter().map(|(az, _)| az.clone()).collect()
    } else {
        req.azs.clone()
    };
    if azs.is_empty() {
        errors.push(format!(
            "{}: no subnet whose route table sends 0.0.0.0/0 to an internet gateway; NAT instances need one per AZ",
            inv.vpc_id
        ));
    }
    let mut zones: Vec<Zone> = Vec::new();
    for az in &azs {
        if !inv.zones.contains(az) {
            errors.push(format!(
                "AZ {az}: not an available zone of this region ({})",
                inv.zones.join(", ")
            ));
            continue;
        }
        match public.iter().find(|(a, _)| a == az) {
            Some((_, subnet)) => zones.push(Zone {
                az: az.clone(),
                public_subnet: subnet.clone(),
                private: Vec::new(),
            }),
            None => errors.push(format!(
                "AZ {az}: no public subnet (one whose route table has a 0.0.0.0/0 route to an internet gateway) in {}",
                inv.vpc_id
            )),
        }
    }

    // Private subnets.
    let mut new_cidrs: Vec<Ipv4Net> = Vec::new();
    let mut seen = BTreeSet::new();
    for p in &req.private {
        let (az, subnet) = match p {
            PrivateRequest::Existing(id) => {
                if !seen.insert(id.clone()) {
                    errors.push(format!("private subnet {id}: given twice"));
                    continue;
                }
                let Some(s) = inv.subnet(id) else {
                    errors.push(format!("private subnet {id}: not found in {}", inv.vpc_id));
                    continue;
                };
                if public.iter().any(|(_, p)| p == id) || inv.is_public(id) {
                    errors.push(format!(
                        "private subnet {id}: its route table sends 0.0.0.0/0 to an internet gateway; it is a public subnet"
                    ));
                    continue;
                }
                (
                    s.az.clone(),
                    PrivateSubnet {
                        id: Some(s.id.clone()),
                        cidr: s.cidr,
                        kept: false,
                    },
                )
            }
            PrivateRequest::New { az, cidr } => {
                if !inv.vpc_cidrs.iter().any(|v| v.contains(cidr)) {
                    errors.push(format!(
                        "private subnet {az}={cidr}: not inside the VPC's CIDRs ({})",
                        join(&inv.vpc_cidrs)
                    ));
                    continue;
                }
                if let Some(other) = new_cidrs.iter().find(|o| overlaps(o, cidr)) {
                    errors.push(format!(
                        "private subnet {az}={cidr}: overlaps {other}, also requested"
                    ));
                    continue;
                }
                new_cidrs.push(*cidr);
                // A subnet this group created on an earlier run is reused.
                let mine = inv.subnets.iter().find(|s| {
                    s.cidr == *cidr && s.az == *az && has_tag(&s.tags, GROUP_TAG, &req.group)
                });
                if let Some(s) = mine {
                    (
                        az.clone(),
                        PrivateSubnet {
                            id: Some(s.id.clone()),
                            cidr: s.cidr,
                            kept: false,
                        },
                    )
                } else if let Some(s) = inv.subnets.iter().find(|s| overlaps(&s.cidr, cidr)) {
                    errors.push(format!(
                        "private subnet {az}={cidr}: overlaps {} ({}, {}); to serve an existing subnet give its id",
                        s.id, s.cidr, s.az
                    ));
                    continue;
                } else {
                    (
                        az.clone(),
                        PrivateSubnet {
                            id: None,
                            cidr: *cidr,
                            kept: false,
                        },
                    )
                }
            }
        };
        match zones.iter_mut().find(|z| z.az == az) {
            Some(z) => z.private.push(subnet),
            None if azs.contains(&az) => {} // already reported above
            None => errors.push(format!(
                "private subnet {} in {az}: natron serves each private subnet from a NAT in its own AZ, and {az} is not among the NAT AZs ({})",
                subnet.key(),
                azs.join(", ")
            )),
        }
    }
    let (released, stale_tables) = keep_or_release(req, inv, &azs, &mut zones, &mut errors);
    if zones.iter().all(|z| z.private.is_empty()) && errors.is_empty() {
        errors.push(if released.is_empty() {
            "no private subnets to serve: give --private subnet-… or --private AZ=CIDR".into()
        } else {
            format!(
                "no private subnet would be left to serve; `natron destroy --vpc {} --group {}` removes the group",
                inv.vpc_id, req.group
            )
        });
    }

    match image {
        Ok(image) if errors.is_empty() => Ok(Layout {
            vpc_id: inv.vpc_id.clone(),
            group: req.group.clone(),
            image,
            instance_type: req.instance_type.clone(),
            elastic_ips: req.elastic_ips,
            cloudwatch_metrics: req.cloudwatch_metrics,
            addresses: req.addresses,
            alarms: req.alarms,
            nat64,
            zones,
            released,
            stale_tables,
        }),
        _ => Err(errors),
    }
}

/// The subnets the group serves today (each has the group's route table,
/// tagged with the subnet) that the request does not name: kept in their
/// AZ's zone, or released when named by `--remove-private`. Also the
/// group's tables whose subnet was deleted.
fn keep_or_release(
    req: &Request,
    inv: &Inventory,
    azs: &[String],
    zones: &mut [Zone],
    errors: &mut Vec<String>,
) -> (Vec<Released>, Vec<String>) {
    let named: BTreeSet<String> = zones
        .iter()
        .flat_map(|z| &z.private)
        .filter_map(|p| p.id.clone())
        .collect();
    let served: Vec<(&str, &str)> = inv
        .group_route_tables(&req.group)
        .filter_map(|t| Some((t.tag(SUBNET_TAG)?, t.id.as_str())))
        .collect();
    let mut seen = BTreeSet::new();
    for id in &req.remove {
        if !seen.insert(id.as_str()) {
            errors.push(format!("--remove-private {id}: given twice"));
        } else if named.contains(id) {
            errors.push(format!(
                "subnet {id}: named by both --private and --remove-private"
            ));
        } else if !served.iter().any(|(s, _)| s == id) {
            errors.push(format!(
                "--remove-private {id}: not served by group {} in {} (it has no route table of the group); nothing to remove",
                req.group, inv.vpc_id
            ));
        }
    }
    let (mut released, mut stale) = (Vec::new(), Vec::new());
    for (subnet_id, table) in served {
        if named.contains(subnet_id) {
            continue;
        }
        // A subnet deleted under natron's table: nothing left to serve.
        let Some(subnet) = inv.subnet(subnet_id) else {
            stale.push(table.to_string());
            continue;
        };
        if req.remove.iter().any(|r| r == subnet_id) {
            released.push(Released {
                subnet: subnet.id.clone(),
                az: subnet.az.clone(),
                cidr: subnet.cidr,
                table: table.to_string(),
            });
            continue;
        }
        match zones.iter_mut().find(|z| z.az == subnet.az) {
            Some(z) => z.private.push(PrivateSubnet {
                id: Some(subnet.id.clone()),
                cidr: subnet.cidr,
                kept: true,
            }),
            // An AZ left out for a reason already reported.
            None if azs.contains(&subnet.az) => {}
            None => errors.push(format!(
                "subnet {} ({}) is served by group {} since an earlier apply, but {} is not among this apply's AZs ({}); add --az {}, or --remove-private {} to stop serving it",
                subnet.id,
                subnet.az,
                req.group,
                subnet.az,
                azs.join(", "),
                subnet.az,
                subnet.id
            )),
        }
    }
    (released, stale)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn join(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod tests;
