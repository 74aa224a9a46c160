//! Layer 3, the running loops: boot, then the supervised tasks (the HTTP
//! server, the watchdog, the egress prober, the data-plane loop, the peers'
//! watch, the heartbeat and the route coordinator), until the agent is
//! asked to stop or a task dies.
//!
//! Order matters and is the invariant of this layer: the coordinator
//! (route ownership) only ever points a table at this instance while
//! /readyz would answer 200, that is once forwarding, the ruleset and the
//! disabled source/dest check are verified in place and egress has been
//! proven, so a route never points at an instance that would drop traffic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natron_contract::readyz::Area;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{error, info};

pub mod address_pool;
pub mod boot;
pub mod cloudwatch;
pub mod coordinator;
pub mod dataplane;
pub mod elastic_ip;
pub mod idle_timeouts;
pub mod nat64;
pub mod peers;
pub mod prober;
pub mod projection;
pub mod ruleset;
pub mod supervisor;

use self::coordinator::Coordinator;
use self::dataplane::Steps;
use self::prober::Prober;
use self::supervisor::{InjectedPanic, Supervisor, TaskEnded};
use crate::core::settings::Settings;
use crate::edge::cloudwatch::{AwsCloudWatch, Publish};
use crate::edge::ec2::aws::{AwsEc2, Counters};
use crate::edge::ec2::Ec2;
use crate::edge::flows::{ConntrackCli, Flows};
use crate::edge::identity::Identity;
use crate::edge::imds::{Imds, Metadata};
use crate::edge::jool::{Jool, JoolCli};
use crate::edge::nft::{Nft, NftCli};
use crate::edge::sysctl::{ProcSys, Sysctl};
use crate::edge::{lifecycle, memo};
use crate::model::instance::GroupInstance;
use crate::model::InstanceState;
use crate::report::status::Shared;
use crate::report::{http, notify};

/// Switches for tests; none is reachable from the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Pretend the source/dest check is disabled without calling EC2, to
    /// prove in the lab that its check is real.
    pub skip_source_dest_check: bool,
    /// Make one supervised task panic, to prove the supervisor.
    pub inject_panic: Option<InjectedPanic>,
    /// Where the agent remembers its egress verdict across its own
    /// restarts (None: nowhere).
    pub state_dir: Option<std::path::PathBuf>,
}

pub type Ec2Factory =
    Box<dyn Fn(&Identity) -> Pin<Box<dyn Future<Output = Arc<dyn Ec2>> + Send>> + Send + Sync>;
pub type PublishFactory =
    Box<dyn Fn(&Identity) -> Pin<Box<dyn Future<Output = Arc<dyn Publish>> + Send>> + Send + Sync>;

/// The kernel and cloud edges the agent works through.
pub struct Edges {
    pub metadata: Arc<dyn Metadata>,
    pub nft: Arc<dyn Nft>,
    pub sysctl: Arc<dyn Sysctl>,
    pub flows: Arc<dyn Flows>,
    /// NAT64's translator (used only with `nat64.enabled`).
    pub jool: Arc<dyn Jool>,
    pub ec2: Ec2Factory,
    /// CloudWatch in the instance's region (made only with
    /// `metrics.cloudwatch` on).
    pub cloudwatch: PublishFactory,
}

impl Edges {
    /// The real ones: IMDS, `nft`, /proc/sys and EC2 in the instance's
    /// region, counting every EC2 request into `shared`'s metrics.
    pub fn real(settings: &Settings, shared: &Shared, state_dir: &std::path::Path) -> Edges {
        let m = &shared.metrics;
        let counters = Counters {
            requests: m.ec2_requests.clone(),
            retries: m.ec2_retries.clone(),
            failures: m.ec2_failures.clone(),
            last_error: m.ec2_last_error.clone(),
        };
        let (retry, endpoint) = (settings.ec2.retry, settings.ec2.endpoint_url.clone());
        Edges {
            metadata: Arc::new(Imds::new()),
            nft: Arc::new(NftCli::default()),
            sysctl: Arc::new(ProcSys::default()),
            flows: Arc::new(ConntrackCli),
            jool: Arc::new(JoolCli {
                program: "jool".into(),
                dir: state_dir.to_path_buf(),
            }),
            ec2: Box::new(move |identity| {
                let (region, endpoint, counters) =
                    (identity.region.clone(), endpoint.clone(), counters.clone());
                Box::pin(async move {
                    Arc::new(AwsEc2::new(&region, retry, endpoint.as_deref(), counters).await)
                        as Arc<dyn Ec2>
                })
            }),
            cloudwatch: Box::new(|identity| {
                let region = identity.region.clone();
                Box::pin(
                    async move { Arc::new(AwsCloudWatch::new(&region).await) as Arc<dyn Publish> },
                )
            }),
        }
    }
}

