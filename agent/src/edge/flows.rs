//! Connection tracking's flows as `conntrack -L` (conntrack-tools) lists
//! them, through the narrow [`Flows`] trait. The kernel keeps no counter of
//! offloaded flows (the listing marks each `[OFFLOAD]`) nor of connections
//! per destination: `core::kernel::count_offloaded` and
//! `core::ports::busiest` read them off one listing.

use std::time::Duration;

use async_trait::async_trait;

use super::exec::{self, ExecError};

#[async_trait]
pub trait Flows: Send + Sync {
    /// Every tracked flow, one per line.
    async fn list(&self) -> Result<String, ExecError>;
}

/// `conntrack -L`.
pub struct ConntrackCli;

#[async_trait]
impl Flows for ConntrackCli {
    async fn list(&self) -> Result<String, ExecError> {
        exec::run("conntrack", &["-L"], None, Duration::from_secs(5)).await
    }
}

#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::*;

    /// Answers a set listing; counts the calls.
    #[derive(Default)]
    pub struct FakeFlows {
        pub listing: Mutex<String>,
        pub calls: Mutex<u32>,
    }

    #[async_trait]
    impl Flows for FakeFlows {
        async fn list(&self) -> Result<String, ExecError> {
            *self.calls.lock().unwrap() += 1;
            Ok(self.listing.lock().unwrap().clone())
        }
    }
}
