//! The VPC router and internet gateway, rendered from the emulator's state
//! by a pure function and applied to the lab's router and IGW namespaces by
//! difference.
//!
//! Model (as AWS behaves):
//! - Each instance's link is a router interface; packets arriving on it are
//!   routed by the route table of the instance's subnet (policy routing by
//!   incoming interface: a NAT's forwarded packets carry foreign sources).
//! - A `local` route hands the packet to the lab's delivery table (one /32
//!   per instance); an ENI or instance route goes to that instance's private
//!   IP (a blackhole when it is not running); an internet gateway route goes
//!   to the IGW namespace; no route means unreachable.
//! - Source/destination check: while the emulator says SourceDestCheck is
//!   true for an instance, the router drops packets from it whose source is
//!   not its own address and packets to it whose destination is not.
//! - The IGW maps each private IP that has a public IP (or Elastic IP) 1:1,
//!   statelessly, and drops anything from an address without one.
//! - IPv6 routes are routed the same way by incoming interface: the VPC
//!   block's `local` route, an instance route to the instance's link-local
//!   address (as to an ENI), and an egress-only internet gateway route to
//!   the lab's egress-only gateway, which forwards what goes out and only
//!   the answers back (stateful, no translation).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::vpc::{Target, VpcView};
use crate::{exec, LabError};

/// Kernel routing table holding one /32 per lab host (the `local` route).
pub const DELIVERY_TABLE: u32 = 100;
/// Router-side address of the link to the IGW, and the IGW's.
pub const ROUTER_IGW_ADDR: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 1);
pub const IGW_ADDR: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 2);
pub const ROUTER_IGW_DEV: &str = "igw0";
/// IGW-side device names.
pub const IGW_VPC_DEV: &str = "vpc0";
pub const IGW_INET_DEV: &str = "inet0";
/// The router's link to the egress-only gateway, and the gateway's own
/// address on it (both ends carry the same device names as the IGW's).
pub const ROUTER_EIGW_DEV: &str = "eigw0";
pub const ROUTER_EIGW_ADDR: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xe16, 0, 0, 0, 0, 0, 1);
pub const EIGW_ADDR: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xe16, 0, 0, 0, 0, 0, 2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop<A = Ipv4Addr> {
    /// Continue with the delivery table (the VPC's local route; for IPv6,
    /// the router's own connected routes).
    Local,
    Via {
        gateway: A,
        dev: String,
    },
    Blackhole,
}

