//! The NAT Gateway's CloudWatch metrics, from natron's own counters: what
//! one publication says, given the counters at the previous one and now.
//! Pure. The names and meanings are the NAT Gateway's where natron can
//! measure the same thing (docs/agent-config.md lists each against the
//! NAT Gateway's definition, and those natron cannot measure).

use natron_contract::cloudwatch::METRICS;

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Forwarded traffic by direction, as the wire counters saw it
/// (`core::ruleset::wire`), since start; IP bytes, the NAT's own traffic
/// taken off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    pub in_from_source: Traffic,
    pub out_to_destination: Traffic,
    pub in_from_destination: Traffic,
    pub out_to_source: Traffic,
    /// TCP handshakes a destination answered (SYN-ACKs to a source).
    pub established: u64,
}

/// natron's counters and gauges at one moment (`run::cloudwatch` reads
/// them off the agent's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Connections tracked now (conntrack entries).
    pub active_connections: u64,
    /// Forwarded connections translated, since start.
    pub connection_attempts: u64,
    /// Packets of new connections dropped for lack of a source port.
    pub port_allocation_errors: u64,
    /// Packets dropped: conntrack refusals and natron's drop rules.
    pub packets_dropped: u64,
    /// Forwarded traffic, both directions.
    pub bytes_forwarded: u64,
    pub packets_forwarded: u64,
    pub ready: bool,
    pub routes_owned: u64,
    /// Route tables this NAT took over from a failed peer, since start.
    pub takeovers: u64,
    /// None on a kernel without the wire counters.
    pub wire: Option<Wire>,
    /// Translated TCP connections destroyed while established, since
    /// start; None until the conntrack event watcher has run.
    pub idle_timeouts: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
    None,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Bytes => "Bytes",
            Unit::None => "None",
        }
    }
}

/// One metric value of a publication.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Datum {
    pub name: &'static str,
    pub value: f64,
    pub unit: Unit,
}

