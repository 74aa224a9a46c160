//! The agent's observable state: what /status shows, what /readyz decides
//! from, and the Prometheus metrics /metrics serves. Written by the control
//! loop and the prober, read by the HTTP server.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::ec2::RouteTable;
use crate::identity::Identity;
use crate::kernel::Applied;
use crate::probe::ProbeResult;

/// Areas that can hold readiness back; each maps to the reason it does.
pub mod area {
    pub const METADATA: &str = "metadata";
    pub const GROUP: &str = "group";
    pub const EGRESS_INTERFACE: &str = "egress_interface";
    pub const SYSCTL: &str = "sysctl";
    pub const RULESET: &str = "ruleset";
    pub const SOURCE_DEST_CHECK: &str = "source_dest_check";
    pub const EGRESS: &str = "egress";
    pub const DRAINING: &str = "draining";
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DataPlane {
    pub forwarding: bool,
    pub ruleset_in_place: bool,
    /// None until the kernel has been asked.
    pub flowtable: Option<bool>,
    pub source_dest_check_disabled: bool,
    pub sysctls: Vec<Applied>,
    pub drift_repairs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<String>,
    /// None until conntrack is loaded (the ruleset loads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackStatus>,
    /// This AZ's Elastic IP; None when no address is tagged for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elastic_ip: Option<ElasticIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConntrackStatus {
    pub entries: u64,
    pub max: u64,
    /// Kernel counters since boot.
    pub drops: crate::kernel::ConntrackDrops,
    /// At 90 % of `max` or more.
    pub nearly_full: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElasticIp {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// associated, associating, held by another running NAT, or the error.
    pub state: String,
}

impl ElasticIp {
    pub fn of(a: &crate::address::Address, state: &str) -> ElasticIp {
        ElasticIp {
            allocation_id: Some(a.allocation_id.clone()),
            public_ip: Some(a.public_ip.clone()),
            state: state.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Egress {
    pub healthy: bool,
    pub probes: Vec<ProbeResult>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Routes {
    pub tables: Vec<RouteTable>,
    pub owned: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_change: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub identity: Option<Identity>,
    pub group: Option<String>,
    /// The configuration in effect, defaults and IMDS-derived values resolved.
    pub config: serde_json::Value,
    pub dataplane: DataPlane,
    pub egress: Egress,
    pub routes: Routes,
    pub failover: crate::coordinator::FailoverStatus,
    /// What currently holds readiness back or needs attention, by area.
    pub problems: BTreeMap<&'static str, String>,
    pub warnings: Vec<String>,
}

impl Status {
    /// Ready when the data plane is in place and egress is proven; otherwise
    /// the reasons why not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons: Vec<String> = self
            .problems
            .iter()
            .map(|(a, m)| format!("{a}: {m}"))
            .collect();
        if self.identity.is_none() && !self.problems.contains_key(area::METADATA) {
            reasons.push(format!("{}: identity not read yet", area::METADATA));
        }
        let dp = &self.dataplane;
        if !dp.forwarding && !self.problems.contains_key(area::SYSCTL) {
            reasons.push(format!("{}: IPv4 forwarding not enabled yet", area::SYSCTL));
        }
        if !dp.ruleset_in_place && !self.problems.contains_key(area::RULESET) {
            reasons.push(format!(
                "{}: nftables table not in place yet",
                area::RULESET
            ));
        }
        if !dp.source_dest_check_disabled && !self.problems.contains_key(area::SOURCE_DEST_CHECK) {
            reasons.push(format!(
                "{}: not verified disabled yet",
                area::SOURCE_DEST_CHECK
            ));
        }
        if !self.egress.healthy && !self.problems.contains_key(area::EGRESS) {
            reasons.push(format!("{}: probes have not passed yet", area::EGRESS));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// The data plane alone (forwarding, ruleset, source/dest check).
    pub fn dataplane_ready(&self) -> bool {
        let dp = &self.dataplane;
        dp.forwarding && dp.ruleset_in_place && dp.source_dest_check_disabled
    }
}

pub type Labels = Vec<(String, String)>;

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
    pub nat_packets: Counter,
    pub nat_bytes: Counter,
    pub nat_connections: Counter,
    pub rule_packets: Family<Labels, Counter>,
    pub rule_bytes: Family<Labels, Counter>,
    pub probe_up: Family<Labels, Gauge>,
    pub probe_latency: Family<Labels, Gauge<f64, AtomicU64>>,
    pub probe_results: Family<Labels, Counter>,
    pub routes_owned: Gauge,
    pub route_moves: Family<Labels, Counter>,
    pub last_route_move: Gauge<f64, AtomicU64>,
    pub peer_ready: Family<Labels, Gauge>,
    pub drift_repairs: Counter,
    pub ec2_errors: Counter,
    pub ec2_requests: Family<Labels, Counter>,
    pub conntrack_drops: Counter,
    pub conntrack_early_drops: Counter,
    pub elastic_ip_held: Gauge,
    /// Last kernel counter readings, to turn them into monotonic counters
    /// across table replacements (which reset the kernel's).
    last_kernel: Mutex<BTreeMap<String, (u64, u64)>>,
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
            nat_packets: Counter::default(),
            nat_bytes: Counter::default(),
            nat_connections: Counter::default(),
            rule_packets: Family::default(),
            rule_bytes: Family::default(),
            probe_up: Family::default(),
            probe_latency: Family::default(),
            probe_results: Family::default(),
            routes_owned: Gauge::default(),
            route_moves: Family::default(),
            last_route_move: Gauge::default(),
            peer_ready: Family::default(),
            drift_repairs: Counter::default(),
            ec2_errors: Counter::default(),
            ec2_requests: Family::default(),
            conntrack_drops: Counter::default(),
            conntrack_early_drops: Counter::default(),
            elastic_ip_held: Gauge::default(),
            last_kernel: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register("ready", "1 when /readyz answers 200", m.ready.clone());
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
            "nat_packets",
            "Packets forwarded between the sources and the outside, both ways",
            m.nat_packets.clone(),
        );
        registry.register(
            "nat_bytes",
            "Bytes forwarded between the sources and the outside, both ways",
            m.nat_bytes.clone(),
        );
        registry.register(
            "nat_connections",
            "Connections masqueraded (first packets of new flows)",
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
            "conntrack_drops",
            "Packets dropped because the conntrack table was full (kernel counter)",
            m.conntrack_drops.clone(),
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

    /// Feeds kernel rule counters (by rule name) into the monotonic metrics.
    pub fn observe_rule_counters(&self, counters: &BTreeMap<String, (u64, u64)>) {
        let mut last = self.last_kernel.lock().expect("metrics lock");
        for (rule, &(packets, bytes)) in counters {
            let (lp, lb) = last.get(rule).copied().unwrap_or((0, 0));
            let (dp, db) = (counter_increase(packets, lp), counter_increase(bytes, lb));
            let labels = vec![("rule".to_string(), rule.clone())];
            self.rule_packets.get_or_create(&labels).inc_by(dp);
            self.rule_bytes.get_or_create(&labels).inc_by(db);
            use crate::ruleset::rule;
            if rule == rule::COUNT_OUTBOUND || rule == rule::COUNT_INBOUND {
                self.nat_packets.inc_by(dp);
                self.nat_bytes.inc_by(db);
            }
            if rule == rule::MASQUERADE || rule == rule::MASQUERADE_OTHER {
                self.nat_connections.inc_by(dp);
            }
            last.insert(rule.clone(), (packets, bytes));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// Everything the tasks share.
pub struct Shared {
    pub status: RwLock<Status>,
    pub metrics: Metrics,
    /// When the control loop last completed a pass (the watchdog's evidence).
    pub last_pass: Mutex<Instant>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            status: RwLock::new(Status {
                version: env!("CARGO_PKG_VERSION"),
                ..Default::default()
            }),
            metrics: Metrics::new(),
            last_pass: Mutex::new(Instant::now()),
        }
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut Status) -> R) -> R {
        let mut s = self.status.write().expect("status lock");
        let r = f(&mut s);
        self.metrics.ready.set(i64::from(s.readiness().is_ok()));
        r
    }

    pub fn snapshot(&self) -> Status {
        self.status.read().expect("status lock").clone()
    }

    pub fn set_problem(&self, area: &'static str, message: impl Into<String>) {
        let message = message.into();
        self.update(|s| s.problems.insert(area, message));
    }

    pub fn clear_problem(&self, area: &'static str) {
        self.update(|s| s.problems.remove(area));
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_every_missing_piece() {
        let s = Status::default();
        let reasons = s.readiness().unwrap_err();
        assert!(reasons.iter().any(|r| r.starts_with("metadata")));
        assert!(reasons.iter().any(|r| r.starts_with("ruleset")));
        assert!(reasons.iter().any(|r| r.starts_with("egress")));
    }

    #[test]
    fn problems_take_the_place_of_generic_reasons() {
        let mut s = Status::default();
        s.problems
            .insert(area::METADATA, "connection refused".into());
        let reasons = s.readiness().unwrap_err();
        assert!(reasons.contains(&"metadata: connection refused".to_string()));
        assert!(!reasons.iter().any(|r| r.contains("identity not read yet")));
    }

    #[test]
    fn kernel_counters_become_monotonic() {
        let m = Metrics::new();
        let out = crate::ruleset::rule::COUNT_OUTBOUND.to_string();
        let mut c = BTreeMap::new();
        c.insert(out.clone(), (10, 1000));
        c.insert(crate::ruleset::rule::MASQUERADE.to_string(), (2, 120));
        m.observe_rule_counters(&c);
        c.insert(out.clone(), (15, 1500));
        m.observe_rule_counters(&c);
        // The table was replaced: counting restarts from 3.
        c.insert(out, (3, 300));
        m.observe_rule_counters(&c);
        assert_eq!(m.nat_packets.get(), 18);
        assert_eq!(m.nat_bytes.get(), 1800);
        assert_eq!(m.nat_connections.get(), 2);
        let text = m.encode();
        assert!(text.contains("natron_nat_packets_total 18"), "{text}");
        assert!(text.contains("natron_build_info{version="), "{text}");
    }
}
