//! The agent's `/status` document. The agent builds it from its state; the
//! lab and operators' tools deserialize it. Its fields are the API: they
//! change here, on purpose, or not at all.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::ec2::{InstanceState, RouteTarget};
use crate::readyz::{Area, Reason};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub ready: bool,
    #[serde(default)]
    pub reasons: Vec<Reason>,
    pub identity: Option<Identity>,
    pub group: Option<String>,
    /// The configuration in effect: the file (or user data) as read, and
    /// what was derived from IMDS and the kernel. Its shape is the
    /// configuration's own (docs/agent-config.md).
    pub config: serde_json::Value,
    pub dataplane: DataPlane,
    pub egress: Egress,
    pub routes: Routes,
    pub failover: Failover,
    /// What currently holds readiness back or needs attention, by area.
    pub problems: BTreeMap<Area, String>,
    pub warnings: Vec<Warning>,
    /// The agent's EC2 calls.
    #[serde(default)]
    pub ec2: Ec2Calls,
}

/// The agent's EC2 calls as /status shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ec2Calls {
    /// The latest failed attempt (retried or not), while it is recent
    /// (5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ApiError>,
    /// Whether this NAT writes its heartbeat now (a peer cannot reach it,
    /// or it cannot reach a peer).
    pub heartbeating: bool,
    /// While calls fail, the next coordination pass waits this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

/// One failed AWS call attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub unix_ms: u64,
    pub operation: String,
    pub code: String,
    pub message: String,
}

/// Who this instance is, from IMDSv2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub mac: String,
    /// The primary ENI; routes target it.
    pub interface_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub local_ipv4: Ipv4Addr,
    pub public_ipv4: Option<Ipv4Addr>,
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// The VPC's IPv6 CIDR blocks (none when the VPC has no IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpc_ipv6_cidrs: Vec<Ipv6Net>,
    /// The instance's `natron:group` tag, when instance tags are in IMDS.
    pub group_tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub area: Area,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlane {
    pub forwarding: bool,
    pub ruleset_in_place: bool,
    /// None until the kernel has been asked.
    pub flowtable: Option<bool>,
    /// Whether the kernel lists table ip natron exactly as rendered (once
    /// normalized) after the agent last wrote it; false: drift is judged
    /// against that listing instead. None until written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing_matches_render: Option<bool>,
    pub source_dest_check_disabled: bool,
    pub sysctls: Vec<Applied>,
    pub drift_repairs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<Repair>,
    /// None until conntrack is loaded (the ruleset loads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<Conntrack>,
    /// This AZ's Elastic IP; None when no address is tagged for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip: Option<ElasticIp>,
    /// How close new connections are to running out of source ports; None
    /// until conntrack is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ports: Option<SourcePorts>,
    /// The extra addresses new connections are spread over
    /// (`nat.addresses` > 1); None with one address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_pool: Option<AddressPool>,
    /// NAT64 (`nat64.enabled`); None when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat64: Option<Nat64>,
}

/// NAT64: natron's Jool instance and who may use it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nat64 {
    /// The instance is as natron wants it (read back after writing).
    pub in_place: bool,
    /// The prefix translated to IPv4 (`64:ff9b::/96`).
    pub prefix: String,
    /// The IPv4 addresses and ports translated to.
    pub addresses: Vec<Ipv4Addr>,
    pub port_range: (u16, u16),
    /// The IPv6 networks that may use it.
    pub sources: Vec<Ipv6Net>,
    /// Times the instance was found differing from natron's and replaced.
    pub repairs: u64,
    /// Sessions in Jool's table (TCP, UDP and ICMP), as last counted.
    pub sessions: u64,
}

/// A NAT's address pool: its primary private address (with the AZ's
/// Elastic IP or its own public IP) and `wanted - 1` secondary private
/// addresses, each with the Elastic IP tagged with its slot. New
/// connections are spread over the `translating` addresses one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    /// `nat.addresses`.
    pub wanted: u32,
    /// Private addresses connections are translated to, primary first.
    pub translating: Vec<Ipv4Addr>,
    /// Slots 1 to wanted - 1.
    pub slots: Vec<PoolSlot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSlot {
    pub slot: u32,
    /// The secondary private address it is on (or is being put on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    pub state: SlotState,
    /// The running NAT holding the address (`held`), or what is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// On a secondary address of this NAT, read back: translating.
    Associated,
    /// Associated, not yet read back.
    Associating,
    /// A running NAT of the group holds the address.
    Held,
    /// No Elastic IP is tagged for the slot, or no secondary address is
    /// free for it (the instance type's limit).
    Missing,
    /// The last attempt failed.
    Error,
}

