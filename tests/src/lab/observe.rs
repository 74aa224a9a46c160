//! What tests read off the lab's hosts and agents: link counters, Prometheus
//! samples, whether a port answers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::{AgentId, Lab};
use crate::exec;
use crate::vpc::Target;

impl Lab {
    /// Up to `total` TCP connections from AZ `az`'s client to the internet
    /// server's `port`, held open until the result is dropped (`helper`:
    /// the `natron-lab` binary, `CARGO_BIN_EXE_natron-lab` in a test).
    pub fn hold_from_client(
        &self,
        helper: &std::path::Path,
        az: usize,
        port: u16,
        total: usize,
    ) -> Result<crate::hold::HeldConnections, crate::LabError> {
        crate::hold::hold_connections(&crate::hold::Plan {
            helper,
            client_ns: &self.clients[az].ns,
            server_ns: &self.inet_ns,
            server: std::net::SocketAddr::from((crate::internet::SERVER, port)),
            from: &[self.clients[az].ip],
            total,
            dir: &self.dir,
        })
    }

    /// `ns`'s eth0 counters, both ways added: (packets, bytes).
    pub fn link_totals(&self, ns: &str) -> Result<(u64, u64), String> {
        let out = exec::in_ns(ns, "ip", &["-j", "-s", "link", "show", "dev", "eth0"])
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        let s = &v[0]["stats64"];
        let n = |dir: &str, key: &str| {
            s[dir][key]
                .as_u64()
                .ok_or_else(|| format!("{ns} eth0: no {dir} {key} in {out}"))
        };
        Ok((
            n("rx", "packets")? + n("tx", "packets")?,
            n("rx", "bytes")? + n("tx", "bytes")?,
        ))
    }

    /// `ns`'s eth0 hands the kernel frames as they are on the wire (no
    /// segmentation offload): its packet counters then count wire packets,
    /// not the 64 KiB super-packets TCP would otherwise send down a veth.
    pub fn wire_sized_frames(&self, ns: &str) -> Result<(), String> {
        exec::in_ns(ns, "ethtool", &["-K", "eth0", "tso", "off", "gso", "off"])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// NAT `az`'s /metrics as samples by their full name (labels included).
    pub fn agent_metrics(&self, az: usize) -> Result<BTreeMap<String, f64>, String> {
        let (_, body) = self.agent_get(az, "/metrics")?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    /// The packets NAT `az`'s rule `rule` counted (0 when not listed).
    pub fn rule_packets(&self, az: usize, rule: &str) -> f64 {
        self.agent_metrics(az)
            .ok()
            .and_then(|m| {
                m.get(&format!("natron_rule_packets_total{{rule=\"{rule}\"}}"))
                    .copied()
            })
            .unwrap_or(0.0)
    }

    /// Client `az`'s address as the internet server saw it (its /whoami),
    /// when that is `public`: the client egressed through the NAT holding
    /// that address.
    pub fn egress_via(&self, az: usize, public: Ipv4Addr) -> Option<String> {
        let seen = self.client_get(az, "/whoami").ok()?;
        seen.starts_with(&format!("{public}:")).then_some(seen)
    }

    /// Waits until AZ `az`'s client egresses through its NAT (its table's
    /// default route on the NAT's interface, the NAT's Elastic IP seen by
    /// the internet server); panics with `agent`'s log after 30 s.
    pub fn wait_egress(&self, az: usize, agent: AgentId) {
        let (table, eni) = (&self.private_tables[az], &self.nats[az].interface_id);
        let eip = self.spec.azs[az].eip;
        self.wait_for(
            "client egresses via its NAT",
            Duration::from_secs(30),
            || {
                let routed = matches!(self.default_route_of(table), Some(Target::Interface(ref e)) if e == eni);
                (routed && self.egress_via(az, eip).is_some()).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", self.agent_log(agent)));
    }

    /// Whether a TCP connection to `addr` opens within 2 s, from `ns`.
    pub fn connects(&self, ns: &str, addr: SocketAddrV4) -> bool {
        self.run_in(ns, async move {
            matches!(
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                    .await,
                Ok(Ok(_))
            )
        })
    }
}

/// The lines of `log` that contain `needle`, digits masked (times, counts,
/// backoffs), each with how often it appears: how a test tells "said once a
/// minute" from "said on every attempt".
pub fn masked_lines(log: &str, needle: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains(needle)) {
        let masked: String = line
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *seen.entry(masked).or_default() += 1;
    }
    seen
}
