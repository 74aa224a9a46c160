//! Route ownership across the group: reads the group's instances and route
//! tables when the schedule says so (`core::schedule`), keeps peer health
//! current, runs [`failover::decide`] every tick and carries out this
//! agent's moves with read-verify-write (`moves`). The heartbeat is
//! written only while this NAT is alerted (`heartbeat`). After a failed
//! pass the next waits (`Backoff`), so a throttled agent asks less, not
//! more. What /status shows of it is `run::projection`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natron_contract::readyz::Area;
use natron_contract::status::Health;
use tokio::sync::{watch, Mutex, Notify};
use tracing::{info, warn};

use super::peers::{self, Watch};
use super::unix_ms;
use crate::core::config::FailoverConfig;
use crate::core::failover::{self, View};
use crate::core::peer::Timings;
use crate::core::schedule::{self, Backoff, Repeats, Schedule};
use crate::edge::ec2::{AwsError, Ec2};
use crate::model::instance::GroupInstance;
use crate::model::RouteTable;
use crate::report::status::Shared;

mod heartbeat;
mod moves;
#[cfg(test)]
mod tests;

/// How often the decision runs; EC2 is only called when something is due.
const TICK: Duration = Duration::from_millis(100);

pub struct Coordinator {
    pub ec2: Arc<dyn Ec2>,
    pub shared: Arc<Shared>,
    pub watch: Arc<Watch>,
    pub config: FailoverConfig,
    pub route_interval: Duration,
    pub me: String,
    /// This NAT as the group sees it, from its own metadata: added to the
    /// group's instances when DescribeInstances leaves it out (its
    /// `natron:group` tag missing, or not yet visible after launch), so the
    /// agent still finds itself as its tables' home.
    myself: GroupInstance,
    pub vpc_id: String,
    pub group: String,
    pub draining: AtomicBool,
    /// Rung when a peer has just failed: the prober proves this NAT's
    /// egress at once, before a takeover.
    pub probe_now: Arc<Notify>,
    /// Whether this NAT must write its heartbeat (see `heartbeat`).
    alerted: watch::Sender<bool>,
    state: Mutex<LoopState>,
}

