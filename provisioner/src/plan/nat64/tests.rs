//! NAT64's part of the plan and of destroy, over fixture inventories.

use super::super::tests::{all_from, group_tags, kinds, served_before};
use super::super::*;
use super::release;
use crate::layout::tests as fixtures;
use crate::model::{EgressOnlyGateway, Route, RouteTable, DNS64_TAG, NAT64_TAG};

const BLOCK: &str = "2600:1f18:1:101::/64";

/// The fixture with an IPv6 block in the VPC and one in subnet-xa.
fn with_ipv6(mut inv: Inventory) -> Inventory {
    inv.vpc_ipv6_cidrs = vec!["2600:1f18:1:100::/56".parse().unwrap()];
    let s = inv
        .subnets
        .iter_mut()
        .find(|s| s.id == "subnet-xa")
        .unwrap();
    s.ipv6_cidr = Some(BLOCK.parse().unwrap());
    inv
}

/// subnet-xa served with NAT64 whole: its table tagged, ::/0 to the
/// group's gateway, DNS64 on (by natron), its block in the group.
fn nat64_served() -> Inventory {
    let mut inv = with_ipv6(served_before());
    inv.egress_only_gateways.push(EgressOnlyGateway {
        id: "eigw-n".into(),
        tags: group_tags(&[]),
    });
    let t = inv
        .route_tables
        .iter_mut()
        .find(|t| t.id == "rtb-n")
        .unwrap();
    t.tags.insert(NAT64_TAG.into(), "true".into());
    t.tags.insert(DNS64_TAG.into(), "on".into());
    t.routes.push(Route {
        destination: "::/0".into(),
        other: Some("eigw-n".into()),
        ..Default::default()
    });
    inv.subnets
        .iter_mut()
        .find(|s| s.id == "subnet-xa")
        .unwrap()
        .dns64 = true;
    let sg = inv
        .security_groups
        .iter_mut()
        .find(|g| g.id == "sg-n")
        .unwrap();
    sg.ingress.push(Permission {
        peer: Peer::Cidr6(BLOCK.parse().unwrap()),
        ..all_from("10.0.10.0/24")
    });
    inv
}

fn nat64_plan(inv: &Inventory, asked: bool) -> Plan {
    let mut req = fixtures::request();
    req.nat64 = asked;
    let l = fixtures::resolve_fixture(&req, inv).unwrap();
    plan(&l, inv, "aws", 9100).unwrap()
}

fn count(p: &Plan, kind: &str) -> usize {
    kinds(p).iter().filter(|k| *k == kind).count()
}

#[test]
fn a_vpc_without_ipv6_is_refused_naming_it() {
    let mut req = fixtures::request();
    req.nat64 = true;
    let errors = fixtures::resolve_fixture(&req, &fixtures::vpc()).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("--nat64: vpc-1 has no IPv6 CIDR block")),
        "{errors:?}"
    );
}

#[test]
fn a_fresh_vpc_gets_a_gateway_tagged_tables_ipv6_ingress_and_dns64_last() {
    let inv = with_ipv6(fixtures::vpc());
    let p = nat64_plan(&inv, true);
    let k = kinds(&p);
    let at = |kind: &str| k.iter().position(|x| x == kind).unwrap();
    assert!(
        at("CreateEgressOnlyGateway") < at("CreateRouteTable"),
        "{k:?}"
    );
    assert_eq!((count(&p, "TagNat64"), count(&p, "RouteIpv6Out")), (2, 2));
    // DNS64 only for the subnet with IPv6, after its association, which
    // waits for the NAT.
    assert_eq!(
        p.actions.last(),
        Some(&Action::EnableDns64 {
            subnet: "subnet-xa".into(),
            table: Ref::New("route table for subnet-xa".into()),
        })
    );
    assert!(matches!(
        &p.actions[p.actions.len() - 2],
        Action::AssociateRouteTable {
            wait_for_claim: true,
            ..
        }
    ));
    assert!(
        p.actions.iter().any(|a| matches!(a,
        Action::RouteIpv6Out { gateway: Ref::New(g), replace: false, .. } if g == EGRESS_ONLY_KEY))
    );
    let ingress = p
        .actions
        .iter()
        .find_map(|a| match a {
            Action::AuthorizeIngress { rules, .. } => Some(rules),
            _ => None,
        })
        .unwrap();
    assert!(ingress
        .iter()
        .any(|r| r.peer == Peer::Cidr6(BLOCK.parse().unwrap())));
    let user_data = p
        .actions
        .iter()
        .find_map(|a| match a {
            Action::CreateLaunchTemplate { launch, .. } => Some(&launch.user_data),
            _ => None,
        })
        .unwrap();
    assert!(user_data.contains("[nat64]\nenabled = true"), "{user_data}");
    assert!(
        p.notes
            .iter()
            .any(|n| n.starts_with("subnet 10.0.11.0/24 has no IPv6 block")),
        "{:?}",
        p.notes
    );
}

