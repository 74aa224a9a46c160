//! The NAT64 route follows the default route. A table that serves NAT64
//! (tagged `natron:nat64` by `natron apply --nat64`) has a `64:ff9b::/96`
//! route beside its `0.0.0.0/0`; both must point at the same NAT, or an
//! IPv6-only client loses its IPv4 destinations while the IPv4 clients of
//! the same subnet are served.
//!
//! Only the default route is decided on ([`super::decide`]); whoever moves
//! it moves (or makes) the NAT64 route right after, in the same
//! read-verify-write (`run::coordinator::moves`). What that leaves behind
//! (an agent that stopped between the two writes, a throttled second
//! write, a table tagged after it was claimed) is brought in line here:
//! the NAT a table's default route names points the table's NAT64 route at
//! itself, making it if the table is tagged and has none. One writer per
//! table, the default route's target, so agents never race for it. An
//! untagged table's NAT64 route is moved but never made.

use crate::model::instance::GroupInstance;
use crate::model::{RouteTable, RouteTarget};

/// A table's NAT64 route to point at this NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    pub table: String,
    pub to_interface: String,
    /// The NAT64 route this was decided on, None when absent
    /// (read-verify-write).
    pub expect: Option<RouteTarget>,
}

/// What a table's NAT64 route needs once its default route points at the
/// NAT `to` (`to_interface` one of its interfaces): None when nothing.
pub fn needs(table: &RouteTable, to: &str, to_interfaces: &[String]) -> Option<Need> {
    match &table.nat64_route {
        Some(r) if r.names(to, to_interfaces) => None,
        Some(_) => Some(Need::Replace),
        None if table.nat64 => Some(Need::Create),
        None => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Create,
    Replace,
}

/// The NAT64 routes `me` must bring in line: in each table whose default
/// route names `me`, a NAT64 route that does not, or none in a table that
/// serves NAT64. The interface is the one the default route names when it
/// names one of `me`'s, else `me`'s primary one.
pub fn follows(me: &GroupInstance, tables: &[RouteTable]) -> Vec<Follow> {
    tables
        .iter()
        .filter_map(|t| {
            let default = t
                .default_route
                .as_ref()
                .filter(|d| d.names(&me.instance_id, &me.interface_ids))?;
            needs(t, &me.instance_id, &me.interface_ids)?;
            let to_interface = default
                .interface_id
                .as_deref()
                .filter(|e| me.interface_ids.iter().any(|i| i == e))
                .or(me.primary_interface())?;
            Some(Follow {
                table: t.id.clone(),
                to_interface: to_interface.to_string(),
                expect: t.nat64_route.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(id: &str, default: Option<&str>, nat64: Option<&str>) -> RouteTable {
        RouteTable {
            id: id.into(),
            default_route: default.map(RouteTarget::interface),
            nat64_route: nat64.map(RouteTarget::interface),
            ..Default::default()
        }
    }

    #[test]
    fn a_nat64_route_follows_the_default_route_of_the_nat_it_names() {
        let me = GroupInstance::running("i-a", "az-a");
        let tagged = RouteTable {
            nat64: true,
            ..table("rtb-6", Some("eni-i-a"), None)
        };
        let tables = [
            // Mine, NAT64 elsewhere: follows.
            table("rtb-1", Some("eni-i-a"), Some("eni-i-b")),
            // Mine, NAT64 already here: nothing.
            table("rtb-2", Some("eni-i-a"), Some("eni-i-a")),
            // Mine, no NAT64 route and not serving NAT64: none is made.
            table("rtb-3", Some("eni-i-a"), None),
            // Another NAT's: its agent's business, not this one's.
            table("rtb-4", Some("eni-i-b"), Some("eni-i-c")),
            // No default route: nobody's yet.
            table("rtb-5", None, Some("eni-i-b")),
            // Mine, serving NAT64 without the route: made.
            tagged,
        ];
        let got: Vec<(String, Option<RouteTarget>)> = follows(&me, &tables)
            .into_iter()
            .inspect(|f| assert_eq!(f.to_interface, "eni-i-a"))
            .map(|f| (f.table, f.expect))
            .collect();
        assert_eq!(
            got,
            [
                ("rtb-1".into(), Some(RouteTarget::interface("eni-i-b"))),
                ("rtb-6".into(), None)
            ]
        );
    }

    #[test]
    fn a_default_route_naming_the_instance_sends_the_nat64_route_to_its_primary_interface() {
        let me = GroupInstance::running("i-a", "az-a");
        let by_instance = RouteTarget {
            instance_id: Some("i-a".into()),
            ..Default::default()
        };
        let t = RouteTable {
            default_route: Some(by_instance),
            ..table("rtb-1", None, Some("eni-i-b"))
        };
        let f = follows(&me, &[t]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].to_interface, "eni-i-a");
    }
}
