//! The wire counters: table `netdev natron`, rendered only when the NAT
//! Gateway's directional metrics are wanted (`RulesetSpec::wire_counters`,
//! on with `[metrics.cloudwatch]`).
//!
//! Why a second table: a flow on the flowtable fast path skips every hook
//! of `table ip natron` (prerouting, forward, postrouting), so no rule
//! there sees most of its packets, and the flowtable's own `counter` flag
//! cannot be written in nft's JSON. The netdev hooks of the egress device
//! see every packet, fast path or not: ingress before the flowtable
//! (priority -500 < 0), egress as the packet leaves. Each chain only
//! counts and accepts; nothing here can drop or change a packet, and the
//! table goes away with a rewrite when the metrics are turned off.
//! (`accept` here ends only this chain's evaluation of the packet.)
//!
//! What each counter sees (peers = the sources and the VPC, as in `ip
//! natron`):
//! - `wire-in-from-source`: received from a source, for outside the peers
//!   (the NAT Gateway's BytesInFromSource);
//! - `wire-in-from-destination`: received from outside the peers, less
//!   what of it was the NAT's own (`own-in-outside`): BytesInFromDestination;
//! - `wire-out-to-destination`: sent to outside the peers, less the NAT's
//!   own (`own-out-outside`): BytesOutToDestination;
//! - `wire-out-to-source`: sent to a source from outside the peers:
//!   BytesOutToSource;
//! - `wire-syn-ack-to-source`: TCP handshakes a destination answered
//!   (ConnectionEstablishedCount).
//!
//! The egress hook counts a packet with its link-layer header (14 bytes on
//! Ethernet), the ingress hook without: `report::metrics` takes the header
//! off so that both directions count IP bytes, as the NAT Gateway does.

use nftables::schema::{NfListObject, Nftables};
use nftables::types::{NfFamily, NfHook};

use super::expr::*;
use super::{net_set, RulesetSpec, PEERS_SET, PROBE_TABLE, SOURCES_SET};

pub const FAMILY: NfFamily = NfFamily::NetDev;
const IN_CHAIN: &str = "wire-in";
const OUT_CHAIN: &str = "wire-out";
/// Before the flowtable (priority 0) on ingress: every packet is seen.
const PRIORITY: i32 = -500;

pub mod rule {
    pub const IN_FROM_SOURCE: &str = "wire-in-from-source";
    pub const IN_FROM_DESTINATION: &str = "wire-in-from-destination";
    pub const OUT_TO_DESTINATION: &str = "wire-out-to-destination";
    pub const OUT_TO_SOURCE: &str = "wire-out-to-source";
    pub const SYN_ACK_TO_SOURCE: &str = "wire-syn-ack-to-source";
}

/// The link-layer header the egress hook counts with each packet
/// (Ethernet's 14 bytes: ENA, and veth in the lab).
pub const LINK_HEADER_BYTES: u64 = 14;

/// Table `netdev natron` as `nft -j list` prints it (its chains' devices
/// aside: nft 1.0.6 does not list them), or nothing when the spec does
/// not want the counters.
pub fn render(spec: &RulesetSpec) -> Vec<NfListObject<'static>> {
    if !spec.wire_counters {
        return Vec::new();
    }
    let mut peers = spec.sources.clone();
    peers.extend(spec.vpc.iter().copied());
    let rule = |chain, name, expr| rule_of(FAMILY, chain, name, expr);
    vec![
        table_of(FAMILY),
        NfListObject::Set(Box::new(net_set(FAMILY, SOURCES_SET, &spec.sources))),
        NfListObject::Set(Box::new(net_set(FAMILY, PEERS_SET, &peers))),
        device_chain(IN_CHAIN, NfHook::Ingress, PRIORITY, &spec.egress),
        device_chain(OUT_CHAIN, NfHook::Egress, PRIORITY, &spec.egress),
        // Each packet a NAT forwards matches one counting rule a chain, so
        // the rules that end with `accept` (which ends only this chain: the
        // flowtable and `ip natron` still see the packet) are ordered, and
        // each rule's matches written, so that a packet meets two set
        // lookups a chain, not three to five: from a source, or from
        // outside, on the way in; to a source from outside, or to outside
        // from the NAT's address, on the way out.
        rule(
            IN_CHAIN,
            rule::IN_FROM_SOURCE,
            vec![
                matches(ip("saddr"), set_ref(SOURCES_SET)),
                not_matches(ip("daddr"), set_ref(PEERS_SET)),
                counter(),
                accept(),
            ],
        ),
        rule(
            IN_CHAIN,
            rule::IN_FROM_DESTINATION,
            vec![not_matches(ip("saddr"), set_ref(PEERS_SET)), counter()],
        ),
        // The SYN-ACK test comes before the lookups: it fails at once for
        // nearly every packet, and the packets it passes go on to be
        // counted by `wire-out-to-source` too.
        rule(
            OUT_CHAIN,
            rule::SYN_ACK_TO_SOURCE,
            vec![
                syn_ack(),
                not_matches(ip("saddr"), set_ref(PEERS_SET)),
                matches(ip("daddr"), set_ref(SOURCES_SET)),
                counter(),
            ],
        ),
        rule(
            OUT_CHAIN,
            rule::OUT_TO_SOURCE,
            vec![
                not_matches(ip("saddr"), set_ref(PEERS_SET)),
                matches(ip("daddr"), set_ref(SOURCES_SET)),
                counter(),
                accept(),
            ],
        ),
        rule(
            OUT_CHAIN,
            rule::OUT_TO_DESTINATION,
            vec![not_matches(ip("daddr"), set_ref(PEERS_SET)), counter()],
        ),
    ]
}

/// A scratch table with an egress chain on `device`, for `nft --check`:
/// whether the kernel has the netdev egress hook (5.16 and later).
pub fn probe(device: &str) -> Nftables<'static> {
    let mut chain = device_chain(OUT_CHAIN, NfHook::Egress, PRIORITY, device);
    if let NfListObject::Chain(c) = &mut chain {
        c.table = PROBE_TABLE.into();
    }
    super::probe(FAMILY, chain)
}