pub struct Agent {
    pub settings: Settings,
    pub options: Options,
    pub shared: Arc<Shared>,
    pub edges: Edges,
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to (SIGTERM/SIGINT). Routes stay where they are: a stop of the
    /// agent alone (a restart, an upgrade) leaves the kernel forwarding.
    Stopped,
    /// A supervised task ended: exit non-zero so systemd restarts the
    /// agent; routes are left as they are.
    TaskFailed(TaskEnded),
}

/// How long the HTTP server gets to finish its answers at the end.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The jitter every loop's `Backoff::fail` takes: a fraction in [0, 1)
/// from the clock, so that agents failing together do not retry together.
pub fn backoff_jitter() -> f64 {
    natron_contract::aws::jitter(Duration::from_secs(1)).as_secs_f64()
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Agent {
    /// Runs until `shutdown` resolves or a task dies. Route tables are
    /// handed over only when the instance is going away: a request on
    /// /handoff (`natron-agent handoff`, which the image's shutdown runs) or
    /// a notice in IMDS (Auto Scaling termination, Spot interruption or
    /// rebalance); the agent then drains until it is stopped. A plain stop
    /// moves nothing. The data plane is left in place either way: the agent
    /// is never in the data path.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Exit {
        tokio::pin!(shutdown);
        let mut tasks = Supervisor::new(self.options.inject_panic.clone());
        let token = tasks.token();
        tasks.spawn_graceful("http", {
            let shared = self.shared.clone();
            async move {
                if let Err(e) = http::serve(listener, shared, token.cancelled_owned()).await {
                    error!(error = %e, "HTTP server failed");
                }
            }
        });
        tasks.spawn("watchdog", watchdog(self.shared.clone()));
        let mut handoffs = self
            .shared
            .take_handoff_requests()
            .expect("the agent runs once per Shared");
        let resolved = tokio::select! {
            _ = &mut shutdown => return self.stop(tasks).await,
            ended = tasks.failure() => return self.fail(tasks, ended).await,
            r = boot::boot(&self.settings, &self.edges, &self.shared) => r,
        };
        self.shared.update(|s| {
            s.identity = Some(resolved.identity.clone());
            s.group = Some(resolved.group.clone());
            s.config = json!({
                "file": &self.settings.file,
                "effective": {
                    "group": resolved.group,
                    "ruleset": resolved.spec,
                    "sysctls": resolved.sysctls,
                },
            });
        });
        info!(
            instance = %resolved.identity.instance_id,
            az = %resolved.identity.availability_zone,
            group = %resolved.group,
            egress = %resolved.spec.egress,
            flowtable = resolved.spec.flowtable,
            "identity resolved"
        );
        let probe_now = Arc::new(Notify::new());
        tasks.spawn(
            "prober",
            Prober {
                health: self.settings.health.clone(),
                shared: self.shared.clone(),
                probe_now: probe_now.clone(),
                memo: self.options.state_dir.as_deref().map(memo::egress_path),
                instance_id: resolved.identity.instance_id.clone(),
            }
            .run(),
        );
        let ec2 = (self.edges.ec2)(&resolved.identity).await;
        let id = &resolved.identity;
        let coordinator = Arc::new(Coordinator::new(
            ec2.clone(),
            self.shared.clone(),
            Arc::new(peers::Watch::default()),
            self.settings.failover.clone(),
            self.settings.ec2.route_interval,
            GroupInstance {
                instance_id: id.instance_id.clone(),
                availability_zone: id.availability_zone.clone(),
                private_ip: Some(id.local_ipv4),
                interface_ids: vec![id.interface_id.clone()],
                state: InstanceState::Running,
                heartbeat_ms: None,
            },
            id.vpc_id.clone(),
            resolved.group.clone(),
            probe_now,
        ));
        coordinator::spawn(&coordinator, self.settings.listen.port(), &mut tasks);
        if let Some(settings) = &self.settings.cloudwatch {
            let sink = (self.edges.cloudwatch)(&resolved.identity).await;
            let dimensions = cloudwatch::dimensions(&id.instance_id, &resolved.group);
            tasks.spawn(
                "cloudwatch",
                cloudwatch::publish(sink, self.shared.clone(), settings.clone(), dimensions),
            );
            tasks.spawn(
                "idle-timeouts",
                idle_timeouts::watch(self.edges.flows.clone(), self.shared.clone()),
            );
        }
        let steps = Steps {
            edges: &self.edges,
            shared: &self.shared,
            resolved: &resolved,
            options: &self.options,
            ec2: ec2.as_ref(),
        };
        // The data-plane loop borrows the boot's results, so it runs here
        // rather than as a spawned task; it never returns.
        let notice = lifecycle::going_away(
            self.edges.metadata.as_ref(),
            self.settings.failover.lifecycle_interval,
        );
        let answer = tokio::select! {
            _ = &mut shutdown => return self.stop(tasks).await,
            ended = tasks.failure() => return self.fail(tasks, ended).await,
            _ = steps.run(self.settings.nat.reconcile_interval) => {
                unreachable!("the data-plane loop never returns")
            }
            why = notice => {
                info!("{why}: handing its route tables to peers now");
                None
            }
            Some(asked) = handoffs.recv() => {
                info!("handoff asked for on this instance: handing its route tables to peers now");
                Some(asked)
            }
        };
        let done = coordinator.handoff().await;
        elastic_ip::release(ec2.as_ref(), &self.shared, &resolved).await;
        if let Some(asked) = answer {
            let _ = asked.send(done.clone());
        }
        // Draining (503) until the instance shuts down: a peer must not hand
        // the tables back, nor this agent claim them.
        loop {
            tokio::select! {
                _ = &mut shutdown => return self.stop(tasks).await,
                ended = tasks.failure() => return self.fail(tasks, ended).await,
                Some(again) = handoffs.recv() => {
                    let _ = again.send(format!("already handed over: {done}"));
                }
            }
        }
    }

    /// Asked to stop: every task stopped, routes left where they are.
    async fn stop(&self, tasks: Supervisor) -> Exit {
        info!("stopping; routes and the data plane stay as they are");
        notify::stopping();
        tasks.stop(STOP_GRACE).await;
        Exit::Stopped
    }

    /// A task died: not ready from now on, everything stopped, nothing
    /// handed over.
    async fn fail(&self, tasks: Supervisor, ended: TaskEnded) -> Exit {
        error!(
            task = ended.name(),
            "{ended}; exiting so that systemd restarts the agent (routes stay as they are)"
        );
        self.shared.set_problem(Area::Supervisor, ended.to_string());
        notify::stopping();
        tasks.stop(STOP_GRACE).await;
        Exit::TaskFailed(ended)
    }
}

