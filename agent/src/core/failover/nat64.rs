//! The NAT64 route follows the default route. A table made for NAT64 has a
//! `64:ff9b::/96` route beside its `0.0.0.0/0`; both must point at the same
//! NAT, or an IPv6-only client loses its IPv4 destinations while the IPv4
//! clients of the same subnet are served.
//!
//! Only the default route is decided on ([`super::decide`]); whoever moves
//! it moves the NAT64 route right after, in the same read-verify-write
//! (`run::coordinator::moves`). What that leaves behind (an agent that
//! crashed between the two writes, a throttled second write, a NAT64 route
//! added later pointing anywhere) is brought in line here: the NAT a
//! table's default route names points the table's NAT64 route at itself.
//! One writer per table, the default route's target, so agents never race
//! for it. A table without a NAT64 route never gets one from the agent:
//! which tables serve NAT64 is the provisioner's choice.

use crate::model::instance::GroupInstance;
use crate::model::{RouteTable, RouteTarget};

/// A table's NAT64 route to point at this NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    pub table: String,
    pub to_interface: String,
    /// The NAT64 route this was decided on (read-verify-write).
    pub expect: RouteTarget,
}

/// The NAT64 routes `me` must bring in line: in each table whose default
/// route names `me`, a NAT64 route that does not. The interface is the one
/// the default route names when it names one of `me`'s, else `me`'s
/// primary one.
pub fn follows(me: &GroupInstance, tables: &[RouteTable]) -> Vec<Follow> {
    let names_me = |t: &RouteTarget| t.names(&me.instance_id, &me.interface_ids);
    tables
        .iter()
        .filter_map(|t| {
            let default = t.default_route.as_ref().filter(|d| names_me(d))?;
            let nat64 = t.nat64_route.as_ref().filter(|n| !names_me(n))?;
            let to_interface = default
                .interface_id
                .as_deref()
                .filter(|e| me.interface_ids.iter().any(|i| i == e))
                .or(me.primary_interface())?;
            Some(Follow {
                table: t.id.clone(),
                to_interface: to_interface.to_string(),
                expect: nat64.clone(),
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
            az: None,
            default_route: default.map(RouteTarget::interface),
            nat64_route: nat64.map(RouteTarget::interface),
        }
    }

    #[test]
    fn a_nat64_route_follows_the_default_route_of_the_nat_it_names() {
        let me = GroupInstance::running("i-a", "az-a");
        let tables = [
            // Mine, NAT64 elsewhere: follows.
            table("rtb-1", Some("eni-i-a"), Some("eni-i-b")),
            // Mine, NAT64 already here: nothing.
            table("rtb-2", Some("eni-i-a"), Some("eni-i-a")),
            // Mine, no NAT64 route: none is made.
            table("rtb-3", Some("eni-i-a"), None),
            // Another NAT's: its agent's business, not this one's.
            table("rtb-4", Some("eni-i-b"), Some("eni-i-c")),
            // No default route: nobody's yet.
            table("rtb-5", None, Some("eni-i-b")),
        ];
        assert_eq!(
            follows(&me, &tables),
            vec![Follow {
                table: "rtb-1".into(),
                to_interface: "eni-i-a".into(),
                expect: RouteTarget::interface("eni-i-b"),
            }]
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
