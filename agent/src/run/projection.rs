//! What /status shows of route ownership: per table its home and owner,
//! the tables this NAT serves, the peers and their health. A pure
//! projection of the coordinator's view; a table's home is
//! `failover::home_of`, the same notion the decisions use, so the two
//! cannot disagree (for instance while a replacement overlaps the NAT it
//! replaces).

use std::collections::BTreeMap;

use natron_contract::status::{Health, Peer, Table, TableRole};

use crate::core::failover::home_of;
use crate::model::instance::GroupInstance;
use crate::model::RouteTable;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    pub tables: Vec<Table>,
    /// The tables whose default route targets `me`.
    pub owned: Vec<String>,
    pub peers: Vec<Peer>,
}

pub fn project(
    me: &str,
    instances: &[GroupInstance],
    tables: &[RouteTable],
    health: &BTreeMap<String, Health>,
) -> Projection {
    let ready = |id: &str| id == me || health.get(id) == Some(&Health::Ready);
    let owner_of = |t: &RouteTable| -> Option<&str> {
        let r = t.default_route.as_ref()?;
        instances
            .iter()
            .find(|i| i.is_target_of(r))
            .map(|i| i.instance_id.as_str())
    };
    let rows = tables
        .iter()
        .map(|t| {
            let home =
                t.az.as_deref()
                    .and_then(|az| home_of(instances, az, ready))
                    .map(|i| i.instance_id.clone());
            let owner = owner_of(t);
            Table {
                id: t.id.clone(),
                az: t.az.clone(),
                role: if owner.is_some() && owner == home.as_deref() {
                    TableRole::Home
                } else {
                    TableRole::TakenOver
                },
                home: home.clone(),
                owner: owner.map(str::to_string).unwrap_or_else(|| {
                    t.default_route
                        .as_ref()
                        .map_or("none".into(), |r| r.describe())
                }),
            }
        })
        .collect();
    let owned = tables
        .iter()
        .filter(|t| owner_of(t) == Some(me))
        .map(|t| t.id.clone())
        .collect();
    let peers = instances
        .iter()
        .filter(|i| i.instance_id != me)
        .map(|i| Peer {
            instance_id: i.instance_id.clone(),
            availability_zone: i.availability_zone.clone(),
            private_ip: i.private_ip,
            ec2_state: i.state.clone(),
            health: health
                .get(&i.instance_id)
                .cloned()
                .unwrap_or(Health::Unknown),
        })
        .collect();
    Projection {
        tables: rows,
        owned,
        peers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RouteTarget;

    fn nat(id: &str, az: &str) -> GroupInstance {
        GroupInstance::running(id, az)
    }

    fn table(az: &str, owner: &str) -> RouteTable {
        RouteTable {
            id: format!("rtb-{az}"),
            az: Some(az.into()),
            default_route: Some(RouteTarget::interface(&format!("eni-{owner}"))),
            nat64_route: None,
            nat64: false,
        }
    }

    #[test]
    fn tables_show_home_owner_and_role() {
        let instances = [nat("a", "az-a"), nat("b", "az-b")];
        let tables = [table("az-a", "b"), table("az-b", "b")];
        let health = BTreeMap::from([("a".to_string(), Health::Ready)]);
        let p = project("b", &instances, &tables, &health);
        assert_eq!(p.owned, vec!["rtb-az-a".to_string(), "rtb-az-b".into()]);
        assert_eq!(p.tables[0].role, TableRole::TakenOver);
        assert_eq!(p.tables[0].home.as_deref(), Some("a"));
        assert_eq!(p.tables[0].owner, "b");
        assert_eq!(p.tables[1].role, TableRole::Home);
        assert_eq!(p.peers.len(), 1);
        assert_eq!(p.peers[0].health, Health::Ready);
    }

    #[test]
    fn during_a_replacement_the_home_is_the_one_the_decisions_use() {
        // The old NAT of az-a still runs but is not ready; the new one is.
        let instances = [nat("old", "az-a"), nat("new", "az-a")];
        let tables = [table("az-a", "new")];
        let health = BTreeMap::from([(
            "old".to_string(),
            Health::NotReady {
                reason: "egress".into(),
            },
        )]);
        let p = project("new", &instances, &tables, &health);
        assert_eq!(p.tables[0].home.as_deref(), Some("new"));
        assert_eq!(p.tables[0].role, TableRole::Home);
    }
}
