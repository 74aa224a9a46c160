//! Route ownership across the group: reads the group's instances and route
//! tables, keeps peer health and heartbeats current, runs
//! [`failover::decide`] every tick and carries out this agent's moves with
//! read-verify-write. Also the heartbeat writer and the SIGTERM handoff.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::config::FailoverConfig;
use crate::ec2::{Ec2, Ec2Error, GroupInstance, RouteTable, RouteTarget};
use crate::failover::{self, Health, Kind, Move, View};
use crate::identity::GROUP_TAG;
use crate::peers::{self, Watch};
use crate::state::Shared;

/// How often the decision runs; EC2 is only called when something is due.
const TICK: Duration = Duration::from_millis(100);
const EVENTS_KEPT: usize = 20;

/// A route change this agent made, for /status and the logs.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub unix_ms: u64,
    pub table: String,
    pub kind: Kind,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// What /status shows under `failover`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverStatus {
    pub draining: bool,
    pub peers: Vec<PeerStatus>,
    pub tables: Vec<TableStatus>,
    pub events: VecDeque<Event>,
    pub last_event_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub instance_id: String,
    pub availability_zone: String,
    pub private_ip: Option<std::net::Ipv4Addr>,
    pub ec2_state: String,
    pub health: Health,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub id: String,
    pub az: Option<String>,
    pub home: Option<String>,
    pub owner: String,
    /// "home" when served by its home NAT, "taken_over" when by another.
    pub role: &'static str,
}

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
    state: Mutex<LoopState>,
}

