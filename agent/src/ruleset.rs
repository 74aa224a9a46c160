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
use nftables::expr::{
    BinaryOperation, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload,
    PayloadField, Prefix, RTKey, TcpOption, CT, RT,
};
use nftables::schema::{
    Chain, FlowTable, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{
    AnonymousCounter, Counter, Flow, Mangle, Match, NATFlag, Operator, SetOp, Statement, NAT,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

pub const FAMILY: NfFamily = NfFamily::IP;
pub const TABLE: &str = "natron";
pub const FLOWTABLE: &str = "fastpath";
const SOURCES_SET: &str = "sources";

/// Rule names (their nft comments), for counters and documentation.
pub mod rule {
    pub const DROP_INVALID: &str = "drop-invalid";
    pub const DROP_LINK_LOCAL: &str = "drop-link-local";
    pub const CLAMP_MSS: &str = "clamp-mss";
    pub const COUNT_OUTBOUND: &str = "count-outbound";
    pub const COUNT_INBOUND: &str = "count-inbound";
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
    /// scrapes) and its answers are kept out of connection tracking.
    pub agent_port: u16,
}

/// The table's contents as `nft -j list table` shows them (handles and
/// counter values aside).
pub fn render(spec: &RulesetSpec) -> Vec<NfListObject<'static>> {
    let mut objects = vec![NfListObject::Table(Table {
        family: FAMILY,
        name: TABLE.into(),
        handle: None,
    })];
    objects.push(NfListObject::Set(Box::new(sources_set(&spec.sources))));
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

    let mut forward = vec![
        // Invalid state first: nothing after it should see such packets.
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
        // Clamp MSS to the route's MTU: paths with a smaller MTU than the
        // VPC's 9001 otherwise stall when ICMP is filtered on the way.
        rule_in(
            "forward",
            rule::CLAMP_MSS,
            vec![
                Statement::Match(Match {
                    left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                        payload("tcp", "flags"),
                        Expression::List(vec![str_expr("syn"), str_expr("rst")]),
                    ))),
                    right: str_expr("syn"),
                    op: Operator::EQ,
                }),
                Statement::Mangle(Mangle {
                    key: Expression::Named(NamedExpression::TcpOption(TcpOption {
                        name: "maxseg".into(),
                        field: Some("size".into()),
                    })),
                    value: Expression::Named(NamedExpression::RT(RT {
                        key: RTKey::MTU,
                        family: None,
                    })),
                }),
            ],
        ),
        // Counting only (no verdict): traffic between the sources and the
        // outside, both ways. Flows moved to the flowtable bypass these.
        rule_in(
            "forward",
            rule::COUNT_OUTBOUND,
            vec![
                matches(ip("saddr"), set_ref(SOURCES_SET)),
                not_matches(ip("daddr"), set_ref(SOURCES_SET)),
                counter(),
            ],
        ),
        rule_in(
            "forward",
            rule::COUNT_INBOUND,
            vec![
                not_matches(ip("saddr"), set_ref(SOURCES_SET)),
                matches(ip("daddr"), set_ref(SOURCES_SET)),
                counter(),
            ],
        ),
    ];
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
        vec![ct_state(&["established", "related"]), counter(), accept()],
    ));
    forward.push(rule_in(
        "forward",
        rule::ACCEPT_SOURCES,
        vec![
            matches(ip("saddr"), set_ref(SOURCES_SET)),
            counter(),
            accept(),
        ],
    ));
    // Not an open relay: anything else is dropped (and counted).
    forward.push(rule_in(
        "forward",
        rule::DROP_OTHER,
        vec![counter(), drop()],
    ));
    objects.extend(forward);

    // Port ranges only exist for TCP and UDP (nft refuses them otherwise):
    // one rule for those, one for the rest (ICMP and friends).
    let nat_match = || {
        vec![
            matches(meta(MetaKey::Oifname), str_expr(&spec.egress)),
            matches(ip("saddr"), set_ref(SOURCES_SET)),
            not_matches(ip("daddr"), set_ref(SOURCES_SET)),
        ]
    };
    let flags = || {
        spec.fully_random.then(|| {
            [NATFlag::FullyRandom]
                .into_iter()
                .collect::<std::collections::HashSet<_>>()
        })
    };
    let mut tcp_udp = nat_match();
    tcp_udp.extend([
        matches(meta(MetaKey::L4proto), anon_set(&["tcp", "udp"])),
        counter(),
        Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port: Some(Expression::Range(Box::new(nftables::expr::Range {
                range: [
                    Expression::Number(spec.port_range.0.into()),
                    Expression::Number(spec.port_range.1.into()),
                ],
            }))),
            flags: flags(),
        })),
    ]);
    objects.push(rule_in("postrouting", rule::MASQUERADE, tcp_udp));
    let mut other = nat_match();
    other.extend([
        counter(),
        // nft lists a bare masquerade as `null`: render it the same way.
        Statement::Masquerade(flags().map(|flags| NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some(flags),
        })),
    ]);
    objects.push(rule_in("postrouting", rule::MASQUERADE_OTHER, other));
    objects.extend(untracked_agent_traffic(spec.agent_port));
    objects
}