/// Which router interface each instance is attached by.
pub type Attachments = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouterConfig {
    /// Kernel table id -> destination -> hop.
    pub tables: BTreeMap<u32, BTreeMap<Ipv4Net, Hop>>,
    /// The same for IPv6 (same table ids and rules).
    pub tables6: BTreeMap<u32, BTreeMap<Ipv6Net, Hop<Ipv6Addr>>>,
    /// Router interface -> kernel table its incoming packets are routed by.
    pub rules: BTreeMap<String, u32>,
    /// Router interface -> the only address allowed through it (check on).
    pub source_dest_check: BTreeMap<String, Ipv4Addr>,
    /// Private -> public addresses the IGW translates.
    pub public_ips: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

/// Stable kernel table ids for route table ids.
#[derive(Debug, Default)]
pub struct TableIds(BTreeMap<String, u32>);

impl TableIds {
    pub fn get(&mut self, route_table: &str) -> u32 {
        let next = 1000 + self.0.len() as u32;
        *self.0.entry(route_table.to_string()).or_insert(next)
    }
}

/// The router and IGW configuration the emulator's state calls for. Pure.
pub fn render(view: &VpcView, attachments: &Attachments, ids: &mut TableIds) -> RouterConfig {
    let mut config = RouterConfig::default();
    let attached = |instance: &str| {
        let i = view.instances.iter().find(|i| i.id == instance)?;
        Some((i, attachments.get(&i.id)?))
    };
    for table in &view.route_tables {
        let mut routes = BTreeMap::new();
        for (dest, target) in &table.routes {
            let instance = match target {
                Target::Interface(eni) => view
                    .instances
                    .iter()
                    .find(|i| &i.interface_id == eni)
                    .map(|i| i.id.clone()),
                Target::Instance(id) => Some(id.clone()),
                _ => None,
            };
            let hop = match (target, instance) {
                (Target::Local, _) => Hop::Local,
                (Target::InternetGateway(_), _) => Hop::Via {
                    gateway: IGW_ADDR,
                    dev: ROUTER_IGW_DEV.into(),
                },
                (_, Some(id)) => match attached(&id) {
                    Some((i, dev)) if i.state == "running" => Hop::Via {
                        gateway: i.private_ip,
                        dev: dev.clone(),
                    },
                    _ => Hop::Blackhole,
                },
                _ => Hop::Blackhole,
            };
            routes.insert(*dest, hop);
        }
        config.tables.insert(ids.get(&table.id), routes);
        let routes6: BTreeMap<Ipv6Net, Hop<Ipv6Addr>> = table
            .routes6
            .iter()
            .map(|(dest, target)| (*dest, hop6(view, attachments, target)))
            .collect();
        if !routes6.is_empty() {
            config.tables6.insert(ids.get(&table.id), routes6);
        }
    }
    for i in &view.instances {
        let Some(dev) = attachments.get(&i.id) else {
            continue;
        };
        if let Some(table) = view.table_of_subnet(&i.subnet_id) {
            config.rules.insert(dev.clone(), ids.get(&table.id));
        }
        // Only a running instance forwards; a stopped one may share its
        // link with its replacement.
        if i.source_dest_check && i.state == "running" {
            config.source_dest_check.insert(dev.clone(), i.private_ip);
        }
        if let (Some(public), true) = (i.public_ip, i.state == "running") {
            config.public_ips.insert(i.private_ip, public);
        }
        // A running instance's secondary addresses are delivered to its
        // link as AWS's mapping service does (no ARP for them), and those
        // with an Elastic IP are translated by the IGW.
        if i.state == "running" {
            for (secondary, public) in &i.secondary {
                config.tables.entry(DELIVERY_TABLE).or_default().insert(
                    Ipv4Net::from(*secondary),
                    Hop::Via {
                        gateway: i.private_ip,
                        dev: dev.clone(),
                    },
                );
                if let Some(public) = public {
                    config.public_ips.insert(*secondary, *public);
                }
            }
        }
    }
    config
}

/// An IPv6 route's hop: an instance by its link-local address (the
/// kernel's, from the ENI's MAC), the egress-only gateway, or the VPC.
fn hop6(view: &VpcView, attachments: &Attachments, target: &Target) -> Hop<Ipv6Addr> {
    let instance = view.instances.iter().find(|i| match target {
        Target::Interface(eni) => &i.interface_id == eni,
        Target::Instance(id) => &i.id == id,
        _ => false,
    });
    match (target, instance) {
        (Target::Local, _) => Hop::Local,
        (Target::EgressOnlyGateway(_), _) => Hop::Via {
            gateway: EIGW_ADDR,
            dev: ROUTER_EIGW_DEV.into(),
        },
        (_, Some(i)) if i.state == "running" => {
            match (attachments.get(&i.id), crate::vpc::link_local(&i.mac).ok()) {
                (Some(dev), Some(gateway)) => Hop::Via {
                    gateway,
                    dev: dev.clone(),
                },
                _ => Hop::Blackhole,
            }
        }
        _ => Hop::Blackhole,
    }
}

/// `ip route` commands turning `old` tables into `new` ones, changing only
/// what differs (replace is atomic per route: no gap in forwarding).
pub fn route_commands(old: &RouterConfig, new: &RouterConfig) -> Vec<String> {
    let mut cmds = table_commands(&old.tables, &new.tables);
    cmds.extend(rule_commands(old, new));
    cmds
}

/// The same for IPv6, run with `ip -6` (rules included: the same
/// interfaces route by the same tables).
pub fn route6_commands(old: &RouterConfig, new: &RouterConfig) -> Vec<String> {
    let mut cmds = table_commands(&old.tables6, &new.tables6);
    cmds.extend(rule_commands(old, new));
    cmds
}

fn table_commands<N: Ord + Display, A: PartialEq + Display>(
    old: &BTreeMap<u32, BTreeMap<N, Hop<A>>>,
    new: &BTreeMap<u32, BTreeMap<N, Hop<A>>>,
) -> Vec<String> {
    let mut cmds = Vec::new();
    let empty = BTreeMap::new();
    let tables: std::collections::BTreeSet<&u32> = new.keys().chain(old.keys()).collect();
    for table in tables {
        let routes = new.get(table).unwrap_or(&empty);
        let before = old.get(table).unwrap_or(&empty);
        for (dest, hop) in routes {
            if before.get(dest) != Some(hop) {
                cmds.push(match hop {
                    Hop::Local => format!("route replace throw {dest} table {table}"),
                    Hop::Via { gateway, dev } => {
                        format!("route replace {dest} via {gateway} dev {dev} onlink table {table}")
                    }
                    Hop::Blackhole => format!("route replace blackhole {dest} table {table}"),
                });
            }
        }
        for (dest, hop) in before {
            if !routes.contains_key(dest) {
                cmds.push(match hop {
                    Hop::Local => format!("route del throw {dest} table {table}"),
                    Hop::Blackhole => format!("route del blackhole {dest} table {table}"),
                    // The kernel drops a route through a link set down (a
                    // killed NAT's): gone already is fine.
                    Hop::Via { .. } => format!("route flush exact {dest} table {table}"),
                });
            }
        }
    }
    cmds
}

fn rule_commands(old: &RouterConfig, new: &RouterConfig) -> Vec<String> {
    let mut cmds = Vec::new();
    for (dev, table) in &new.rules {
        match old.rules.get(dev) {
            Some(t) if t == table => {}
            Some(t) => {
                cmds.push(format!("rule del pref 200 iif {dev} lookup {t}"));
                cmds.push(format!("rule add pref 200 iif {dev} lookup {table}"));
            }
            None => cmds.push(format!("rule add pref 200 iif {dev} lookup {table}")),
        }
    }
    cmds
}

/// The router's source/dest check table, replaced whole.
pub fn source_dest_check_script(config: &RouterConfig) -> String {
    let mut rules = String::new();
    for (dev, ip) in &config.source_dest_check {
        rules.push_str(&format!(
            "    iifname \"{dev}\" ip saddr != {ip} counter drop\n"
        ));
        rules.push_str(&format!(
            "    oifname \"{dev}\" ip daddr != {ip} counter drop\n"
        ));
    }
    format!(
        "table ip lab_sdc\ndelete table ip lab_sdc\ntable ip lab_sdc {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// The IGW's stateless 1:1 NAT, replaced whole.
pub fn igw_script(config: &RouterConfig) -> String {
    let elems = |items: Vec<String>| {
        if items.is_empty() {
            String::new()
        } else {
            format!("    elements = {{ {} }}\n", items.join(", "))
        }
    };
    let privates = elems(config.public_ips.keys().map(|a| a.to_string()).collect());
    let publics = elems(config.public_ips.values().map(|a| a.to_string()).collect());
    let to_public = elems(
        config
            .public_ips
            .iter()
            .map(|(p, q)| format!("{p} : {q}"))
            .collect(),
    );
    let to_private = elems(
        config
            .public_ips
            .iter()
            .map(|(p, q)| format!("{q} : {p}"))
            .collect(),
    );
    format!(
        "table ip igw\ndelete table ip igw\ntable ip igw {{\n\
         \x20 set privates {{\n    type ipv4_addr\n{privates}  }}\n\
         \x20 set publics {{\n    type ipv4_addr\n{publics}  }}\n\
         \x20 map to_public {{\n    type ipv4_addr : ipv4_addr\n{to_public}  }}\n\
         \x20 map to_private {{\n    type ipv4_addr : ipv4_addr\n{to_private}  }}\n\
         \x20 chain prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n\
         \x20   iifname \"{IGW_VPC_DEV}\" ip saddr != @privates counter drop\n\
         \x20   iifname \"{IGW_VPC_DEV}\" ip saddr set ip saddr map @to_public\n\
         \x20   iifname \"{IGW_INET_DEV}\" ip daddr != @publics counter drop\n\
         \x20   iifname \"{IGW_INET_DEV}\" ip daddr set ip daddr map @to_private\n\
         \x20 }}\n}}\n"
    )
}

/// Applies `new` over `old` (None: nothing applied yet) in the router and
/// IGW namespaces.
pub fn apply(
    router_ns: &str,
    igw_ns: &str,
    old: Option<&RouterConfig>,
    new: &RouterConfig,
) -> Result<(), LabError> {
    let empty = RouterConfig::default();
    let before = old.unwrap_or(&empty);
    exec::ip_batch(router_ns, &route_commands(before, new))?;
    exec::ip6_batch(router_ns, &route6_commands(before, new))?;
    if old.is_none() || before.source_dest_check != new.source_dest_check {
        exec::nft_script(router_ns, &source_dest_check_script(new))?;
    }
    if old.is_none() || before.public_ips != new.public_ips {
        exec::nft_script(igw_ns, &igw_script(new))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpc::{InstanceView, RouteTableView};

    fn instance(id: &str, ip: &str, subnet: &str, sdc: bool, public: Option<&str>) -> InstanceView {
        InstanceView {
            id: id.into(),
            state: "running".into(),
            subnet_id: subnet.into(),
            availability_zone: "us-east-1a".into(),
            private_ip: ip.parse().unwrap(),
            public_ip: public.map(|p| p.parse().unwrap()),
            interface_id: format!("eni-{id}"),
            mac: "02:00:00:00:00:01".into(),
            source_dest_check: sdc,
            tags: BTreeMap::new(),
            metadata_tags: true,
            secondary: vec![],
            ipv6s: vec![],
        }
    }

    fn view() -> VpcView {
        VpcView {
            vpc_id: "vpc-1".into(),
            cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            ipv6_cidrs: vec![],
            instances: vec![
                instance(
                    "nat",
                    "10.0.0.10",
                    "subnet-pub",
                    false,
                    Some("203.0.113.10"),
                ),
                instance("cli", "10.0.10.10", "subnet-priv", true, None),
            ],
            route_tables: vec![
                RouteTableView {
                    id: "rtb-main".into(),
                    main: true,
                    subnets: vec![],
                    routes: vec![
                        ("10.0.0.0/16".parse().unwrap(), Target::Local),
                        (
                            "0.0.0.0/0".parse().unwrap(),
                            Target::InternetGateway("igw-1".into()),
                        ),
                    ],
                    routes6: vec![],
                },
                RouteTableView {
                    id: "rtb-priv".into(),
                    main: false,
                    subnets: vec!["subnet-priv".into()],
                    routes: vec![
                        ("10.0.0.0/16".parse().unwrap(), Target::Local),
                        (
                            "0.0.0.0/0".parse().unwrap(),
                            Target::Interface("eni-nat".into()),
                        ),
                    ],
                    routes6: vec![],
                },
            ],
        }
    }

    fn attachments() -> Attachments {
        [
            ("nat".to_string(), "i-nat".to_string()),
            ("cli".to_string(), "i-cli".to_string()),
        ]
        .into()
    }

    #[test]
    fn renders_tables_rules_checks_and_public_ips() {
        let mut ids = TableIds::default();
        let c = render(&view(), &attachments(), &mut ids);
        let main = ids.get("rtb-main");
        let private = ids.get("rtb-priv");
        assert_eq!(
            c.rules.get("i-nat"),
            Some(&main),
            "public subnet uses the main table"
        );
        assert_eq!(c.rules.get("i-cli"), Some(&private));
        assert_eq!(
            c.tables[&private][&"0.0.0.0/0".parse().unwrap()],
            Hop::Via {
                gateway: "10.0.0.10".parse().unwrap(),
                dev: "i-nat".into()
            }
        );
        assert_eq!(c.tables[&main][&"10.0.0.0/16".parse().unwrap()], Hop::Local);
        assert_eq!(
            c.source_dest_check.keys().collect::<Vec<_>>(),
            vec!["i-cli"]
        );
        assert_eq!(c.public_ips.len(), 1);
    }

    #[test]
    fn secondary_addresses_are_delivered_via_their_instance_and_translated() {
        let mut v = view();
        let (with_eip, without): (Ipv4Addr, Ipv4Addr) =
            ("10.0.0.50".parse().unwrap(), "10.0.0.51".parse().unwrap());
        v.instances[0].secondary = vec![
            (with_eip, Some("203.0.113.101".parse().unwrap())),
            (without, None),
        ];
        let mut ids = TableIds::default();
        let c = render(&v, &attachments(), &mut ids);
        let via_nat = Hop::Via {
            gateway: "10.0.0.10".parse().unwrap(),
            dev: "i-nat".into(),
        };
        assert_eq!(c.tables[&DELIVERY_TABLE][&Ipv4Net::from(with_eip)], via_nat);
        assert_eq!(c.tables[&DELIVERY_TABLE][&Ipv4Net::from(without)], via_nat);
        assert_eq!(
            c.public_ips[&with_eip],
            "203.0.113.101".parse::<Ipv4Addr>().unwrap()
        );
        assert!(
            !c.public_ips.contains_key(&without),
            "no public address: dropped at the IGW"
        );
        // Stopped: neither delivered nor translated; the route is removed.
        v.instances[0].state = "stopped".into();
        let stopped = render(&v, &attachments(), &mut ids);
        assert!(!stopped.tables.contains_key(&DELIVERY_TABLE));
        assert!(route_commands(&c, &stopped).contains(&format!(
            "route flush exact 10.0.0.50/32 table {DELIVERY_TABLE}"
        )));
    }

    #[test]
    fn stopped_target_is_a_blackhole_and_missing_route_is_absent() {
        let mut v = view();
        v.instances[0].state = "stopped".into();
        let mut ids = TableIds::default();
        let c = render(&v, &attachments(), &mut ids);
        let private = ids.get("rtb-priv");
        assert_eq!(
            c.tables[&private][&"0.0.0.0/0".parse().unwrap()],
            Hop::Blackhole
        );
        assert!(
            c.public_ips.is_empty(),
            "a stopped instance has no public address"
        );

        v.route_tables[1].routes.pop();
        let c2 = render(&v, &attachments(), &mut ids);
        assert!(!c2.tables[&private].contains_key(&"0.0.0.0/0".parse().unwrap()));
        assert_eq!(
            route_commands(&c, &c2),
            vec![format!("route del blackhole 0.0.0.0/0 table {private}")]
        );
    }

    #[test]
    fn commands_change_only_the_difference() {
        let mut ids = TableIds::default();
        let a = render(&view(), &attachments(), &mut ids);
        assert!(route_commands(&a, &a).is_empty());
        let mut v = view();
        v.route_tables[1].routes[1].1 = Target::Instance("cli".into());
        let b = render(&v, &attachments(), &mut ids);
        let private = ids.get("rtb-priv");
        assert_eq!(
            route_commands(&a, &b),
            vec![format!(
                "route replace 0.0.0.0/0 via 10.0.10.10 dev i-cli onlink table {private}"
            )]
        );
    }

    #[test]
    fn ipv6_routes_go_to_the_egress_only_gateway_and_to_instances_by_link_local() {
        let mut v = view();
        v.route_tables[1].routes6 = vec![
            ("2600:1f18::/56".parse().unwrap(), Target::Local),
            (
                "::/0".parse().unwrap(),
                Target::EgressOnlyGateway("eigw-1".into()),
            ),
            (
                "64:ff9b::/96".parse().unwrap(),
                Target::Interface("eni-nat".into()),
            ),
        ];
        let mut ids = TableIds::default();
        let c = render(&v, &attachments(), &mut ids);
        let private = ids.get("rtb-priv");
        let hops = &c.tables6[&private];
        assert_eq!(
            hops[&"::/0".parse().unwrap()],
            Hop::Via {
                gateway: EIGW_ADDR,
                dev: ROUTER_EIGW_DEV.into()
            }
        );
        assert_eq!(
            hops[&"64:ff9b::/96".parse().unwrap()],
            Hop::Via {
                gateway: "fe80::ff:fe00:1".parse().unwrap(),
                dev: "i-nat".into()
            },
            "the NAT's link-local address, from its MAC"
        );
        assert!(!c.tables6.contains_key(&ids.get("rtb-main")));
        let cmds = route6_commands(&RouterConfig::default(), &c);
        assert!(cmds.contains(&format!(
            "route replace ::/0 via {EIGW_ADDR} dev {ROUTER_EIGW_DEV} onlink table {private}"
        )));
        assert!(cmds.contains(&format!("rule add pref 200 iif i-cli lookup {private}")));
        v.instances[0].state = "stopped".into();
        let stopped = render(&v, &attachments(), &mut ids);
        assert_eq!(
            stopped.tables6[&private][&"64:ff9b::/96".parse().unwrap()],
            Hop::Blackhole
        );
    }

    #[test]
    fn scripts_mention_every_address() {
        let mut ids = TableIds::default();
        let c = render(&view(), &attachments(), &mut ids);
        let sdc = source_dest_check_script(&c);
        assert!(
            sdc.contains("iifname \"i-cli\" ip saddr != 10.0.10.10 counter drop"),
            "{sdc}"
        );
        let igw = igw_script(&c);
        assert!(igw.contains("10.0.0.10 : 203.0.113.10"), "{igw}");
        assert!(igw.contains("203.0.113.10 : 10.0.0.10"), "{igw}");
        let empty = igw_script(&RouterConfig::default());
        assert!(!empty.contains("elements"), "{empty}");
    }
}
