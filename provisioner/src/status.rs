//! `natron status`: per AZ, the group's NAT instances, their state and
//! addresses, and the route tables each serves (as their home, or taken
//! over from another AZ). Pure.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::layout::Names;
use crate::model::{has_tag, InstanceState, Inventory, AZ_TAG, GROUP_TAG, SUBNET_TAG};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub vpc_id: String,
    pub group: String,
    pub zones: Vec<ZoneStatus>,
    /// The group's tables whose default route is on no running NAT of the
    /// group.
    pub unserved: Vec<TableRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoneStatus {
    pub az: String,
    pub auto_scaling_group: Option<String>,
    pub nats: Vec<NatStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatStatus {
    pub instance_id: String,
    pub state: InstanceState,
    pub private_ip: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub elastic_ip: Option<Ipv4Addr>,
    /// The public addresses of its address pool (`--addresses`), by slot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pool: Vec<Ipv4Addr>,
    pub source_dest_check: Option<bool>,
    pub tables: Vec<TableRow>,
    /// The agent's last source-port warning (its `natron:source-ports`
    /// tag): source ports ran out, or neared it, towards a destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ports: Option<SourcePortsNote>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourcePortsNote {
    pub unix_ms: u64,
    pub warning: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableRow {
    pub id: String,
    pub az: Option<String>,
    pub subnet: Option<String>,
    /// "home", "taken_over" or "unserved".
    pub role: &'static str,
    pub target: String,
}

pub fn status(inv: &Inventory, group: &str) -> Status {
    let tables: Vec<_> = inv.group_route_tables(group).collect();
    let mut azs: BTreeSet<String> = inv.instances.iter().map(|i| i.az.clone()).collect();
    azs.extend(
        tables
            .iter()
            .filter_map(|t| t.tag(AZ_TAG).map(str::to_string)),
    );
    azs.extend(
        inv.auto_scaling_groups
            .iter()
            .filter_map(|g| g.tags.get(AZ_TAG).cloned()),
    );
    let mut served = BTreeSet::new();
    let zones = azs
        .into_iter()
        .map(|az| {
            let asg_name = Names::auto_scaling_group(group, &az);
            let nats = inv
                .instances
                .iter()
                .filter(|i| i.az == az)
                .map(|i| {
                    let rows: Vec<TableRow> = tables
                        .iter()
                        .filter(|t| {
                            i.is_running() && t.default_route().is_some_and(|r| i.is_target_of(r))
                        })
                        .map(|t| {
                            served.insert(t.id.clone());
                            TableRow {
                                id: t.id.clone(),
                                az: t.tag(AZ_TAG).map(str::to_string),
                                subnet: t.tag(SUBNET_TAG).map(str::to_string),
                                role: if t.tag(AZ_TAG) == Some(az.as_str()) {
                                    "home"
                                } else {
                                    "taken_over"
                                },
                                target: i.id.clone(),
                            }
                        })
                        .collect();
                    NatStatus {
                        instance_id: i.id.clone(),
                        state: i.state.clone(),
                        private_ip: i.private_ip,
                        public_ip: i.public_ip,
                        elastic_ip: inv
                            .addresses
                            .iter()
                            .find(|a| {
                                a.instance_id.as_deref() == Some(i.id.as_str())
                                    && a.slot().is_none()
                            })
                            .and_then(|a| a.public_ip),
                        pool: pool_of(inv, &i.id),
                        source_dest_check: i.source_dest_check,
                        tables: rows,
                        source_ports: i
                            .tags
                            .get(natron_contract::tags::SOURCE_PORTS)
                            .and_then(|v| natron_contract::tags::parse_source_ports(v))
                            .map(|(unix_ms, warning)| SourcePortsNote {
                                unix_ms,
                                warning: warning.to_string(),
                            }),
                    }
                })
                .collect();
            ZoneStatus {
                auto_scaling_group: inv
                    .auto_scaling_groups
                    .iter()
                    .find(|g| g.name == asg_name && has_tag(&g.tags, GROUP_TAG, group))
                    .map(|g| g.name.clone()),
                az,
                nats,
            }
        })
        .collect();
    let unserved = tables
        .iter()
        .filter(|t| !served.contains(&t.id))
        .map(|t| TableRow {
            id: t.id.clone(),
            az: t.tag(AZ_TAG).map(str::to_string),
            subnet: t.tag(SUBNET_TAG).map(str::to_string),
            role: "unserved",
            target: t.default_route().map_or("none".into(), |r| r.target()),
        })
        .collect();
    Status {
        vpc_id: inv.vpc_id.clone(),
        group: group.to_string(),
        zones,
        unserved,
    }
}

/// The public addresses of the pool slots on `instance`, by slot.
fn pool_of(inv: &Inventory, instance: &str) -> Vec<Ipv4Addr> {
    let mut slots: Vec<(u32, Ipv4Addr)> = inv
        .addresses
        .iter()
        .filter(|a| a.instance_id.as_deref() == Some(instance))
        .filter_map(|a| Some((a.slot()?, a.public_ip?)))
        .collect();
    slots.sort();
    slots.into_iter().map(|(_, ip)| ip).collect()
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "group {} in {}", self.group, self.vpc_id)?;
        for z in &self.zones {
            writeln!(
                f,
                "{}  (auto scaling group: {})",
                z.az,
                z.auto_scaling_group.as_deref().unwrap_or("none")
            )?;
            if z.nats.is_empty() {
                writeln!(f, "  no NAT instance")?;
            }
            for n in &z.nats {
                let ip = |a: Option<Ipv4Addr>| a.map_or("-".to_string(), |a| a.to_string());
                writeln!(
                    f,
                    "  {} {}  private {}  public {}  elastic {}  source/dest check {}",
                    n.instance_id,
                    n.state,
                    ip(n.private_ip),
                    ip(n.public_ip),
                    ip(n.elastic_ip),
                    match n.source_dest_check {
                        Some(false) => "off",
                        Some(true) => "ON",
                        None => "?",
                    }
                )?;
                if !n.pool.is_empty() {
                    let pool: Vec<String> = n.pool.iter().map(ToString::to_string).collect();
                    writeln!(f, "    address pool: {}", pool.join(", "))?;
                }
                if let Some(p) = &n.source_ports {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(p.unix_ms);
                    writeln!(
                        f,
                        "    SOURCE PORTS (last said {}): {}",
                        humantime::format_rfc3339_seconds(at),
                        p.warning
                    )?;
                }
                for t in &n.tables {
                    writeln!(
                        f,
                        "    serves {} ({}, {})",
                        t.id,
                        t.subnet.as_deref().unwrap_or("?"),
                        t.role
                    )?;
                }
            }
        }
        for t in &self.unserved {
            writeln!(
                f,
                "UNSERVED {} ({}, {}): 0.0.0.0/0 → {}",
                t.id,
                t.subnet.as_deref().unwrap_or("?"),
                t.az.as_deref().unwrap_or("?"),
                t.target
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Instance;

    /// NAT i-a of group g in az-a, running, with `tags` besides the group's.
    fn nat(mut tags: crate::model::Tags) -> Instance {
        tags.insert(GROUP_TAG.to_string(), "g".to_string());
        Instance {
            id: "i-a".into(),
            az: "az-a".into(),
            subnet_id: None,
            state: InstanceState::Running,
            private_ip: None,
            public_ip: None,
            interface_ids: vec![],
            source_dest_check: Some(false),
            security_groups: vec![],
            tags,
        }
    }

    #[test]
    fn a_nats_source_port_warning_is_shown_from_its_tag() {
        let mut tags = crate::model::Tags::default();
        let inv = Inventory {
            instances: vec![nat(tags.clone())],
            ..Default::default()
        };
        assert_eq!(status(&inv, "g").zones[0].nats[0].source_ports, None);
        tags.insert(
            natron_contract::tags::SOURCE_PORTS.into(),
            natron_contract::tags::source_ports_value(
                1_796_610_000_000,
                "no free source port: 600 packet(s) dropped",
            ),
        );
        let inv = Inventory {
            instances: vec![nat(tags)],
            ..Default::default()
        };
        let s = status(&inv, "g");
        assert_eq!(
            s.zones[0].nats[0].source_ports,
            Some(SourcePortsNote {
                unix_ms: 1_796_610_000_000,
                warning: "no free source port: 600 packet(s) dropped".into(),
            })
        );
        let text = s.to_string();
        assert!(
            text.contains("SOURCE PORTS (last said 2026-12-07T02:20:00Z): no free source port"),
            "{text}"
        );
    }

    #[test]
    fn a_nats_pool_addresses_are_listed_by_slot() {
        let address = |slot: Option<u32>, ip: &str| crate::model::Address {
            allocation_id: format!("eipalloc-{ip}"),
            public_ip: ip.parse().ok(),
            instance_id: Some("i-a".into()),
            association_id: None,
            tags: slot
                .map(|s| [(natron_contract::tags::SLOT.to_string(), s.to_string())].into())
                .unwrap_or_default(),
        };
        let inv = Inventory {
            instances: vec![nat(Default::default())],
            addresses: vec![
                address(Some(2), "203.0.113.102"),
                address(None, "203.0.113.10"),
                address(Some(1), "203.0.113.101"),
            ],
            ..Default::default()
        };
        let s = status(&inv, "g");
        let nat = &s.zones[0].nats[0];
        assert_eq!(nat.elastic_ip, "203.0.113.10".parse().ok());
        assert_eq!(
            nat.pool,
            [
                "203.0.113.101".parse::<Ipv4Addr>().unwrap(),
                "203.0.113.102".parse().unwrap()
            ]
        );
        assert!(
            s.to_string()
                .contains("address pool: 203.0.113.101, 203.0.113.102"),
            "{s}"
        );
    }
}