#[derive(Default)]
struct LoopState {
    instances: Vec<GroupInstance>,
    instances_at: Option<Instant>,
    /// The same moment on the wall clock heartbeats are compared with.
    instances_read_ms: u64,
    tables: Vec<RouteTable>,
    tables_at: Option<Instant>,
    /// Per table: its owner as last seen and since when.
    owners: BTreeMap<String, (String, Instant)>,
    ready_since: Option<Instant>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn same_target(a: Option<&RouteTarget>, b: Option<&RouteTarget>) -> bool {
    let key = |t: Option<&RouteTarget>| {
        t.map(|t| {
            (
                t.instance_id.clone(),
                t.interface_id.clone(),
                t.other.clone(),
            )
        })
    };
    key(a) == key(b)
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
            state: Mutex::new(LoopState::default()),
        }
    }

    /// Decides and acts every tick until the agent drains.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.draining.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.pass(false).await {
                self.shared.metrics.ec2_errors.inc();
                warn!(error = %e, "route coordination pass failed");
                self.shared.update(|s| {
                    s.warnings.retain(|w| !w.starts_with("routes:"));
                    s.warnings.push(format!("routes: {e}"));
                });
            }
        }
    }

    /// Refreshes this agent's heartbeat tag forever.
    pub async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.ec2.put_heartbeat(&self.me, unix_ms()).await {
                Ok(()) if failing => {
                    info!("heartbeat tag written again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    warn!(error = %e, "cannot write the heartbeat tag (peers may take over if they also lose sight of this NAT)");
                    failing = true;
                }
                Err(e) => debug!(error = %e, "heartbeat"),
            }
        }
    }

    /// Hands every table this agent serves to a ready NAT, then returns.
    /// With no ready NAT the routes stay (traffic keeps flowing here).
    pub async fn handoff(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shared.update(|s| {
            s.problems.insert(
                crate::state::area::DRAINING,
                "stopping: handing route tables to peers".into(),
            );
            s.failover.draining = true;
        });
        let deadline = Instant::now() + self.config.handoff_timeout;
        loop {
            match self.pass(true).await {
                Ok(0) => break,
                Ok(n) => info!(moves = n, "handoff pass done"),
                Err(e) => warn!(error = %e, "handoff pass failed"),
            }
            if Instant::now() >= deadline {
                warn!("handoff timed out; exiting with some tables still pointing here");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let owned = self.shared.snapshot().routes.owned;
        if owned.is_empty() {
            info!("handoff complete: no route table points here any more");
        } else {
            warn!(tables = ?owned, "no ready peer to hand these tables to; they keep pointing here");
        }
    }

    /// One refresh-decide-act pass; returns the number of moves made.
    async fn pass(&self, draining: bool) -> Result<usize, Ec2Error> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let ready = self.shared.snapshot().readiness().is_ok();
        st.ready_since = match (ready, st.ready_since) {
            (true, None) => Some(now),
            (true, since) => since,
            (false, _) => None,
        };
        let unreachable: Vec<String> = self
            .watch
            .trackers
            .lock()
            .expect("peers")
            .iter()
            .filter(|(_, t)| t.unreachable())
            .map(|(id, _)| id.clone())
            .collect();
        // While a peer is unreachable its heartbeat decides: read the group
        // often, and at the very moment a heartbeat seen fresh turns stale.
        let heartbeat_due = !unreachable.is_empty()
            && (st
                .instances_at
                .is_none_or(|t| t.elapsed() >= self.config.heartbeat_interval / 2)
                || peers::staleness_due(
                    st.instances
                        .iter()
                        .filter(|i| unreachable.contains(&i.instance_id))
                        .filter_map(|i| i.heartbeat_ms),
                    st.instances_read_ms,
                    unix_ms(),
                    self.config.heartbeat_timeout,
                ));
        if draining
            || heartbeat_due
            || st
                .instances_at
                .is_none_or(|t| t.elapsed() >= self.config.peer_refresh)
        {
            st.instances = self.ec2.group_instances(&self.vpc_id, &self.group).await?;
            if !st.instances.iter().any(|i| i.instance_id == self.me) {
                st.instances.push(self.myself.clone());
            }
            st.instances_at = Some(Instant::now());
            st.instances_read_ms = unix_ms();
            let targets = st
                .instances
                .iter()
                .filter(|i| i.instance_id != self.me && i.state == "running")
                .filter_map(|i| Some((i.instance_id.clone(), i.private_ip?)))
                .collect();
            *self.watch.targets.lock().expect("peers") = targets;
        }
        if draining
            || st
                .tables_at
                .is_none_or(|t| t.elapsed() >= self.route_interval)
        {
            self.read_tables(&mut st).await?;
        }
        let health = self.health(&st.instances);
        let owner_since: BTreeMap<String, Duration> = st
            .owners
            .iter()
            .map(|(t, (_, since))| (t.clone(), since.elapsed()))
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
        self.publish(&st, &health);
        Ok(made)
    }

    async fn read_tables(&self, st: &mut LoopState) -> Result<(), Ec2Error> {
        st.tables = self
            .ec2
            .route_tables(&self.vpc_id, &[(GROUP_TAG, self.group.as_str())])
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

    fn health(&self, instances: &[GroupInstance]) -> BTreeMap<String, Health> {
        let trackers = self.watch.trackers.lock().expect("peers");
        let now = unix_ms();
        instances
            .iter()
            .filter(|i| i.instance_id != self.me)
            .map(|i| {
                let age = i
                    .heartbeat_ms
                    .map(|b| Duration::from_millis(now.saturating_sub(b)));
                let h = trackers
                    .get(&i.instance_id)
                    .map(|t| t.health(age, self.config.heartbeat_timeout, self.config.boot_grace))
                    .unwrap_or(Health::Unknown);
                (i.instance_id.clone(), h)
            })
            .collect()
    }

    /// Re-reads the table and moves it only if it still points where the
    /// decision saw it point. Returns whether it moved.
    async fn execute(&self, mv: &Move) -> Result<bool, Ec2Error> {
        let current = self.ec2.route_table(&mv.table).await?;
        if !same_target(current.default_route.as_ref(), mv.expect.as_ref()) {
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
                    .create_default_route(&mv.table, &mv.to_interface)
                    .await?
            }
            Some(_) => {
                self.ec2
                    .replace_default_route(&mv.table, &mv.to_interface)
                    .await?
            }
        }
        info!(
            table = %mv.table, kind = ?mv.kind, from = %from, to = %mv.to_interface, reason = %mv.reason,
            "route 0.0.0.0/0 moved"
        );
        let kind = serde_json::to_value(mv.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let now = unix_ms();
        self.shared
            .metrics
            .route_moves
            .get_or_create(&vec![("kind".to_string(), kind)])
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
            s.failover.events.push_front(event);
            s.failover.events.truncate(EVENTS_KEPT);
            s.failover.last_event_unix_ms = Some(now);
            s.routes.last_change = Some(format!("unix_ms:{now} {} {:?}", mv.table, mv.kind));
        });
        Ok(true)
    }

    fn publish(&self, st: &LoopState, health: &BTreeMap<String, Health>) {
        let owner_id = |t: &RouteTable| -> Option<String> {
            let r = t.default_route.as_ref()?;
            st.instances
                .iter()
                .find(|i| i.is_target_of(r))
                .map(|i| i.instance_id.clone())
        };
        let tables: Vec<TableStatus> = st
            .tables
            .iter()
            .map(|t| {
                let home = st
                    .instances
                    .iter()
                    .find(|i| Some(&i.availability_zone) == t.az.as_ref() && i.state == "running")
                    .map(|i| i.instance_id.clone());
                let owner = owner_id(t);
                TableStatus {
                    id: t.id.clone(),
                    az: t.az.clone(),
                    role: if owner.is_some() && owner == home {
                        "home"
                    } else {
                        "taken_over"
                    },
                    home,
                    owner: owner.unwrap_or_else(|| {
                        t.default_route
                            .as_ref()
                            .map_or("none".into(), |r| r.describe())
                    }),
                }
            })
            .collect();
        let owned: Vec<String> = st
            .tables
            .iter()
            .filter(|t| owner_id(t).as_deref() == Some(self.me.as_str()))
            .map(|t| t.id.clone())
            .collect();
        let peers: Vec<PeerStatus> = st
            .instances
            .iter()
            .filter(|i| i.instance_id != self.me)
            .map(|i| PeerStatus {
                instance_id: i.instance_id.clone(),
                availability_zone: i.availability_zone.clone(),
                private_ip: i.private_ip,
                ec2_state: i.state.clone(),
                health: health
                    .get(&i.instance_id)
                    .cloned()
                    .unwrap_or(Health::Unknown),
            })
            .collect();
        let m = &self.shared.metrics;
        m.routes_owned.set(owned.len() as i64);
        for p in &peers {
            let labels = vec![("peer".to_string(), p.instance_id.clone())];
            m.peer_ready
                .get_or_create(&labels)
                .set(i64::from(p.health == Health::Ready));
        }
        self.shared.update(|s| {
            s.routes.tables = st.tables.clone();
            s.routes.owned = owned;
            s.failover.peers = peers;
            s.failover.tables = tables;
            s.warnings.retain(|w| !w.starts_with("routes:"));
        });
    }
}

