//! The NAT ruleset, built by a pure function from plain data.
//!
//! natron owns exactly one table, `ip natron`. [`render`] returns its full
//! contents in the form `nft -j list table ip natron` prints them (so the live
//! table can be compared with the desired one), and [`apply_batch`] wraps them
//! in one transaction that replaces the table atomically. Each rule carries a
//! comment naming it, which is how counters are read back for /metrics.
//! Golden files in `agent/tests/golden/` pin the rendered JSON.

use std::borrow::Cow;

use ipnet::Ipv4Net;
use nftables::expr::{Expression, FibFlag, MetaKey};
use nftables::schema::{FlowTable, NfCmd, NfListObject, NfObject, Nftables, Set, SetType, Table};
use nftables::stmt::{Flow, NATFlag, SetOp, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

pub const FAMILY: NfFamily = NfFamily::IP;
pub const TABLE: &str = "natron";
pub const FLOWTABLE: &str = "fastpath";
const SOURCES_SET: &str = "sources";
/// Who may reach the agent's port: the VPC (peers) and the sources.
const PEERS_SET: &str = "peers";
const MSS_CHAIN: &str = "mss";

/// Rule names (their nft comments), for counters and documentation.
pub mod rule {
    pub const DROP_INVALID: &str = "drop-invalid";
    pub const DROP_LINK_LOCAL: &str = "drop-link-local";
    pub const HANDSHAKE: &str = "handshake";
    pub const CLAMP_MSS: &str = "clamp-mss";
    pub const CLAMP_MSS_REPLY: &str = "clamp-mss-reply";
    pub const GUARD_AGENT_PORT: &str = "guard-agent-port";
    pub const OWN_IN: &str = "own-in";
    pub const OWN_OUT: &str = "own-out";
    /// The NAT's own traffic with outside the peers on the egress
    /// interface (only with the wire counters: `wire`).
    pub const OWN_IN_OUTSIDE: &str = "own-in-outside";
    pub const OWN_OUT_OUTSIDE: &str = "own-out-outside";
    pub const OFFLOAD: &str = "offload";
    pub const ACCEPT_REPLIES: &str = "accept-replies";
    pub const ACCEPT_SOURCES: &str = "accept-sources";
    pub const DROP_OTHER: &str = "drop-other";
    pub const MASQUERADE: &str = "masquerade";
    pub const MASQUERADE_OTHER: &str = "masquerade-other";
    pub const UNTRACKED_TO_AGENT: &str = "untracked-to-agent";
    pub const UNTRACKED_LOCAL_TO_AGENT: &str = "untracked-local-to-agent";
    pub const UNTRACKED_FROM_AGENT: &str = "untracked-from-agent";
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RulesetSpec {
    /// Interface NATed traffic leaves by (and, on a one-ENI instance, enters by).
    pub egress: String,
    /// Networks allowed to use the NAT (the VPC's CIDR blocks by default).
    pub sources: Vec<Ipv4Net>,
    pub port_range: (u16, u16),
    pub fully_random: bool,
    /// Whether to add the flowtable fast path (only when the kernel has it).
    pub flowtable: bool,
    /// The agent's HTTP port: requests to it (peers' health checks, local
    /// scrapes) and its answers are kept out of connection tracking, and
    /// only the VPC and the sources may reach it.
    pub agent_port: u16,
    /// The VPC's CIDR blocks (where peers are), for the agent's port.
    pub vpc: Vec<Ipv4Net>,
    /// The MSS SYNs and SYN-ACKs crossing to or from the internet are
    /// clamped to (None: no clamp).
    pub mss: Option<u16>,
    /// The private addresses new connections are translated to, one
    /// connection to the next in turn (`core::pool`); with fewer than two
    /// the egress interface's own address (masquerade).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool: Vec<std::net::Ipv4Addr>,
    /// Count traffic by direction on the wire (table `netdev natron`,
    /// `wire`): for the NAT Gateway's directional metrics in CloudWatch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wire_counters: bool,
    /// NAT64's filter and counters (table `ip6 natron`, `nat64`); None
    /// without NAT64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat64: Option<nat64::Nat64Spec>,
}

/// natron's tables' contents as `nft -j list table` shows them (handles
/// and counter values aside): `ip natron`, then `netdev natron` when the
/// spec wants the wire counters, then `ip6 natron` with NAT64.
pub fn render(spec: &RulesetSpec) -> Vec<NfListObject<'static>> {
    let mut objects = render_ip(spec);
    objects.extend(wire::render(spec));
    objects.extend(nat64::render(spec.nat64.as_ref()));
    objects
}

fn render_ip(spec: &RulesetSpec) -> Vec<NfListObject<'static>> {
    let mut objects = vec![table_of(FAMILY)];
    objects.push(NfListObject::Set(Box::new(net_set(
        FAMILY,
        SOURCES_SET,
        &spec.sources,
    ))));
    let mut peers = spec.sources.clone();
    peers.extend(spec.vpc.iter().copied());
    objects.push(NfListObject::Set(Box::new(net_set(
        FAMILY, PEERS_SET, &peers,
    ))));
    if spec.flowtable {
        objects.push(NfListObject::FlowTable(FlowTable {
            family: FAMILY,
            table: TABLE.into(),
            name: FLOWTABLE.into(),
            handle: None,
            hook: Some(NfHook::Ingress),
            prio: Some(0),
            dev: Some(Cow::Owned(vec![Cow::Owned(spec.egress.clone())])),
        }));
    }
    objects.push(base_chain(
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
        NfChainPolicy::Drop,
    ));
    objects.push(base_chain(
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
        NfChainPolicy::Accept,
    ));
    for (name, hook) in [("input", NfHook::Input), ("output", NfHook::Output)] {
        objects.push(base_chain(
            name,
            NfChainType::Filter,
            hook,
            0,
            NfChainPolicy::Accept,
        ));
    }
    // At raw priority, before connection tracking sees the packet.
    for (name, hook) in [
        ("raw-prerouting", NfHook::Prerouting),
        ("raw-output", NfHook::Output),
    ] {
        objects.push(base_chain(
            name,
            NfChainType::Filter,
            hook,
            RAW_PRIORITY,
            NfChainPolicy::Accept,
        ));
    }

    // The forward chain is ordered for the established packet, almost all
    // of them: a SYN check (a jump for handshakes only), then the accept of
    // established and related flows. Everything else sees only the first
    // packets of a flow. Counting is not done here (see `own-in`).
    let mut forward = Vec::new();
    if let Some(mss) = spec.mss {
        objects.push(plain_chain(MSS_CHAIN));
        forward.push(rule_in(
            "forward",
            rule::HANDSHAKE,
            vec![syn_or_syn_ack(), jump(MSS_CHAIN)],
        ));
        // Both directions: the client's SYN (what the server may send it)
        // and the server's SYN-ACK (what the client may send): an internet
        // path is 1,500 bytes where a VPC interface is 9,001, and one that
        // filters ICMP never says so.
        objects.push(rule_in(
            MSS_CHAIN,
            rule::CLAMP_MSS,
            vec![
                matches(ip("saddr"), set_ref(SOURCES_SET)),
                not_matches(ip("daddr"), set_ref(SOURCES_SET)),
                mss_above(mss),
                counter(),
                mss_set(mss),
            ],
        ));
        objects.push(rule_in(
            MSS_CHAIN,
            rule::CLAMP_MSS_REPLY,
            vec![
                not_matches(ip("saddr"), set_ref(SOURCES_SET)),
                matches(ip("daddr"), set_ref(SOURCES_SET)),
                mss_above(mss),
                counter(),
                mss_set(mss),
            ],
        ));
    }
    if spec.flowtable {
        forward.push(rule_in(
            "forward",
            rule::OFFLOAD,
            vec![
                matches(meta(MetaKey::L4proto), anon_set(&["tcp", "udp"])),
                Statement::Flow(Flow {
                    op: SetOp::Add,
                    flowtable: format!("@{FLOWTABLE}").into(),
                }),
            ],
        ));
    }
    forward.push(rule_in(
        "forward",
        rule::ACCEPT_REPLIES,
        vec![ct_state(&["established", "related"]), accept()],
    ));
    forward.extend([
        rule_in(
            "forward",
            rule::DROP_INVALID,
            vec![ct_state(&["invalid"]), counter(), drop()],
        ),
        // The instance's metadata service and other link-local addresses must
        // never be reachable through the NAT from the served subnets.
        rule_in(
            "forward",
            rule::DROP_LINK_LOCAL,
            vec![
                matches(ip("daddr"), prefix("169.254.0.0", 16)),
                counter(),
                drop(),
            ],
        ),
        rule_in(
            "forward",
            rule::ACCEPT_SOURCES,
            vec![
                matches(ip("saddr"), set_ref(SOURCES_SET)),
                counter(),
                accept(),
            ],
        ),
        // Not an open relay: anything else is dropped (and counted).
        rule_in("forward", rule::DROP_OTHER, vec![counter(), drop()]),
    ]);
    objects.extend(forward);
    objects.extend(local_traffic(spec.agent_port));
    if spec.wire_counters {
        objects.extend(own_outside(&spec.egress));
    }

    // Port ranges only exist for TCP and UDP (nft refuses them otherwise):
    // one rule for those, one for the rest (ICMP and friends).
    // Forwarded connections only: the NAT's own (probes, EC2, IMDS) leave
    // with its own address anyway and are not connections it translates.
    let nat_match = || {
        vec![
            matches(meta(MetaKey::Oifname), str_expr(&spec.egress)),
            matches(ip("saddr"), set_ref(SOURCES_SET)),
            not_matches(ip("daddr"), set_ref(SOURCES_SET)),
            not_matches(fib_type(FibFlag::Saddr), str_expr("local")),
        ]
    };
    let flags = || {
        spec.fully_random.then(|| {
            [NATFlag::FullyRandom]
                .into_iter()
                .collect::<std::collections::HashSet<_>>()
        })
    };
    let ports = Expression::Range(Box::new(nftables::expr::Range {
        range: [
            Expression::Number(spec.port_range.0.into()),
            Expression::Number(spec.port_range.1.into()),
        ],
    }));
    // One address: masquerade to the interface's. A pool: each new
    // connection takes the next address (numgen inc), so one client
    // reaching one destination gets every address's ports; the kernel's
    // own choice over an address range would hash the client and the
    // destination to a single address. The rules keep their names.
    let translate = |port: Option<Expression<'static>>| match pool::map(&spec.pool) {
        None if port.is_none() && !spec.fully_random => {
            // nft lists a bare masquerade as `null`: render it the same way.
            Statement::Masquerade(None)
        }
        None => Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port,
            flags: flags(),
        })),
        Some(addr) => Statement::SNAT(Some(NAT {
            addr: Some(addr),
            family: None,
            port,
            flags: flags(),
        })),
    };
    let mut tcp_udp = nat_match();
    tcp_udp.extend([
        matches(meta(MetaKey::L4proto), anon_set(&["tcp", "udp"])),
        counter(),
        translate(Some(ports)),
    ]);
    objects.push(rule_in("postrouting", rule::MASQUERADE, tcp_udp));
    let mut other = nat_match();
    other.extend([counter(), translate(None)]);
    objects.push(rule_in("postrouting", rule::MASQUERADE_OTHER, other));
    objects.extend(untracked_agent_traffic(spec.agent_port));
    in_listing_order(objects)
}

