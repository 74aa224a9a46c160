//! The resolver over fixture inventories; its fixtures (`vpc`, `image`,
//! `request`) serve the planner's and the export's tests too.

use super::*;
use crate::model::{Association, Route, RouteTable, Subnet};

/// A VPC 10.0.0.0/16 with public subnets in a and b (IGW route through
/// rtb-pub) and one private subnet in a on the main table.
pub fn vpc() -> Inventory {
    let subnet = |id: &str, az: &str, cidr: &str| Subnet {
        id: id.into(),
        az: az.into(),
        cidr: cidr.parse().unwrap(),
        ipv6_cidr: None,
        dns64: false,
        tags: Default::default(),
    };
    Inventory {
        vpc_id: "vpc-1".into(),
        vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        zones: vec!["az-a".into(), "az-b".into(), "az-c".into()],
        subnets: vec![
            subnet("subnet-pa", "az-a", "10.0.0.0/24"),
            subnet("subnet-pb", "az-b", "10.0.1.0/24"),
            subnet("subnet-xa", "az-a", "10.0.10.0/24"),
        ],
        route_tables: vec![
            RouteTable {
                id: "rtb-main".into(),
                main: true,
                associations: vec![Association {
                    id: "rtbassoc-main".into(),
                    subnet_id: None,
                }],
                ..Default::default()
            },
            RouteTable {
                id: "rtb-pub".into(),
                associations: ["subnet-pa", "subnet-pb"]
                    .iter()
                    .map(|s| Association {
                        id: format!("rtbassoc-{s}"),
                        subnet_id: Some(s.to_string()),
                    })
                    .collect(),
                routes: vec![Route {
                    destination: "0.0.0.0/0".into(),
                    gateway_id: Some("igw-1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        internet_gateways: vec!["igw-1".into()],
        ..Default::default()
    }
}

pub fn image() -> Image {
    Image {
        id: "ami-1".into(),
        name: "natron-1".into(),
        architecture: Some("arm64".into()),
    }
}

pub fn request() -> Request {
    Request {
        vpc_id: "vpc-1".into(),
        group: "g".into(),
        azs: vec![],
        private: vec![
            "subnet-xa".parse().unwrap(),
            "az-b=10.0.11.0/24".parse().unwrap(),
        ],
        public_subnets: vec![],
        instance_type: DEFAULT_INSTANCE_TYPE.into(),
        elastic_ips: false,
        cloudwatch_metrics: false,
        addresses: 1,
        alarms: false,
        remove: vec![],
        nat64: false,
    }
}

/// `resolve` with the fixture image (arm64) and an arm64 instance type
/// without an address limit.
pub fn resolve_fixture(req: &Request, inv: &Inventory) -> Result<Layout, Vec<String>> {
    resolve(
        req,
        inv,
        Ok(image()),
        &crate::model::InstanceTypeInfo::running(&["arm64"]),
    )
}

fn resolve_err(req: &Request) -> Vec<String> {
    resolve_fixture(req, &vpc()).unwrap_err()
}

#[test]
fn defaults_pick_every_az_with_a_public_subnet() {
    let l = resolve_fixture(&request(), &vpc()).unwrap();
    let azs: Vec<_> = l
        .zones
        .iter()
        .map(|z| (z.az.as_str(), z.public_subnet.as_str(), z.private.len()))
        .collect();
    assert_eq!(
        azs,
        vec![("az-a", "subnet-pa", 1), ("az-b", "subnet-pb", 1)]
    );
    assert_eq!(l.zones[1].private[0].id, None);
}

#[test]
fn bad_input_is_reported_naming_the_resource() {
    let mut req = request();
    req.azs = vec!["az-a".into(), "az-c".into()];
    req.private = vec![
        "subnet-nope".parse().unwrap(),
        "az-a=10.0.10.128/25".parse().unwrap(),
        "az-a=10.1.0.0/24".parse().unwrap(),
        "subnet-pa".parse().unwrap(),
    ];
    let errors = resolve_err(&req).join("\n");
    for needle in [
        "AZ az-c: no public subnet",
        "subnet-nope: not found in vpc-1",
        "10.0.10.128/25: overlaps subnet-xa",
        "10.1.0.0/24: not inside the VPC's CIDRs (10.0.0.0/16)",
        "private subnet subnet-pa: its route table sends 0.0.0.0/0 to an internet gateway",
    ] {
        assert!(errors.contains(needle), "{needle:?} missing in:\n{errors}");
    }
}

#[test]
fn architecture_mismatch_and_group_names_are_errors() {
    let mut req = request();
    req.group = "Bad_Name".into();
    let errors = resolve(
        &req,
        &vpc(),
        Ok(image()),
        &crate::model::InstanceTypeInfo::running(&["x86_64"]),
    )
    .unwrap_err()
    .join("\n");
    assert!(errors.contains("is arm64 but instance type t4g.nano runs x86_64"));
    assert!(errors.contains("group \"Bad_Name\""));
}

/// The fixture VPC where an earlier apply also serves subnet-xb (az-b).
fn served_vpc() -> Inventory {
    let mut inv = vpc();
    inv.subnets.push(Subnet {
        id: "subnet-xb".into(),
        az: "az-b".into(),
        cidr: "10.0.12.0/24".parse().unwrap(),
        ipv6_cidr: None,
        dns64: false,
        tags: Default::default(),
    });
    inv.route_tables.push(RouteTable {
        id: "rtb-nb".into(),
        associations: vec![Association {
            id: "rtbassoc-nb".into(),
            subnet_id: Some("subnet-xb".into()),
        }],
        tags: [
            (GROUP_TAG, "g"),
            (SUBNET_TAG, "subnet-xb"),
            ("natron:az", "az-b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    });
    inv
}

#[test]
fn a_served_subnet_left_out_is_kept() {
    let l = resolve_fixture(&request(), &served_vpc()).unwrap();
    let b = &l.zones[1];
    assert_eq!(b.az, "az-b");
    let kept: Vec<_> = b
        .private
        .iter()
        .map(|p| (p.id.as_deref(), p.kept))
        .collect();
    assert_eq!(kept, [(None, false), (Some("subnet-xb"), true)]);
    assert!(l.released.is_empty());
}

#[test]
fn remove_private_releases_a_served_subnet() {
    let mut req = request();
    req.remove = vec!["subnet-xb".into()];
    let l = resolve_fixture(&req, &served_vpc()).unwrap();
    assert!(l.zones.iter().flat_map(|z| &z.private).all(|p| !p.kept));
    assert_eq!(
        l.released,
        [Released {
            subnet: "subnet-xb".into(),
            az: "az-b".into(),
            cidr: "10.0.12.0/24".parse().unwrap(),
            table: "rtb-nb".into(),
        }]
    );
}

#[test]
fn the_table_of_a_deleted_subnet_is_stale() {
    let mut inv = served_vpc();
    inv.subnets.retain(|s| s.id != "subnet-xb");
    let l = resolve_fixture(&request(), &inv).unwrap();
    assert_eq!(l.stale_tables, ["rtb-nb"]);
    assert!(l.zones.iter().flat_map(|z| &z.private).all(|p| !p.kept));
}

#[test]
fn partial_apply_mistakes_are_named() {
    let mut req = request();
    req.remove = vec!["subnet-xa".into(), "subnet-pa".into()];
    req.azs = vec!["az-a".into()];
    req.private = vec!["subnet-xa".parse().unwrap()];
    let errors = resolve_fixture(&req, &served_vpc()).unwrap_err().join("\n");
    for needle in [
        "subnet subnet-xa: named by both --private and --remove-private",
        "--remove-private subnet-pa: not served by group g in vpc-1",
        "subnet subnet-xb (az-b) is served by group g since an earlier apply, but az-b is not among this apply's AZs (az-a); add --az az-b, or --remove-private subnet-xb",
    ] {
        assert!(errors.contains(needle), "{needle:?} missing in:\n{errors}");
    }
    // Releasing the last served subnet is a destroy.
    let mut req = request();
    req.private = vec![];
    req.remove = vec!["subnet-xb".into()];
    let errors = resolve_fixture(&req, &served_vpc()).unwrap_err().join("\n");
    assert!(
        errors.contains("no private subnet would be left"),
        "{errors}"
    );
}

#[test]
fn a_failed_image_lookup_hides_no_other_problem() {
    let mut req = request();
    req.private.push("subnet-nope".parse().unwrap());
    let errors = resolve(
        &req,
        &vpc(),
        Err("image natron-*: none found".into()),
        &Default::default(),
    )
    .unwrap_err()
    .join("\n");
    for needle in [
        "image natron-*: none found",
        "instance type t4g.nano: unknown in this region",
        "subnet-nope: not found",
    ] {
        assert!(errors.contains(needle), "{needle:?} missing in:\n{errors}");
    }
}

#[test]
fn requests_parse() {
    assert_eq!(
        "subnet-1".parse::<PrivateRequest>().unwrap(),
        PrivateRequest::Existing("subnet-1".into())
    );
    assert!("az-a=10.0.0.1/24"
        .parse::<PrivateRequest>()
        .unwrap_err()
        .contains("host bits"));
    assert!("10.0.0.0/24"
        .parse::<PrivateRequest>()
        .unwrap_err()
        .contains("AZ=CIDR"));
}
