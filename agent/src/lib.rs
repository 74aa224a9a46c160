//! natron-agent: the daemon on each natron NAT instance.
//!
//! Pure core, thin edges. The pure modules compute what should be
//! (`config`, `ruleset`, `failover`, parts of `kernel`, `identity`, `probe`,
//! `peers`);
//! the edges touch the world through narrow traits with one real and one
//! fake implementation (`identity::Metadata`/`imds`, `nft::Nft`,
//! `kernel::Sysctl`, `ec2::Ec2`); `agent` runs the data-plane loop and
//! `coordinator` the route-ownership loop over them;
//! `http`, `notify` and `logging` report. Only `exec` spawns processes.
//! See ARCHITECTURE.md for the data flow and the invariants.

pub mod address;
pub mod agent;
pub mod config;
pub mod coordinator;
pub mod ec2;
pub mod exec;
pub mod failover;
pub mod http;
pub mod identity;
pub mod imds;
pub mod kernel;
pub mod lifecycle;
pub mod logging;
pub mod nft;
pub mod notify;
pub mod peers;
pub mod probe;
pub mod ruleset;
pub mod state;

/// An error and its sources, joined with ": ", for messages that must say
/// what actually went wrong (SDK errors hide it in their sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
