//! Which route tables to claim, decided by a pure function.
//!
//! A route table tagged `natron:group=<group>` and `natron:az=<az>` belongs
//! to the NAT instance of that AZ (its home). Once its data plane is in place
//! and its egress is healthy, the home NAT points the table's default route
//! at its own ENI. Failover between AZs (the next step) extends this plan; it
//! never changes how a single claim is made.

use serde::Serialize;

use crate::ec2::{RouteTable, RouteTarget};

/// This instance, as a route target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Me {
    pub instance_id: String,
    pub interface_id: String,
}

impl Me {
    pub fn is_target_of(&self, target: &RouteTarget) -> bool {
        target.interface_id.as_deref() == Some(self.interface_id.as_str())
            || target.instance_id.as_deref() == Some(self.instance_id.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Claim {
    /// The table has no default route: CreateRoute.
    Create { table: String },
    /// The default route points elsewhere: ReplaceRoute.
    Replace { table: String, from: String },
}

/// The claims that make every table's default route point at `me`. Tables
/// already pointing at `me` need nothing.
pub fn plan_claims(me: &Me, tables: &[RouteTable]) -> Vec<Claim> {
    tables
        .iter()
        .filter_map(|t| match &t.default_route {
            None => Some(Claim::Create {
                table: t.id.clone(),
            }),
            Some(target) if me.is_target_of(target) => None,
            Some(target) => Some(Claim::Replace {
                table: t.id.clone(),
                from: target.describe(),
            }),
        })
        .collect()
}

/// Ids of the tables whose default route points at `me`.
pub fn owned(me: &Me, tables: &[RouteTable]) -> Vec<String> {
    tables
        .iter()
        .filter(|t| t.default_route.as_ref().is_some_and(|r| me.is_target_of(r)))
        .map(|t| t.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me {
        Me {
            instance_id: "i-me".into(),
            interface_id: "eni-me".into(),
        }
    }

    fn table(
        id: &str,
        eni: Option<&str>,
        instance: Option<&str>,
        other: Option<&str>,
    ) -> RouteTable {
        let target =
            (eni.is_some() || instance.is_some() || other.is_some()).then(|| RouteTarget {
                instance_id: instance.map(Into::into),
                interface_id: eni.map(Into::into),
                other: other.map(Into::into),
                state: Some("active".into()),
            });
        RouteTable {
            id: id.into(),
            default_route: target,
        }
    }

    #[test]
    fn plans_create_replace_and_nothing() {
        let tables = vec![
            table("rtb-absent", None, None, None),
            table("rtb-mine-eni", Some("eni-me"), None, None),
            table("rtb-mine-instance", None, Some("i-me"), None),
            table("rtb-other-nat", Some("eni-other"), None, None),
            table("rtb-igw", None, None, Some("igw-1")),
        ];
        assert_eq!(
            plan_claims(&me(), &tables),
            vec![
                Claim::Create {
                    table: "rtb-absent".into()
                },
                Claim::Replace {
                    table: "rtb-other-nat".into(),
                    from: "eni-other".into()
                },
                Claim::Replace {
                    table: "rtb-igw".into(),
                    from: "igw-1".into()
                },
            ]
        );
        assert_eq!(
            owned(&me(), &tables),
            vec!["rtb-mine-eni", "rtb-mine-instance"]
        );
    }

    #[test]
    fn nothing_to_do_when_all_are_mine() {
        let tables = vec![table("rtb-1", Some("eni-me"), Some("i-me"), None)];
        assert!(plan_claims(&me(), &tables).is_empty());
    }
}
