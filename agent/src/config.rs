//! The agent's configuration file (TOML), its defaults and its validation.
//!
//! Every key is optional; `docs/agent-config.md` is the one place that
//! documents them. Unknown keys are rejected (`deny_unknown_fields`) so a typo
//! never silently falls back to a default. Errors name the key and its line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::probe::ProbeTarget;

pub const DEFAULT_PATH: &str = "/etc/natron/agent.toml";
/// How errors name the configuration when it came from IMDS user data.
pub const USER_DATA: &str = "user-data";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}:{line}: key `{key}`: {message}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Value of the `natron:group` tag tying instances and route tables
    /// together. None: read the instance's own `natron:group` tag via IMDS.
    pub group: Option<String>,
    pub http: HttpConfig,
    pub health: HealthConfig,
    pub nat: NatConfig,
    pub conntrack: ConntrackConfig,
    pub ec2: Ec2Config,
    pub failover: FailoverConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:9100".parse().expect("constant address"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Egress probe targets: `tcp://HOST:PORT` or `http://HOST[:PORT]/PATH`.
    pub targets: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passing rounds before egress counts as healthy.
    pub rise: u32,
    /// Consecutive failing rounds before egress counts as failed.
    pub fall: u32,
    /// Targets that must answer for a round to pass.
    pub min_passing: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            // Reachable from any VPC with internet access, on three operators.
            targets: vec![
                "http://checkip.amazonaws.com/".into(),
                "tcp://1.1.1.1:443".into(),
                "tcp://8.8.8.8:443".into(),
            ],
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(900),
            rise: 2,
            fall: 3,
            min_passing: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    /// Interface traffic leaves by. None: the interface of the default route.
    pub egress_interface: Option<String>,
    /// Networks allowed to use the NAT. None: the VPC's CIDR blocks (IMDS).
    pub source_cidrs: Option<Vec<Ipv4Net>>,
    /// Source ports masquerade may use, "LOW-HIGH".
    pub port_range: String,
    /// Randomise source ports fully (harder to predict, no port preservation).
    pub fully_random: bool,
    /// Use a flowtable fast path when the kernel has one.
    pub flowtable: bool,
    /// How often the live ruleset and sysctls are compared with the desired ones.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            egress_interface: None,
            source_cidrs: None,
            port_range: "1024-65535".into(),
            fully_random: false,
            flowtable: true,
            reconcile_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Maximum tracked connections; None: sized from memory_percent.
    pub max: Option<u64>,
    /// Share of the instance's memory conntrack may use when `max` is unset.
    pub memory_percent: u8,
    /// Idle timeout of established TCP flows.
    #[serde(with = "humantime_serde")]
    pub tcp_timeout_established: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max: None,
            memory_percent: 10,
            // RFC 5382 REQ-5: at least 2 h 4 min; the kernel's 5 days fills the table with dead flows.
            tcp_timeout_established: Duration::from_secs(7440),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ec2Config {
    /// How often route tables are re-read and claimed.
    #[serde(with = "humantime_serde")]
    pub route_interval: Duration,
    /// Attempts for one EC2 call on throttling, 5xx and network errors.
    pub max_attempts: u32,
    /// The EC2 API endpoint; None: the region's (or `AWS_ENDPOINT_URL`).
    pub endpoint_url: Option<String>,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            route_interval: Duration::from_secs(10),
            max_attempts: 5,
            endpoint_url: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// How often each peer's /readyz is asked.
    #[serde(with = "humantime_serde")]
    pub peer_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Ready answers in a row before a peer counts as ready.
    pub peer_rise: u32,
    /// Bad answers (503 or none) in a row before a peer counts as down.
    pub peer_fall: u32,
    /// How often this agent refreshes its `natron:heartbeat` tag.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An unreachable peer whose heartbeat is older than this is gone.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// How long a home must be ready (and its table unchanged) before it
    /// takes its table back from a live peer.
    #[serde(with = "humantime_serde")]
    pub hold_down: Duration,
    /// How often the group's instances are re-read when all is well.
    #[serde(with = "humantime_serde")]
    pub peer_refresh: Duration,
    /// Longest time a stopping agent spends handing its tables over.
    #[serde(with = "humantime_serde")]
    pub handoff_timeout: Duration,
    /// How often IMDS is asked whether Auto Scaling is terminating this
    /// instance (then the agent hands its tables over at once).
    #[serde(with = "humantime_serde")]
    pub lifecycle_interval: Duration,
    /// How long a peer that has never been ready counts as starting rather
    /// than failed when it answers 503.
    #[serde(with = "humantime_serde")]
    pub boot_grace: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            peer_interval: Duration::from_millis(250),
            peer_timeout: Duration::from_millis(250),
            peer_rise: 2,
            peer_fall: 3,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_millis(2500),
            hold_down: Duration::from_secs(30),
            peer_refresh: Duration::from_secs(10),
            handoff_timeout: Duration::from_secs(10),
            lifecycle_interval: Duration::from_secs(5),
            boot_grace: Duration::from_secs(60),
        }
    }
}

