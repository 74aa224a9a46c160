//! The agent's Prometheus metrics, registered once and served by /metrics.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use natron_contract::status::{ApiError, MoveKind};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::core::cloudwatch::{Sample, Traffic, Wire};
use crate::core::ruleset::{rule, wire};
use crate::model::Labels;

/// How much a kernel counter grew since the `last` reading. A smaller
/// reading means the counter restarted at 0 (a replaced table, a reboot).
pub fn counter_increase(now: u64, last: u64) -> u64 {
    if now >= last {
        now - last
    } else {
        now
    }
}

pub struct Metrics {
    registry: Registry,
    pub ready: Gauge,
    pub conntrack_entries: Gauge,
    pub conntrack_max: Gauge,
    pub conntrack_offloaded: Gauge,
    pub nat_packets: Counter,
    pub nat_bytes: Counter,
    pub nat_connections: Counter,
    pub rule_packets: Family<Labels, Counter>,
    /// NAT64 sessions in Jool's table, by protocol.
    pub nat64_sessions: Family<Labels, Gauge>,
    pub rule_bytes: Family<Labels, Counter>,
    pub probe_up: Family<Labels, Gauge>,
    pub probe_latency: Family<Labels, Gauge<f64, AtomicU64>>,
    pub probe_results: Family<Labels, Counter>,
    pub routes_owned: Gauge,
    pub home_route_tables: Gauge,
    pub route_moves: Family<Labels, Counter>,
    pub last_route_move: Gauge<f64, AtomicU64>,
    pub peer_ready: Family<Labels, Gauge>,
    pub drift_repairs: Counter,
    pub ec2_errors: Counter,
    pub ec2_requests: Family<Labels, Counter>,
    pub ec2_retries: Family<Labels, Counter>,
    pub ec2_failures: Family<Labels, Counter>,
    /// The latest failed EC2 attempt (the EC2 edge writes it).
    pub ec2_last_error: Arc<Mutex<Option<ApiError>>>,
    pub conntrack_drops: Counter,
    pub conntrack_early_drops: Counter,
    pub port_allocation_errors: Counter,
    pub source_port_capacity: Gauge,
    pub cloudwatch_publications: Counter,
    pub cloudwatch_failures: Counter,
    pub elastic_ip_held: Gauge,
    /// Translated TCP connections conntrack destroyed while established
    /// (`run::idle_timeouts`, with CloudWatch on).
    pub idle_timeouts: Counter,
    /// 1 while the conntrack event watcher runs.
    pub idle_timeouts_watching: Gauge,
    /// Whether the watcher ever ran (CloudWatch gets IdleTimeoutCount).
    pub idle_timeouts_watched: std::sync::atomic::AtomicBool,
    /// Last kernel counter readings, to turn them into monotonic counters
    /// across table replacements (which reset the kernel's).
    last_kernel: Mutex<BTreeMap<String, (u64, u64)>>,
    last_interfaces: Mutex<Option<(u64, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("natron");
        let build = Family::<Labels, Gauge>::default();
        build
            .get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
            .set(1);
        registry.register("build_info", "natron-agent build", build);
        let m = Metrics {
            ready: Gauge::default(),
            conntrack_entries: Gauge::default(),
            conntrack_max: Gauge::default(),
            conntrack_offloaded: Gauge::default(),
            nat_packets: Counter::default(),
            nat_bytes: Counter::default(),
            nat_connections: Counter::default(),
            rule_packets: Family::default(),
            nat64_sessions: Family::default(),
            rule_bytes: Family::default(),
            probe_up: Family::default(),
            probe_latency: Family::default(),
            probe_results: Family::default(),
            routes_owned: Gauge::default(),
            home_route_tables: Gauge::default(),
            route_moves: Family::default(),
            last_route_move: Gauge::default(),
            peer_ready: Family::default(),
            drift_repairs: Counter::default(),
            ec2_errors: Counter::default(),
            ec2_requests: Family::default(),
            ec2_retries: Family::default(),
            ec2_failures: Family::default(),
            ec2_last_error: Arc::default(),
            conntrack_drops: Counter::default(),
            conntrack_early_drops: Counter::default(),
            port_allocation_errors: Counter::default(),
            source_port_capacity: Gauge::default(),
            cloudwatch_publications: Counter::default(),
            cloudwatch_failures: Counter::default(),
            elastic_ip_held: Gauge::default(),
            idle_timeouts: Counter::default(),
            idle_timeouts_watching: Gauge::default(),
            idle_timeouts_watched: Default::default(),
            last_kernel: Mutex::new(BTreeMap::new()),
            last_interfaces: Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register("ready", "1 when /readyz answers 200", m.ready.clone());
        registry.register(
            "nat64_sessions",
            "NAT64 sessions in Jool's table (with nat64.enabled), by protocol",
            m.nat64_sessions.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Connections tracked now",
            m.conntrack_entries.clone(),
        );
        registry.register(
            "conntrack_max",
            "Conntrack table limit",
            m.conntrack_max.clone(),
        );
        registry.register(
            "conntrack_offloaded",
            "Flows on the flowtable fast path (read every 10 s; 0 without a flowtable)",
            m.conntrack_offloaded.clone(),
        );
        registry.register(
            "nat_packets",
            "Packets forwarded, both ways (interface counters less the NAT's own traffic, flowtable included)",
            m.nat_packets.clone(),
        );
        registry.register(
            "nat_bytes",
            "Bytes forwarded, both ways (interface counters less the NAT's own traffic, flowtable included)",
            m.nat_bytes.clone(),
        );
        registry.register(
            "nat_connections",
            "Forwarded connections masqueraded (first packets of new flows; not the NAT's own)",
            m.nat_connections.clone(),
        );
        registry.register(
            "rule_packets",
            "Packets matched per natron rule",
            m.rule_packets.clone(),
        );
        registry.register(
            "rule_bytes",
            "Bytes matched per natron rule",
            m.rule_bytes.clone(),
        );
        registry.register(
            "probe_up",
            "1 when the egress probe's last attempt passed",
            m.probe_up.clone(),
        );
        registry.register(
            "probe_latency_seconds",
            "Duration of the egress probe's last attempt",
            m.probe_latency.clone(),
        );
        registry.register(
            "probe_results",
            "Egress probe attempts by result",
            m.probe_results.clone(),
        );
        registry.register(
            "routes_owned",
            "Route tables whose default route targets this instance",
            m.routes_owned.clone(),
        );
        registry.register(
            "home_route_tables",
            "Route tables of the group tagged with this NAT's AZ (0: it is home to none)",
            m.home_route_tables.clone(),
        );
        registry.register(
            "drift_repairs",
            "Times the live nftables table was rewritten to match",
            m.drift_repairs.clone(),
        );
        registry.register(
            "ec2_errors",
            "EC2 calls that failed after retries",
            m.ec2_errors.clone(),
        );
        registry.register(
            "ec2_requests",
            "EC2 API requests sent, by operation (retries included)",
            m.ec2_requests.clone(),
        );
        registry.register(
            "ec2_retries",
            "EC2 attempts that failed and were retried, by operation and error code",
            m.ec2_retries.clone(),
        );
        registry.register(
            "ec2_failures",
            "EC2 calls that failed after their last attempt, by operation and error code",
            m.ec2_failures.clone(),
        );
        registry.register(
            "conntrack_drops",
            "Packets of new flows dropped because no conntrack entry could be made: a full table or no free source port (kernel counter)",
            m.conntrack_drops.clone(),
        );
        registry.register(
            "nat_port_allocation_errors",
            "Packets of new connections dropped because no source port was free towards their destination (kernel conntrack insert_failed; the NAT Gateway's ErrorPortAllocation)",
            m.port_allocation_errors.clone(),
        );
        registry.register(
            "cloudwatch_publications",
            "PutMetricData calls CloudWatch took (metrics.cloudwatch)",
            m.cloudwatch_publications.clone(),
        );
        registry.register(
            "nat_idle_timeouts",
            "Translated TCP connections that ran out their conntrack.tcp_timeout_established idle (the NAT Gateway's IdleTimeoutCount; counted with metrics.cloudwatch on)",
            m.idle_timeouts.clone(),
        );
        registry.register(
            "idle_timeouts_watching",
            "1 while the conntrack event watcher counting idle timeouts runs",
            m.idle_timeouts_watching.clone(),
        );
        registry.register(
            "cloudwatch_failures",
            "PutMetricData calls that failed (the next publication carries their counts)",
            m.cloudwatch_failures.clone(),
        );
        registry.register(
            "nat_source_port_capacity",
            "Connections one destination can take: public addresses x ports in nat.port_range",
            m.source_port_capacity.clone(),
        );
        registry.register(
            "conntrack_early_drops",
            "Unconfirmed conntrack entries evicted to make room (kernel counter)",
            m.conntrack_early_drops.clone(),
        );
        registry.register(
            "elastic_ip_associated",
            "1 while this AZ's Elastic IP is on this instance",
            m.elastic_ip_held.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Feeds kernel rule counters (by rule name) into the monotonic metrics;
    /// returns what the NAT's own traffic grew by (packets, bytes), for
    /// [`Metrics::observe_interfaces`].
    pub fn observe_rule_counters(&self, counters: &BTreeMap<String, (u64, u64)>) -> (u64, u64) {
        let mut own = (0, 0);
        let mut last = self.last_kernel.lock().expect("metrics lock");
        for (rule, &(packets, bytes)) in counters {
            let (lp, lb) = last.get(rule).copied().unwrap_or((0, 0));
            let (dp, db) = (counter_increase(packets, lp), counter_increase(bytes, lb));
            let labels = vec![("rule".to_string(), rule.clone())];
            self.rule_packets.get_or_create(&labels).inc_by(dp);
            self.rule_bytes.get_or_create(&labels).inc_by(db);
            if rule == rule::OWN_IN || rule == rule::OWN_OUT {
                own.0 += dp;
                own.1 += db;
            }
            if rule == rule::MASQUERADE || rule == rule::MASQUERADE_OTHER {
                self.nat_connections.inc_by(dp);
            }
            last.insert(rule.clone(), (packets, bytes));
        }
        own
    }

    /// The counters and gauges CloudWatch is told about, now.
    pub fn cloudwatch_sample(&self) -> Sample {
        let rule = |name: &str| {
            self.rule_packets
                .get_or_create(&vec![("rule".to_string(), name.to_string())])
                .get()
        };
        let dropped_by_rules: u64 = [rule::DROP_INVALID, rule::DROP_LINK_LOCAL, rule::DROP_OTHER]
            .into_iter()
            .map(rule)
            .sum();
        Sample {
            active_connections: self.conntrack_entries.get().max(0) as u64,
            connection_attempts: self.nat_connections.get(),
            port_allocation_errors: self.port_allocation_errors.get(),
            packets_dropped: self.conntrack_drops.get() + dropped_by_rules,
            bytes_forwarded: self.nat_bytes.get(),
            packets_forwarded: self.nat_packets.get(),
            ready: self.ready.get() == 1,
            routes_owned: self.routes_owned.get().max(0) as u64,
            takeovers: self
                .route_moves
                .get_or_create(&vec![(
                    "kind".to_string(),
                    MoveKind::Takeover.name().to_string(),
                )])
                .get(),
            wire: self.wire(),
            idle_timeouts: self
                .idle_timeouts_watched
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| self.idle_timeouts.get()),
        }
    }

    /// Forwarded traffic by direction from the wire counters' rules (see
    /// `core::ruleset::wire`), once the kernel has listed them.
    fn wire(&self) -> Option<Wire> {
        let seen = self
            .last_kernel
            .lock()
            .expect("metrics lock")
            .contains_key(wire::rule::IN_FROM_SOURCE);
        if !seen {
            return None;
        }
        let traffic = |name: &str| {
            let labels = vec![("rule".to_string(), name.to_string())];
            Traffic {
                packets: self.rule_packets.get_or_create(&labels).get(),
                bytes: self.rule_bytes.get_or_create(&labels).get(),
            }
        };
        // The egress hook counts each packet with its link-layer header.
        let ip_bytes = |t: Traffic| Traffic {
            packets: t.packets,
            bytes: t.bytes.saturating_sub(t.packets * wire::LINK_HEADER_BYTES),
        };
        let less = |t: Traffic, own: Traffic| Traffic {
            packets: t.packets.saturating_sub(own.packets),
            bytes: t.bytes.saturating_sub(own.bytes),
        };
        Some(Wire {
            in_from_source: traffic(wire::rule::IN_FROM_SOURCE),
            out_to_destination: less(
                ip_bytes(traffic(wire::rule::OUT_TO_DESTINATION)),
                traffic(rule::OWN_OUT_OUTSIDE),
            ),
            in_from_destination: less(
                traffic(wire::rule::IN_FROM_DESTINATION),
                traffic(rule::OWN_IN_OUTSIDE),
            ),
            out_to_source: ip_bytes(traffic(wire::rule::OUT_TO_SOURCE)),
            established: traffic(wire::rule::SYN_ACK_TO_SOURCE).packets,
        })
    }

    /// Forwarded traffic from the interfaces' totals (packets, bytes over
    /// every interface but loopback): each forwarded packet is received and
    /// sent once, so what they grew by, less the NAT's own traffic `own`,
    /// halved. Flows on the flowtable fast path count too, and no rule is
    /// walked per packet for it.
    pub fn observe_interfaces(&self, totals: (u64, u64), own: (u64, u64)) {
        let mut last = self.last_interfaces.lock().expect("metrics lock");
        if let Some((lp, lb)) = *last {
            let grown_p = counter_increase(totals.0, lp).saturating_sub(own.0);
            let grown_b = counter_increase(totals.1, lb).saturating_sub(own.1);
            self.nat_packets.inc_by(grown_p / 2);
            self.nat_bytes.inc_by(grown_b / 2);
        }
        *last = Some(totals);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Directions from the wire counters: the egress hook's link headers
    /// and the NAT's own traffic are taken off; none before the kernel
    /// lists the wire counters.
    #[test]
    fn the_wire_counters_become_directions() {
        let m = Metrics::new();
        assert_eq!(m.cloudwatch_sample().wire, None);
        let c: BTreeMap<String, (u64, u64)> = [
            (wire::rule::IN_FROM_SOURCE, (10, 5_000)),
            (wire::rule::OUT_TO_DESTINATION, (13, 5_000 + 13 * 14 + 300)),
            (rule::OWN_OUT_OUTSIDE, (3, 300)),
            (wire::rule::IN_FROM_DESTINATION, (22, 20_400)),
            (rule::OWN_IN_OUTSIDE, (2, 400)),
            (wire::rule::OUT_TO_SOURCE, (20, 20_000 + 20 * 14)),
            (wire::rule::SYN_ACK_TO_SOURCE, (4, 4 * 66)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        m.observe_rule_counters(&c);
        let t = |packets, bytes| Traffic { packets, bytes };
        assert_eq!(
            m.cloudwatch_sample().wire,
            Some(Wire {
                in_from_source: t(10, 5_000),
                out_to_destination: t(10, 5_000),
                in_from_destination: t(20, 20_000),
                out_to_source: t(20, 20_000),
                established: 4,
            })
        );
    }

    #[test]
    fn kernel_counters_become_monotonic() {
        let m = Metrics::new();
        let own = rule::OWN_IN.to_string();
        let mut c = BTreeMap::new();
        c.insert(own.clone(), (10, 1000));
        c.insert(rule::MASQUERADE.to_string(), (2, 120));
        assert_eq!(m.observe_rule_counters(&c), (10, 1000));
        c.insert(own.clone(), (15, 1500));
        assert_eq!(m.observe_rule_counters(&c), (5, 500));
        // The table was replaced: counting restarts from 3.
        c.insert(own, (3, 300));
        assert_eq!(m.observe_rule_counters(&c), (3, 300));
        assert_eq!(m.nat_connections.get(), 2);
        let text = m.encode();
        assert!(text.contains("natron_nat_connections_total 2"), "{text}");
        assert!(text.contains("natron_build_info{version="), "{text}");
    }

    #[test]
    fn forwarded_traffic_is_half_the_interfaces_growth_less_the_nats_own() {
        let m = Metrics::new();
        m.observe_interfaces((1_000, 100_000), (0, 0));
        assert_eq!(m.nat_bytes.get(), 0, "the first reading is the baseline");
        // 200 packets of 1,000 bytes forwarded (each in and out) and 10 of
        // the NAT's own.
        m.observe_interfaces((1_000 + 410, 100_000 + 405_000), (10, 5_000));
        assert_eq!(m.nat_packets.get(), 200);
        assert_eq!(m.nat_bytes.get(), 200_000);
    }
}
