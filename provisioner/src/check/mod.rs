//! `natron check`: the recipe's "test from the subnets" step as an analysis
//! of the configuration, not of packets. For each private subnet of the
//! group: its route table, the default route's target, that the target is
//! a running natron NAT with source/dest check off in the same AZ, that the
//! NAT's subnet routes to an internet gateway and the NAT has a public
//! address, and that security groups and network ACLs let a sample flow
//! (TCP 443 from the subnet to the internet, and its answers) through.
//! With NAT64, the IPv6 path too ([`nat64`]). Pure.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::model::{
    has_tag, AclEntry, Instance, Inventory, Peer, Permission, RouteState, Subnet, GROUP_TAG,
    SUBNET_TAG,
};

mod nat64;

/// Stands for "the internet" in rule evaluation: rules that open only some
/// public ranges are not judged.
pub const SAMPLE_INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The sample flow: HTTPS, the bulk of what Lambda functions call.
pub const SAMPLE_PORT: u16 = 443;
/// A port in the NAT's and clients' ephemeral ranges, for return traffic.
pub const SAMPLE_EPHEMERAL: u16 = 32768;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// The private subnet this is about.
    pub subnet: String,
    pub message: String,
    /// What to do; empty for `ok`.
    pub fix: String,
}

/// The private subnets `check` looks at: those natron made a table for,
/// those associated with the group's tables, and any asked for.
pub fn subnets_of(inv: &Inventory, group: &str, extra: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = inv
        .group_route_tables(group)
        .flat_map(|t| {
            t.tag(SUBNET_TAG)
                .map(str::to_string)
                .into_iter()
                .chain(t.associations.iter().filter_map(|a| a.subnet_id.clone()))
        })
        .chain(extra.iter().cloned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

pub fn check(inv: &Inventory, group: &str, extra: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let subnets = subnets_of(inv, group, extra);
    if subnets.is_empty() {
        out.push(Finding {
            level: Level::Error,
            subnet: "-".into(),
            message: format!(
                "no route table in {} is tagged {GROUP_TAG}={group}",
                inv.vpc_id
            ),
            fix: "run `natron apply` for this group, or name subnets with --subnet".into(),
        });
    }
    for id in subnets {
        let before = out.len();
        check_subnet(inv, group, &id, &mut out);
        if out.len() == before {
            let table = inv.route_table_of(&id);
            let rt = table.map_or("?", |t| t.id.as_str());
            let nat = table
                .and_then(|t| t.default_route())
                .map_or("?".into(), |r| r.target());
            let ipv6 = table
                .filter(|t| t.serves_nat64())
                .map(nat64::summary)
                .unwrap_or_default();
            out.push(Finding {
                level: Level::Ok,
                subnet: id,
                message: format!("{rt} sends 0.0.0.0/0 to natron NAT {nat} in its AZ{ipv6}; security groups and network ACLs allow the traffic"),
                fix: String::new(),
            });
        }
    }
    out
}

fn check_subnet(inv: &Inventory, group: &str, id: &str, out: &mut Vec<Finding>) {
    let mut push = |level, message: String, fix: &str| {
        out.push(Finding {
            level,
            subnet: id.to_string(),
            message,
            fix: fix.to_string(),
        })
    };
    let Some(subnet) = inv.subnet(id) else {
        push(
            Level::Error,
            format!("subnet {id} does not exist in {}", inv.vpc_id),
            "run `natron apply`: it deletes natron's route table made for the deleted subnet",
        );
        return;
    };
    let Some(rt) = inv.route_table_of(id) else {
        push(
            Level::Error,
            format!("{id} has no route table"),
            "run `natron apply`",
        );
        return;
    };
    if let Some(mine) = inv
        .group_route_tables(group)
        .find(|t| t.tag(SUBNET_TAG) == Some(id))
    {
        if mine.id != rt.id {
            push(
                Level::Error,
                format!("{id} uses {}, not natron's {} made for it", rt.id, mine.id),
                "run `natron apply` to associate it again",
            );
            return;
        }
    }
    let Some(route) = rt.default_route() else {
        push(
            Level::Error,
            format!("{} has no 0.0.0.0/0 route: {id} cannot reach the internet", rt.id),
            "the agent of this AZ claims the route once its NAT is ready: see `natron status` and the agent's /status",
        );
        return;
    };
    if route.state == Some(RouteState::Blackhole) {
        push(
            Level::Error,
            format!(
                "{}'s 0.0.0.0/0 route to {} is a blackhole (its target is gone)",
                rt.id,
                route.target()
            ),
            "the group's agents replace it within seconds when a NAT is ready; see `natron status`",
        );
        return;
    }
    if let Some(ngw) = &route.nat_gateway_id {
        push(
            Level::Warning,
            format!(
                "{}'s 0.0.0.0/0 route goes to NAT gateway {ngw}, not to natron",
                rt.id
            ),
            "run `natron apply` to serve this subnet from natron",
        );
        return;
    }
    if route.is_internet_gateway() {
        push(
            Level::Error,
            format!(
                "{}'s 0.0.0.0/0 route goes to internet gateway {}: {id} is a public subnet",
                rt.id,
                route.target()
            ),
            "private subnets need a route to a NAT; do not serve public subnets",
        );
        return;
    }
    let Some(nat) = inv
        .instance_for(route)
        .filter(|i| has_tag(&i.tags, GROUP_TAG, group))
    else {
        push(
            Level::Error,
            format!("{}'s 0.0.0.0/0 route goes to {}, which is no NAT instance of group {group}", rt.id, route.target()),
            "let the group's agents claim it (they do when the target is gone), or point it at a natron NAT",
        );
        return;
    };
    if !nat.is_running() {
        push(
            Level::Error,
            format!("NAT {} serving {id} is {}", nat.id, nat.state),
            "its auto scaling group replaces it; the other AZ's agent takes the route over meanwhile",
        );
        return;
    }
    if nat.source_dest_check != Some(false) {
        push(
            Level::Error,
            format!("NAT {} has source/destination check on: it drops every forwarded packet", nat.id),
            "the agent turns it off at boot: check the agent's /status and that its IAM role allows ec2:ModifyInstanceAttribute",
        );
    }
    if nat.az != subnet.az {
        push(
            Level::Warning,
            format!(
                "{id} ({}) goes through NAT {} in {}: cross-AZ traffic costs $0.01/GB each way and shares that AZ's fate",
                subnet.az, nat.id, nat.az
            ),
            "expected only while this AZ's NAT is down (natron fails back after the hold-down); otherwise check this AZ's NAT with `natron status`",
        );
    }
    check_nat_egress(inv, nat, &mut push);
    check_security_groups(inv, group, nat, subnet, &mut push);
    check_acls(inv, nat, subnet, &mut push);
    if rt.serves_nat64() {
        nat64::check(inv, group, nat, subnet, rt, &mut push);
    }
}

fn check_nat_egress(inv: &Inventory, nat: &Instance, push: &mut impl FnMut(Level, String, &str)) {
    match nat.subnet_id.as_deref() {
        Some(s) if inv.is_public(s) => {}
        Some(s) => push(
            Level::Error,
            format!(
                "NAT {}'s subnet {s} has no 0.0.0.0/0 route to an internet gateway (its route table: {})",
                nat.id,
                inv.route_table_of(s).map_or("none", |t| t.id.as_str())
            ),
            "add 0.0.0.0/0 → the VPC's internet gateway to that table, or move the group to a public subnet with `natron apply --public-subnet`",
        ),
        None => push(Level::Error, format!("NAT {} is in no subnet", nat.id), "replace the instance"),
    }
    let eip = inv
        .addresses
        .iter()
        .any(|a| a.instance_id.as_deref() == Some(nat.id.as_str()));
    if nat.public_ip.is_none() && !eip {
        push(
            Level::Error,
            format!("NAT {} has no public IPv4 address", nat.id),
            "the launch template asks for one; give it an Elastic IP (`natron apply --elastic-ip`) or replace the instance",
        );
    }
}

/// `apply` puts back the rules of natron's security group, but never
/// changes a running instance's groups: the fix depends on whether the NAT
/// still has natron's group.
fn security_group_fix(inv: &Inventory, group: &str, nat: &Instance) -> String {
    let name = crate::layout::Names::security_group(group);
    match inv.security_groups.iter().find(|g| g.name == name) {
        Some(sg) if nat.security_groups.contains(&sg.id) => format!(
            "run `natron apply`: it puts back the rules of {name} ({}), which allows all traffic from the served subnets",
            sg.id
        ),
        Some(sg) => format!(
            "{} is not in natron's security group {name} ({sg}): attach it (`aws ec2 modify-instance-attribute --instance-id {} --groups {sg}`), or replace the NAT, whose launch template has it; `natron apply` does not change a running instance's groups",
            nat.id,
            nat.id,
            sg = sg.id
        ),
        None => format!(
            "natron's security group {name} is missing: run `natron apply` to create it, then replace the NAT {} so that it launches in it",
            nat.id
        ),
    }
}

fn check_security_groups(
    inv: &Inventory,
    group: &str,
    nat: &Instance,
    subnet: &Subnet,
    push: &mut impl FnMut(Level, String, &str),
) {
    let groups: Vec<_> = nat
        .security_groups
        .iter()
        .filter_map(|g| inv.security_group(g))
        .collect();
    let names = nat.security_groups.join(", ");
    let from_subnet = groups.iter().any(|g| {
        g.ingress
            .iter()
            .any(|p| permits(p, SAMPLE_PORT, |c| c.contains(&subnet.cidr)))
    });
    if !from_subnet {
        push(
            Level::Error,
            format!(
                "NAT {}'s security groups ({}) do not allow TCP {SAMPLE_PORT} from {id} ({cidr})",
                nat.id,
                if names.is_empty() { "none" } else { &names },
                id = subnet.id,
                cidr = subnet.cidr
            ),
            &security_group_fix(inv, group, nat),
        );
    }
    let out = groups.iter().any(|g| {
        g.egress
            .iter()
            .any(|p| permits(p, SAMPLE_PORT, |c| c.contains(&SAMPLE_INTERNET)))
    });
    if !out {
        push(
            Level::Error,
            format!(
                "NAT {}'s security groups ({}) do not allow TCP {SAMPLE_PORT} out to the internet",
                nat.id,
                if names.is_empty() { "none" } else { &names }
            ),
            "allow egress to 0.0.0.0/0 on the NAT's security group",
        );
    }
}

fn permits(p: &Permission, port: u16, peer_ok: impl Fn(&ipnet::Ipv4Net) -> bool) -> bool {
    permits_tcp(p, port) && matches!(&p.peer, Peer::Cidr(c) if peer_ok(c))
}

/// Whether a rule's protocol and ports let TCP `port` through, whoever
/// the peer.
fn permits_tcp(p: &Permission, port: u16) -> bool {
    p.protocol == "-1"
        || (p.protocol == "tcp" || p.protocol == "6")
            && p.from_port.unwrap_or(0) <= i32::from(port)
            && i32::from(port) <= p.to_port.unwrap_or(65535)
}

fn check_acls(
    inv: &Inventory,
    nat: &Instance,
    subnet: &Subnet,
    push: &mut impl FnMut(Level, String, &str),
) {
    let client = subnet.cidr.hosts().next().unwrap_or(subnet.cidr.network());
    let mut flows = vec![
        (
            subnet.id.as_str(),
            true,
            SAMPLE_INTERNET,
            SAMPLE_PORT,
            "requests out",
        ),
        (
            subnet.id.as_str(),
            false,
            SAMPLE_INTERNET,
            SAMPLE_EPHEMERAL,
            "answers in",
        ),
    ];
    if let Some(nat_subnet) = nat.subnet_id.as_deref() {
        flows.extend([
            (
                nat_subnet,
                false,
                client,
                SAMPLE_PORT,
                "requests from the private subnet in",
            ),
            (
                nat_subnet,
                true,
                SAMPLE_INTERNET,
                SAMPLE_PORT,
                "requests out",
            ),
            (
                nat_subnet,
                false,
                SAMPLE_INTERNET,
                SAMPLE_EPHEMERAL,
                "answers in",
            ),
            (
                nat_subnet,
                true,
                client,
                SAMPLE_EPHEMERAL,
                "answers to the private subnet out",
            ),
        ]);
    }
    for (on, egress, peer, port, what) in flows {
        let Some(acl) = inv.network_acl_of(on) else {
            continue;
        };
        if let Some(verdict) = acl_denies(&acl.entries, egress, peer, port) {
            push(
                Level::Error,
                format!(
                    "network ACL {} of {on} blocks {what} (TCP {port} {} {peer}): {verdict}",
                    acl.id,
                    if egress { "to" } else { "from" }
                ),
                "network ACLs are stateless: allow the requests and the answers (ephemeral ports 1024-65535) both ways",
            );
        }
    }
}

/// Evaluates a stateless ACL like AWS does: the lowest-numbered matching
/// rule decides; nothing matching denies. Some(reason) when denied.
pub fn acl_denies(entries: &[AclEntry], egress: bool, peer: Ipv4Addr, port: u16) -> Option<String> {
    let mut rules: Vec<_> = entries.iter().filter(|e| e.egress == egress).collect();
    rules.sort_by_key(|e| e.number);
    for e in rules {
        let proto = e.protocol == "-1" || e.protocol == "6";
        let ports = e.protocol == "-1" || e.ports.is_none_or(|(a, b)| a <= port && port <= b);
        if proto && ports && e.cidr.contains(&peer) {
            return if e.allow {
                None
            } else {
                Some(format!("rule {} denies {}", e.number, e.cidr))
            };
        }
    }
    Some("no rule allows it".into())
}

#[cfg(test)]
mod tests;
