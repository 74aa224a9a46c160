//! natron's local VPC lab: network namespaces driven by the EC2 emulator.
//!
//! A test builds a [`lab::Lab`]; it gets private clients, NAT instances, a
//! VPC router applying the emulator's route tables and source/dest checks,
//! an internet gateway doing 1:1 NAT for public addresses, an internet
//! server, the EC2 emulator and an IMDSv2 stub. Dropping the lab deletes all
//! of it. Nothing is created in, or sent to, the host's own network.

pub mod boot;
pub mod conntrack;
pub mod dataplane;
pub mod dns64;
pub mod ec2proxy;
pub mod emulator;
pub mod exec;
pub mod faults;
pub mod hold;
pub mod imds;
pub mod internet;
pub mod lab;
pub mod longlived;
pub mod netns;
pub mod prober;
pub mod router;
pub mod scenario;
pub mod stats;
pub mod vm;
pub mod vm_failover;
pub mod vpc;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab setup: {0}")]
    Setup(String),
    #[error("lab command: {0}")]
    Command(String),
    #[error("EC2 emulator: {0}")]
    Emulator(String),
}