/// Starts the peer prober, the heartbeat and the decision loop.
pub fn spawn(coordinator: &Arc<Coordinator>, peer_port: u16) {
    let c = &coordinator.config;
    tokio::spawn(peers::run(
        coordinator.watch.clone(),
        peer_port,
        c.peer_interval,
        c.peer_timeout,
        c.peer_rise,
        c.peer_fall,
    ));
    tokio::spawn(coordinator.clone().heartbeat());
    tokio::spawn(coordinator.clone().run());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::fake::FakeEc2;

    fn instance(id: &str, az: &str) -> GroupInstance {
        GroupInstance {
            instance_id: id.into(),
            availability_zone: az.into(),
            private_ip: Some("10.0.0.10".parse().unwrap()),
            interface_ids: vec![format!("eni-{id}")],
            state: "running".into(),
            heartbeat_ms: Some(unix_ms()),
        }
    }

    fn coordinator(ec2: Arc<FakeEc2>, shared: Arc<Shared>) -> Coordinator {
        Coordinator::new(
            ec2,
            shared,
            Arc::new(Watch::default()),
            FailoverConfig::default(),
            Duration::from_secs(10),
            instance("i-a", "az-a"),
            "vpc-1".into(),
            "g".into(),
        )
    }

    /// A fake EC2 with one instance and table rtb-a of az-a, unclaimed.
    fn fake_with_table_a(i: GroupInstance) -> Arc<FakeEc2> {
        let ec2 = Arc::new(FakeEc2::default());
        ec2.instances.lock().unwrap().push(i);
        ec2.tables.lock().unwrap().insert("rtb-a".into(), None);
        ec2.table_az
            .lock()
            .unwrap()
            .insert("rtb-a".into(), "az-a".into());
        ec2
    }

    fn ready(shared: &Shared) {
        shared.update(|s| {
            s.identity = Some(crate::identity::Identity {
                instance_id: "i-a".into(),
                region: "r".into(),
                availability_zone: "az-a".into(),
                mac: "m".into(),
                interface_id: "eni-i-a".into(),
                vpc_id: "vpc-1".into(),
                subnet_id: "s".into(),
                local_ipv4: "10.0.0.10".parse().unwrap(),
                public_ipv4: None,
                vpc_cidrs: vec![],
                group_tag: None,
            });
            s.dataplane.forwarding = true;
            s.dataplane.ruleset_in_place = true;
            s.dataplane.source_dest_check_disabled = true;
            s.egress.healthy = true;
        });
    }

    #[tokio::test]
    async fn read_verify_write_skips_a_table_that_moved_meanwhile() {
        let ec2 = Arc::new(FakeEc2::default());
        let shared = Arc::new(Shared::new());
        let c = coordinator(ec2.clone(), shared);
        let other = RouteTarget {
            interface_id: Some("eni-other".into()),
            ..Default::default()
        };
        ec2.tables
            .lock()
            .unwrap()
            .insert("rtb-1".into(), Some(other));
        let mv = Move {
            table: "rtb-1".into(),
            kind: Kind::Takeover,
            to_instance: "i-a".into(),
            to_interface: "eni-i-a".into(),
            expect: Some(RouteTarget {
                interface_id: Some("eni-dead".into()),
                ..Default::default()
            }),
            reason: "test".into(),
        };
        assert!(
            !c.execute(&mv).await.unwrap(),
            "the route no longer targets the failed NAT"
        );
        assert!(!ec2
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("ReplaceRoute")));
        let mv = Move {
            expect: Some(RouteTarget {
                interface_id: Some("eni-other".into()),
                ..Default::default()
            }),
            ..mv
        };
        assert!(c.execute(&mv).await.unwrap());
        assert!(ec2
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == "ReplaceRoute rtb-1 eni-i-a"));
    }

    #[tokio::test]
    async fn home_claims_once_ready_and_not_before() {
        let ec2 = fake_with_table_a(instance("i-a", "az-a"));
        let shared = Arc::new(Shared::new());
        let c = coordinator(ec2.clone(), shared.clone());
        assert_eq!(c.pass(false).await.unwrap(), 0, "not ready: no claim");
        ready(&shared);
        assert_eq!(c.pass(false).await.unwrap(), 1);
        let calls = ec2.calls.lock().unwrap().clone();
        assert!(
            calls.iter().any(|c| c == "CreateRoute rtb-a eni-i-a"),
            "{calls:?}"
        );
        let status = shared.snapshot();
        assert_eq!(status.failover.events.len(), 1);
        assert_eq!(status.failover.events[0].kind, Kind::Claim);
        assert_eq!(status.routes.owned, vec!["rtb-a".to_string()]);
        // Nothing more to do on the next pass.
        assert_eq!(c.pass(false).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn claims_its_table_even_when_describe_instances_omits_it() {
        // The instance lacks the natron:group tag (group set in the config
        // file instead): DescribeInstances by tag does not return it.
        let ec2 = fake_with_table_a(instance("i-b", "az-b"));
        let shared = Arc::new(Shared::new());
        let c = coordinator(ec2.clone(), shared.clone());
        ready(&shared);
        assert_eq!(c.pass(false).await.unwrap(), 1);
        let calls = ec2.calls.lock().unwrap().clone();
        assert!(
            calls.iter().any(|c| c == "CreateRoute rtb-a eni-i-a"),
            "{calls:?}"
        );
        let peers: Vec<String> = shared
            .snapshot()
            .failover
            .peers
            .iter()
            .map(|p| p.instance_id.clone())
            .collect();
        assert_eq!(peers, vec!["i-b".to_string()], "itself is no peer");
    }
}
