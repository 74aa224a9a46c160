//! natron's table as JSON: the batch `nft -j -f` reads, the listing `nft
//! -j list` prints, and comparing the two (handles and counter values
//! aside). Pure.

use std::collections::BTreeMap;

use nftables::schema::Nftables;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("cannot parse `nft -j` output: {0}")]
pub struct ListingError(pub String);

/// A batch as `nft -j -f` reads it. The nftables crate (0.6) writes the
/// `notrack` statement as the bare string "notrack", which nft refuses
/// ("expected object"); nft reads and lists it as `{"notrack": null}`.
pub fn batch_json(batch: &Nftables<'_>) -> Result<String, ListingError> {
    let mut v = serde_json::to_value(batch).map_err(|e| ListingError(e.to_string()))?;
    canonical_statements(&mut v);
    Ok(v.to_string())
}

/// Rewrites statements the crate and nft spell differently into nft's
/// spelling, inside every rule's `expr` list.
fn canonical_statements(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if let (true, Value::Array(statements)) = (key == "expr", &mut *value) {
                    for st in statements.iter_mut() {
                        if st.as_str() == Some("notrack") {
                            *st = serde_json::json!({ "notrack": null });
                        }
                    }
                }
                canonical_statements(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonical_statements),
        _ => {}
    }
}

/// Where two normalized listings first differ, for a log line: the index
/// and both objects (each cut at 400 characters); None when they are equal.
pub fn first_difference(rendered: &[Value], listed: &[Value]) -> Option<String> {
    let cut = |v: Option<&Value>| {
        let text = v.map_or_else(|| "nothing".to_string(), Value::to_string);
        text.chars().take(400).collect::<String>()
    };
    let at = (0..rendered.len().max(listed.len())).find(|&i| rendered.get(i) != listed.get(i))?;
    Some(format!(
        "object {at}: rendered {} listed {}",
        cut(rendered.get(at)),
        cut(listed.get(at))
    ))
}

