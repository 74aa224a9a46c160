//! Connection tracking's flows as `conntrack -L` (conntrack-tools) lists
//! them, through the narrow [`Flows`] trait: how many are offloaded to
//! the flowtable. The kernel keeps no counter of those; the listing marks
//! each `[OFFLOAD]` (software) or `[HW_OFFLOAD]`.

use std::time::Duration;

use async_trait::async_trait;

use super::exec::{self, ExecError};
use crate::core::kernel;

#[async_trait]
pub trait Flows: Send + Sync {
    /// Flows on the flowtable fast path now.
    async fn offloaded(&self) -> Result<u64, ExecError>;
}

/// `conntrack -L`, parsed by [`kernel::count_offloaded`].
pub struct ConntrackCli;

#[async_trait]
impl Flows for ConntrackCli {
    async fn offloaded(&self) -> Result<u64, ExecError> {
        let out = exec::run("conntrack", &["-L"], None, Duration::from_secs(5)).await?;
        Ok(kernel::count_offloaded(&out))
    }
}

#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::*;

    /// Answers a set count; counts the calls.
    #[derive(Default)]
    pub struct FakeFlows {
        pub offloaded: Mutex<u64>,
        pub calls: Mutex<u32>,
    }

    #[async_trait]
    impl Flows for FakeFlows {
        async fn offloaded(&self) -> Result<u64, ExecError> {
            *self.calls.lock().unwrap() += 1;
            Ok(*self.offloaded.lock().unwrap())
        }
    }
}