/// A semantic problem found by [`Config::validate`]: which key, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Reads, parses and validates `path`. A missing file at the default
    /// path means "all defaults"; a missing file elsewhere is an error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                String::new()
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: shown,
                    source,
                })
            }
        };
        Config::parse(&shown, &text)
    }

    /// The configuration carried in the instance's user data (what `natron
    /// apply` writes), for an instance without a configuration file. No
    /// user data means all defaults.
    pub fn from_user_data(user_data: Option<&str>) -> Result<Config, ConfigError> {
        Config::parse(USER_DATA, user_data.unwrap_or(""))
    }

    pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate().map_err(|bad| ConfigError::Invalid {
            path: path.into(),
            line: line_of_key(text, &bad.key),
            key: bad.key,
            message: bad.message,
        })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(group) = &self.group {
            if group.is_empty() || group.len() > 255 {
                return Err(invalid(
                    "group",
                    "must be 1 to 255 characters (an EC2 tag value)",
                ));
            }
        }
        let h = &self.health;
        for (i, target) in h.targets.iter().enumerate() {
            ProbeTarget::parse(target)
                .map_err(|e| invalid("health.targets", format!("entry {}: {e}", i + 1)))?;
        }
        if h.interval < Duration::from_millis(100) {
            return Err(invalid("health.interval", "must be at least 100ms"));
        }
        if h.timeout.is_zero() || h.timeout > Duration::from_secs(60) {
            return Err(invalid("health.timeout", "must be between 1ms and 60s"));
        }
        if h.rise == 0 {
            return Err(invalid("health.rise", "must be at least 1"));
        }
        if h.fall == 0 {
            return Err(invalid("health.fall", "must be at least 1"));
        }
        if h.min_passing == 0 || (!h.targets.is_empty() && h.min_passing > h.targets.len()) {
            return Err(invalid(
                "health.min_passing",
                format!(
                    "must be between 1 and the number of targets ({})",
                    h.targets.len()
                ),
            ));
        }
        let n = &self.nat;
        if let Some(name) = &n.egress_interface {
            if !valid_ifname(name) {
                return Err(invalid(
                    "nat.egress_interface",
                    format!("{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"),
                ));
            }
        }
        if let Some(cidrs) = &n.source_cidrs {
            if cidrs.is_empty() {
                return Err(invalid(
                    "nat.source_cidrs",
                    "must not be empty (omit it to use the VPC's CIDRs)",
                ));
            }
        }
        parse_port_range(&n.port_range).map_err(|m| invalid("nat.port_range", m))?;
        if n.reconcile_interval < Duration::from_millis(200) {
            return Err(invalid("nat.reconcile_interval", "must be at least 200ms"));
        }
        let c = &self.conntrack;
        if let Some(max) = c.max {
            if !(1024..=(1 << 26)).contains(&max) {
                return Err(invalid(
                    "conntrack.max",
                    "must be between 1024 and 67108864",
                ));
            }
        }
        if !(1..=50).contains(&c.memory_percent) {
            return Err(invalid(
                "conntrack.memory_percent",
                "must be between 1 and 50",
            ));
        }
        if c.tcp_timeout_established < Duration::from_secs(60) {
            return Err(invalid(
                "conntrack.tcp_timeout_established",
                "must be at least 60s",
            ));
        }
        let f = &self.failover;
        if f.peer_interval < Duration::from_millis(50) {
            return Err(invalid("failover.peer_interval", "must be at least 50ms"));
        }
        if f.peer_timeout.is_zero() || f.peer_timeout > Duration::from_secs(10) {
            return Err(invalid(
                "failover.peer_timeout",
                "must be between 1ms and 10s",
            ));
        }
        if f.peer_rise == 0 {
            return Err(invalid("failover.peer_rise", "must be at least 1"));
        }
        if f.peer_fall == 0 {
            return Err(invalid("failover.peer_fall", "must be at least 1"));
        }
        if f.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid(
                "failover.heartbeat_interval",
                "must be at least 100ms",
            ));
        }
        if f.heartbeat_timeout < f.heartbeat_interval * 2 {
            return Err(invalid(
                "failover.heartbeat_timeout",
                "must be at least twice failover.heartbeat_interval (one late beat must not mean death)",
            ));
        }
        if f.peer_refresh < Duration::from_secs(1) {
            return Err(invalid("failover.peer_refresh", "must be at least 1s"));
        }
        if self.ec2.route_interval < Duration::from_secs(1) {
            return Err(invalid("ec2.route_interval", "must be at least 1s"));
        }
        if !(1..=20).contains(&self.ec2.max_attempts) {
            return Err(invalid("ec2.max_attempts", "must be between 1 and 20"));
        }
        if let Some(url) = &self.ec2.endpoint_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(invalid(
                    "ec2.endpoint_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        Ok(())
    }

    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        // validate() has checked every entry.
        self.health
            .targets
            .iter()
            .filter_map(|t| ProbeTarget::parse(t).ok())
            .collect()
    }
}

