//! EC2's vocabulary as natron uses it on both sides (agent and provisioner).

use serde::{Deserialize, Serialize};

/// An instance's lifecycle state, as DescribeInstances names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
    /// A state this version does not know; never treated as running.
    #[serde(untagged)]
    Other(String),
}

impl InstanceState {
    pub fn parse(s: &str) -> InstanceState {
        match s {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            other => InstanceState::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Other(s) => s,
        }
    }

    pub fn is_running(&self) -> bool {
        *self == InstanceState::Running
    }

    /// Running or about to be: an instance that may hold resources a
    /// replacement must not take from it.
    pub fn is_live(&self) -> bool {
        matches!(self, InstanceState::Pending | InstanceState::Running)
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The IPv4 default route, the one the failover rules move.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";
/// The well-known NAT64 prefix (RFC 6052), the one the VPC's DNS64
/// synthesizes addresses in: a NAT64 table's route for it follows the
/// default route to the same NAT.
pub const NAT64_ROUTE: &str = "64:ff9b::/96";
/// The IPv6 default route: to an egress-only internet gateway in a NAT64
/// table (`natron apply --nat64`).
pub const IPV6_DEFAULT_ROUTE: &str = "::/0";

/// A route's state: `blackhole` when its target is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteState {
    Active,
    Blackhole,
    #[serde(untagged)]
    Other(String),
}

impl RouteState {
    pub fn parse(s: &str) -> RouteState {
        match s {
            "active" => RouteState::Active,
            "blackhole" => RouteState::Blackhole,
            other => RouteState::Other(other.to_string()),
        }
    }
}

/// Where a route points, as EC2 reports it. AWS fills both the instance and
/// the ENI for an instance route; the emulator only the one that was set,
/// so both are kept and either may match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_id: Option<String>,
    /// Any other target (internet or NAT gateway, peering...), by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RouteState>,
}

impl RouteTarget {
    pub fn interface(id: &str) -> RouteTarget {
        RouteTarget {
            interface_id: Some(id.to_string()),
            ..Default::default()
        }
    }

    pub fn describe(&self) -> String {
        self.interface_id
            .clone()
            .or_else(|| self.instance_id.clone())
            .or_else(|| self.other.clone())
            .unwrap_or_else(|| "nothing".into())
    }

    /// Whether this target names the instance `instance_id` or one of its
    /// ENIs `interface_ids` (the emulator reports only one of the two).
    pub fn names(&self, instance_id: &str, interface_ids: &[String]) -> bool {
        route_names(
            self.instance_id.as_deref(),
            self.interface_id.as_deref(),
            instance_id,
            interface_ids,
        )
    }

    /// Same destination, whatever the route's state.
    pub fn same_target(&self, other: &RouteTarget) -> bool {
        (&self.instance_id, &self.interface_id, &self.other)
            == (&other.instance_id, &other.interface_id, &other.other)
    }

    pub fn is_blackhole(&self) -> bool {
        self.state == Some(RouteState::Blackhole)
    }
}

/// Whether a route with these targets (as EC2 reports them: either may be
/// missing) points at the instance `instance_id` with ENIs `interface_ids`.
/// The one definition for the agent and the provisioner.
pub fn route_names(
    route_instance: Option<&str>,
    route_interface: Option<&str>,
    instance_id: &str,
    interface_ids: &[String],
) -> bool {
    route_instance == Some(instance_id)
        || route_interface.is_some_and(|e| interface_ids.iter().any(|i| i == e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unknown_ones_are_never_running() {
        for s in [
            "pending",
            "running",
            "shutting-down",
            "terminated",
            "stopping",
            "stopped",
        ] {
            let state = InstanceState::parse(s);
            assert_eq!(state.as_str(), s);
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<InstanceState>(&format!("\"{s}\"")).unwrap(),
                state
            );
        }
        let odd = InstanceState::parse("hibernating");
        assert!(!odd.is_running() && !odd.is_live());
        assert_eq!(serde_json::to_string(&odd).unwrap(), "\"hibernating\"");
    }

    #[test]
    fn a_target_names_an_instance_by_id_or_eni() {
        let eni = RouteTarget::interface("eni-1");
        assert!(eni.names("i-1", &["eni-1".into()]));
        assert!(!eni.names("i-1", &["eni-2".into()]));
        let by_id = RouteTarget {
            instance_id: Some("i-1".into()),
            ..Default::default()
        };
        assert!(by_id.names("i-1", &[]));
        let mut active = eni.clone();
        active.state = Some(RouteState::Active);
        assert!(active.same_target(&eni) && active != eni);
    }
}
