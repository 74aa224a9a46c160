//! Validated settings: what the agent runs on, produced once from the
//! [`Config`] as written (firecracker's wire config → validated config).
//! Values that need parsing (probe targets, the port range, the retry
//! policy) are parsed here and nowhere else; sections with nothing to parse
//! are the validated wire sections themselves.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use natron_contract::aws::RetryPolicy;

use super::config::{Config, ConntrackConfig, FailoverConfig, DEFAULT_PATH, USER_DATA};
use crate::model::probe::ProbeTarget;

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
    #[error("{}", problems.iter().map(|p| format!("{path}:{}: key `{}`: {}", p.line, p.key, p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// One semantic problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub key: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The `natron:group`; None: the instance's own tag (IMDS).
    pub group: Option<String>,
    pub listen: SocketAddr,
    pub health: Health,
    pub nat: Nat,
    pub conntrack: ConntrackConfig,
    pub ec2: Ec2,
    pub failover: FailoverConfig,
    /// None: metrics are not published to CloudWatch.
    pub cloudwatch: Option<CloudWatch>,
    /// None: no NAT64.
    pub nat64: Option<Nat64>,
    /// The configuration as written, for /status.
    pub file: Config,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloudWatch {
    pub namespace: String,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Nat64 {
    /// Ports NAT64 translates to; `nat.port_range` has them taken out.
    pub port_range: (u16, u16),
    /// None: the VPC's IPv6 CIDR blocks.
    pub source_cidrs: Option<Vec<Ipv6Net>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub targets: Vec<ProbeTarget>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub min_passing: usize,
    pub confirm_probes: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Nat {
    pub egress_interface: Option<String>,
    pub source_cidrs: Option<Vec<Ipv4Net>>,
    pub port_range: (u16, u16),
    pub fully_random: bool,
    /// The address pool's size, 1 to [`MAX_ADDRESSES`] (the instance
    /// type's limit of addresses per interface applies too).
    pub addresses: u32,
    pub flowtable: bool,
    /// None: no clamp.
    pub mss: Option<u16>,
    pub reconcile_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ec2 {
    pub route_interval: Duration,
    pub retry: RetryPolicy,
    pub endpoint_url: Option<String>,
}

/// A semantic problem found by [`Config::validate`]: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

/// Collects problems; `check` records one when `ok` is false.
#[derive(Default)]
struct Problems(Vec<Invalid>);

impl Problems {
    fn check(&mut self, ok: bool, key: &str, message: impl Into<String>) {
        if !ok {
            self.add(key, message);
        }
    }

    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Invalid {
            key: key.into(),
            message: message.into(),
        });
    }
}

impl Config {
    /// Every problem at once, or the settings.
    pub fn validate(&self) -> Result<Settings, Vec<Invalid>> {
        let mut p = Problems::default();
        if let Some(group) = &self.group {
            p.check(
                !group.is_empty() && group.len() <= 255,
                "group",
                "must be 1 to 255 characters (an EC2 tag value)",
            );
        }
        let h = &self.health;
        let mut targets = Vec::new();
        for (i, text) in h.targets.iter().enumerate() {
            match ProbeTarget::parse(text) {
                Ok(t) => targets.push(t),
                Err(e) => p.add("health.targets", format!("entry {}: {e}", i + 1)),
            }
        }
        p.check(
            h.interval >= Duration::from_millis(100),
            "health.interval",
            "must be at least 100ms",
        );
        p.check(
            !h.timeout.is_zero() && h.timeout <= Duration::from_secs(60),
            "health.timeout",
            "must be between 1ms and 60s",
        );
        p.check(h.rise > 0, "health.rise", "must be at least 1");
        p.check(
            (1..=10).contains(&h.confirm_probes),
            "health.confirm_probes",
            "must be between 1 and 10",
        );
        p.check(h.fall > 0, "health.fall", "must be at least 1");
        p.check(
            h.min_passing > 0 && (h.targets.is_empty() || h.min_passing <= h.targets.len()),
            "health.min_passing",
            format!(
                "must be between 1 and the number of targets ({})",
                h.targets.len()
            ),
        );
        let n = &self.nat;
        if let Some(name) = &n.egress_interface {
            p.check(
                valid_ifname(name),
                "nat.egress_interface",
                format!(
                    "{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
                ),
            );
        }
        if let Some(cidrs) = &n.source_cidrs {
            p.check(
                !cidrs.is_empty(),
                "nat.source_cidrs",
                "must not be empty (omit it to use the VPC's CIDRs)",
            );
        }
        let port_range = parse_port_range(&n.port_range).unwrap_or_else(|m| {
            p.add("nat.port_range", m);
            (1024, 65535)
        });
        let n64 = &self.nat64;
        let nat64_ports = parse_port_range(&n64.port_range).unwrap_or_else(|m| {
            p.add("nat64.port_range", m);
            (61001, 65535)
        });
        if let Some(cidrs) = &n64.source_cidrs {
            p.check(
                !cidrs.is_empty(),
                "nat64.source_cidrs",
                "must not be empty (omit it to use the VPC's IPv6 CIDRs)",
            );
        }
        let port_range = if n64.enabled {
            carve(port_range, nat64_ports).unwrap_or_else(|m| {
                p.add("nat64.port_range", m);
                port_range
            })
        } else {
            port_range
        };
        p.check(
            (1..=MAX_ADDRESSES).contains(&n.addresses),
            "nat.addresses",
            format!("must be between 1 and {MAX_ADDRESSES} (the most private addresses an interface of any instance type has)"),
        );
        p.check(
            n.mss == 0 || (536..=8961).contains(&n.mss),
            "nat.mss",
            "must be 0 (no clamp) or between 536 and 8961",
        );
        p.check(
            n.reconcile_interval >= Duration::from_millis(200),
            "nat.reconcile_interval",
            "must be at least 200ms",
        );
        let c = &self.conntrack;
        if let Some(max) = c.max {
            p.check(
                (1024..=(1 << 26)).contains(&max),
                "conntrack.max",
                "must be between 1024 and 67108864",
            );
        }
        p.check(
            (1..=50).contains(&c.memory_percent),
            "conntrack.memory_percent",
            "must be between 1 and 50",
        );
        p.check(
            c.tcp_timeout_established >= Duration::from_secs(60),
            "conntrack.tcp_timeout_established",
            "must be at least 60s",
        );
        let f = &self.failover;
        p.check(
            f.peer_interval >= Duration::from_millis(50),
            "failover.peer_interval",
            "must be at least 50ms",
        );
        p.check(
            !f.peer_timeout.is_zero() && f.peer_timeout <= Duration::from_secs(10),
            "failover.peer_timeout",
            "must be between 1ms and 10s",
        );
        p.check(f.peer_rise > 0, "failover.peer_rise", "must be at least 1");
        p.check(f.peer_fall > 0, "failover.peer_fall", "must be at least 1");
        p.check(
            f.heartbeat_interval >= Duration::from_millis(100),
            "failover.heartbeat_interval",
            "must be at least 100ms",
        );
        p.check(
            f.heartbeat_timeout >= f.heartbeat_interval * 2,
            "failover.heartbeat_timeout",
            "must be at least twice failover.heartbeat_interval (one late beat must not mean death)",
        );
        p.check(
            f.proof_window >= f.peer_timeout * 2 && f.proof_window <= f.heartbeat_timeout,
            "failover.proof_window",
            "must be at least twice failover.peer_timeout and at most failover.heartbeat_timeout",
        );
        p.check(
            f.agent_down_grace >= Duration::from_secs(1),
            "failover.agent_down_grace",
            "must be at least 1s",
        );
        p.check(
            f.peer_refresh >= Duration::from_secs(1),
            "failover.peer_refresh",
            "must be at least 1s",
        );
        let e = &self.ec2;
        p.check(
            e.route_interval >= Duration::from_secs(1),
            "ec2.route_interval",
            "must be at least 1s",
        );
        p.check(
            (1..=20).contains(&e.max_attempts),
            "ec2.max_attempts",
            "must be between 1 and 20",
        );
        if let Some(url) = &e.endpoint_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            p.check(
                rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace)),
                "ec2.endpoint_url",
                "must be an http:// or https:// URL",
            );
        }
        let cw = &self.metrics.cloudwatch;
        // CloudWatch's own rules for a namespace; AWS/ is for AWS services.
        p.check(
            (1..=255).contains(&cw.namespace.len())
                && cw.namespace.chars().all(|c| {
                    c.is_ascii_alphanumeric() || " .-_/#:".contains(c)
                })
                && !cw.namespace.starts_with("AWS/")
                && !cw.namespace.starts_with(':'),
            "metrics.cloudwatch.namespace",
            "must be 1 to 255 letters, digits or . - _ / # : and space, not starting with AWS/ or :",
        );
        p.check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&cw.interval),
            "metrics.cloudwatch.interval",
            "must be between 1s and 1h",
        );
        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(Settings {
            group: self.group.clone(),
            listen: self.http.listen,
            health: Health {
                targets,
                interval: h.interval,
                timeout: h.timeout,
                rise: h.rise,
                fall: h.fall,
                min_passing: h.min_passing,
                confirm_probes: h.confirm_probes,
            },
            nat: Nat {
                egress_interface: n.egress_interface.clone(),
                source_cidrs: n.source_cidrs.clone(),
                port_range,
                fully_random: n.fully_random,
                addresses: n.addresses,
                flowtable: n.flowtable,
                mss: (n.mss > 0).then_some(n.mss),
                reconcile_interval: n.reconcile_interval,
            },
            conntrack: c.clone(),
            ec2: Ec2 {
                route_interval: e.route_interval,
                retry: RetryPolicy::new(e.max_attempts),
                endpoint_url: e.endpoint_url.clone(),
            },
            failover: f.clone(),
            cloudwatch: cw.enabled.then(|| CloudWatch {
                namespace: cw.namespace.clone(),
                interval: cw.interval,
            }),
            nat64: n64.enabled.then(|| Nat64 {
                port_range: nat64_ports,
                source_cidrs: n64.source_cidrs.clone(),
            }),
            file: self.clone(),
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Config::default()
            .validate()
            .expect("the default configuration is valid")
    }
}

/// The most private IPv4 addresses one interface has, on any instance type.
pub const MAX_ADDRESSES: u32 = 50;

pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl Config {
    /// Reads, parses and validates `path`. A missing file at the default
    /// path means "all defaults"; a missing file elsewhere is an error.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
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
    pub fn from_user_data(user_data: Option<&str>) -> Result<Settings, ConfigError> {
        Config::parse(USER_DATA, user_data.unwrap_or(""))
    }

    /// Parses and validates; `path` names the source in errors.
    pub fn parse(path: &str, text: &str) -> Result<Settings, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate().map_err(|bad| ConfigError::Invalid {
            path: path.into(),
            problems: bad
                .into_iter()
                .map(|i| Problem {
                    line: line_of_key(text, &i.key),
                    key: i.key,
                    message: i.message,
                })
                .collect(),
        })
    }
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

mod ports;
pub use ports::{carve, parse_port_range};

#[cfg(test)]
mod tests;
