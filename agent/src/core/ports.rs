//! Source ports, the NAT's scarce resource, made visible. Every translated
//! connection needs a source port of its own towards its destination
//! (address, port, protocol): thousands of Lambda invocations calling one
//! API through a handful of Hyperplane ENIs share `addresses x ports`.
//! When they run out, the kernel drops the new connection's packet and
//! counts it in conntrack's `insert_failed`. Pure: the kernel's counters
//! and `conntrack -L` come in as data.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use natron_contract::status::{DestinationUse, SourcePorts};

/// How many destinations /status names.
pub const BUSIEST: usize = 3;

/// The pool new connections are translated over.
pub fn pool(addresses: u32, port_range: (u16, u16)) -> SourcePorts {
    let per_address = u32::from(port_range.1.saturating_sub(port_range.0)) + 1;
    SourcePorts {
        addresses,
        per_address,
        capacity: u64::from(addresses) * u64::from(per_address),
        ..SourcePorts::default()
    }
}

/// At 90 % of the pool one destination is close to refusing connections.
pub fn nearly_exhausted(connections: u64, capacity: u64) -> bool {
    capacity > 0 && connections * 10 >= capacity * 9
}

/// Whether the connection table is worth listing: only when ports ran out
/// since the last look, or when there are enough entries for one
/// destination to hold 90 % of the pool (no destination can hold more
/// entries than the table has). A listing costs a pass over every entry;
/// with the default range a table needs 58,000 entries before one is taken.
pub fn worth_listing(entries: u64, capacity: u64, new_errors: u64) -> bool {
    new_errors > 0 || nearly_exhausted(entries, capacity)
}

/// The `top` destinations with the most translated connections in a
/// `conntrack -L` listing, busiest first (ties by destination). An entry
/// is translated when its reply goes to another address than its original
/// source.
pub fn busiest(listing: &str, top: usize) -> Vec<DestinationUse> {
    let mut counts: BTreeMap<(Ipv4Addr, Option<u16>, &str), u64> = BTreeMap::new();
    for line in listing.lines() {
        if let Some(key) = translated_destination(line) {
            *counts.entry(key).or_default() += 1;
        }
    }
    let mut ranked: Vec<_> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .take(top)
        .map(|((address, port, protocol), connections)| DestinationUse {
            address,
            port,
            protocol: protocol.to_string(),
            connections,
        })
        .collect()
}

/// `tcp 6 431999 ESTABLISHED src=A dst=D sport=.. dport=P src=D dst=N ...`:
/// the original tuple's destination when the entry is translated.
fn translated_destination(line: &str) -> Option<(Ipv4Addr, Option<u16>, &str)> {
    let mut words = line.split_whitespace();
    let protocol = words.next()?;
    let (mut srcs, mut dsts, mut dport) = (Vec::new(), Vec::new(), None);
    for (key, value) in words.filter_map(|w| w.split_once('=')) {
        match key {
            "src" => srcs.push(value),
            "dst" => dsts.push(value),
            "dport" if dport.is_none() => dport = value.parse().ok(),
            _ => {}
        }
    }
    let (src, dst, reply_dst) = (*srcs.first()?, *dsts.first()?, *dsts.get(1)?);
    (reply_dst != src).then_some(())?;
    Some((dst.parse().ok()?, dport, protocol))
}