/// Source ports, the NAT's scarce resource: a connection needs a source
/// port of its own towards each destination (address, port, protocol),
/// so thousands of calls to one API share `capacity` ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePorts {
    /// Public addresses new connections are translated to.
    pub addresses: u32,
    /// Ports per address (`nat.port_range`).
    pub per_address: u32,
    /// Connections one destination can take: addresses x ports.
    pub capacity: u64,
    /// Packets of new connections dropped because no source port was free
    /// towards their destination, since boot (the kernel's conntrack
    /// `insert_failed`; each retransmitted SYN counts again, as the NAT
    /// Gateway's ErrorPortAllocation counts attempts).
    pub allocation_errors: u64,
    /// The destinations with the most translated connections, busiest
    /// first, from the last listing of the connection table (taken only
    /// when one destination could hold 90 % of `capacity`, or ports ran
    /// out, at most every 10 s); empty when no listing was needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busiest: Vec<DestinationUse>,
    /// When `busiest` was listed (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed_unix_ms: Option<u64>,
}

/// Translated connections towards one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationUse {
    pub address: Ipv4Addr,
    /// None for protocols without ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// As the kernel names it: tcp, udp, icmp...
    pub protocol: String,
    pub connections: u64,
}

impl std::fmt::Display for DestinationUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}/{}", self.address, self.protocol),
            None => write!(f, "{}/{}", self.address, self.protocol),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub unix_ms: u64,
    pub reason: String,
}

/// One sysctl the agent wants, by its dotted name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub key: String,
    pub value: String,
    /// A required setting that cannot be applied keeps the data plane down;
    /// an optional one is reported as a warning.
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Unchanged,
    Written { previous: String },
    Failed { error: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub setting: Setting,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conntrack {
    pub entries: u64,
    pub max: u64,
    /// Kernel counters since boot.
    pub drops: ConntrackDrops,
    /// At 90 % of `max` or more.
    pub nearly_full: bool,
    /// Flows on the flowtable fast path, as last read (every 10 s); None
    /// without a flowtable or before the first reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloaded: Option<u64>,
}

/// Kernel counters of new flows refused, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackDrops {
    /// Packets dropped: no entry could be made for a new flow (a full
    /// table, or no free source port: see `insert_failed`).
    pub drop: u64,
    /// Unconfirmed entries evicted to make room for new ones.
    pub early_drop: u64,
    /// New entries that clashed with an existing one when confirmed: on a
    /// NAT, a new connection that found no free source port towards its
    /// destination.
    #[serde(default)]
    pub insert_failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElasticIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    pub state: ElasticIpState,
    /// The running NAT holding it (`held`), or the error (`error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElasticIpState {
    /// On this instance, read back.
    Associated,
    /// Associated, not yet read back on this instance.
    Associating,
    /// A running NAT of the group holds it; taken when it releases it or stops.
    Held,
    /// The last attempt failed.
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Egress {
    pub healthy: bool,
    pub probes: Vec<ProbeResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub target: String,
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// The group's route tables as last read.
    pub tables: Vec<RouteTable>,
    /// Those whose default route targets this NAT.
    pub owned: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    pub id: String,
    /// The table's `natron:az` tag: the AZ whose NAT is its home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub az: Option<String>,
    pub default_route: Option<RouteTarget>,
    /// The table's NAT64 route (`64:ff9b::/96`), when it has one: it
    /// follows the default route wherever that goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat64_route: Option<RouteTarget>,
    /// Tagged `natron:nat64`: the table serves NAT64, so it gets a NAT64
    /// route when it has none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat64: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub draining: bool,
    pub peers: Vec<Peer>,
    pub tables: Vec<Table>,
    /// The latest route changes this agent made, newest first.
    pub events: Vec<Event>,
    pub last_event_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub instance_id: String,
    pub availability_zone: String,
    pub private_ip: Option<Ipv4Addr>,
    pub ec2_state: InstanceState,
    pub health: Health,
}

/// A peer's health as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Not enough observations yet.
    Unknown,
    Ready,
    /// Its /readyz answers 503.
    NotReady {
        reason: String,
    },
    /// Answers 503 but has never been ready yet (within the boot grace):
    /// it is coming up, not failing.
    Starting {
        reason: String,
    },
    /// No answer over the VPC. `stale` once its heartbeat shows it has
    /// not been alive since contact was lost (or has stopped beating): the
    /// NAT is gone. Fresh: it is alive but cut off, a partition.
    Unreachable {
        why: String,
        heartbeat_age_ms: Option<u64>,
        stale: bool,
    },
    /// Its kernel answers but refuses the agent's port: the agent is down
    /// (restarting, crashed) while the NAT still forwards. Failed only
    /// after the agent-down grace.
    AgentDown {
        for_ms: u64,
        past_grace: bool,
    },
    /// EC2 says it is not running.
    NotRunning {
        ec2_state: InstanceState,
    },
}