/// nft's `raw` priority: before conntrack (-200).
const RAW_PRIORITY: i32 = -300;

/// Requests to this agent (peers' /readyz checks, scrapes on the instance)
/// and its answers bypass connection tracking, so a full table (every new
/// flow dropped) does not silence the agent: its peers still hear its own
/// verdict (ready while its egress probes get through, 503 once they
/// cannot, and then they take its tables over) instead of seeing an
/// unreachable NAT with a fresh heartbeat, a partition that changes
/// nothing; and its /metrics and /status still show the drops. What
/// matches: packets from the sources addressed to this instance itself
/// (`fib daddr type local`), local requests on loopback, and the agent's
/// answers (the output hook sees only what this instance sends, never
/// forwarded packets). Replies from the internet to clients masqueraded to
/// this port come from outside the sources: still tracked and translated.
fn untracked_agent_traffic(port: u16) -> Vec<NfListObject<'static>> {
    let port = || Expression::Number(port.into());
    vec![
        rule_in(
            "raw-prerouting",
            rule::UNTRACKED_TO_AGENT,
            // Every forwarded packet passes here: the cheap port test
            // first, the set and route lookups only for what remains.
            vec![
                matches(payload("tcp", "dport"), port()),
                matches(ip("saddr"), set_ref(SOURCES_SET)),
                matches(
                    Expression::Named(NamedExpression::Fib(Fib {
                        result: FibResult::Type,
                        flags: [FibFlag::Daddr].into_iter().collect(),
                    })),
                    str_expr("local"),
                ),
                Statement::Notrack,
            ],
        ),
        rule_in(
            "raw-output",
            rule::UNTRACKED_LOCAL_TO_AGENT,
            vec![
                matches(meta(MetaKey::Oifname), str_expr("lo")),
                matches(payload("tcp", "dport"), port()),
                Statement::Notrack,
            ],
        ),
        rule_in(
            "raw-output",
            rule::UNTRACKED_FROM_AGENT,
            vec![matches(payload("tcp", "sport"), port()), Statement::Notrack],
        ),
    ]
}

/// One transaction that creates natron's table or replaces it whole: the
/// `add` makes the `delete` safe when the table is absent, and the kernel
/// applies the batch atomically, so no packet ever sees a half-built table.
pub fn apply_batch(desired: &[NfListObject<'static>]) -> Nftables<'static> {
    let table = || {
        NfListObject::Table(Table {
            family: FAMILY,
            name: TABLE.into(),
            handle: None,
        })
    };
    let mut cmds = vec![
        NfObject::CmdObject(NfCmd::Add(table())),
        NfObject::CmdObject(NfCmd::Delete(table())),
    ];
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
    let table = "natron_probe";
    Nftables {
        objects: Cow::Owned(vec![
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(Table {
                family: FAMILY,
                name: table.into(),
                handle: None,
            }))),
            NfObject::CmdObject(NfCmd::Add(NfListObject::FlowTable(FlowTable {
                family: FAMILY,
                table: table.into(),
                name: FLOWTABLE.into(),
                handle: None,
                hook: Some(NfHook::Ingress),
                prio: Some(0),
                dev: Some(Cow::Owned(vec![Cow::Owned(device.to_string())])),
            }))),
        ]),
    }
}

