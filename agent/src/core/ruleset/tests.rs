//! The rendered ruleset: its rules, their order, and the batch.

use super::*;

/// The spec the ruleset's tests (and others') render.
pub(crate) fn spec() -> RulesetSpec {
    RulesetSpec {
        egress: "ens5".into(),
        sources: vec![
            "10.0.0.0/16".parse().unwrap(),
            "100.64.0.0/16".parse().unwrap(),
        ],
        port_range: (1024, 65535),
        fully_random: false,
        flowtable: false,
        agent_port: 9100,
        vpc: vec!["10.0.0.0/16".parse().unwrap()],
        mss: Some(1460),
        pool: Vec::new(),
        wire_counters: false,
        nat64: None,
    }
}

fn golden(name: &str, spec: &RulesetSpec) {
    let rendered = serde_json::to_string_pretty(&serde_json::json!({ "nftables": render(spec) }))
        .unwrap()
        + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        rendered,
        expected,
        "{} differs; rerun with UPDATE_GOLDEN=1 if the change is intended",
        path.display()
    );
}

#[test]
fn golden_default() {
    golden("ruleset-default.json", &spec());
}

#[test]
fn golden_flowtable_fully_random() {
    let mut s = spec();
    s.flowtable = true;
    s.fully_random = true;
    s.port_range = (10000, 60000);
    golden("ruleset-flowtable-fully-random.json", &s);
}

#[test]
fn sources_are_aggregated_and_sorted() {
    let mut s = spec();
    s.sources = vec![
        "10.0.1.0/24".parse().unwrap(),
        "10.0.0.0/24".parse().unwrap(),
    ];
    let json = serde_json::to_value(render(&s)).unwrap();
    let set = &json[1]["set"]["elem"];
    assert_eq!(
        set,
        &serde_json::json!([{"prefix": {"addr": "10.0.0.0", "len": 23}}])
    );
}

#[test]
fn the_clamp_raises_nothing_and_lowers_larger_mss() {
    // Pins the operator nft receives (the crate swaps LT and GT).
    let json = serde_json::to_string(&render(&spec())).unwrap();
    assert!(
        json.contains(r#"{"match":{"left":{"tcp option":{"name":"maxseg","field":"size"}},"right":1460,"op":">"}}"#),
        "{json}"
    );
    let mut s = spec();
    s.mss = None;
    let json = serde_json::to_string(&render(&s)).unwrap();
    assert!(!json.contains("maxseg"), "no clamp configured");
}

#[test]
fn batch_replaces_the_table_atomically() {
    let batch = serde_json::to_value(apply_batch(&render(&spec()))).unwrap();
    let cmds = batch["nftables"].as_array().unwrap();
    assert_eq!(
        cmds[0],
        serde_json::json!({"add": {"table": {"family": "ip", "name": "natron"}}})
    );
    assert_eq!(
        cmds[1],
        serde_json::json!({"delete": {"table": {"family": "ip", "name": "natron"}}})
    );
    // Nothing outside our table is ever named.
    for cmd in cmds {
        let obj = cmd.as_object().unwrap().values().next().unwrap();
        let inner = obj.as_object().unwrap().values().next().unwrap();
        let table = inner.get("table").or(inner.get("name")).unwrap();
        assert_eq!(table, "natron", "{cmd}");
    }
}

/// What Debian 13's nft (1.1.3, the image's) lists after loading the
/// default ruleset (captured on a kernel without flowtables, hence no
/// flowtable) is what `render` renders, once normalized: drift is judged
/// on the kernel's own listing there too (invariant 7).
#[test]
fn debian_13s_nft_lists_the_table_as_rendered() {
    use crate::core::listing::{normalize, parse_listing};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/listing-nft-1.1.3-default.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let listed = normalize(&parse_listing(&text).unwrap());
    let rendered = serde_json::to_value(render(&spec())).unwrap();
    assert_eq!(listed, normalize(rendered.as_array().unwrap()));
}

#[test]
fn golden_wire_counters() {
    let mut s = spec();
    s.wire_counters = true;
    golden("ruleset-wire-counters.json", &s);
}

/// What Debian 13's nft lists after loading the ruleset with the wire
/// counters (`ip natron` then `netdev natron`, captured as the default
/// one was) is what `render` renders, once normalized.
#[test]
fn debian_13s_nft_lists_the_wire_counters_as_rendered() {
    use crate::core::listing::{normalize, parse_listing};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut listed = Vec::new();
    for table in ["ip", "netdev"] {
        let path = dir.join(format!("listing-nft-1.1.3-wire-counters-{table}.json"));
        listed.extend(parse_listing(&std::fs::read_to_string(&path).unwrap()).unwrap());
    }
    let mut s = spec();
    s.wire_counters = true;
    let rendered = serde_json::to_value(render(&s)).unwrap();
    assert_eq!(normalize(&listed), normalize(rendered.as_array().unwrap()));
    let tables: Vec<_> = listed.iter().filter_map(|o| o.get("table")).collect();
    assert_eq!(tables.len(), 2, "{tables:?}");
}

#[test]
fn golden_nat64() {
    let mut s = spec();
    s.port_range = (1024, 61000);
    s.nat64 = Some(nat64::Nat64Spec {
        sources: vec!["2600:1f18:aa00::/56".parse().unwrap()],
        port_range: (61001, 65535),
    });
    golden("ruleset-nat64.json", &s);
    // An empty set is listed without elements; nothing else changes.
    s.nat64.as_mut().unwrap().sources.clear();
    let empty = serde_json::to_value(render(&s)).unwrap();
    let set = empty
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["set"]["family"] == "ip6")
        .unwrap();
    assert!(set["set"].get("elem").is_none(), "{set}");
}

