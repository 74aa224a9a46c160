//! NAT64's filter and counters: table `ip6 natron`, rendered only when
//! NAT64 is on (`RulesetSpec::nat64`).
//!
//! Jool translates in netfilter's IPv6 prerouting hook (priority -75, after
//! connection tracking), so a rule that must see a packet before it is
//! translated sits earlier, at the raw priority: only the served IPv6
//! networks (the VPC's IPv6 CIDR blocks by default) may reach
//! `64:ff9b::/96` (`nat64-refuse` drops and counts the rest: not an open
//! relay). The translated replies leave through the IPv6 postrouting hook,
//! with the IPv4 server's address in the prefix as their source
//! (`nat64-out`). Jool keeps no conntrack entries, so these two chains and
//! Jool's own session table are what there is to count.

use ipnet::Ipv6Net;
use nftables::schema::{NfListObject, Set, SetType};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::expr::*;

pub const FAMILY: NfFamily = NfFamily::IP6;
/// The well-known prefix (RFC 6052) the VPC's DNS64 synthesises addresses in.
pub const PREFIX: &str = natron_contract::ec2::NAT64_ROUTE;
const SOURCES_SET: &str = "sources6";
const IN_CHAIN: &str = "nat64-in";
const OUT_CHAIN: &str = "nat64-out";
/// Before Jool (prerouting, -75) and connection tracking (-200).
const RAW_PRIORITY: i32 = -300;

pub mod rule {
    /// From outside the served networks to the prefix: dropped.
    pub const REFUSE: &str = "nat64-refuse";
    /// From a served network to the prefix: what NAT64 translates to IPv4.
    pub const IN: &str = "nat64-in";
    /// Translated replies to the served networks.
    pub const OUT: &str = "nat64-out";
}

/// What the table depends on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Nat64Spec {
    /// IPv6 networks allowed to use NAT64.
    pub sources: Vec<Ipv6Net>,
    /// The ports (and ICMP identifiers) Jool translates to (`core::jool`;
    /// masquerade's range has them taken out).
    pub port_range: (u16, u16),
}

fn prefix_expr() -> nftables::expr::Expression<'static> {
    let net: Ipv6Net = PREFIX.parse().expect("the well-known prefix");
    prefix(&net.network().to_string(), net.prefix_len().into())
}

/// Table `ip6 natron` as `nft -j list` prints it, or nothing without NAT64.
pub fn render(spec: Option<&Nat64Spec>) -> Vec<NfListObject<'static>> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    let ip6 = |field| payload("ip6", field);
    let rule = |chain, name, expr| rule_of(FAMILY, chain, name, expr);
    vec![
        table_of(FAMILY),
        NfListObject::Set(Box::new(sources_set(&spec.sources))),
        chain(IN_CHAIN, NfHook::Prerouting, RAW_PRIORITY),
        chain(OUT_CHAIN, NfHook::Postrouting, 0),
        rule(
            IN_CHAIN,
            rule::REFUSE,
            vec![
                matches(ip6("daddr"), prefix_expr()),
                not_matches(ip6("saddr"), set_ref(SOURCES_SET)),
                counter(),
                drop(),
            ],
        ),
        rule(
            IN_CHAIN,
            rule::IN,
            vec![matches(ip6("daddr"), prefix_expr()), counter()],
        ),
        rule(
            OUT_CHAIN,
            rule::OUT,
            vec![matches(ip6("saddr"), prefix_expr()), counter()],
        ),
    ]
}

fn chain(name: &str, hook: NfHook, prio: i32) -> NfListObject<'static> {
    base_chain_in(
        FAMILY,
        name,
        NfChainType::Filter,
        hook,
        prio,
        NfChainPolicy::Accept,
    )
}

fn sources_set(nets: &[Ipv6Net]) -> Set<'static> {
    let mut sorted = Ipv6Net::aggregate(&nets.to_vec());
    sorted.sort();
    let nets = sorted
        .iter()
        .map(|n| (n.network().to_string(), n.prefix_len()))
        .collect();
    interval_set(FAMILY, SOURCES_SET, SetType::Ipv6Addr, nets)
}
