//! An instance of the group, as DescribeInstances reports it.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{InstanceState, RouteTarget};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupInstance {
    pub instance_id: String,
    pub availability_zone: String,
    pub private_ip: Option<Ipv4Addr>,
    pub interface_ids: Vec<String>,
    pub state: InstanceState,
    /// The `natron:heartbeat` tag: unix milliseconds of its last beat.
    pub heartbeat_ms: Option<u64>,
}

impl GroupInstance {
    /// Whether a route with this target points at this instance.
    pub fn is_target_of(&self, target: &RouteTarget) -> bool {
        target.names(&self.instance_id, &self.interface_ids)
    }

    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }

    /// The ENI routes to it name.
    pub fn primary_interface(&self) -> Option<&str> {
        self.interface_ids.first().map(String::as_str)
    }
}

#[cfg(test)]
impl GroupInstance {
    /// A running NAT `id` in `az` with one ENI `eni-<id>`, for tests.
    pub fn running(id: &str, az: &str) -> GroupInstance {
        GroupInstance {
            instance_id: id.into(),
            availability_zone: az.into(),
            private_ip: None,
            interface_ids: vec![format!("eni-{id}")],
            state: InstanceState::Running,
            heartbeat_ms: None,
        }
    }
}