/// Parses `nft -j list` output into its objects, without the metainfo.
pub fn parse_listing(out: &str) -> Result<Vec<Value>, ListingError> {
    let doc: Value = serde_json::from_str(out).map_err(|e| ListingError(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ListingError("no `nftables` array".into()))?;
    Ok(items
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .cloned()
        .collect())
}

/// From a whole-ruleset listing (`nft -j list ruleset`), natron's own
/// objects: those of a table named `table` in one of `families`, in the
/// order listed; None when the first family's table is absent. One listing
/// of the ruleset costs one nft run where a listing per table costs one
/// each, and the agent lists every pass.
pub fn owned_objects(objects: &[Value], table: &str, families: &[&str]) -> Option<Vec<Value>> {
    fn family(inner: &Value) -> Option<&str> {
        inner.get("family").and_then(Value::as_str)
    }
    let owned: Vec<Value> = objects
        .iter()
        .filter(|o| {
            let Some((kind, inner)) = o.as_object().and_then(|m| m.iter().next()) else {
                return false;
            };
            let name_key = if kind == "table" { "name" } else { "table" };
            inner.get(name_key).and_then(Value::as_str) == Some(table)
                && family(inner).is_some_and(|f| families.contains(&f))
        })
        .cloned()
        .collect();
    let first = families.first().copied();
    let present = owned
        .iter()
        .any(|o| o.get("table").is_some_and(|t| family(t) == first));
    present.then_some(owned)
}

/// The comparable form of a table's objects: handles dropped and counter
/// values zeroed, since both change without the ruleset changing; a
/// one-element `flags` or flowtable `dev` list written as its element, as
/// nft lists it; and
/// what nft versions print differently in one spelling (nft 1.0.6 of
/// Debian 12 and 1.1.3 of Debian 13, the image's): objects in one order
/// (1.1.3 lists chains before sets), a flag mask as a list (1.1.3: an
/// `|` expression), protocols as numbers (1.1.3 lists `meta l4proto
/// { tcp, udp }` as 6 and 17).
pub fn normalize(objects: &[Value]) -> Vec<Value> {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("handle");
                if let Some(flat) = map.get("|").and_then(flatten_or) {
                    *v = Value::Array(flat);
                    return;
                }
                if let Some(Value::Object(m)) = map.get_mut("match") {
                    let l4proto = m
                        .get("left")
                        .and_then(|l| l.get("meta"))
                        .and_then(|meta| meta.get("key"))
                        .and_then(Value::as_str)
                        == Some("l4proto");
                    if let (true, Some(right)) = (l4proto, m.get_mut("right")) {
                        protocol_numbers(right);
                    }
                }
                // A one-element list nft prints as its element: set flags,
                // and a flowtable's devices (nft 1.1.3 lists `"dev": "eth0"`
                // for the `["eth0"]` it was given).
                for key in ["flags", "dev"] {
                    if let Some(Value::Array(list)) = map.get(key) {
                        if let [one] = list.as_slice() {
                            let one = one.clone();
                            map.insert(key.into(), one);
                        }
                    }
                }
                if let Some(Value::Object(c)) = map.get_mut("counter") {
                    if c.contains_key("packets") {
                        c.insert("packets".into(), 0.into());
                        c.insert("bytes".into(), 0.into());
                    }
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut out = objects.to_vec();
    // A netdev chain's device: nft 1.1.3 lists it, 1.0.6 does not.
    for o in &mut out {
        if let Some(Value::Object(chain)) = o.get_mut("chain") {
            chain.remove("dev");
        }
    }
    out.iter_mut().for_each(walk);
    out.iter_mut().for_each(canonical_statements);
    // Table by table (ip, then netdev): the table, its sets, flowtables,
    // chains by name, then the rules chain by chain (a stable sort: their
    // order within a chain is kept, and it matters).
    out.sort_by_cached_key(|o| {
        let (kind, body) = o
            .as_object()
            .and_then(|m| m.iter().next())
            .map(|(k, b)| (k.as_str(), b))
            .unwrap_or(("", &Value::Null));
        let rank = ["table", "set", "flowtable", "chain", "rule"]
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(5);
        let name = match kind {
            "rule" => body.get("chain"),
            _ => body.get("name"),
        };
        let family = body.get("family").and_then(Value::as_str).unwrap_or("");
        (
            family.to_string(),
            rank,
            name.and_then(Value::as_str).unwrap_or("").to_string(),
        )
    });
    out
}

/// The operands of an `|` expression of names (`syn | rst`), flattened.
fn flatten_or(operands: &Value) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    for op in operands.as_array()? {
        match op {
            Value::String(_) => out.push(op.clone()),
            Value::Object(m) => out.extend(flatten_or(m.get("|")?)?),
            _ => return None,
        }
    }
    Some(out)
}

/// `tcp`, `udp`, `icmp` as their protocol numbers, alone or in a set.
fn protocol_numbers(v: &mut Value) {
    const NUMBERS: [(&str, u8); 3] = [("icmp", 1), ("tcp", 6), ("udp", 17)];
    match v {
        Value::String(name) => {
            if let Some((_, n)) = NUMBERS.iter().find(|(k, _)| k == name) {
                *v = Value::from(*n);
            }
        }
        Value::Object(m) => m.values_mut().for_each(protocol_numbers),
        Value::Array(items) => items.iter_mut().for_each(protocol_numbers),
        _ => {}
    }
}

/// The table's structure: each object's kind and name, and for rules their
/// chain and comment, in order.
pub fn skeleton(objects: &[Value]) -> Vec<(String, String)> {
    objects
        .iter()
        .filter_map(|o| {
            let (kind, body) = o.as_object()?.iter().next()?;
            let name = match kind.as_str() {
                "rule" => format!(
                    "{}/{}",
                    body.get("chain")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    body.get("comment")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                _ => body
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            Some((kind.clone(), name))
        })
        .collect()
}

/// Packet and byte counts per rule, keyed by the rule's comment.
pub fn rule_counters(objects: &[Value]) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for obj in objects {
        let Some(rule) = obj.get("rule") else {
            continue;
        };
        let Some(name) = rule.get("comment").and_then(Value::as_str) else {
            continue;
        };
        let counter = rule
            .get("expr")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|stmt| stmt.get("counter"));
        if let Some(c) = counter {
            let get = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.insert(name.to_string(), (get("packets"), get("bytes")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ruleset::{self, render};
    use nftables::schema::NfListObject;
    use serde_json::json;

    fn desired() -> Vec<NfListObject<'static>> {
        render(&crate::core::ruleset::tests::spec())
    }

    #[test]
    fn notrack_is_written_and_compared_in_nfts_spelling() {
        let json = batch_json(&ruleset::apply_batch(&desired())).unwrap();
        assert_eq!(json.matches(r#"{"notrack":null}"#).count(), 3, "{json}");
        assert!(!json.contains(r#""notrack"]"#), "{json}");
        // The crate's spelling (rendered) and nft's (listed) compare equal.
        let rendered = serde_json::to_value(desired()).unwrap();
        let listed: Vec<Value> = serde_json::from_str(&json)
            .map(|v: Value| {
                v["nftables"].as_array().unwrap()[6..]
                    .iter()
                    .map(|cmd| cmd["add"].clone())
                    .collect()
            })
            .unwrap();
        assert_eq!(normalize(&listed), normalize(rendered.as_array().unwrap()));
        assert_ne!(&listed, rendered.as_array().unwrap());
    }

    #[test]
    fn a_flowtable_on_one_device_compares_equal_as_nft_lists_it() {
        let rendered = [serde_json::json!({"flowtable": {"name": "fastpath", "dev": ["eth0"]}})];
        let listed = [serde_json::json!({"flowtable": {"name": "fastpath", "dev": "eth0"}})];
        assert_eq!(normalize(&rendered), normalize(&listed));
        let two = [serde_json::json!({"flowtable": {"name": "fastpath", "dev": ["eth0", "eth1"]}})];
        assert_ne!(normalize(&two), normalize(&listed));
    }

    #[test]
    fn the_first_difference_names_its_place_and_both_sides() {
        let a = vec![serde_json::json!({"x": 1}), serde_json::json!({"y": 2})];
        assert_eq!(first_difference(&a, &a), None);
        let b = vec![a[0].clone(), serde_json::json!({"y": 3})];
        assert_eq!(
            first_difference(&a, &b).as_deref(),
            Some(r#"object 1: rendered {"y":2} listed {"y":3}"#)
        );
        assert_eq!(
            first_difference(&a, &a[..1]).as_deref(),
            Some(r#"object 1: rendered {"y":2} listed nothing"#)
        );
    }

    #[test]
    fn structure_ignores_notation_but_not_missing_rules() {
        let want = normalize(serde_json::to_value(desired()).unwrap().as_array().unwrap());
        let mut notation = want.clone();
        let rule = notation
            .iter_mut()
            .find(|o| o.get("rule").is_some())
            .unwrap();
        rule["rule"]["expr"][0] =
            serde_json::json!({"match": {"op": "==", "left": "x", "right": "y"}});
        assert_ne!(notation, want);
        assert_eq!(skeleton(&notation), skeleton(&want));
        let mut missing = want.clone();
        missing.pop();
        assert_ne!(skeleton(&missing), skeleton(&want));
    }

    #[test]
    fn a_ruleset_listing_keeps_only_natrons_tables() {
        let listed = vec![
            json!({"table": {"family": "ip", "name": "natron", "handle": 1}}),
            json!({"table": {"family": "ip", "name": "filter", "handle": 2}}),
            json!({"chain": {"family": "ip", "table": "filter", "name": "natron"}}),
            json!({"chain": {"family": "ip", "table": "natron", "name": "postrouting"}}),
            json!({"table": {"family": "inet", "name": "natron", "handle": 3}}),
            json!({"rule": {"family": "inet", "table": "natron", "chain": "c"}}),
            json!({"table": {"family": "netdev", "name": "natron", "handle": 4}}),
            json!({"set": {"family": "netdev", "table": "natron", "name": "peers"}}),
        ];
        let owned = owned_objects(&listed, "natron", &["ip", "netdev"]).unwrap();
        assert_eq!(
            owned,
            [&listed[0], &listed[3], &listed[6], &listed[7]].map(Clone::clone)
        );
        // Without `ip natron`, natron's table is absent, whatever else is.
        assert_eq!(
            owned_objects(&listed[1..], "natron", &["ip", "netdev"]),
            None
        );
    }

    #[test]
    fn listing_parse_drops_metainfo() {
        let out = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},{"table":{"family":"ip","name":"natron","handle":3}}]}"#;
        let objs = parse_listing(out).unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(
            normalize(&objs)[0],
            serde_json::json!({"table":{"family":"ip","name":"natron"}})
        );
    }
}
