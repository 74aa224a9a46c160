//! The data-plane bench's NAT variants (issue 6), checked: each translates,
//! or not, as its name says, so `cargo xtask bench` compares what it claims
//! to compare, and natron's ruleset works as the agent renders it.

use natron_lab::dataplane::{Topology, Variant};

#[test]
fn each_variant_translates_as_named() {
    let topo = Topology::build().unwrap_or_else(|e| panic!("{e}"));
    for v in Variant::ALL {
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
    // Flows to one destination each get their own port through natron.
    topo.set_variant(Variant::Natron).unwrap();
    let flows = topo.max_concurrent(2_000).unwrap();
    assert!(flows >= 1_900, "{flows} of 2000 flows seen");
    assert!(topo.conntrack_count() >= 1_900);
}