/// The /status warning about the pool, if one is due: ports ran out since
/// the last look (`new_errors` packets dropped), or the busiest
/// destination holds 90 % of the pool.
pub fn warning(ports: &SourcePorts, new_errors: u64) -> Option<String> {
    let named = || {
        let list: Vec<String> = ports
            .busiest
            .iter()
            .map(|d| format!("{d} ({} connections)", d.connections))
            .collect();
        if list.is_empty() {
            String::new()
        } else {
            format!("; busiest destinations: {}", list.join(", "))
        }
    };
    let pool = format!(
        "{} address(es) x {} ports = {} connections per destination",
        ports.addresses, ports.per_address, ports.capacity
    );
    if new_errors > 0 {
        return Some(format!(
            "no free source port: {new_errors} packet(s) of new connections dropped since the last look ({pool}){}",
            named()
        ));
    }
    let top = ports.busiest.first()?;
    nearly_exhausted(top.connections, ports.capacity).then(|| {
        format!(
            "source ports towards {top} at {} of {} ({pool}){}",
            top.connections,
            ports.capacity,
            named()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
tcp      6 431999 ESTABLISHED src=10.0.1.5 dst=198.51.100.7 sport=51000 dport=443 src=198.51.100.7 dst=10.0.0.10 sport=443 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.0.1.5 dst=198.51.100.7 sport=51001 dport=443 src=198.51.100.7 dst=10.0.0.10 sport=443 dport=40001 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.0.1.6 dst=198.51.100.7 sport=51002 dport=443 src=198.51.100.7 dst=10.0.0.10 sport=443 dport=40002 [ASSURED] mark=0 use=1
tcp      6 117 SYN_SENT src=10.0.1.5 dst=198.51.100.7 sport=51003 dport=80 [UNREPLIED] src=198.51.100.7 dst=10.0.0.10 sport=80 dport=40003 mark=0 use=1
udp      17 29 src=10.0.1.5 dst=198.51.100.53 sport=5353 dport=53 [UNREPLIED] src=198.51.100.53 dst=10.0.0.10 sport=53 dport=5353 mark=0 use=1
icmp     1 29 src=10.0.1.5 dst=198.51.100.9 type=8 code=0 id=7 src=198.51.100.9 dst=10.0.0.10 type=0 code=0 id=7 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.0.1.5 dst=10.0.0.10 sport=52000 dport=9100 src=10.0.0.10 dst=10.0.1.5 sport=9100 dport=52000 [ASSURED] mark=0 use=1
garbage line
";

    fn dest(address: &str, port: Option<u16>, protocol: &str, connections: u64) -> DestinationUse {
        DestinationUse {
            address: address.parse().unwrap(),
            port,
            protocol: protocol.into(),
            connections,
        }
    }

    #[test]
    fn the_busiest_translated_destinations_come_first() {
        assert_eq!(
            busiest(LISTING, 3),
            vec![
                dest("198.51.100.7", Some(443), "tcp", 3),
                dest("198.51.100.7", Some(80), "tcp", 1),
                dest("198.51.100.9", None, "icmp", 1),
            ],
            "the agent's own connection (not translated) is left out"
        );
        assert_eq!(busiest(LISTING, 10).len(), 4);
        assert!(busiest("", 3).is_empty());
    }

    #[test]
    fn the_pool_is_addresses_times_ports() {
        let p = pool(2, (1024, 65535));
        assert_eq!((p.per_address, p.capacity), (64_512, 129_024));
        assert_eq!(pool(1, (40000, 40999)).capacity, 1000);
    }

    #[test]
    fn the_table_is_listed_only_when_a_destination_could_be_near_the_pool() {
        assert!(!worth_listing(899, 1000, 0));
        assert!(worth_listing(900, 1000, 0));
        assert!(worth_listing(10, 1000, 1), "ports ran out");
        assert!(!worth_listing(50_000, 64_512, 0));
    }

    #[test]
    fn warnings_name_the_pool_and_the_busiest_destinations() {
        let mut p = pool(1, (40000, 40999));
        assert_eq!(warning(&p, 0), None);
        p.busiest = vec![dest("198.51.100.7", Some(443), "tcp", 899)];
        assert_eq!(warning(&p, 0), None, "under 90 %");
        p.busiest = vec![
            dest("198.51.100.7", Some(443), "tcp", 950),
            dest("198.51.100.8", Some(443), "tcp", 12),
        ];
        let w = warning(&p, 0).unwrap();
        assert!(
            w.starts_with("source ports towards 198.51.100.7:443/tcp at 950 of 1000"),
            "{w}"
        );
        assert!(w.contains("198.51.100.8:443/tcp (12 connections)"), "{w}");
        let w = warning(&p, 7).unwrap();
        assert!(w.starts_with("no free source port: 7 packet(s)"), "{w}");
        assert!(w.contains("1 address(es) x 1000 ports"), "{w}");
    }
}
