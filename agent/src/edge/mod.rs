//! Layer 2, the edges: every side effect on the world outside the agent,
//! each behind a narrow trait with one real implementation and one fake
//! (EC2, CloudWatch, IMDS, nftables, Jool, sysctls), plus the probes' network I/O. Edges
//! import only the model and the pure core; never the reporting side or
//! the loops. `exec` is the only module that spawns processes (`nft`, `conntrack`,
//! `jool`).

pub mod cloudwatch;
pub mod ec2;
pub mod exec;
pub mod flows;
pub mod identity;
pub mod imds;
pub mod jool;
pub mod lifecycle;
pub mod memo;
pub mod nft;
pub mod probe;
pub mod sdk;
pub mod sysctl;
