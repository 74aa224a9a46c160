//! The agent's `/readyz` document: written by the agent, read by its peers
//! (who decide takeovers on it) and by the lab. One type for both sides.

use serde::{Deserialize, Serialize};

/// What can hold a NAT's readiness back, or needs attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// Identity from the instance metadata service.
    Metadata,
    /// The group this NAT belongs to.
    Group,
    EgressInterface,
    Sysctl,
    Ruleset,
    SourceDestCheck,
    /// The egress probes.
    Egress,
    /// Stopping: handing route tables over.
    Draining,
    /// A background task of the agent ended.
    Supervisor,
    /// Route coordination (EC2 calls for route tables and the group).
    Routes,
    /// This AZ's Elastic IP.
    ElasticIp,
    /// No route table has this NAT's AZ as its home.
    HomeTable,
    /// No AWS credentials (no instance profile): no EC2 call can be made,
    /// so the NAT can neither claim routes nor take part in failover.
    Credentials,
    /// Source ports towards one destination running out (a warning, never
    /// a readiness problem: a peer would run out the same way).
    SourcePorts,
    /// Publishing metrics to CloudWatch (a warning, never a readiness
    /// problem: the data plane does not depend on it).
    CloudWatch,
    /// The address pool (`nat.addresses`) short of addresses: fewer public
    /// addresses translate (a warning, never a readiness problem: the NAT
    /// egresses from the addresses it has).
    AddressPool,
    /// The conntrack event watcher counting idle timeouts (with
    /// CloudWatch on) ended (a warning, never a readiness problem).
    ConntrackEvents,
    /// NAT64's translator (Jool), with `nat64.enabled`.
    Nat64,
    /// A switch only tests set.
    Test,
}

impl Area {
    pub fn name(self) -> &'static str {
        match self {
            Area::Metadata => "metadata",
            Area::Group => "group",
            Area::EgressInterface => "egress_interface",
            Area::Sysctl => "sysctl",
            Area::Ruleset => "ruleset",
            Area::SourceDestCheck => "source_dest_check",
            Area::Egress => "egress",
            Area::Draining => "draining",
            Area::Supervisor => "supervisor",
            Area::Routes => "routes",
            Area::ElasticIp => "elastic_ip",
            Area::HomeTable => "home_table",
            Area::Credentials => "credentials",
            Area::SourcePorts => "source_ports",
            Area::AddressPool => "address_pool",
            Area::CloudWatch => "cloudwatch",
            Area::ConntrackEvents => "conntrack_events",
            Area::Nat64 => "nat64",
            Area::Test => "test",
        }
    }
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One reason a NAT is not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub area: Area,
    pub message: String,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.area, self.message)
    }
}

/// `/readyz`: 200 with `ready: true`, or 503 with the reasons. Peers
/// decide takeovers on it, so it also says what they need to tell a NAT
/// coming up from a failing one, and whom this NAT cannot reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyzBody {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
    /// Not ready yet since the agent started, and nothing known to be
    /// wrong: a restarted agent still proving its data plane and egress. A
    /// peer does not take over a starting NAT.
    #[serde(default)]
    pub starting: bool,
    /// The peers (instance ids) this NAT cannot reach over the VPC: a NAT
    /// named here writes its heartbeat so that the peer who cannot see it
    /// can tell a partition from its death.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_peers: Vec<String>,
}

impl ReadyzBody {
    /// The reasons joined for a log line or a peer's health.
    pub fn summary(&self) -> String {
        self.reasons
            .iter()
            .map(Reason::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn has(&self, area: Area) -> bool {
        self.reasons.iter().any(|r| r.area == area)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_with_their_areas() {
        let body = ReadyzBody {
            ready: false,
            reasons: vec![Reason {
                area: Area::Egress,
                message: "probes have not passed yet".into(),
            }],
            ..Default::default()
        };
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(
            text,
            r#"{"ready":false,"reasons":[{"area":"egress","message":"probes have not passed yet"}],"starting":false}"#
        );
        let back: ReadyzBody = serde_json::from_str(&text).unwrap();
        assert!(!back.starting && back.unreachable_peers.is_empty());
        assert_eq!(back, body);
        assert!(back.has(Area::Egress));
        assert_eq!(back.summary(), "egress: probes have not passed yet");
        let ok: ReadyzBody = serde_json::from_str(r#"{"ready":true}"#).unwrap();
        assert!(ok.ready && ok.reasons.is_empty());
    }
}