/// What one publication says: gauges as they are now, counters as what
/// they grew by since `before` (the last publication that CloudWatch took,
/// so a failed one loses nothing: the next carries its share). The
/// directional metrics only when `now` has the wire counters, and
/// IdleTimeoutCount only once the event watcher has run.
pub fn data(before: &Sample, now: &Sample) -> Vec<Datum> {
    let grew = |a: u64, b: u64| b.saturating_sub(a) as f64;
    let [active, attempts, port_errors, drops, bytes, packets, ready, routes, failovers, in_src, out_dst, in_dst, out_src, p_in_src, p_out_dst, p_in_dst, p_out_src, established, idle] =
        METRICS;
    let d = |name, value, unit| Datum { name, value, unit };
    let mut out = vec![
        d(active, now.active_connections as f64, Unit::Count),
        d(
            attempts,
            grew(before.connection_attempts, now.connection_attempts),
            Unit::Count,
        ),
        d(
            port_errors,
            grew(before.port_allocation_errors, now.port_allocation_errors),
            Unit::Count,
        ),
        d(
            drops,
            grew(before.packets_dropped, now.packets_dropped),
            Unit::Count,
        ),
        d(
            bytes,
            grew(before.bytes_forwarded, now.bytes_forwarded),
            Unit::Bytes,
        ),
        d(
            packets,
            grew(before.packets_forwarded, now.packets_forwarded),
            Unit::Count,
        ),
        d(ready, f64::from(u8::from(now.ready)), Unit::None),
        d(routes, now.routes_owned as f64, Unit::Count),
        d(
            failovers,
            grew(before.takeovers, now.takeovers),
            Unit::Count,
        ),
    ];
    if let Some(w) = now.wire {
        let b = before.wire.unwrap_or_default();
        let directions = [
            (in_src, p_in_src, b.in_from_source, w.in_from_source),
            (
                out_dst,
                p_out_dst,
                b.out_to_destination,
                w.out_to_destination,
            ),
            (
                in_dst,
                p_in_dst,
                b.in_from_destination,
                w.in_from_destination,
            ),
            (out_src, p_out_src, b.out_to_source, w.out_to_source),
        ];
        for (name, _, then, now) in directions {
            out.push(d(name, grew(then.bytes, now.bytes), Unit::Bytes));
        }
        for (_, name, then, now) in directions {
            out.push(d(name, grew(then.packets, now.packets), Unit::Count));
        }
        out.push(d(
            established,
            grew(b.established, w.established),
            Unit::Count,
        ));
    }
    if let Some(n) = now.idle_timeouts {
        out.push(d(
            idle,
            grew(before.idle_timeouts.unwrap_or(0), n),
            Unit::Count,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(scale: u64, wire: bool) -> Sample {
        let t = |n: u64| Traffic {
            packets: n * scale,
            bytes: 100 * n * scale,
        };
        Sample {
            active_connections: 10 * scale,
            connection_attempts: 100 * scale,
            port_allocation_errors: 3 * scale,
            packets_dropped: 5,
            bytes_forwarded: 1_000 * scale,
            packets_forwarded: 10 * scale,
            ready: scale > 1,
            routes_owned: scale - 1,
            takeovers: scale,
            wire: wire.then_some(Wire {
                in_from_source: t(1),
                out_to_destination: t(2),
                in_from_destination: t(3),
                out_to_source: t(4),
                established: 7 * scale,
            }),
            idle_timeouts: wire.then_some(2 * scale),
        }
    }

    fn value(d: &[Datum], name: &str) -> f64 {
        d.iter().find(|x| x.name == name).unwrap().value
    }

    #[test]
    fn gauges_are_published_as_they_are_and_counters_as_their_growth() {
        let d = data(&sample(1, false), &sample(2, false));
        assert_eq!(d.len(), 9, "no wire counters, no directional metrics");
        assert_eq!(value(&d, "ActiveConnectionCount"), 20.0);
        assert_eq!(value(&d, "ConnectionAttemptCount"), 100.0);
        assert_eq!(value(&d, "ErrorPortAllocation"), 3.0);
        assert_eq!(value(&d, "PacketsDropCount"), 0.0);
        assert_eq!(value(&d, "BytesForwarded"), 1_000.0);
        assert_eq!(value(&d, "Ready"), 1.0);
        assert_eq!(value(&d, "RoutesOwned"), 1.0);
        assert_eq!(value(&d, "Failovers"), 1.0);
        assert_eq!(
            d.iter().find(|x| x.name == "BytesForwarded").unwrap().unit,
            Unit::Bytes
        );
    }

    #[test]
    fn each_direction_is_published_under_the_nat_gateways_name() {
        let d = data(&sample(1, true), &sample(3, true));
        assert_eq!(d.len(), METRICS.len());
        assert_eq!(value(&d, "BytesInFromSource"), 200.0);
        assert_eq!(value(&d, "BytesOutToDestination"), 400.0);
        assert_eq!(value(&d, "BytesInFromDestination"), 600.0);
        assert_eq!(value(&d, "BytesOutToSource"), 800.0);
        assert_eq!(value(&d, "PacketsInFromSource"), 2.0);
        assert_eq!(value(&d, "PacketsOutToDestination"), 4.0);
        assert_eq!(value(&d, "PacketsInFromDestination"), 6.0);
        assert_eq!(value(&d, "PacketsOutToSource"), 8.0);
        assert_eq!(value(&d, "ConnectionEstablishedCount"), 14.0);
        assert_eq!(value(&d, "IdleTimeoutCount"), 4.0);
        let names: Vec<&str> = d.iter().map(|x| x.name).collect();
        assert_eq!(names, METRICS, "every metric, in the contract's order");
        for name in ["BytesInFromSource", "BytesOutToSource"] {
            assert_eq!(d.iter().find(|x| x.name == name).unwrap().unit, Unit::Bytes);
        }
        // The first publication with the counters carries all they counted.
        let first = data(&sample(1, false), &sample(3, true));
        assert_eq!(value(&first, "BytesOutToSource"), 1_200.0);
    }
}
