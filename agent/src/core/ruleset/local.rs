//! The NAT's own traffic in `ip natron`: the agent's port guarded, its
//! own packets counted (to tell forwarded traffic from the interfaces'
//! and the wire counters' totals), and its HTTP traffic kept out of
//! connection tracking.

use nftables::expr::{Expression, Fib, FibFlag, FibResult, MetaKey, NamedExpression};
use nftables::schema::NfListObject;
use nftables::stmt::Statement;

use super::expr::*;
use super::{rule, PEERS_SET, SOURCES_SET};

/// The NAT's own traffic: its agent's port is closed to everyone but the
/// VPC, the sources and the instance itself, whatever the security group
/// says (its /status tells about the instance); and its own packets are
/// counted so that the forwarded traffic can be told from the interfaces'
/// counters (forwarded = (interface bytes - own) / 2, both ways), without
/// a rule walked by every forwarded packet.
pub(super) fn local_traffic(port: u16) -> Vec<NfListObject<'static>> {
    vec![
        rule_in(
            "input",
            rule::GUARD_AGENT_PORT,
            vec![
                matches(payload("tcp", "dport"), Expression::Number(port.into())),
                not_matches(meta(MetaKey::Iifname), str_expr("lo")),
                not_matches(ip("saddr"), set_ref(PEERS_SET)),
                counter(),
                drop(),
            ],
        ),
        rule_in(
            "input",
            rule::OWN_IN,
            vec![
                not_matches(meta(MetaKey::Iifname), str_expr("lo")),
                counter(),
            ],
        ),
        rule_in(
            "output",
            rule::OWN_OUT,
            vec![
                not_matches(meta(MetaKey::Oifname), str_expr("lo")),
                counter(),
            ],
        ),
    ]
}

/// What of the NAT's own traffic the wire counters see: on the egress
/// interface, with outside the peers (the EC2 and CloudWatch APIs, the
/// instance metadata, the egress probes), so that it can be taken off
/// their counts and only forwarded traffic remains.
pub(super) fn own_outside(egress: &str) -> Vec<NfListObject<'static>> {
    vec![
        rule_in(
            "input",
            rule::OWN_IN_OUTSIDE,
            vec![
                matches(meta(MetaKey::Iifname), str_expr(egress)),
                not_matches(ip("saddr"), set_ref(PEERS_SET)),
                counter(),
            ],
        ),
        rule_in(
            "output",
            rule::OWN_OUT_OUTSIDE,
            vec![
                matches(meta(MetaKey::Oifname), str_expr(egress)),
                not_matches(ip("daddr"), set_ref(PEERS_SET)),
                counter(),
            ],
        ),
    ]
}

/// nft's `raw` priority: before conntrack (-200).
pub(super) const RAW_PRIORITY: i32 = -300;

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
pub(super) fn untracked_agent_traffic(port: u16) -> Vec<NfListObject<'static>> {
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
