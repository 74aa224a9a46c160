//! Layer 0, plain data: what the agent knows about, with no behaviour
//! beyond construction and lookup. Depends on nothing else in the crate
//! (the contract crate holds the vocabulary shared with other processes).

pub mod address;
pub mod instance;
pub mod probe;

pub use natron_contract::ec2::{InstanceState, RouteState, RouteTarget};
pub use natron_contract::status::RouteTable;

pub use natron_contract::ec2::{DEFAULT_ROUTE, NAT64_ROUTE};

/// The routes of a table natron writes: its IPv4 default route, which the
/// failover rules move, and its NAT64 route, present only in tables made
/// for NAT64, which follows the default route to the same NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Default,
    Nat64,
}

impl Destination {
    pub fn cidr(self) -> &'static str {
        match self {
            Destination::Default => DEFAULT_ROUTE,
            Destination::Nat64 => NAT64_ROUTE,
        }
    }
}

/// Prometheus label pairs.
pub type Labels = Vec<(String, String)>;
