//! What the agents are asked for beyond their defaults: the address pool
//! (checked against the instance type) and the options their user data and
//! IAM policy carry.

use super::{Layout, Request};

/// The address pool against the instance type's limit of private
/// addresses per interface (unknown: not checked; the agent reports
/// EC2's refusal).
pub(super) fn check_addresses(req: &Request, per_interface: Option<u32>) -> Option<String> {
    let limit = per_interface?;
    (req.addresses > limit).then(|| {
        format!(
            "--addresses {}: instance type {} allows {limit} private IPv4 addresses per interface; give at most {limit} or a larger type",
            req.addresses, req.instance_type
        )
    })
}

impl Layout {
    /// What the agents' user data and IAM policy turn on.
    pub fn agent_options(&self) -> crate::documents::AgentOptions {
        crate::documents::AgentOptions {
            cloudwatch_metrics: self.cloudwatch_metrics,
            addresses: self.addresses,
        }
    }
}