#[test]
fn what_is_in_place_is_not_planned_again_and_an_apply_without_the_flag_keeps_it() {
    let inv = nat64_served();
    for asked in [true, false] {
        let p = nat64_plan(&inv, asked);
        // Only the new subnet's new table needs NAT64's pieces.
        assert_eq!(count(&p, "CreateEgressOnlyGateway"), 0);
        assert_eq!(count(&p, "EnableDns64"), 0);
        assert_eq!((count(&p, "TagNat64"), count(&p, "RouteIpv6Out")), (1, 1));
        assert!(p.actions.iter().any(|a| matches!(a,
            Action::RouteIpv6Out { gateway: Ref::Id(g), .. } if g == "eigw-n")));
        assert!(!p.actions.iter().any(|a| matches!(a,
            Action::RevokeIngress { rules, .. } if rules.iter().any(|r| matches!(r.peer, Peer::Cidr6(_))))));
        assert_eq!(
            p.notes.iter().any(|n| n.starts_with("NAT64 stays on")),
            !asked,
            "{:?}",
            p.notes
        );
    }
}

#[test]
fn the_vpcs_own_gateway_is_used_and_a_route_elsewhere_replaced() {
    let mut inv = with_ipv6(served_before());
    inv.egress_only_gateways.push(EgressOnlyGateway {
        id: "eigw-x".into(),
        tags: Default::default(),
    });
    let t = inv
        .route_tables
        .iter_mut()
        .find(|t| t.id == "rtb-n")
        .unwrap();
    t.routes.push(Route {
        destination: "::/0".into(),
        gateway_id: Some("igw-1".into()),
        ..Default::default()
    });
    let p = nat64_plan(&inv, true);
    assert_eq!(count(&p, "CreateEgressOnlyGateway"), 0);
    assert!(p.actions.contains(&Action::RouteIpv6Out {
        table: Ref::Id("rtb-n".into()),
        gateway: Ref::Id("eigw-x".into()),
        replace: true,
    }));
    assert!(
        p.notes.iter().any(|n| n.contains("eigw-x")),
        "{:?}",
        p.notes
    );
    // Not natron's: destroy leaves it.
    assert_eq!(count(&destroy(&inv, "g"), "DeleteEgressOnlyGateway"), 0);
}

#[test]
fn destroy_turns_dns64_off_after_the_subnet_leaves_and_deletes_the_gateway_after_the_tables() {
    let inv = nat64_served();
    let p = destroy(&inv, "g");
    let k = kinds(&p);
    let at = |kind: &str| k.iter().position(|x| x == kind).unwrap();
    assert_eq!(
        p.actions[at("RestoreAssociation") + 1],
        Action::DisableDns64 {
            subnet: "subnet-xa".into()
        }
    );
    assert!(
        at("DeleteRouteTable") < at("DeleteEgressOnlyGateway"),
        "{k:?}"
    );

    // A table not natron's routing to the gateway keeps it.
    let mut inv = inv;
    inv.route_tables.push(RouteTable {
        id: "rtb-user".into(),
        routes: vec![Route {
            destination: "::/0".into(),
            other: Some("eigw-n".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    let p = destroy(&inv, "g");
    assert_eq!(count(&p, "DeleteEgressOnlyGateway"), 0);
    assert!(
        p.notes.iter().any(|n| n.contains("eigw-n stays: rtb-user")),
        "{:?}",
        p.notes
    );
}

#[test]
fn releasing_a_subnet_turns_off_only_the_dns64_natron_turned_on() {
    let mut inv = nat64_served();
    let table = inv.route_table("rtb-n").unwrap().clone();
    assert_eq!(
        release(&inv, &table, "subnet-xa"),
        Some(Action::DisableDns64 {
            subnet: "subnet-xa".into()
        })
    );
    let t = inv
        .route_tables
        .iter_mut()
        .find(|t| t.id == "rtb-n")
        .unwrap();
    t.tags.remove(DNS64_TAG);
    let table = t.clone();
    assert_eq!(release(&inv, &table, "subnet-xa"), None);
}