/// Pings systemd's watchdog while the data-plane loop keeps making passes;
/// a stuck loop stops the pings and systemd restarts the agent.
async fn watchdog(shared: Arc<Shared>) {
    let Some(timeout) = notify::watchdog_timeout() else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(timeout / 4);
    loop {
        tick.tick().await;
        if shared.since_last_pass() < timeout / 2 {
            notify::watchdog();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Fakes of every edge, for the loops' unit tests.

    use super::*;
    use crate::core::kernel;
    use crate::core::ruleset::RulesetSpec;
    use crate::edge::ec2::fake::FakeEc2;
    use crate::edge::flows::fake::FakeFlows;
    use crate::edge::identity::fake::FakeMetadata;
    use crate::edge::jool::fake::FakeJool;
    use crate::edge::nft::fake::FakeNft;
    use crate::edge::sysctl::fake::FakeSysctl;

    pub struct Fakes {
        pub nft: Arc<FakeNft>,
        pub sysctl: Arc<FakeSysctl>,
        pub flows: Arc<FakeFlows>,
        pub jool: Arc<FakeJool>,
    }

    impl Fakes {
        pub fn sysctl_read_only(&self, key: &str) {
            self.sysctl.read_only.lock().unwrap().push(key.into());
        }
    }

    /// Fake edges: `metadata`, an empty kernel with a default route on
    /// ens5, and a fresh fake EC2 from the factory.
    pub fn edges(metadata: FakeMetadata) -> (Edges, Fakes) {
        let nft = Arc::new(FakeNft::default());
        let sysctl = Arc::new(FakeSysctl::default());
        {
            let mut v = sysctl.values.lock().unwrap();
            v.insert(
                "proc:net/route".into(),
                "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                 ens5\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\n"
                    .into(),
            );
            for s in kernel::desired_settings("ens5", 131072, 7440) {
                v.insert(s.key, "unset".into());
            }
        }
        let flows = Arc::new(FakeFlows::default());
        let jool = Arc::new(FakeJool::default());
        let edges = Edges {
            metadata: Arc::new(metadata),
            nft: nft.clone(),
            sysctl: sysctl.clone(),
            flows: flows.clone(),
            jool: jool.clone(),
            ec2: Box::new(|_| Box::pin(async { Arc::new(FakeEc2::default()) as Arc<dyn Ec2> })),
            cloudwatch: Box::new(|_| {
                Box::pin(async {
                    Arc::new(crate::edge::cloudwatch::fake::FakeCloudWatch::default())
                        as Arc<dyn Publish>
                })
            }),
        };
        (
            edges,
            Fakes {
                nft,
                sysctl,
                flows,
                jool,
            },
        )
    }

    /// What boot resolves for `FakeMetadata::typical()`.
    pub fn resolved() -> boot::Resolved {
        let raw = FakeMetadata::typical().values;
        let identity = crate::edge::identity::parse(&raw).unwrap();
        boot::Resolved {
            spec: RulesetSpec {
                egress: "ens5".into(),
                sources: identity.vpc_cidrs.clone(),
                port_range: (1024, 65535),
                fully_random: false,
                flowtable: false,
                agent_port: natron_contract::AGENT_PORT,
                vpc: vec!["10.0.0.0/16".parse().unwrap()],
                mss: Some(1460),
                pool: Vec::new(),
                wire_counters: false,
                nat64: None,
            },
            sysctls: kernel::desired_settings("ens5", 131072, 7440),
            addresses: 1,
            group: "prod".into(),
            identity,
        }
    }

    #[tokio::test]
    async fn a_dead_task_stops_the_agent_without_a_handoff() {
        let (edges, _) = edges(FakeMetadata::typical());
        let mut settings = Settings::default();
        settings.health.targets.clear();
        let agent = Agent {
            settings,
            options: Options {
                skip_source_dest_check: true,
                inject_panic: Some(InjectedPanic {
                    task: "coordinator".into(),
                    after: Duration::from_millis(300),
                }),
                state_dir: None,
            },
            shared: Arc::new(Shared::new()),
            edges,
        };
        let shared = agent.shared.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let exit = tokio::time::timeout(
            Duration::from_secs(10),
            agent.run(listener, std::future::pending()),
        )
        .await
        .expect("the agent exits");
        match exit {
            Exit::TaskFailed(ended) => assert_eq!(ended.name(), "coordinator"),
            other => panic!("{other:?}"),
        }
        let state = shared.snapshot();
        assert!(state.problems[&Area::Supervisor].contains("coordinator"));
        assert!(!state.is_ready());
        assert!(!state.failover.draining, "no handoff");
    }
}
