//! The heartbeat, written only while it is needed. A NAT is *alerted*
//! when one of its peers has just gone silent (no answer to its last
//! probe), or when a peer's /readyz says it cannot reach this NAT. Only
//! then can a peer be wondering whether this NAT is dead or cut off, and
//! only then does this NAT write `natron:heartbeat` on its own instance:
//! at once, then every `heartbeat_interval` while the alert lasts. In
//! steady state it writes nothing. Beats are sent without waiting for the
//! previous one (at most two in flight), so a slow EC2 never delays them.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::Coordinator;
use crate::run::unix_ms;

/// Beats in flight at once.
const IN_FLIGHT: usize = 2;

impl Coordinator {
    /// Whether this NAT must beat now, from what its peers' trackers say;
    /// also tells its peers (in /readyz) whom it cannot reach.
    pub(super) fn update_alert(&self) {
        let (alerted, unreachable) = {
            let trackers = self.watch.trackers();
            let unreachable: Vec<String> = trackers
                .iter()
                .filter(|(_, t)| t.silent() || t.unreachable())
                .map(|(id, _)| id.clone())
                .collect();
            let told = trackers.values().any(|t| t.cannot_reach(&self.me));
            (told || !unreachable.is_empty(), unreachable)
        };
        self.alerted.send_if_modified(|a| {
            let changed = *a != alerted;
            *a = alerted;
            changed
        });
        self.shared.update(|s| {
            s.unreachable_peers = unreachable;
            s.ec2.heartbeating = alerted;
        });
    }

    /// Writes heartbeats while alerted, forever.
    pub async fn heartbeat(self: Arc<Self>) {
        let mut alerts = self.alerted.subscribe();
        let mut beats: JoinSet<()> = JoinSet::new();
        loop {
            let open = alerts.wait_for(|a| *a).await.is_ok();
            if !open {
                return std::future::pending().await;
            }
            info!("a peer cannot see this NAT, or it cannot see a peer: writing heartbeats");
            loop {
                while beats.try_join_next().is_some() {}
                if beats.len() < IN_FLIGHT {
                    let (ec2, me) = (self.ec2.clone(), self.me.clone());
                    let timeout = self.config.heartbeat_interval * 2;
                    beats.spawn(async move {
                        match tokio::time::timeout(timeout, ec2.put_heartbeat(&me, unix_ms())).await {
                            Ok(Ok(())) => debug!("heartbeat written"),
                            Ok(Err(e)) => warn!(error = %e, "cannot write the heartbeat tag (a peer that cannot reach this NAT may take its tables)"),
                            Err(_) => warn!("heartbeat write took longer than {timeout:?}"),
                        }
                    });
                }
                tokio::select! {
                    () = tokio::time::sleep(self.config.heartbeat_interval) => {}
                    open = async { alerts.wait_for(|a| !*a).await.is_ok() } => {
                        if !open {
                            return std::future::pending().await;
                        }
                        info!("all peers in sight again: heartbeats stop");
                        break;
                    }
                }
            }
            // Quiet a moment before a new alert beats again.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
