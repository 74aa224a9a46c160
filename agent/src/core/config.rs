//! The agent's configuration file (TOML) as written: its keys and their
//! defaults. Every key is optional; `docs/agent-config.md` is the one place
//! that documents them. Unknown keys are rejected (`deny_unknown_fields`)
//! so a typo never silently falls back to a default. Reading and validating
//! it into `Settings` is `core::settings`.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/natron/agent.toml";
/// How errors name the configuration when it came from IMDS user data.
pub const USER_DATA: &str = "user-data";

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
    pub metrics: MetricsConfig,
    pub nat64: Nat64Config,
}

/// NAT64 (RFC 6146) for IPv6-only clients: `64:ff9b::/96` translated to
/// the NAT's IPv4 address(es) by Jool. Off by default (`natron apply
/// --nat64` turns it on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nat64Config {
    pub enabled: bool,
    /// Source ports (and ICMP identifiers) NAT64 translates to, "LOW-HIGH".
    /// Jool keeps no conntrack entries, so masquerade must never pick one
    /// of these: they are taken out of `nat.port_range`.
    pub port_range: String,
    /// IPv6 networks allowed to use NAT64. None: the VPC's IPv6 CIDR
    /// blocks (IMDS).
    pub source_cidrs: Option<Vec<Ipv6Net>>,
}

impl Default for Nat64Config {
    fn default() -> Self {
        Nat64Config {
            enabled: false,
            port_range: "61001-65535".into(),
            source_cidrs: None,
        }
    }
}

/// Where metrics go besides `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub cloudwatch: CloudWatchConfig,
}

