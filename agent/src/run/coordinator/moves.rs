//! Carrying out moves: read-verify-write of one route (and of the NAT64
//! route that follows it), the route table reads, and the handoff of a
//! NAT going away.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use natron_contract::readyz::Area;
use natron_contract::status::Event;
use natron_contract::tags;
use tracing::{info, warn};

use super::{Coordinator, LoopState};
use crate::core::failover::nat64::{self, Follow, Need};
use crate::core::failover::Move;
use crate::edge::ec2::AwsError;
use crate::model::instance::GroupInstance;
use crate::model::{Destination, RouteTarget, NAT64_ROUTE};
use crate::run::unix_ms;

const EVENTS_KEPT: usize = 20;

/// The verify of read-verify-write: a route read again is what the
/// decision saw (both absent, or the same target whatever its state).
fn unchanged(now: &Option<RouteTarget>, then: &Option<RouteTarget>) -> bool {
    match (now, then) {
        (None, None) => true,
        (Some(now), Some(then)) => now.same_target(then),
        _ => false,
    }
}

impl Coordinator {
    /// Hands every table this agent serves to a ready NAT, then returns
    /// what it did. With no ready NAT the routes stay (traffic keeps
    /// flowing here). The agent stays draining (503) afterwards.
    pub async fn handoff(&self) -> String {
        self.draining.store(true, Ordering::SeqCst);
        self.shared.update(|s| {
            s.problems.insert(
                Area::Draining,
                "this instance is going away: handing route tables to peers".into(),
            );
            s.failover.draining = true;
        });
        let deadline = Instant::now() + self.config.handoff_timeout;
        let mut moved = 0;
        loop {
            match self.pass(true).await {
                Ok(0) => break,
                Ok(n) => {
                    moved += n;
                    info!(moves = n, "handoff pass done");
                }
                Err(e) => warn!(error = %e, "handoff pass failed"),
            }
            if Instant::now() >= deadline {
                let left = self.shared.read(|s| s.routes.owned.clone());
                warn!(tables = ?left, "handoff timed out; these tables still point here");
                return format!(
                    "handoff timed out after {moved} move(s); still pointing here: {}",
                    left.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let owned = self.shared.read(|s| s.routes.owned.clone());
        if owned.is_empty() {
            info!(
                moves = moved,
                "handoff complete: no route table points here any more"
            );
            format!("handoff complete: {moved} route table(s) handed over")
        } else {
            warn!(tables = ?owned, "no ready peer to hand these tables to; they keep pointing here");
            format!("no ready peer: {} keep pointing here", owned.join(", "))
        }
    }

    /// Re-reads the table and moves it only if it still points where the
    /// decision saw it point. Returns whether it moved.
    pub(super) async fn execute(&self, mv: &Move) -> Result<bool, AwsError> {
        let current = self.ec2.route_table(&mv.table).await?;
        if !unchanged(&current.default_route, &mv.expect) {
            info!(table = %mv.table, kind = ?mv.kind, "table changed since the decision; not moving it");
            return Ok(false);
        }
        let from = current
            .default_route
            .as_ref()
            .map_or("nothing".to_string(), |r| r.describe());
        match current.default_route {
            None => {
                self.ec2
                    .create_route(&mv.table, Destination::Default, &mv.to_interface)
                    .await?
            }
            Some(_) => {
                self.ec2
                    .replace_route(&mv.table, Destination::Default, &mv.to_interface)
                    .await?
            }
        }
        info!(
            table = %mv.table, kind = ?mv.kind, from = %from, to = %mv.to_interface, reason = %mv.reason,
            "route 0.0.0.0/0 moved"
        );
        let now = unix_ms();
        self.shared
            .metrics
            .route_moves
            .get_or_create(&vec![("kind".to_string(), mv.kind.name().to_string())])
            .inc();
        self.shared.metrics.last_route_move.set(now as f64 / 1000.0);
        let event = Event {
            unix_ms: now,
            table: mv.table.clone(),
            kind: mv.kind,
            from,
            to: format!("{} ({})", mv.to_interface, mv.to_instance),
            reason: mv.reason.clone(),
        };
        self.shared.update(|s| {
            s.failover.events.insert(0, event);
            s.failover.events.truncate(EVENTS_KEPT);
            s.failover.last_event_unix_ms = Some(now);
        });
        // The table's NAT64 route goes with it at once, on the same read:
        // the table was verified and its default route just written. A
        // failure here is only logged: the default route has moved, and
        // `follow` repairs the NAT64 route on this pass or the next.
        let to = [mv.to_interface.clone()];
        if let Some(need) = nat64::needs(&current, &mv.to_instance, &to) {
            match self.write_nat64(&mv.table, need, &mv.to_interface).await {
                Ok(()) => info!(
                    table = %mv.table, ?need, to = %mv.to_interface,
                    "route {NAT64_ROUTE} moved with the default route"
                ),
                Err(e) => warn!(
                    table = %mv.table, ?need, error = %e,
                    "route {NAT64_ROUTE} not moved with the default route; retried on the next pass"
                ),
            }
        }
        Ok(true)
    }

    async fn write_nat64(&self, table: &str, need: Need, interface: &str) -> Result<(), AwsError> {
        match need {
            Need::Create => {
                self.ec2
                    .create_route(table, Destination::Nat64, interface)
                    .await
            }
            Need::Replace => {
                self.ec2
                    .replace_route(table, Destination::Nat64, interface)
                    .await
            }
        }
    }

    /// Brings one NAT64 route in line with its table's default route
    /// (`failover::nat64`), with read-verify-write: only if the default
    /// route still names this NAT and the NAT64 route is still what the
    /// decision saw. Returns whether it wrote.
    pub(super) async fn follow(&self, f: &Follow, me: &GroupInstance) -> Result<bool, AwsError> {
        let current = self.ec2.route_table(&f.table).await?;
        let still_mine = current
            .default_route
            .as_ref()
            .is_some_and(|d| d.names(&me.instance_id, &me.interface_ids));
        let unchanged = unchanged(&current.nat64_route, &f.expect);
        let need = nat64::needs(&current, &me.instance_id, &me.interface_ids);
        let (true, true, Some(need)) = (still_mine, unchanged, need) else {
            return Ok(false);
        };
        self.write_nat64(&f.table, need, &f.to_interface).await?;
        info!(
            table = %f.table, ?need, to = %f.to_interface,
            "route {NAT64_ROUTE} brought in line with the table's default route"
        );
        Ok(true)
    }

    pub(super) async fn read_tables(&self, st: &mut LoopState) -> Result<(), AwsError> {
        st.tables = self
            .ec2
            .route_tables(&self.vpc_id, &[(tags::GROUP, self.group.as_str())])
            .await?;
        st.tables_at = Some(Instant::now());
        let now = Instant::now();
        for t in &st.tables {
            let owner = t
                .default_route
                .as_ref()
                .map_or("none".to_string(), |r| r.describe());
            match st.owners.get(&t.id) {
                Some((o, _)) if *o == owner => {}
                // First sight: when it last changed is unknown, so long ago.
                None => {
                    st.owners.insert(
                        t.id.clone(),
                        (
                            owner,
                            now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now),
                        ),
                    );
                }
                Some(_) => {
                    st.owners.insert(t.id.clone(), (owner, now));
                }
            }
        }
        Ok(())
    }
}