/// Parses "LOW-HIGH" into a port range.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a port range LOW-HIGH with 1 <= LOW <= HIGH <= 65535");
    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Line (1-based) where a dotted key such as `health.rise` is written, or of
/// its table header; 1 when the key is absent (it failed as a default).
fn line_of_key(text: &str, dotted: &str) -> usize {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return 1;
    };
    let mut table = doc.as_table();
    let mut span = None;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some((key, item)) = table.get_key_value(part) else {
            break;
        };
        span = key.span().or_else(|| item.span()).or(span);
        if i + 1 < parts.len() {
            match item.as_table() {
                Some(t) => table = t,
                None => break,
            }
        }
    }
    span.map(|s| text[..s.start].matches('\n').count() + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("agent.toml", text)
    }

    #[test]
    fn user_data_carries_the_configuration() {
        assert_eq!(Config::from_user_data(None).unwrap(), Config::default());
        let c = Config::from_user_data(Some(&sample_user_data())).unwrap();
        assert_eq!(c.group.as_deref(), Some("prod"));
        assert_eq!(
            c.ec2.endpoint_url.as_deref(),
            Some("http://169.254.0.100:5000")
        );
        let err = Config::from_user_data(Some("#!/bin/sh\necho hi\n")).unwrap_err();
        assert!(err.to_string().starts_with("user-data"), "{err}");
    }

    fn sample_user_data() -> String {
        "group = \"prod\"\n[ec2]\nendpoint_url = \"http://169.254.0.100:5000\"\n".into()
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
group = "prod"
[http]
listen = "127.0.0.1:9200"
[health]
targets = ["tcp://198.51.100.10:80", "http://198.51.100.10/health"]
interval = "250ms"
timeout = "200ms"
rise = 1
fall = 2
min_passing = 2
[nat]
egress_interface = "ens5"
source_cidrs = ["10.0.0.0/16", "100.64.0.0/16"]
port_range = "10000-60000"
fully_random = true
flowtable = false
reconcile_interval = "1s"
[conntrack]
max = 131072
memory_percent = 5
tcp_timeout_established = "350s"
[ec2]
route_interval = "5s"
max_attempts = 3
"#,
        )
        .unwrap();
        assert_eq!(c.group.as_deref(), Some("prod"));
        assert_eq!(c.health.interval, Duration::from_millis(250));
        assert_eq!(c.nat.source_cidrs.as_ref().unwrap().len(), 2);
        assert_eq!(
            c.conntrack.tcp_timeout_established,
            Duration::from_secs(350)
        );
        assert_eq!(c.probe_targets().len(), 2);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("[health]\nrise = 2\nfal = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fal"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let err = parse("\n[http]\nlisten = 9100\n").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let cases = [
            ("[health]\ninterval = \"1s\"\nrise = 0\n", "health.rise", 3),
            ("[health]\nfall = 0\n", "health.fall", 2),
            ("[health]\ntargets = [\"ftp://x\"]\n", "health.targets", 2),
            (
                "[health]\ntargets = [\"tcp://a:1\"]\nmin_passing = 2\n",
                "health.min_passing",
                3,
            ),
            ("[nat]\nport_range = \"5000-100\"\n", "nat.port_range", 2),
            ("[nat]\nport_range = \"0-100\"\n", "nat.port_range", 2),
            (
                "[nat]\negress_interface = \"a/b\"\n",
                "nat.egress_interface",
                2,
            ),
            ("[nat]\nsource_cidrs = []\n", "nat.source_cidrs", 2),
            (
                "[conntrack]\nmemory_percent = 90\n",
                "conntrack.memory_percent",
                2,
            ),
            ("[conntrack]\nmax = 10\n", "conntrack.max", 2),
            ("group = \"\"\n", "group", 1),
            ("[ec2]\nmax_attempts = 0\n", "ec2.max_attempts", 2),
            ("[ec2]\nendpoint_url = \"ftp://x\"\n", "ec2.endpoint_url", 2),
            (
                "[failover]\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"1s\"\n",
                "failover.heartbeat_timeout",
                3,
            ),
            ("[failover]\npeer_fall = 0\n", "failover.peer_fall", 2),
        ];
        for (text, key, line) in cases {
            match parse(text) {
                Err(ConfigError::Invalid {
                    key: k, line: l, ..
                }) => {
                    assert_eq!((k.as_str(), l), (key, line), "for {text:?}")
                }
                other => panic!("{text:?}: expected Invalid for {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_cidr_is_a_parse_error_naming_the_key() {
        let err = parse("[nat]\nsource_cidrs = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("source_cidrs"), "{err}");
    }

    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../docs/agent-config.md");
        // Optional keys without a default value still need documenting.
        let mut config = Config {
            group: Some("g".into()),
            ..Default::default()
        };
        config.nat.egress_interface = Some("eth0".into());
        config.nat.source_cidrs = Some(vec![]);
        config.conntrack.max = Some(1024);
        let value = toml::Value::try_from(&config).unwrap();
        let mut keys = Vec::new();
        for (k, v) in value.as_table().unwrap() {
            match v.as_table() {
                Some(t) => keys.extend(t.keys().map(|sub| format!("{k}.{sub}"))),
                None => keys.push(k.clone()),
            }
        }
        assert!(keys.len() > 15);
        for key in keys {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "docs/agent-config.md lacks `{key}`"
            );
        }
    }

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("1024-65535"), Ok((1024, 65535)));
        assert!(parse_port_range("1024").is_err());
        assert!(parse_port_range("a-b").is_err());
    }
}
