//! Layer 0, plain data: what the agent knows about, with no behaviour
//! beyond construction and lookup. Depends on nothing else in the crate
//! (the contract crate holds the vocabulary shared with other processes).

pub mod address;
pub mod instance;
pub mod probe;

pub use natron_contract::ec2::{InstanceState, RouteState, RouteTarget};
pub use natron_contract::status::RouteTable;

/// The destination natron's routes are for.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// Prometheus label pairs.
pub type Labels = Vec<(String, String)>;