/// `nft -j list` prints the table, its sets and flowtables, its chains,
/// then the rules chain by chain in the chains' order: render the same.
fn in_listing_order(objects: Vec<NfListObject<'static>>) -> Vec<NfListObject<'static>> {
    let chains: Vec<String> = objects
        .iter()
        .filter_map(|o| match o {
            NfListObject::Chain(c) => Some(c.name.to_string()),
            _ => None,
        })
        .collect();
    let (mut rules, mut out): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|o| matches!(o, NfListObject::Rule(_)));
    rules.sort_by_key(|o| match o {
        NfListObject::Rule(r) => chains.iter().position(|c| *c == r.chain),
        _ => None,
    });
    out.extend(rules);
    out
}

/// One transaction that creates natron's tables or replaces them whole:
/// the `add` makes the `delete` safe when a table is absent, and the kernel
/// applies the batch atomically, so no packet ever sees a half-built
/// table. `netdev natron` and `ip6 natron` are removed too, and added back
/// only when the desired objects hold them.
pub fn apply_batch(desired: &[NfListObject<'static>]) -> Nftables<'static> {
    let mut cmds = Vec::new();
    for family in [FAMILY, wire::FAMILY, nat64::FAMILY] {
        cmds.extend(clear_of(family));
    }
    cmds.extend(
        desired
            .iter()
            .cloned()
            .map(|o| NfObject::CmdObject(NfCmd::Add(o))),
    );
    Nftables {
        objects: Cow::Owned(cmds),
    }
}

/// A scratch table with just a flowtable on `device`, used with `nft --check`
/// to learn whether the kernel supports flowtables (nothing is committed).
pub fn flowtable_probe(device: &str) -> Nftables<'static> {
    probe(
        FAMILY,
        NfListObject::FlowTable(FlowTable {
            family: FAMILY,
            table: PROBE_TABLE.into(),
            name: FLOWTABLE.into(),
            handle: None,
            hook: Some(NfHook::Ingress),
            prio: Some(0),
            dev: Some(Cow::Owned(vec![Cow::Owned(device.to_string())])),
        }),
    )
}

/// The scratch table of the kernel probes (only ever checked with `nft
/// --check`, never committed).
const PROBE_TABLE: &str = "natron_probe";

/// A batch adding `object` to the scratch table of `family`.
fn probe(family: NfFamily, object: NfListObject<'static>) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(vec![
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(Table {
                family,
                name: PROBE_TABLE.into(),
                handle: None,
            }))),
            NfObject::CmdObject(NfCmd::Add(object)),
        ]),
    }
}

fn net_set(family: NfFamily, name: &str, nets: &[Ipv4Net]) -> Set<'static> {
    let mut sorted: Vec<Ipv4Net> = Ipv4Net::aggregate(&nets.to_vec());
    sorted.sort();
    let nets = sorted
        .iter()
        .map(|n| (n.network().to_string(), n.prefix_len()))
        .collect();
    interval_set(family, name, SetType::Ipv4Addr, nets)
}

mod expr;
mod local;
pub mod nat64;
pub mod pool;
pub mod wire;
use expr::*;
use local::{local_traffic, own_outside, untracked_agent_traffic, RAW_PRIORITY};

#[cfg(test)]
pub(crate) mod tests;
