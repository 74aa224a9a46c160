//! The NAT Gateway's CloudWatch metrics, from natron's own counters: what
//! one publication says, given the counters at the previous one and now.
//! Pure. The names and meanings are the NAT Gateway's where natron can
//! measure the same thing (docs/agent-config.md lists each against the
//! NAT Gateway's definition, and those natron cannot measure).

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

/// The names published, in order (for the docs, the policy and the cost).
pub const NAMES: [&str; 9] = [
    "ActiveConnectionCount",
    "ConnectionAttemptCount",
    natron_contract::cloudwatch::ERROR_PORT_ALLOCATION,
    "PacketsDropCount",
    "BytesForwarded",
    "PacketsForwarded",
    natron_contract::cloudwatch::READY,
    "RoutesOwned",
    "Failovers",
];

/// What one publication says: gauges as they are now, counters as what
/// they grew by since `before` (the last publication that CloudWatch took,
/// so a failed one loses nothing: the next carries its share).
pub fn data(before: &Sample, now: &Sample) -> Vec<Datum> {
    let grew = |a: u64, b: u64| b.saturating_sub(a) as f64;
    let values = [
        (now.active_connections as f64, Unit::Count),
        (
            grew(before.connection_attempts, now.connection_attempts),
            Unit::Count,
        ),
        (
            grew(before.port_allocation_errors, now.port_allocation_errors),
            Unit::Count,
        ),
        (
            grew(before.packets_dropped, now.packets_dropped),
            Unit::Count,
        ),
        (
            grew(before.bytes_forwarded, now.bytes_forwarded),
            Unit::Bytes,
        ),
        (
            grew(before.packets_forwarded, now.packets_forwarded),
            Unit::Count,
        ),
        (f64::from(u8::from(now.ready)), Unit::None),
        (now.routes_owned as f64, Unit::Count),
        (grew(before.takeovers, now.takeovers), Unit::Count),
    ];
    NAMES
        .iter()
        .zip(values)
        .map(|(name, (value, unit))| Datum { name, value, unit })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_published_as_they_are_and_counters_as_their_growth() {
        let before = Sample {
            active_connections: 10,
            connection_attempts: 100,
            port_allocation_errors: 3,
            packets_dropped: 5,
            bytes_forwarded: 1_000,
            packets_forwarded: 10,
            ready: false,
            routes_owned: 0,
            takeovers: 1,
        };
        let now = Sample {
            active_connections: 7,
            connection_attempts: 150,
            port_allocation_errors: 10,
            packets_dropped: 5,
            bytes_forwarded: 6_000,
            packets_forwarded: 20,
            ready: true,
            routes_owned: 2,
            takeovers: 2,
        };
        let d = data(&before, &now);
        let value = |name: &str| d.iter().find(|x| x.name == name).unwrap().value;
        assert_eq!(d.len(), NAMES.len());
        assert_eq!(value("ActiveConnectionCount"), 7.0);
        assert_eq!(value("ConnectionAttemptCount"), 50.0);
        assert_eq!(value("ErrorPortAllocation"), 7.0);
        assert_eq!(value("PacketsDropCount"), 0.0);
        assert_eq!(value("BytesForwarded"), 5_000.0);
        assert_eq!(value("Ready"), 1.0);
        assert_eq!(value("RoutesOwned"), 2.0);
        assert_eq!(value("Failovers"), 1.0);
        assert_eq!(
            d.iter().find(|x| x.name == "BytesForwarded").unwrap().unit,
            Unit::Bytes
        );
    }
}
