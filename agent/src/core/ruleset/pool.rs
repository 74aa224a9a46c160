//! The address pool in the table: rendered as the map new connections
//! take their address from, and read back from a live table (a restarted
//! agent keeps it until it has read EC2).

use std::net::Ipv4Addr;

use nftables::expr::{Expression, NamedExpression};
use serde_json::Value;

/// `numgen inc mod N map { 0 : a, 1 : b, ... }` over a pool of two or
/// more addresses, as nft lists it.
pub(super) fn map(pool: &[Ipv4Addr]) -> Option<Expression<'static>> {
    if pool.len() < 2 {
        return None;
    }
    let items = pool
        .iter()
        .enumerate()
        .map(|(i, a)| {
            nftables::expr::SetItem::Mapping(
                Expression::Number(i as u32),
                super::expr::str_expr(&a.to_string()),
            )
        })
        .collect();
    Some(Expression::Named(NamedExpression::Map(Box::new(
        nftables::expr::Map {
            key: Expression::Named(NamedExpression::Numgen(nftables::expr::Numgen {
                mode: nftables::expr::NgMode::Inc,
                ng_mod: pool.len() as u32,
                offset: Some(0),
            })),
            data: Expression::Named(NamedExpression::Set(items)),
        },
    ))))
}

/// The addresses the live table translates new connections to, in its
/// map's order (empty: masquerade), from the `masquerade` rule's
/// `snat to numgen inc mod N map { ... }`.
pub fn translated(objects: &[Value]) -> Vec<Ipv4Addr> {
    let rule = objects
        .iter()
        .filter_map(|o| o.get("rule"))
        .find(|r| r.get("comment").and_then(Value::as_str) == Some(super::rule::MASQUERADE));
    let Some(items) = rule
        .and_then(|r| r.get("expr")?.as_array())
        .and_then(|e| e.iter().find_map(|s| s.get("snat")))
        .and_then(|s| s.pointer("/addr/map/data/set")?.as_array())
    else {
        return Vec::new();
    };
    let mut pairs: Vec<(u64, Ipv4Addr)> = items
        .iter()
        .filter_map(|i| Some((i.get(0)?.as_u64()?, i.get(1)?.as_str()?.parse().ok()?)))
        .collect();
    pairs.sort();
    pairs.into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ruleset::render;

    #[test]
    fn the_live_tables_pool_is_read_back_in_order() {
        let mut spec = crate::core::ruleset::tests::spec();
        assert!(translated(
            &serde_json::from_value::<Vec<Value>>(serde_json::to_value(render(&spec)).unwrap())
                .unwrap()
        )
        .is_empty());
        spec.pool = vec![
            "10.0.1.4".parse().unwrap(),
            "10.0.1.96".parse().unwrap(),
            "10.0.1.45".parse().unwrap(),
        ];
        let listed: Vec<Value> =
            serde_json::from_value(serde_json::to_value(render(&spec)).unwrap()).unwrap();
        assert_eq!(translated(&listed), spec.pool);
    }
}
