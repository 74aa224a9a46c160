//! NAT64's part of a plan (`apply --nat64`): the served subnets' IPv6
//! blocks in the NATs' security group, an egress-only internet gateway for
//! `::/0`, and per natron table the `natron:nat64` tag (its agent then
//! keeps a `64:ff9b::/96` route beside the default route), `::/0` to the
//! gateway and, once that NAT64 route is served, DNS64 on the subnet.
//! Only the difference, like the rest of the plan.

use crate::layout::{Layout, PrivateSubnet};
use crate::model::{
    has_tag, Inventory, Peer, Permission, RouteTable, DNS64_TAG, GROUP_TAG, IPV6_DEFAULT_ROUTE,
};

use super::{Action, Ref, EGRESS_ONLY_KEY};

/// The served subnets' IPv6 blocks, everything from them (as their IPv4
/// blocks): the NATs translate them.
pub(super) fn ingress<'a>(
    layout: &'a Layout,
    inv: &'a Inventory,
) -> impl Iterator<Item = Permission> + 'a {
    let zones = if layout.nat64.on() {
        &layout.zones[..]
    } else {
        &[]
    };
    zones
        .iter()
        .flat_map(|z| &z.private)
        .filter_map(|p| inv.subnet(p.id.as_deref()?)?.ipv6_cidr)
        .map(|cidr| Permission {
            protocol: "-1".into(),
            from_port: None,
            to_port: None,
            peer: Peer::Cidr6(cidr),
        })
}

/// The egress-only internet gateway `::/0` goes to: the group's, else one
/// the VPC has (used, never deleted), else a new one. None when NAT64 is
/// off.
pub(super) fn gateway(
    layout: &Layout,
    inv: &Inventory,
    a: &mut Vec<Action>,
    notes: &mut Vec<String>,
) -> Option<Ref> {
    if !layout.nat64.on() {
        return None;
    }
    let gateways = &inv.egress_only_gateways;
    if let Some(g) = gateways
        .iter()
        .find(|g| has_tag(&g.tags, GROUP_TAG, &layout.group))
    {
        return Some(Ref::Id(g.id.clone()));
    }
    if let Some(g) = gateways.first() {
        notes.push(format!(
            "::/0 of the NAT64 tables goes to {}, the VPC's egress-only internet gateway (not natron's: destroy leaves it)",
            g.id
        ));
        return Some(Ref::Id(g.id.clone()));
    }
    a.push(Action::CreateEgressOnlyGateway {});
    Some(Ref::New(EGRESS_ONLY_KEY.into()))
}

/// One private subnet's table: tagged for NAT64 and `::/0` to the
/// gateway (at once, in `a`); returned, DNS64 on for its subnet, which
/// waits until the NAT64 route is served. `current` is natron's table as
/// it is, None when it is still to be created.
pub(super) fn table(
    inv: &Inventory,
    subnet: &PrivateSubnet,
    table: &Ref,
    current: Option<&RouteTable>,
    gateway: &Ref,
    a: &mut Vec<Action>,
) -> Option<Action> {
    if !current.is_some_and(RouteTable::serves_nat64) {
        a.push(Action::TagNat64 {
            table: table.clone(),
        });
    }
    let out = current.and_then(|t| t.route(IPV6_DEFAULT_ROUTE));
    let there = matches!((out.and_then(|r| r.egress_only_gateway()), gateway),
        (Some(have), Ref::Id(want)) if have == want);
    if !there {
        a.push(Action::RouteIpv6Out {
            table: table.clone(),
            gateway: gateway.clone(),
            replace: out.is_some(),
        });
    }
    let with_ipv6 = subnet
        .id
        .as_deref()
        .and_then(|id| inv.subnet(id))
        .filter(|s| s.ipv6_cidr.is_some());
    with_ipv6.filter(|s| !s.dns64).map(|s| Action::EnableDns64 {
        subnet: s.id.clone(),
        table: table.clone(),
    })
}

/// What the operator should know about NAT64 in this apply.
pub(super) fn notes(layout: &Layout, inv: &Inventory, notes: &mut Vec<String>) {
    if layout.nat64 == crate::layout::Nat64::Kept {
        notes.push(format!(
            "NAT64 stays on: an earlier apply turned it on for group {}; `natron destroy` removes it",
            layout.group
        ));
    }
    if !layout.nat64.on() {
        return;
    }
    let without: Vec<String> = layout
        .zones
        .iter()
        .flat_map(|z| &z.private)
        .filter(|p| {
            p.id.as_deref()
                .and_then(|id| inv.subnet(id))
                .is_none_or(|s| s.ipv6_cidr.is_none())
        })
        .map(PrivateSubnet::key)
        .collect();
    if !without.is_empty() {
        notes.push(format!(
            "{} {} no IPv6 block: {} the NAT64 routes, but no IPv6 clients to use them (associate a block and run apply again for DNS64)",
            without.join(", "),
            if without.len() == 1 { "has" } else { "have" },
            if without.len() == 1 { "its table gets" } else { "their tables get" },
        ));
    }
}

/// Releasing a subnet from one of natron's tables: DNS64 off where natron
/// turned it on (its table is tagged `natron:dns64`).
pub(super) fn release(inv: &Inventory, table: &RouteTable, subnet: &str) -> Option<Action> {
    table.tag(DNS64_TAG)?;
    inv.subnet(subnet)
        .filter(|s| s.dns64)
        .map(|s| Action::DisableDns64 {
            subnet: s.id.clone(),
        })
}

/// `destroy`: the group's egress-only gateway, after its tables, unless a
/// table not natron's still routes to it (then it stays, said in a note).
pub(super) fn destroy(inv: &Inventory, group: &str, a: &mut Vec<Action>, notes: &mut Vec<String>) {
    for g in inv
        .egress_only_gateways
        .iter()
        .filter(|g| has_tag(&g.tags, GROUP_TAG, group))
    {
        let users: Vec<&str> = inv
            .route_tables
            .iter()
            .filter(|t| !has_tag(&t.tags, GROUP_TAG, group))
            .filter(|t| {
                t.routes
                    .iter()
                    .any(|r| r.egress_only_gateway() == Some(g.id.as_str()))
            })
            .map(|t| t.id.as_str())
            .collect();
        if users.is_empty() {
            a.push(Action::DeleteEgressOnlyGateway { id: g.id.clone() });
        } else {
            notes.push(format!(
                "egress-only internet gateway {} stays: {} route(s) to it; delete it once they no longer do",
                g.id,
                users.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests;
