//! The IPv6 path of a subnet whose table serves NAT64 (`apply --nat64`):
//! the subnet has an IPv6 block and DNS64, the table sends `64:ff9b::/96`
//! to the NAT its default route names and `::/0` to an egress-only
//! internet gateway that exists, and the NAT's security groups admit the
//! subnet's IPv6 block. Network ACLs are judged for IPv4 only.

use super::{permits_tcp, security_group_fix, Level, SAMPLE_PORT};
use crate::model::{
    Instance, Inventory, Peer, RouteState, RouteTable, Subnet, IPV6_DEFAULT_ROUTE, NAT64_ROUTE,
};

/// The Ok message's words for a NAT64 table with nothing to say.
pub(super) fn summary(rt: &RouteTable) -> String {
    let gateway = rt
        .route(IPV6_DEFAULT_ROUTE)
        .map_or("?".into(), |r| r.target());
    format!(", {NAT64_ROUTE} to the same NAT and ::/0 to {gateway}, DNS64 on")
}

pub(super) fn check(
    inv: &Inventory,
    group: &str,
    nat: &Instance,
    subnet: &Subnet,
    rt: &RouteTable,
    push: &mut impl FnMut(Level, String, &str),
) {
    let id = &subnet.id;
    match rt.route(NAT64_ROUTE) {
        None => push(
            Level::Error,
            format!("{} has no {NAT64_ROUTE} route: IPv6 clients of {id} cannot reach IPv4 destinations", rt.id),
            &format!("the agent on {} adds it beside the default route within seconds (it reads the table's natron:nat64 tag): see its /status", nat.id),
        ),
        Some(r) if r.state == Some(RouteState::Blackhole) => push(
            Level::Error,
            format!("{}'s {NAT64_ROUTE} route to {} is a blackhole (its target is gone)", rt.id, r.target()),
            &format!("the agent on {} points it at itself within seconds: see its /status", nat.id),
        ),
        Some(r) if !nat.is_target_of(r) => push(
            Level::Error,
            format!(
                "{}'s {NAT64_ROUTE} route goes to {}, its 0.0.0.0/0 to NAT {}: IPv6 clients of {id} take another way than IPv4 ones",
                rt.id,
                r.target(),
                nat.id
            ),
            &format!("the NAT64 route follows the default route: the agent on {} points it at itself within seconds; see its /status", nat.id),
        ),
        Some(_) => {}
    }
    let eigw_fix =
        "run `natron apply`: it routes ::/0 of natron's tables to an egress-only internet gateway";
    match rt.route(IPV6_DEFAULT_ROUTE) {
        None => push(
            Level::Error,
            format!("{} has no ::/0 route: IPv6 destinations are unreachable from {id}", rt.id),
            eigw_fix,
        ),
        Some(r) => match r.egress_only_gateway() {
            Some(g)
                if inv.egress_only_gateways.iter().any(|x| x.id == g)
                    && r.state != Some(RouteState::Blackhole) => {}
            Some(g) => push(
                Level::Error,
                format!("{}'s ::/0 route goes to egress-only internet gateway {g}, which is gone", rt.id),
                eigw_fix,
            ),
            None if r.is_internet_gateway() => push(
                Level::Warning,
                format!(
                    "{}'s ::/0 route goes to internet gateway {}: hosts of {id} can be reached from the internet over IPv6",
                    rt.id,
                    r.target()
                ),
                "point ::/0 at an egress-only internet gateway (`aws ec2 replace-route`), which lets only connections from inside out",
            ),
            None => push(
                Level::Error,
                format!("{}'s ::/0 route goes to {}, not to an egress-only internet gateway", rt.id, r.target()),
                eigw_fix,
            ),
        },
    }
    let Some(block) = subnet.ipv6_cidr else {
        push(
            Level::Warning,
            format!("{id} has no IPv6 block: its table serves NAT64, but it has no IPv6 clients"),
            &format!("associate an IPv6 block with it (`aws ec2 associate-subnet-cidr-block --subnet-id {id} --ipv6-cidr-block …`), then run `natron apply` for DNS64"),
        );
        return;
    };
    if !subnet.dns64 {
        push(
            Level::Error,
            format!("{id} has DNS64 off: its IPv6-only clients get no {NAT64_ROUTE} addresses for IPv4-only names"),
            "run `natron apply`: it turns DNS64 on once the NAT64 route is served",
        );
    }
    let admitted = nat
        .security_groups
        .iter()
        .filter_map(|g| inv.security_group(g))
        .flat_map(|g| &g.ingress)
        .any(|p| {
            permits_tcp(p, SAMPLE_PORT) && matches!(&p.peer, Peer::Cidr6(c) if c.contains(&block))
        });
    if !admitted {
        push(
            Level::Error,
            format!(
                "NAT {}'s security groups do not allow TCP {SAMPLE_PORT} from {id}'s IPv6 block {block}",
                nat.id
            ),
            &security_group_fix(inv, group, nat),
        );
    }
}
