//! Connection tracking's flows as `conntrack -L` (conntrack-tools) lists
//! them, and its events as `conntrack -E` prints them, through the narrow
//! [`Flows`] trait. The kernel keeps no counter of offloaded flows (the
//! listing marks each `[OFFLOAD]`), of connections per destination nor of
//! idle timeouts: `core::kernel::count_offloaded` and
//! `core::ports::busiest` read them off one listing,
//! `core::kernel::is_idle_timeout` off an event.

use std::time::Duration;

use async_trait::async_trait;

use super::exec::{self, ExecError, OnLine};

#[async_trait]
pub trait Flows: Send + Sync {
    /// Every tracked flow, one per line.
    async fn list(&self) -> Result<String, ExecError>;
    /// Watches the translated TCP connections destroyed while still
    /// established, handing each event's line to `on_event`, until the
    /// watcher ends (how it ended is returned).
    async fn watch_established_ends(&self, on_event: &mut OnLine<'_>) -> ExecError;
}

/// `conntrack -L`.
pub struct ConntrackCli;

#[async_trait]
impl Flows for ConntrackCli {
    async fn list(&self) -> Result<String, ExecError> {
        exec::run("conntrack", &["-L"], None, Duration::from_secs(5)).await
    }

    async fn watch_established_ends(&self, on_event: &mut OnLine<'_>) -> ExecError {
        // The protocol and state filters run in the kernel (a socket
        // filter conntrack attaches), so the connections that close as
        // they should never wake the watcher; a 4 MiB socket buffer rides
        // out bursts.
        let args = [
            "-E",
            "-e",
            "DESTROY",
            "-p",
            "tcp",
            "--state",
            "ESTABLISHED",
            "--src-nat",
            "-b",
            "4194304",
        ];
        exec::each_line("conntrack", &args, on_event).await
    }
}

#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::*;

    /// Answers a set listing; counts the calls. A watch hands out the
    /// set events, then ends.
    #[derive(Default)]
    pub struct FakeFlows {
        pub listing: Mutex<String>,
        pub calls: Mutex<u32>,
        pub events: Mutex<Vec<String>>,
        pub watches: Mutex<u32>,
        /// How long a watch runs after handing out its events.
        pub runs_for: Mutex<std::time::Duration>,
    }

    #[async_trait]
    impl Flows for FakeFlows {
        async fn list(&self) -> Result<String, ExecError> {
            *self.calls.lock().unwrap() += 1;
            Ok(self.listing.lock().unwrap().clone())
        }

        async fn watch_established_ends(&self, on_event: &mut OnLine<'_>) -> ExecError {
            *self.watches.lock().unwrap() += 1;
            let events = std::mem::take(&mut *self.events.lock().unwrap());
            events.iter().for_each(|e| on_event(e));
            let runs_for = *self.runs_for.lock().unwrap();
            tokio::time::sleep(runs_for).await;
            ExecError::Failed {
                program: "conntrack".into(),
                args: "-E".into(),
                code: 1,
                stderr: "ended".into(),
            }
        }
    }
}
