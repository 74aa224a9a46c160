//! The data-plane bench's NAT variants (issue 6), checked: each translates,
//! or not, as its name says, so `cargo xtask bench` compares what it claims
//! to compare, and natron's ruleset works as the agent renders it.

use natron_lab::dataplane::{Topology, Variant};

#[test]
fn each_variant_translates_as_named() {
    let topo = Topology::build().unwrap_or_else(|e| panic!("{e}"));
    // NAT64's variant needs Jool, which only the image's kernel has: the
    // guest bench shows what the server saw for it.
    for v in Variant::ALL
        .into_iter()
        .filter(|v| *v != Variant::NatronNat64)
    {
        topo.set_variant(v)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name()));
        let seen = topo
            .seen_source()
            .unwrap_or_else(|e| panic!("{}: {e}", v.name()));
        let expected = match v {
            Variant::Plain => "10.0.10.10",
            _ => "10.0.0.10",
        };
        assert_eq!(seen, expected, "{}: the server saw {seen}", v.name());
    }
}

/// ARCHITECTURE.md invariant 7: `render` emits the form `nft -j list`
/// prints, so drift is judged by exact equality (handles and counter
/// values aside). Checked against this machine's nft, for both shapes.
#[test]
fn the_kernel_lists_natrons_table_exactly_as_rendered() {
    use natron_agent::core::listing::{normalize, parse_listing};
    use natron_agent::core::ruleset::render;
    let topo = Topology::build().unwrap_or_else(|e| panic!("{e}"));
    // The third, without the wire counters and NAT64, also proves that
    // rewriting the tables removes `netdev natron` and `ip6 natron`.
    for (fully_random, ports, wire, nat64) in [
        (false, (1024, 65535), false, false),
        (false, (1024, 61000), true, true),
        (true, (20_000, 29_999), false, false),
    ] {
        let mut spec = topo.natron_spec(fully_random, ports);
        spec.wire_counters = wire;
        spec.nat64 = nat64.then(|| natron_agent::core::ruleset::nat64::Nat64Spec {
            sources: vec![
                "2600:1f18:aa00::/56".parse().unwrap(),
                "fd00:10::/64".parse().unwrap(),
            ],
            port_range: (61001, 65535),
        });
        topo.apply_ruleset(&spec).unwrap();
        let mut listed = parse_listing(&topo.list_table("ip").unwrap()).unwrap();
        match topo.list_table("netdev") {
            Ok(netdev) => listed.extend(parse_listing(&netdev).unwrap()),
            Err(e) => assert!(!wire, "no table netdev natron: {e}"),
        }
        match topo.list_table("ip6") {
            Ok(ip6) => listed.extend(parse_listing(&ip6).unwrap()),
            Err(e) => assert!(!nat64, "no table ip6 natron: {e}"),
        }
        let rendered = serde_json::to_value(render(&spec)).unwrap();
        assert_eq!(
            normalize(&listed),
            normalize(rendered.as_array().unwrap()),
            "fully_random = {fully_random}, wire counters {wire}, NAT64 {nat64}: nft lists the tables otherwise than rendered"
        );
    }
}

/// The bench's "max concurrent connections to one destination" measures
/// the NAT's ports: with natron's masquerade limited to 1,000 ports, 1,500
/// connections tried hold 1,000 at most; without translation all of them.
#[test]
fn concurrent_connections_to_one_destination_are_bounded_by_the_nat_ports() {
    let topo = Topology::build().unwrap_or_else(|e| panic!("{e}"));
    let helper = std::path::Path::new(env!("CARGO_BIN_EXE_natron-lab"));
    topo.set_variant_with_ports(Variant::Natron, (20_000, 20_999))
        .unwrap();
    let held = topo.max_concurrent(helper, 1_500).unwrap();
    assert!(
        (950..=1_000).contains(&held),
        "natron, 1000 ports: {held} held"
    );
    assert!(topo.conntrack_count() >= held as u64);
    topo.set_variant(Variant::Plain).unwrap();
    let held = topo.max_concurrent(helper, 1_500).unwrap();
    assert_eq!(held, 1_500, "plain forwarding");
}

/// TAYGA's variant (userspace, so it runs on this kernel too) translates:
/// an IPv6 client reaches the IPv4 server, which sees the NAT's address.
#[test]
fn tayga_translates_an_ipv6_client_to_the_nats_address() {
    let topo = Topology::build().unwrap_or_else(|e| panic!("{e}"));
    topo.set_variant(Variant::TaygaNat64)
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = topo.seen_source().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen, "10.0.0.10");
    topo.set_variant(Variant::Natron).unwrap();
    assert_eq!(topo.seen_source().unwrap(), "10.0.0.10", "back to IPv4");
}
