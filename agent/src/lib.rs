//! natron-agent: the daemon on each natron NAT instance.
//!
//! Four layers, each a folder, each importing only the layers below it
//! (a test, `tests/layers.rs`, fails on a wrong-way import or a cycle):
//!
//! 0. [`model`]: plain data.
//! 1. [`core`]: pure decisions on it (configuration, failover, the
//!    Elastic IP, health, the EC2 read schedule, the ruleset, sysctls).
//! 2. [`edge`] (side effects behind narrow traits, one real implementation
//!    and one fake each; only `edge::exec` spawns processes) and [`report`]
//!    (state, /readyz, /status, /metrics, systemd, the journal). Neither
//!    imports the other.
//! 3. [`run`]: boot and the supervised loops over all of it.
//!
//! What other processes read (tags, the port, /readyz, /status) is defined
//! in the `natron-contract` crate. See ARCHITECTURE.md for the data flow
//! and the invariants.

pub mod core;
pub mod edge;
pub mod model;
pub mod report;
pub mod run;
