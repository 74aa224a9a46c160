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