/// The NAT Gateway's metrics in CloudWatch (`run::cloudwatch`). Off by
/// default: custom metrics are billed per metric and month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchConfig {
    pub enabled: bool,
    /// The namespace the metrics are published in.
    pub namespace: String,
    /// How often one PutMetricData call publishes them all.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        CloudWatchConfig {
            enabled: false,
            namespace: natron_contract::cloudwatch::NAMESPACE.into(),
            interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], natron_contract::AGENT_PORT)),
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
    /// After a failing round the next rounds follow at once, each probing
    /// every target this many times in parallel (a target passes when one
    /// of them does), until the verdict settles.
    pub confirm_probes: u32,
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
            // Fast enough that a broken egress is noticed within about a
            // second (BENCHMARKS.md); the targets answer in milliseconds
            // from any AWS region, so 200 ms is a wide margin.
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 3,
            min_passing: 1,
            confirm_probes: 3,
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
    /// Public addresses new connections are spread over: the primary
    /// private address and `addresses - 1` secondary ones, each with the
    /// Elastic IP tagged with its slot (`natron apply --addresses`).
    pub addresses: u32,
    /// Use a flowtable fast path when the kernel has one.
    pub flowtable: bool,
    /// The TCP MSS that SYNs and SYN-ACKs between the sources and the
    /// internet are clamped to (the internet's 1,500-byte path); 0: none.
    pub mss: u16,
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
            addresses: 1,
            flowtable: true,
            mss: 1460,
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
    /// How often this agent writes its `natron:heartbeat` tag while it is
    /// alerted (a peer it cannot reach, or a peer that cannot reach it);
    /// in steady state it writes none.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An unreachable peer whose newest heartbeat is older than this when
    /// read is gone.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// How long after losing contact with a peer it has to show a
    /// heartbeat written since: none by then means it is gone (a live peer
    /// cut off from us starts beating on its first missed answer).
    #[serde(with = "humantime_serde")]
    pub proof_window: Duration,
    /// A peer whose kernel refuses the agent's port (its agent restarting
    /// or crashed, the NAT still forwarding) is taken over only after this.
    #[serde(with = "humantime_serde")]
    pub agent_down_grace: Duration,
    /// A NAT that became ready after its peer failed (both failed together
    /// and this one recovered first) waits this long before taking the
    /// peer's tables, so that NATs recovering together move nothing.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
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
            peer_timeout: Duration::from_millis(200),
            peer_rise: 2,
            peer_fall: 3,
            // 15 beats and 15 reads a minute per NAT while alerted, inside
            // the 40 a minute a partition may cost.
            heartbeat_interval: Duration::from_secs(4),
            heartbeat_timeout: Duration::from_secs(10),
            proof_window: Duration::from_millis(1200),
            agent_down_grace: Duration::from_secs(20),
            settle: Duration::from_secs(10),
            hold_down: Duration::from_secs(30),
            peer_refresh: Duration::from_secs(10),
            handoff_timeout: Duration::from_secs(10),
            lifecycle_interval: Duration::from_secs(5),
            boot_grace: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// This configuration as TOML, as an operator would write it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a configuration serialises to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::{ConfigError, Settings};

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Config::parse("agent.toml", text)
    }

    #[test]
    fn user_data_carries_the_configuration() {
        assert_eq!(Config::from_user_data(None).unwrap(), Settings::default());
        let s = Config::from_user_data(Some(
            "group = \"prod\"\n[ec2]\nendpoint_url = \"http://169.254.0.100:5000\"\n",
        ))
        .unwrap();
        assert_eq!(s.group.as_deref(), Some("prod"));
        assert_eq!(
            s.ec2.endpoint_url.as_deref(),
            Some("http://169.254.0.100:5000")
        );
        let err = Config::from_user_data(Some("#!/bin/sh\necho hi\n")).unwrap_err();
        assert!(err.to_string().starts_with("user-data"), "{err}");
    }

    #[test]
    fn full_file_parses_into_settings() {
        let s = parse(
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
        assert_eq!(s.group.as_deref(), Some("prod"));
        assert_eq!(s.listen.port(), 9200);
        assert_eq!(s.health.interval, Duration::from_millis(250));
        assert_eq!(s.health.targets.len(), 2);
        assert_eq!(s.nat.port_range, (10000, 60000));
        assert_eq!(s.nat.source_cidrs.as_ref().unwrap().len(), 2);
        assert_eq!(
            s.conntrack.tcp_timeout_established,
            Duration::from_secs(350)
        );
        assert_eq!(s.ec2.retry.attempts, 3);
        // What /status shows is the file as written.
        assert_eq!(s.file.nat.port_range, "10000-60000");
    }

    #[test]
    fn a_config_written_as_toml_reads_back_the_same() {
        let mut c = Config {
            group: Some("lab".into()),
            ..Default::default()
        };
        c.health.targets = vec!["tcp://198.51.100.10:80".into()];
        c.failover.hold_down = Duration::from_secs(5);
        let s = Config::parse("x", &c.to_toml()).unwrap();
        assert_eq!(s.file, c);
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
    fn bad_cidr_is_a_parse_error_naming_the_key() {
        let err = parse("[nat]\nsource_cidrs = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("source_cidrs"), "{err}");
    }

    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../../docs/agent-config.md");
        // Optional keys without a default value still need documenting.
        let mut config = Config {
            group: Some("g".into()),
            ..Default::default()
        };
        config.nat.egress_interface = Some("eth0".into());
        config.nat.source_cidrs = Some(vec![]);
        config.conntrack.max = Some(1024);
        config.ec2.endpoint_url = Some("http://x".into());
        let value = toml::Value::try_from(&config).unwrap();
        fn keys_of(prefix: &str, table: &toml::Table, keys: &mut Vec<String>) {
            for (k, v) in table {
                let key = format!("{prefix}{k}");
                match v.as_table() {
                    Some(t) => keys_of(&format!("{key}."), t, keys),
                    None => keys.push(key),
                }
            }
        }
        let mut keys = Vec::new();
        keys_of("", value.as_table().unwrap(), &mut keys);
        assert!(keys.len() > 15);
        for key in keys {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "docs/agent-config.md lacks `{key}`"
            );
        }
    }
}
