//! Network ACL and security group rule evaluation.

use super::*;

fn entry(
    number: i32,
    egress: bool,
    allow: bool,
    cidr: &str,
    ports: Option<(u16, u16)>,
) -> AclEntry {
    AclEntry {
        number,
        egress,
        protocol: if ports.is_some() { "6" } else { "-1" }.into(),
        allow,
        cidr: cidr.parse().unwrap(),
        ports,
    }
}

#[test]
fn acl_lowest_matching_rule_decides() {
    let entries = vec![
        entry(100, false, true, "0.0.0.0/0", Some((1024, 65535))),
        entry(90, false, false, "198.51.100.0/24", None),
        entry(32767, false, false, "0.0.0.0/0", None),
    ];
    assert!(acl_denies(&entries, false, SAMPLE_INTERNET, 32768)
        .unwrap()
        .contains("rule 90"));
    assert_eq!(
        acl_denies(&entries, false, "192.0.2.1".parse().unwrap(), 32768),
        None
    );
    assert!(
        acl_denies(&entries, false, "192.0.2.1".parse().unwrap(), 443)
            .unwrap()
            .contains("rule 32767")
    );
    assert_eq!(
        acl_denies(&entries, true, SAMPLE_INTERNET, 443).as_deref(),
        Some("no rule allows it")
    );
}

#[test]
fn security_group_rules_match_protocol_port_and_peer() {
    let p = |proto: &str, ports: Option<(i32, i32)>, cidr: &str| Permission {
        protocol: proto.into(),
        from_port: ports.map(|p| p.0),
        to_port: ports.map(|p| p.1),
        peer: Peer::Cidr(cidr.parse().unwrap()),
    };
    let subnet: ipnet::Ipv4Net = "10.0.10.0/24".parse().unwrap();
    let covers = |c: &ipnet::Ipv4Net| c.contains(&subnet);
    assert!(permits(&p("-1", None, "10.0.0.0/16"), 443, covers));
    assert!(permits(
        &p("tcp", Some((443, 443)), "10.0.10.0/24"),
        443,
        covers
    ));
    assert!(!permits(
        &p("tcp", Some((80, 80)), "10.0.10.0/24"),
        443,
        covers
    ));
    assert!(!permits(&p("-1", None, "10.0.10.0/25"), 443, covers));
    assert!(!permits(
        &p("udp", Some((0, 65535)), "0.0.0.0/0"),
        443,
        covers
    ));
}

mod nat64 {
    use super::*;
    use crate::layout::tests as fixtures;
    use crate::model::{
        Association, EgressOnlyGateway, InstanceState, Route, RouteTable, SecurityGroup,
    };

    const BLOCK: &str = "2600:1f18:1:101::/64";

    fn to(instance: &str, destination: &str) -> Route {
        Route {
            destination: destination.into(),
            instance_id: Some(instance.into()),
            ..Default::default()
        }
    }

    /// subnet-xa served by NAT i-a with its IPv6 path whole.
    fn whole() -> Inventory {
        let mut inv = fixtures::vpc();
        let tags = |pairs: &[(&str, &str)]| -> crate::model::Tags {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let xa = inv
            .subnets
            .iter_mut()
            .find(|s| s.id == "subnet-xa")
            .unwrap();
        xa.ipv6_cidr = Some(BLOCK.parse().unwrap());
        xa.dns64 = true;
        inv.egress_only_gateways.push(EgressOnlyGateway {
            id: "eigw-n".into(),
            tags: Default::default(),
        });
        inv.route_tables.push(RouteTable {
            id: "rtb-n".into(),
            associations: vec![Association {
                id: "rtbassoc-n".into(),
                subnet_id: Some("subnet-xa".into()),
            }],
            routes: vec![
                to("i-a", "0.0.0.0/0"),
                to("i-a", "64:ff9b::/96"),
                Route {
                    destination: "::/0".into(),
                    other: Some("eigw-n".into()),
                    ..Default::default()
                },
            ],
            tags: tags(&[
                (GROUP_TAG, "g"),
                (SUBNET_TAG, "subnet-xa"),
                ("natron:nat64", "true"),
            ]),
            ..Default::default()
        });
        let all = |peer| Permission {
            protocol: "-1".into(),
            from_port: None,
            to_port: None,
            peer,
        };
        inv.security_groups.push(SecurityGroup {
            id: "sg-n".into(),
            name: "natron-g".into(),
            tags: tags(&[(GROUP_TAG, "g")]),
            ingress: vec![
                all(Peer::Cidr("10.0.10.0/24".parse().unwrap())),
                all(Peer::Cidr6(BLOCK.parse().unwrap())),
            ],
            egress: vec![all(Peer::Cidr("0.0.0.0/0".parse().unwrap()))],
        });
        inv.instances.push(Instance {
            id: "i-a".into(),
            az: "az-a".into(),
            subnet_id: Some("subnet-pa".into()),
            state: InstanceState::Running,
            private_ip: None,
            public_ip: Some("192.0.2.10".parse().unwrap()),
            interface_ids: vec!["eni-a".into()],
            source_dest_check: Some(false),
            security_groups: vec!["sg-n".into()],
            tags: tags(&[(GROUP_TAG, "g")]),
        });
        inv
    }

    fn findings(inv: &Inventory) -> Vec<(Level, String)> {
        check(inv, "g", &[])
            .into_iter()
            .map(|f| (f.level, f.message))
            .collect()
    }

    fn table(inv: &mut Inventory) -> &mut RouteTable {
        inv.route_tables
            .iter_mut()
            .find(|t| t.id == "rtb-n")
            .unwrap()
    }

    #[test]
    fn a_whole_ipv6_path_is_ok_and_said() {
        let f = findings(&whole());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, Level::Ok);
        assert!(
            f[0].1
                .contains("64:ff9b::/96 to the same NAT and ::/0 to eigw-n, DNS64 on"),
            "{f:?}"
        );
    }

    #[test]
    fn each_broken_piece_of_the_ipv6_path_is_its_own_finding() {
        let one = |inv: Inventory| {
            let f = findings(&inv);
            assert_eq!(f.len(), 1, "{f:?}");
            f.into_iter().next().unwrap()
        };
        let mut inv = whole();
        table(&mut inv).routes[1] = to("i-b", "64:ff9b::/96");
        let (level, message) = one(inv);
        assert!(
            level == Level::Error && message.contains("goes to i-b"),
            "{message}"
        );

        let mut inv = whole();
        table(&mut inv).routes[2] = Route {
            destination: "::/0".into(),
            gateway_id: Some("igw-1".into()),
            ..Default::default()
        };
        let (level, message) = one(inv);
        assert!(
            level == Level::Warning
                && message.contains("can be reached from the internet over IPv6"),
            "{message}"
        );

        let mut inv = whole();
        inv.egress_only_gateways.clear();
        let (level, message) = one(inv);
        assert!(
            level == Level::Error && message.contains("which is gone"),
            "{message}"
        );

        let mut inv = whole();
        inv.subnets
            .iter_mut()
            .find(|s| s.id == "subnet-xa")
            .unwrap()
            .dns64 = false;
        let (level, message) = one(inv);
        assert!(
            level == Level::Error && message.contains("DNS64 off"),
            "{message}"
        );

        let mut inv = whole();
        inv.security_groups[0].ingress.pop();
        let (level, message) = one(inv);
        assert!(
            level == Level::Error && message.contains(&format!("IPv6 block {BLOCK}")),
            "{message}"
        );
    }
}