#[test]
fn golden_address_pool() {
    let mut s = spec();
    s.pool = vec![
        "10.0.1.4".parse().unwrap(),
        "10.0.1.96".parse().unwrap(),
        "10.0.1.45".parse().unwrap(),
    ];
    golden("ruleset-address-pool.json", &s);
}

/// The statement as `nft -j list` printed it (nft 1.0.6) for
/// `snat to numgen inc mod 2 map { 0 : 10.0.0.1, 1 : 10.0.0.2 } :1024-2023 fully-random`.
#[test]
fn a_pool_translates_each_connection_to_the_next_address_as_nft_lists_it() {
    let mut s = spec();
    s.pool = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
    s.port_range = (1024, 2023);
    s.fully_random = true;
    let rendered = serde_json::to_value(render(&s)).unwrap();
    let rules: Vec<&serde_json::Value> = rendered
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["comment"] == rule::MASQUERADE || r["comment"] == rule::MASQUERADE_OTHER)
        .collect();
    assert_eq!(rules.len(), 2);
    let listed: serde_json::Value = serde_json::from_str(
        r#"{"snat": {"addr": {"map": {"key": {"numgen": {"mode": "inc", "mod": 2, "offset": 0}},
            "data": {"set": [[0, "10.0.0.1"], [1, "10.0.0.2"]]}}},
            "port": {"range": [1024, 2023]}, "flags": "fully-random"}}"#,
    )
    .unwrap();
    let tcp_udp = rules[0]["expr"].as_array().unwrap().last().unwrap();
    assert_eq!(
        crate::core::listing::normalize(std::slice::from_ref(tcp_udp)),
        crate::core::listing::normalize(std::slice::from_ref(&listed))
    );
    let other = rules[1]["expr"].as_array().unwrap().last().unwrap();
    assert!(other["snat"]["port"].is_null(), "{other}");
    assert_eq!(other["snat"]["addr"], listed["snat"]["addr"]);
    // One address: masquerade, as before the pool.
    s.pool.truncate(1);
    let one = serde_json::to_string(&render(&s)).unwrap();
    assert!(one.contains("masquerade") && !one.contains("snat"), "{one}");
}