impl Health {
    /// Whether its tables should be served by someone else.
    pub fn failed(&self) -> bool {
        match self {
            Health::NotReady { .. } | Health::NotRunning { .. } => true,
            Health::Unreachable { stale, .. } => *stale,
            Health::AgentDown { past_grace, .. } => *past_grace,
            Health::Unknown | Health::Ready | Health::Starting { .. } => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Health::Unknown => "health unknown".into(),
            Health::Ready => "ready".into(),
            Health::NotReady { reason } => format!("reports not ready ({reason})"),
            Health::Starting { reason } => format!("is starting ({reason})"),
            Health::Unreachable {
                why,
                heartbeat_age_ms,
                stale,
            } => {
                let beat = heartbeat_age_ms.map_or("no heartbeat".to_string(), |a| {
                    format!("heartbeat {a} ms old")
                });
                format!(
                    "unreachable ({why}; {beat}{})",
                    if *stale { ", stale" } else { ", fresh" }
                )
            }
            Health::AgentDown { for_ms, past_grace } => format!(
                "has its agent down for {for_ms} ms (the NAT refuses its port{})",
                if *past_grace { "; past the grace" } else { "" }
            ),
            Health::NotRunning { ec2_state } => format!("instance {ec2_state}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub id: String,
    pub az: Option<String>,
    /// The NAT of its AZ, if one runs.
    pub home: Option<String>,
    /// The instance its default route targets, or the target itself.
    pub owner: String,
    pub role: TableRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableRole {
    /// Served by its home NAT.
    Home,
    /// Served by another NAT (or by nothing natron knows).
    TakenOver,
}

/// A route change an agent made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub unix_ms: u64,
    pub table: String,
    pub kind: MoveKind,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    /// The home points its table at itself (absent, foreign or failed owner).
    Claim,
    /// A peer replaces a failed owner of a table whose home is not ready.
    Takeover,
    /// The home takes its table back from a live peer after the hold-down.
    Failback,
    /// A NAT going away gives a table it serves to a ready NAT.
    Handoff,
}

impl MoveKind {
    pub fn name(self) -> &'static str {
        match self {
            MoveKind::Claim => "claim",
            MoveKind::Takeover => "takeover",
            MoveKind::Failback => "failback",
            MoveKind::Handoff => "handoff",
        }
    }
}

impl Status {
    /// The table `id` as the failover section shows it.
    pub fn table(&self, id: &str) -> Option<&Table> {
        self.failover.tables.iter().find(|t| t.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_tagged_by_state() {
        let h = Health::Unreachable {
            why: "timeout".into(),
            heartbeat_age_ms: Some(400),
            stale: false,
        };
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["state"], "unreachable");
        assert_eq!(serde_json::from_value::<Health>(v).unwrap(), h);
        assert!(!h.failed());
        assert!(Health::NotRunning {
            ec2_state: InstanceState::Stopped
        }
        .failed());
        assert_eq!(
            serde_json::to_value(TableRole::TakenOver).unwrap(),
            "taken_over"
        );
    }

    #[test]
    fn a_status_document_round_trips() {
        let mut s = Status {
            version: "0.1.0".into(),
            ..Default::default()
        };
        s.problems.insert(Area::Egress, "probes failing".into());
        s.dataplane.elastic_ip = Some(ElasticIp {
            allocation_id: Some("eipalloc-1".into()),
            public_ip: Some("203.0.113.10".into()),
            state: ElasticIpState::Held,
            detail: Some("i-old".into()),
        });
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            text.contains(r#""problems":{"egress":"probes failing"}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), s);
    }
}