fn sources_set(sources: &[Ipv4Net]) -> Set<'static> {
    let mut sorted: Vec<Ipv4Net> = Ipv4Net::aggregate(&sources.to_vec());
    sorted.sort();
    Set {
        family: FAMILY,
        table: TABLE.into(),
        name: SOURCES_SET.into(),
        handle: None,
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        policy: None,
        flags: Some([SetFlag::Interval].into_iter().collect()),
        elem: Some(Cow::Owned(
            sorted
                .iter()
                .map(|net| prefix(&net.network().to_string(), net.prefix_len().into()))
                .collect(),
        )),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

fn base_chain(
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
    policy: NfChainPolicy,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: name.to_string().into(),
        newname: None,
        handle: None,
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        dev: None,
        policy: Some(policy),
    })
}

fn rule_in(chain: &str, name: &str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: TABLE.into(),
        chain: chain.to_string().into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(name.to_string().into()),
    })
}

fn str_expr(s: &str) -> Expression<'static> {
    Expression::String(s.to_string().into())
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.to_string().into(),
            field: field.to_string().into(),
        },
    )))
}

fn ip(field: &str) -> Expression<'static> {
    payload("ip", field)
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn prefix(addr: &str, len: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(str_expr(addr)),
        len,
    }))
}

fn anon_set(items: &[&str]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .iter()
            .map(|i| nftables::expr::SetItem::Element(str_expr(i)))
            .collect(),
    ))
}

fn set_ref(name: &str) -> Expression<'static> {
    str_expr(&format!("@{name}"))
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn not_matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

fn ct_state(states: &[&str]) -> Statement<'static> {
    let right = match states {
        [one] => str_expr(one),
        many => Expression::List(many.iter().map(|s| str_expr(s)).collect()),
    };
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        right,
        op: Operator::IN,
    })
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter {
        packets: Some(0),
        bytes: Some(0),
    })))
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn spec() -> RulesetSpec {
        RulesetSpec {
            egress: "ens5".into(),
            sources: vec![
                "10.0.0.0/16".parse().unwrap(),
                "100.64.0.0/16".parse().unwrap(),
            ],
            port_range: (1024, 65535),
            fully_random: false,
            flowtable: false,
            agent_port: 9100,
        }
    }

    fn golden(name: &str, spec: &RulesetSpec) {
        let rendered =
            serde_json::to_string_pretty(&serde_json::json!({ "nftables": render(spec) })).unwrap()
                + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                path.display()
            )
        });
        assert_eq!(
            rendered,
            expected,
            "{} differs; rerun with UPDATE_GOLDEN=1 if the change is intended",
            path.display()
        );
    }

    #[test]
    fn golden_default() {
        golden("ruleset-default.json", &spec());
    }

    #[test]
    fn golden_flowtable_fully_random() {
        let mut s = spec();
        s.flowtable = true;
        s.fully_random = true;
        s.port_range = (10000, 60000);
        golden("ruleset-flowtable-fully-random.json", &s);
    }

    #[test]
    fn sources_are_aggregated_and_sorted() {
        let mut s = spec();
        s.sources = vec![
            "10.0.1.0/24".parse().unwrap(),
            "10.0.0.0/24".parse().unwrap(),
        ];
        let json = serde_json::to_value(render(&s)).unwrap();
        let set = &json[1]["set"]["elem"];
        assert_eq!(
            set,
            &serde_json::json!([{"prefix": {"addr": "10.0.0.0", "len": 23}}])
        );
    }

    #[test]
    fn batch_replaces_the_table_atomically() {
        let batch = serde_json::to_value(apply_batch(&render(&spec()))).unwrap();
        let cmds = batch["nftables"].as_array().unwrap();
        assert_eq!(
            cmds[0],
            serde_json::json!({"add": {"table": {"family": "ip", "name": "natron"}}})
        );
        assert_eq!(
            cmds[1],
            serde_json::json!({"delete": {"table": {"family": "ip", "name": "natron"}}})
        );
        // Nothing outside our table is ever named.
        for cmd in cmds {
            let obj = cmd.as_object().unwrap().values().next().unwrap();
            let inner = obj.as_object().unwrap().values().next().unwrap();
            let table = inner.get("table").or(inner.get("name")).unwrap();
            assert_eq!(table, "natron", "{cmd}");
        }
    }
}
