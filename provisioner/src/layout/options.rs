//! What the agents are asked for beyond their defaults: the address pool
//! (checked against the instance type), NAT64 (checked against the VPC)
//! and the options their user data and IAM policy carry.

use serde::Serialize;

use super::{Layout, Request};
use crate::model::Inventory;

/// NAT64 for the group. Like served subnets, it is additive: an apply
/// without `--nat64` keeps it on where an earlier one turned it on, since
/// turning it off would cut the IPv6-only clients' way to IPv4; `destroy`
/// removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Nat64 {
    Off,
    /// `--nat64`.
    Asked,
    /// On since an earlier apply (a table of the group is tagged
    /// `natron:nat64`), not asked by this one.
    Kept,
}

impl Nat64 {
    pub fn of(req: &Request, inv: &Inventory) -> Nat64 {
        if req.nat64 {
            Nat64::Asked
        } else if inv.group_route_tables(&req.group).any(|t| t.serves_nat64()) {
            Nat64::Kept
        } else {
            Nat64::Off
        }
    }

    pub fn on(self) -> bool {
        self != Nat64::Off
    }
}

/// NAT64 translates the VPC's IPv6 clients: a VPC without IPv6 has none.
pub(super) fn check_nat64(nat64: Nat64, inv: &Inventory) -> Option<String> {
    let what = match nat64 {
        Nat64::Off => return None,
        Nat64::Asked => "--nat64",
        Nat64::Kept => "NAT64 (on since an earlier apply; `natron destroy` removes it)",
    };
    inv.vpc_ipv6_cidrs.is_empty().then(|| {
        format!(
            "{what}: {vpc} has no IPv6 CIDR block, so no IPv6 clients to translate; associate one first (aws ec2 associate-vpc-cidr-block --vpc-id {vpc} --amazon-provided-ipv6-cidr-block) and give the private subnets IPv6 blocks",
            vpc = inv.vpc_id
        )
    })
}

/// The address pool against the instance type's limit of private
/// addresses per interface (unknown: not checked; the agent reports
/// EC2's refusal).
pub(super) fn check_addresses(req: &Request, per_interface: Option<u32>) -> Option<String> {
    let limit = per_interface?;
    (req.addresses > limit).then(|| {
        format!(
            "--addresses {}: instance type {} allows {limit} private IPv4 addresses per interface; give at most {limit} or a larger type",
            req.addresses, req.instance_type
        )
    })
}

impl Layout {
    /// What the agents' user data and IAM policy turn on.
    pub fn agent_options(&self) -> crate::documents::AgentOptions {
        crate::documents::AgentOptions {
            cloudwatch_metrics: self.cloudwatch_metrics,
            addresses: self.addresses,
            nat64: self.nat64.on(),
        }
    }
}