#[derive(Default)]
pub(super) struct LoopState {
    pub(super) instances: Vec<GroupInstance>,
    instances_at: Option<Instant>,
    /// The same moment on the wall clock heartbeats are compared with.
    instances_read_ms: u64,
    pub(super) tables: Vec<RouteTable>,
    tables_at: Option<Instant>,
    /// Per table: its owner as last seen and since when.
    owners: BTreeMap<String, (String, Instant)>,
    ready_since: Option<Instant>,
    /// Per peer: since when it has been seen failed.
    failed_since: BTreeMap<String, Instant>,
    backoff: Backoff,
    /// The failing passes' error, as last logged.
    failing: Repeats,
    next_pass: Option<Instant>,
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ec2: Arc<dyn Ec2>,
        shared: Arc<Shared>,
        watch: Arc<Watch>,
        config: FailoverConfig,
        route_interval: Duration,
        myself: GroupInstance,
        vpc_id: String,
        group: String,
        probe_now: Arc<Notify>,
    ) -> Coordinator {
        Coordinator {
            ec2,
            shared,
            watch,
            config,
            route_interval,
            me: myself.instance_id.clone(),
            myself,
            vpc_id,
            group,
            draining: AtomicBool::new(false),
            probe_now,
            alerted: watch::channel(false).0,
            state: Mutex::new(LoopState::default()),
        }
    }

    pub fn timings(&self) -> Timings {
        let c = &self.config;
        Timings {
            rise: c.peer_rise,
            fall: c.peer_fall,
            boot_grace: c.boot_grace,
            agent_down_grace: c.agent_down_grace,
            proof_window: c.proof_window,
            heartbeat_timeout: c.heartbeat_timeout,
        }
    }

    /// Decides and acts every tick until the agent drains; after a failed
    /// pass, waits out the backoff first.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A handoff runs its own passes; this loop waits meanwhile.
            if self.draining.load(Ordering::SeqCst) {
                continue;
            }
            let waiting = self
                .state
                .lock()
                .await
                .next_pass
                .is_some_and(|t| Instant::now() < t);
            if waiting {
                continue;
            }
            let result = self.pass(false).await;
            let mut st = self.state.lock().await;
            // Only a failure says something about credentials here: a pass
            // may have had no EC2 call due. The data-plane steps, which
            // always call, clear it.
            if let Err(e) = &result {
                self.shared.update(|s| s.note_ec2(Some(e)));
            }
            match result {
                Ok(_) => {
                    if st.failing.over() {
                        info!("route coordination passes succeed again");
                    }
                    st.backoff.succeed();
                    st.next_pass = None;
                    self.shared.update(|s| s.ec2.backoff_ms = None);
                }
                Err(e) => {
                    let wait = st.backoff.fail(e.kind, super::backoff_jitter());
                    st.next_pass = Some(Instant::now() + wait);
                    self.shared.metrics.ec2_errors.inc();
                    if st.failing.due(&e.to_string(), Instant::now()) {
                        warn!(error = %e, "route coordination pass failed; next in {wait:?} (said once a minute while it lasts)");
                    }
                    self.shared.update(|s| {
                        s.set_warning(Area::Routes, Some(e.to_string()));
                        s.ec2.backoff_ms = Some(wait.as_millis() as u64);
                    });
                }
            }
        }
    }

    /// One refresh-decide-act pass; returns the number of moves made.
    async fn pass(&self, draining: bool) -> Result<usize, AwsError> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let ready = self.shared.read(|s| s.is_ready());
        st.ready_since = match (ready, st.ready_since) {
            (true, None) => Some(now),
            (true, since) => since,
            (false, _) => None,
        };
        self.update_alert();
        let unreachable_since_ms: Vec<u64> = self
            .watch
            .trackers()
            .values()
            .filter(|t| t.unreachable())
            .map(|t| t.lost_ms())
            .collect();
        let reads = schedule::due(&Schedule {
            draining,
            since_instances: st.instances_at.map(|t| t.elapsed()),
            since_tables: st.tables_at.map(|t| t.elapsed()),
            unreachable_since_ms,
            instances_read_ms: st.instances_read_ms,
            now_ms: unix_ms(),
            peer_refresh: self.config.peer_refresh,
            heartbeat_interval: self.config.heartbeat_interval,
            proof_window: self.config.proof_window,
            route_interval: self.route_interval,
        });
        if reads.instances {
            self.read_instances(&mut st).await?;
        }
        if reads.tables {
            self.read_tables(&mut st).await?;
        }
        let health = self.health(&st.instances, st.instances_read_ms);
        self.track_failures(&mut st, &health);
        let owner_since: BTreeMap<String, Duration> = st
            .owners
            .iter()
            .map(|(t, (_, since))| (t.clone(), since.elapsed()))
            .collect();
        let failed_for: BTreeMap<String, Duration> = st
            .failed_since
            .iter()
            .map(|(id, since)| (id.clone(), since.elapsed()))
            .collect();
        let moves = failover::decide(&View {
            me: &self.me,
            me_ready_for: st.ready_since.map(|s| s.elapsed()),
            draining,
            instances: &st.instances,
            health: &health,
            tables: &st.tables,
            owner_since: &owner_since,
            hold_down: self.config.hold_down,
            me_proof_ago: self.shared.read(|s| s.proven_at.map(|t| t.elapsed())),
            failed_for: &failed_for,
            settle: self.config.settle,
        });
        let mut made = 0;
        for mv in &moves {
            if self.execute(mv).await? {
                made += 1;
            }
        }
        if !moves.is_empty() {
            self.read_tables(&mut st).await?;
        }
        let me = self.me_in_group(&st.instances);
        let follows = failover::nat64::follows(&me, &st.tables);
        for f in &follows {
            self.follow(f, &me).await?;
        }
        if !follows.is_empty() {
            self.read_tables(&mut st).await?;
        }
        self.publish(&st, &health);
        Ok(made)
    }

    /// This NAT as the group's last read shows it (its ENIs included),
    /// else as its own metadata does.
    fn me_in_group(&self, instances: &[GroupInstance]) -> GroupInstance {
        instances
            .iter()
            .find(|i| i.instance_id == self.me)
            .unwrap_or(&self.myself)
            .clone()
    }

    async fn read_instances(&self, st: &mut LoopState) -> Result<(), AwsError> {
        st.instances = self.ec2.group_instances(&self.vpc_id, &self.group).await?;
        if !st.instances.iter().any(|i| i.instance_id == self.me) {
            st.instances.push(self.myself.clone());
        }
        st.instances_at = Some(Instant::now());
        st.instances_read_ms = unix_ms();
        self.watch.set_targets(
            st.instances
                .iter()
                .filter(|i| i.instance_id != self.me && i.is_running())
                .filter_map(|i| Some((i.instance_id.clone(), i.private_ip?)))
                .collect(),
        );
        Ok(())
    }

    fn health(&self, instances: &[GroupInstance], read_ms: u64) -> BTreeMap<String, Health> {
        let trackers = self.watch.trackers();
        let now = unix_ms();
        let timings = self.timings();
        instances
            .iter()
            .filter(|i| i.instance_id != self.me)
            .map(|i| {
                let h = trackers
                    .get(&i.instance_id)
                    .map(|t| t.health(now, read_ms, i.heartbeat_ms, &timings))
                    .unwrap_or(Health::Unknown);
                (i.instance_id.clone(), h)
            })
            .collect()
    }

    /// Remembers since when each peer is failed; a peer that has just
    /// failed makes the prober prove this NAT's egress at once.
    fn track_failures(&self, st: &mut LoopState, health: &BTreeMap<String, Health>) {
        let now = Instant::now();
        let mut newly = false;
        st.failed_since
            .retain(|id, _| health.get(id).is_some_and(Health::failed));
        for (id, h) in health {
            if h.failed() && !st.failed_since.contains_key(id) {
                st.failed_since.insert(id.clone(), now);
                newly = true;
            }
        }
        for i in &st.instances {
            if !i.is_running() && !st.failed_since.contains_key(&i.instance_id) {
                st.failed_since.insert(i.instance_id.clone(), now);
            }
        }
        if newly {
            self.probe_now.notify_one();
        }
    }

    fn publish(&self, st: &LoopState, health: &BTreeMap<String, Health>) {
        let p = crate::run::projection::project(&self.me, &st.instances, &st.tables, health);
        let m = &self.shared.metrics;
        m.routes_owned.set(p.owned.len() as i64);
        let my_az = self.myself.availability_zone.as_str();
        let home_tables = st
            .tables
            .iter()
            .filter(|t| t.az.as_deref() == Some(my_az))
            .count();
        m.home_route_tables.set(home_tables as i64);
        for peer in &p.peers {
            let labels = vec![("peer".to_string(), peer.instance_id.clone())];
            m.peer_ready
                .get_or_create(&labels)
                .set(i64::from(peer.health == Health::Ready));
        }
        let no_home = (st.tables_at.is_some() && home_tables == 0).then(|| {
            format!(
                "no route table is tagged natron:group={} and natron:az={my_az}: this NAT is home to nothing (run natron apply, or tag the AZ's private route tables)",
                self.group
            )
        });
        self.shared.update(|s| {
            s.routes.tables = st.tables.clone();
            s.routes.owned = p.owned;
            s.failover.peers = p.peers;
            s.failover.tables = p.tables;
            s.set_warning(Area::Routes, None);
            s.set_warning(Area::HomeTable, no_home);
        });
    }
}

/// Starts the peer prober, the heartbeat and the decision loop under the
/// supervisor.
pub fn spawn(
    coordinator: &Arc<Coordinator>,
    peer_port: u16,
    tasks: &mut crate::run::supervisor::Supervisor,
) {
    let c = &coordinator.config;
    tasks.spawn(
        "peers",
        peers::run(
            coordinator.watch.clone(),
            peer_port,
            c.peer_interval,
            c.peer_timeout,
            coordinator.timings(),
        ),
    );
    tasks.spawn("heartbeat", coordinator.clone().heartbeat());
    tasks.spawn("coordinator", coordinator.clone().run());
}
