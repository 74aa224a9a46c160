//! The lab: a VPC of network namespaces driven by the EC2 emulator.
//!
//! ```text
//!   cli-a (10.0.10.10) ─┐                      ┌─ ctl: moto (10.0.255.10:5000), IMDS (169.254.169.254)
//!   nat-a (10.0.0.10)  ─┤── rtr (VPC router) ──┤
//!   cli-b, nat-b ...   ─┘   policy routing per └─ igw: 1:1 NAT ── inet: server 198.51.100.10
//!                           subnet route table,
//!                           source/dest check
//! ```
//! Every namespace is named `nt-<pid>-<seq>-<role>` and deleted when the
//! [`Lab`] is dropped (even on panic), after killing what runs inside.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    Filter, InstanceMetadataOptionsRequest, InstanceMetadataTagsState, ResourceType, Tag,
    TagSpecification,
};
use ipnet::Ipv4Net;

use crate::emulator::{self, REGION};
use crate::faults::{self, Faults};
use crate::imds::{self, Imds};
use crate::internet;
use crate::netns::{self, NsRuntime};
use crate::prober::{self, Records};
use crate::router::{self, Attachments, RouterConfig, TableIds, DELIVERY_TABLE};
use crate::vpc::{self, VpcView};
use crate::{exec, LabError};

pub const VPC_CIDR: &str = "10.0.0.0/16";
/// The EC2 endpoint as instances reach it (an interface endpoint in the VPC).
pub const EC2_ENDPOINT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 10);
const CTL_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 1);
pub const AGENT_PORT: u16 = 9100;

#[derive(Debug, Clone)]
pub struct AzSpec {
    pub name: String,
    pub letter: char,
    pub public_cidr: Ipv4Net,
    pub private_cidr: Ipv4Net,
    pub nat_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    /// The NAT's Elastic IP (TEST-NET-3).
    pub eip: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub group: String,
    pub azs: Vec<AzSpec>,
}

impl LabSpec {
    /// `n` AZs (us-east-1a, -1b, ...), each with a public subnet holding a
    /// NAT instance and a private subnet holding a client.
    pub fn with_azs(n: u8) -> LabSpec {
        let azs = (0..n)
            .map(|i| {
                let letter = (b'a' + i) as char;
                AzSpec {
                    name: format!("{REGION}{letter}"),
                    letter,
                    public_cidr: format!("10.0.{i}.0/24").parse().expect("cidr"),
                    private_cidr: format!("10.0.{}.0/24", 10 + i).parse().expect("cidr"),
                    nat_ip: Ipv4Addr::new(10, 0, i, 10),
                    client_ip: Ipv4Addr::new(10, 0, 10 + i, 10),
                    eip: Ipv4Addr::new(203, 0, 113, 10 + i),
                }
            })
            .collect();
        LabSpec {
            group: "lab".into(),
            azs,
        }
    }
}

/// An instance of the lab: its namespace and its identity in the emulator.
#[derive(Debug, Clone)]
pub struct Host {
    pub role: String,
    pub ns: String,
    pub instance_id: String,
    pub interface_id: String,
    pub subnet_id: String,
    pub ip: Ipv4Addr,
    /// Its link's name on the router side.
    pub router_dev: String,
}

/// A running agent started by [`Lab::start_agent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentId(usize);

struct AgentProcess {
    child: Child,
    log: PathBuf,
    az: usize,
}

/// Default-route changes per route table, as the lab's router saw them.
pub type RouteHistory = Arc<Mutex<BTreeMap<String, Vec<(Instant, Option<vpc::Target>)>>>>;

/// Namespaces and processes to remove, whatever happens.
#[derive(Default)]
struct Cleanup {
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            netns::delete(ns);
        }
        if std::env::var_os("NATRON_LAB_KEEP_LOGS").is_none() {
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

pub struct Lab {
    pub spec: LabSpec,
    pub dir: PathBuf,
    pub ctl_ns: String,
    pub router_ns: String,
    pub igw_ns: String,
    pub inet_ns: String,
    pub vpc_id: String,
    pub nats: Vec<Host>,
    pub clients: Vec<Host>,
    /// The private subnets' route tables (tagged for natron), per AZ.
    pub private_tables: Vec<String>,
    pub public_table: String,
    /// The emulator's state as last read by the sync loop.
    pub view: Arc<RwLock<VpcView>>,
    /// The last sync error, if the latest pass failed.
    pub sync_error: Arc<Mutex<Option<String>>>,
    pub history: RouteHistory,
    /// Which router link each instance sits behind; shared with the sync
    /// loop, since a replacement NAT joins its predecessor's link.
    attachments: Arc<Mutex<Attachments>>,
    faults: Mutex<Faults>,
    ec2: aws_sdk_ec2::Client,
    agents: Mutex<Vec<AgentProcess>>,
    runtimes: Mutex<HashMap<String, Arc<NsRuntime>>>,
    ctl: Option<Arc<NsRuntime>>,
    cleanup: Cleanup,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds the lab. On any error everything created so far is removed.
    pub fn start(spec: LabSpec) -> Result<Lab, LabError> {
        netns::sweep_stale();
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let base = format!("{}{seq}-", netns::prefix());
        let dir = std::env::temp_dir().join(format!("natron-lab-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::Setup(format!("{}: {e}", dir.display())))?;
        let mut cleanup = Cleanup::default();
        cleanup.dir = Some(dir.clone());
        let name = |role: &str| format!("{base}{role}");
        let (ctl_ns, router_ns, igw_ns, inet_ns) =
            (name("ctl"), name("rtr"), name("igw"), name("inet"));
        for ns in [&ctl_ns, &router_ns, &igw_ns, &inet_ns] {
            netns::create(ns)?;
            cleanup.namespaces.push(ns.clone());
        }
        wire_backbone(&ctl_ns, &router_ns, &igw_ns, &inet_ns)?;

        cleanup
            .children
            .push(emulator::start(&ctl_ns, &dir.join("moto.log"))?);
        let ctl = Arc::new(NsRuntime::new(&ctl_ns)?);
        let endpoint = format!("http://127.0.0.1:{}", emulator::PORT);
        let ec2 = ctl.run(async move {
            let c = emulator::client(&endpoint).await;
            emulator::wait_ready(&c, Duration::from_secs(30))
                .await
                .map(|_| c)
        })?;
        let provisioned = {
            let (ec2, spec) = (ec2.clone(), spec.clone());
            ctl.run(async move { provision(&ec2, &spec).await })?
        };

        let mut attachments = Attachments::new();
        let mut nats = Vec::new();
        let mut clients = Vec::new();
        for (i, az) in spec.azs.iter().enumerate() {
            for (role, launched, gateway_net, list) in [
                (
                    format!("nat-{}", az.letter),
                    &provisioned.nats[i],
                    az.public_cidr,
                    &mut nats,
                ),
                (
                    format!("cli-{}", az.letter),
                    &provisioned.clients[i],
                    az.private_cidr,
                    &mut clients,
                ),
            ] {
                let host = Host {
                    ns: name(&role),
                    router_dev: format!("i-{role}"),
                    role,
                    instance_id: launched.instance_id.clone(),
                    interface_id: launched.interface_id.clone(),
                    subnet_id: launched.subnet_id.clone(),
                    ip: launched.ip,
                };
                netns::create(&host.ns)?;
                cleanup.namespaces.push(host.ns.clone());
                wire_host(&router_ns, &host, &launched.mac, gateway_net)?;
                attachments.insert(host.instance_id.clone(), host.router_dev.clone());
                list.push(host);
            }
        }

        // First sync before anything runs, then keep syncing.
        let view = Arc::new(RwLock::new(VpcView::default()));
        let sync_error = Arc::new(Mutex::new(None));
        let history = RouteHistory::default();
        let attachments = Arc::new(Mutex::new(attachments));
        let mut syncer = Syncer {
            history: history.clone(),
            ec2: ec2.clone(),
            vpc_id: provisioned.vpc_id.clone(),
            router_ns: router_ns.clone(),
            igw_ns: igw_ns.clone(),
            attachments: attachments.clone(),
            ids: TableIds::default(),
            applied: None,
            view: view.clone(),
            error: sync_error.clone(),
        };
        let mut syncer = ctl.run(async move {
            let result = syncer.pass().await;
            result.map(|_| syncer)
        })?;
        ctl.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = syncer.pass().await;
            }
        });
        let imds_server = Imds::new(view.clone(), REGION);
        ctl.run(async move {
            let listener = tokio::net::TcpListener::bind((imds::ADDR, 80))
                .await
                .map_err(|e| LabError::Setup(format!("IMDS stub on {}:80: {e}", imds::ADDR)))?;
            tokio::spawn(imds_server.serve(listener));
            Ok::<_, LabError>(())
        })?;
        let inet = Arc::new(NsRuntime::new(&inet_ns)?);
        inet.run(internet::serve())
            .map_err(|e| LabError::Setup(format!("internet server: {e}")))?;

        let mut runtimes = HashMap::new();
        runtimes.insert(inet_ns.clone(), inet);
        Ok(Lab {
            spec,
            dir,
            ctl_ns,
            router_ns,
            igw_ns,
            inet_ns,
            vpc_id: provisioned.vpc_id,
            nats,
            clients,
            private_tables: provisioned.private_tables,
            public_table: provisioned.public_table,
            view,
            sync_error,
            history,
            attachments,
            faults: Mutex::new(Faults::default()),
            ec2,
            agents: Mutex::new(Vec::new()),
            runtimes: Mutex::new(runtimes),
            ctl: Some(ctl),
            cleanup,
        })
    }

    fn runtime(&self, ns: &str) -> Arc<NsRuntime> {
        let mut rts = self.runtimes.lock().expect("runtimes");
        rts.entry(ns.to_string())
            .or_insert_with(|| Arc::new(NsRuntime::new(ns).expect("runtime in a lab namespace")))
            .clone()
    }

    /// Runs `f` with an EC2 client, in the control namespace.
    pub fn ec2<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(aws_sdk_ec2::Client) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.ctl
            .as_ref()
            .expect("ctl runtime")
            .run(f(self.ec2.clone()))
    }

    /// Runs `fut` inside `host`'s namespace and waits for it.
    pub fn run_in<Fut>(&self, ns: &str, fut: Fut) -> Fut::Output
    where
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.runtime(ns).run(fut)
    }

    /// Starts `fut` inside `ns`; collect it with [`Lab::join`].
    pub fn spawn_in<Fut>(&self, ns: &str, fut: Fut) -> tokio::task::JoinHandle<Fut::Output>
    where
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.runtime(ns).spawn(fut)
    }

    pub fn join<T: Send + 'static>(&self, handle: tokio::task::JoinHandle<T>) -> T {
        self.runtime(&self.inet_ns)
            .run(async move { handle.await.expect("lab task") })
    }

    /// GET `path` from the internet server, from client `az`.
    pub fn client_get(&self, az: usize, path: &str) -> Result<String, String> {
        let path = path.to_string();
        self.run_in(&self.clients[az].ns, async move {
            internet::http_get(&path, Duration::from_secs(2)).await
        })
    }

    /// The agent configuration the lab uses unless a test says otherwise:
    /// probes aimed at the lab's internet server, short intervals.
    pub fn agent_config(&self) -> String {
        let s = internet::SERVER;
        format!(
            "[http]\nlisten = \"0.0.0.0:{AGENT_PORT}\"\n\n[health]\ntargets = [\"tcp://{s}:{}\", \"http://{s}/\"]\n\
             interval = \"200ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n\n[nat]\nreconcile_interval = \"1s\"\n\n\
             [ec2]\nroute_interval = \"2s\"\nmax_attempts = 3\n",
            internet::HTTP_PORT
        )
    }

    /// Starts natron-agent in NAT `az`'s namespace with `config` (TOML).
    pub fn start_agent(
        &self,
        az: usize,
        config: &str,
        extra_args: &[&str],
    ) -> Result<AgentId, LabError> {
        self.start_agent_with_env(az, config, extra_args, &[])
    }

    pub fn start_agent_with_env(
        &self,
        az: usize,
        config: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<AgentId, LabError> {
        let nat = &self.nats[az];
        let mut agents = self.agents.lock().expect("agents");
        let n = agents.len();
        let config_path = self.dir.join(format!("{}-{n}.toml", nat.role));
        std::fs::write(&config_path, config)
            .map_err(|e| LabError::Setup(format!("{}: {e}", config_path.display())))?;
        let log = self.dir.join(format!("{}-{n}.log", nat.role));
        let mut args = vec!["--config".to_string(), config_path.display().to_string()];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut vars: Vec<(String, String)> = vec![
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://{EC2_ENDPOINT_IP}:{}", emulator::PORT),
            ),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                format!("http://{}/", imds::ADDR),
            ),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push((k.to_string(), v.to_string()));
        }
        let child = exec::spawn_in_ns(&nat.ns, &agent_binary()?, &args, &vars, &log)?;
        agents.push(AgentProcess { child, log, az });
        Ok(AgentId(n))
    }

    pub fn agent_pid(&self, id: AgentId) -> u32 {
        self.agents.lock().expect("agents")[id.0].child.id()
    }

    pub fn signal_agent(&self, id: AgentId, signal: nix::sys::signal::Signal) {
        exec::signal(self.agent_pid(id), signal);
    }

    /// Waits up to `timeout` for the agent to exit; its exit code if it did.
    pub fn wait_agent_exit(&self, id: AgentId, timeout: Duration) -> Option<Option<i32>> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.agents.lock().expect("agents")[id.0].child.try_wait() {
                return Some(status.code());
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn agent_log(&self, id: AgentId) -> String {
        let path = self.agents.lock().expect("agents")[id.0].log.clone();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// GET `path` from the agent of NAT `az`: (status code, body).
    pub fn agent_get(&self, az: usize, path: &str) -> Result<(u16, String), String> {
        let path = path.to_string();
        self.run_in(&self.nats[az].ns, async move {
            let get = natron_agent::probe::http_get("127.0.0.1", AGENT_PORT, &path);
            tokio::time::timeout(Duration::from_secs(3), get)
                .await
                .unwrap_or_else(|_| Err("agent: no answer".into()))
                .map_err(|e| format!("agent: {e}"))
        })
    }

    /// The agent's /status as JSON.
    pub fn agent_status(&self, az: usize) -> Result<serde_json::Value, String> {
        let (_, body) = self.agent_get(az, "/status")?;
        serde_json::from_str(&body).map_err(|e| format!("/status: {e}: {body}"))
    }

    /// `nft -j list table FAMILY NAME` in `ns`, or None when absent.
    pub fn nft_table(&self, ns: &str, family: &str, table: &str) -> Option<serde_json::Value> {
        let out = exec::in_ns(ns, "nft", &["-j", "list", "table", family, table]).ok()?;
        serde_json::from_str(&out).ok()
    }

    /// Polls `f` every 50 ms until it returns Some, or fails after `timeout`
    /// with `what`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Result<T, String> {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{what}: not within {timeout:?} (lab sync error: {:?})",
                    self.sync_error.lock().expect("sync").clone()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The emulator's SourceDestCheck for instance `id`.
    pub fn source_dest_check(&self, id: &str) -> Option<bool> {
        let id = id.to_string();
        self.ec2(|ec2| async move {
            let out = ec2
                .describe_instances()
                .instance_ids(id)
                .send()
                .await
                .ok()?;
            out.reservations()
                .first()?
                .instances()
                .first()?
                .source_dest_check()
        })
    }

    /// The instance holding AZ `az`'s Elastic IP, per the emulator.
    pub fn elastic_ip_holder(&self, az: usize) -> Option<String> {
        let ip = self.spec.azs[az].eip.to_string();
        self.ec2(|ec2| async move {
            let out = ec2.describe_addresses().public_ips(ip).send().await.ok()?;
            // The emulator says "" for an address on no instance.
            let holder = out.addresses().first()?.instance_id()?;
            (!holder.is_empty()).then(|| holder.to_string())
        })
    }

    /// Where route table `table`'s default route points, per the emulator.
    pub fn default_route_of(&self, table: &str) -> Option<vpc::Target> {
        let (vpc_id, table) = (self.vpc_id.clone(), table.to_string());
        self.ec2(|ec2| async move {
            let view = vpc::read(&ec2, &vpc_id).await.ok()?;
            view.default_target(&table)
        })
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }

    /// [`Lab::agent_config`] plus failover timings for the lab: peers asked
    /// every 200 ms, heartbeat every 500 ms (stale after 1.2 s), `hold_down`.
    pub fn failover_config(&self, hold_down: Duration) -> String {
        format!(
            "{}\n[failover]\npeer_interval = \"200ms\"\npeer_timeout = \"200ms\"\npeer_rise = 2\npeer_fall = 3\n\
             heartbeat_interval = \"500ms\"\nheartbeat_timeout = \"1200ms\"\nhold_down = \"{}ms\"\n\
             peer_refresh = \"5s\"\nhandoff_timeout = \"5s\"\nlifecycle_interval = \"500ms\"\n",
            self.agent_config(),
            hold_down.as_millis()
        )
    }

    /// Starts a 50 ms prober in client `az`'s subnet.
    pub fn start_prober(&self, az: usize) -> Records {
        let records = Records::default();
        self.spawn_in(&self.clients[az].ns, prober::run(records.clone()));
        records
    }

    /// The instance id whose ENI `table`'s default route targets, per the
    /// lab router's last sync.
    pub fn table_owner(&self, table: &str) -> Option<String> {
        let view = self.view.read().expect("view");
        match view.default_target(table)? {
            vpc::Target::Interface(eni) => view
                .instances
                .iter()
                .find(|i| i.interface_id == eni)
                .map(|i| i.id.clone()),
            vpc::Target::Instance(id) => Some(id),
            _ => None,
        }
    }

    /// The default-route changes of `table` seen so far.
    pub fn route_changes(&self, table: &str) -> Vec<(Instant, Option<vpc::Target>)> {
        self.history
            .lock()
            .expect("history")
            .get(table)
            .cloned()
            .unwrap_or_default()
    }

    /// Auto Scaling starts terminating NAT `az`: its lifecycle hook holds it
    /// running while IMDS reports the target state `Terminated`.
    pub fn start_termination(&self, az: usize) -> Result<(), LabError> {
        let id = self.nats[az].instance_id.clone();
        self.ec2(|c| async move {
            c.create_tags()
                .resources(&id)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(imds::LIFECYCLE_TAG)
                        .value("Terminated")
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| LabError::Emulator(format!("CreateTags {id}: {e}")))
        })
    }

    /// Fills NAT `az`'s conntrack table with `flows` assured flows inside
    /// its namespace, then tries `extra` new ones (refused when full).
    pub fn fill_conntrack(&self, az: usize, flows: usize, extra: usize) -> std::io::Result<()> {
        self.run_in(
            &self.nats[az].ns,
            crate::conntrack::fill_with_assured_flows(flows, extra),
        )
    }

    /// NAT `az` dies: its agents are SIGKILLed and its links go down.
    pub fn kill_nat(&self, az: usize) -> Result<(), LabError> {
        let nat = &self.nats[az];
        exec::ip(&nat.ns, &["link", "set", "eth0", "down"])?;
        exec::ip(&self.router_ns, &["link", "set", &nat.router_dev, "down"])?;
        for a in self
            .agents
            .lock()
            .expect("agents")
            .iter_mut()
            .filter(|a| a.az == az)
        {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        Ok(())
    }

    /// NAT `az`'s links come back (its agent must be started again).
    pub fn revive_nat(&self, az: usize) -> Result<(), LabError> {
        let nat = &self.nats[az];
        let subnet = self.spec.azs[az].public_cidr;
        let gateway = subnet.hosts().next().expect("hosts").to_string();
        exec::ip(&self.router_ns, &["link", "set", &nat.router_dev, "up"])?;
        exec::ip(&nat.ns, &["link", "set", "eth0", "up"])?;
        exec::ip(
            &nat.ns,
            &[
                "route", "replace", "default", "via", &gateway, "dev", "eth0",
            ],
        )?;
        let dest = format!("{}/32", nat.ip);
        let table = DELIVERY_TABLE.to_string();
        exec::ip(
            &self.router_ns,
            &[
                "route",
                "replace",
                &dest,
                "dev",
                &nat.router_dev,
                "table",
                &table,
            ],
        )?;
        Ok(())
    }

    /// Auto Scaling replaces dead NAT `az` (kill it first with
    /// [`Lab::kill_nat`]): the old instance is stopped in the emulator and
    /// keeps whatever Elastic IP it held, as in EC2, and a new instance of
    /// the group is launched in the same public subnet. The new one lives
    /// in the old one's namespace, behind the same router link, at the next
    /// address (the emulator never hands a private IP out twice). Its agent
    /// is not started.
    pub fn replace_nat(&mut self, az: usize) -> Result<(), LabError> {
        let old = self.nats[az].clone();
        let ip = Ipv4Addr::from(u32::from(old.ip) + 1);
        let name = format!("nat-{}", self.spec.azs[az].letter);
        let (group, subnet, old_id) = (
            self.spec.group.clone(),
            old.subnet_id.clone(),
            old.instance_id.clone(),
        );
        let launched = self.ec2(|c| async move {
            c.stop_instances()
                .instance_ids(&old_id)
                .send()
                .await
                .map_err(emu("StopInstances"))?;
            launch(
                &c,
                &subnet,
                ip,
                &[("Name", &name), ("natron:group", &group)],
            )
            .await
        })?;
        let prefix = self.spec.azs[az].public_cidr.prefix_len().to_string();
        exec::ip(&old.ns, &["addr", "flush", "dev", "eth0"])?;
        exec::ip(
            &old.ns,
            &["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"],
        )?;
        self.attachments
            .lock()
            .expect("attachments")
            .insert(launched.instance_id.clone(), old.router_dev.clone());
        let nat = &mut self.nats[az];
        nat.instance_id = launched.instance_id;
        nat.interface_id = launched.interface_id;
        nat.ip = ip;
        self.revive_nat(az)
    }

    fn change_faults(&self, f: impl FnOnce(&mut Faults)) -> Result<(), LabError> {
        let mut faults = self.faults.lock().expect("faults");
        f(&mut faults);
        faults::apply(&self.router_ns, &self.igw_ns, &faults)
    }

    /// The IGW drops NAT `az`'s internet traffic (both ways).
    pub fn break_egress(&self, az: usize) -> Result<(), LabError> {
        let pair = (self.nats[az].ip, self.spec.azs[az].eip);
        self.change_faults(|f| {
            f.egress_blocked.insert(pair);
        })
    }

    pub fn restore_egress(&self, az: usize) -> Result<(), LabError> {
        let pair = (self.nats[az].ip, self.spec.azs[az].eip);
        self.change_faults(|f| {
            f.egress_blocked.remove(&pair);
        })
    }

    /// The VPC router drops everything between NATs `a` and `b`.
    pub fn partition(&self, a: usize, b: usize) -> Result<(), LabError> {
        let pair = (self.nats[a].ip, self.nats[b].ip);
        self.change_faults(|f| {
            f.partitions.insert(pair);
        })
    }

    pub fn heal_partitions(&self) -> Result<(), LabError> {
        self.change_faults(|f| f.partitions.clear())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for agent in self
            .agents
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
        {
            self.cleanup.children.push(agent.child);
        }
        // Stop the harness's threads before their namespaces go.
        self.ctl.take();
        self.runtimes.lock().map(|mut r| r.clear()).ok();
        // `cleanup` then kills the processes and deletes the namespaces.
    }
}

/// The natron-agent binary: `$NATRON_AGENT_BIN`, else next to this
/// executable (target/<profile>/ or its deps/ directory).
pub fn agent_binary() -> Result<PathBuf, LabError> {
    if let Some(p) = std::env::var_os("NATRON_AGENT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(|e| LabError::Setup(e.to_string()))?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join("natron-agent");
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    Err(LabError::Setup(format!(
        "natron-agent binary not found near {}; build it first (cargo build -p natron-agent) or set NATRON_AGENT_BIN",
        exe.display()
    )))
}

fn sysctl(ns: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(settings);
    exec::in_ns(ns, "sysctl", &args).map(|_| ())
}

/// Router <-> control, router <-> IGW <-> internet, and the router's rules.
fn wire_backbone(ctl: &str, rtr: &str, igw: &str, inet: &str) -> Result<(), LabError> {
    sysctl(
        rtr,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
            "net.ipv4.conf.default.proxy_arp=1",
        ],
    )?;
    sysctl(
        igw,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ],
    )?;
    let r = |args: &[&str]| exec::ip(rtr, args).map(|_| ());
    // Control namespace: the EC2 endpoint and the metadata address.
    r(&[
        "link", "add", "ctl0", "type", "veth", "peer", "name", "eth0", "netns", ctl,
    ])?;
    r(&["addr", "add", &format!("{CTL_GATEWAY}/32"), "dev", "ctl0"])?;
    r(&["link", "set", "ctl0", "up"])?;
    let c = |args: &[&str]| exec::ip(ctl, args).map(|_| ());
    c(&[
        "addr",
        "add",
        &format!("{EC2_ENDPOINT_IP}/32"),
        "dev",
        "eth0",
    ])?;
    c(&["addr", "add", &format!("{}/32", imds::ADDR), "dev", "eth0"])?;
    c(&["link", "set", "eth0", "up"])?;
    c(&[
        "route",
        "add",
        "default",
        "via",
        &CTL_GATEWAY.to_string(),
        "dev",
        "eth0",
        "onlink",
    ])?;
    let table = DELIVERY_TABLE.to_string();
    r(&[
        "route",
        "add",
        &format!("{EC2_ENDPOINT_IP}/32"),
        "dev",
        "ctl0",
        "table",
        &table,
    ])?;
    r(&[
        "route",
        "add",
        &format!("{}/32", imds::ADDR),
        "dev",
        "ctl0",
        "table",
        &table,
    ])?;
    // IGW and internet.
    r(&[
        "link",
        "add",
        router::ROUTER_IGW_DEV,
        "type",
        "veth",
        "peer",
        "name",
        router::IGW_VPC_DEV,
        "netns",
        igw,
    ])?;
    r(&[
        "addr",
        "add",
        &format!("{}/30", router::ROUTER_IGW_ADDR),
        "dev",
        router::ROUTER_IGW_DEV,
    ])?;
    r(&["link", "set", router::ROUTER_IGW_DEV, "up"])?;
    let g = |args: &[&str]| exec::ip(igw, args).map(|_| ());
    g(&[
        "addr",
        "add",
        &format!("{}/30", router::IGW_ADDR),
        "dev",
        router::IGW_VPC_DEV,
    ])?;
    g(&["link", "set", router::IGW_VPC_DEV, "up"])?;
    g(&[
        "route",
        "add",
        VPC_CIDR,
        "via",
        &router::ROUTER_IGW_ADDR.to_string(),
    ])?;
    g(&[
        "link",
        "add",
        router::IGW_INET_DEV,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        inet,
    ])?;
    g(&[
        "addr",
        "add",
        &format!("{}/24", internet::GATEWAY),
        "dev",
        router::IGW_INET_DEV,
    ])?;
    g(&["link", "set", router::IGW_INET_DEV, "up"])?;
    let i = |args: &[&str]| exec::ip(inet, args).map(|_| ());
    i(&[
        "addr",
        "add",
        &format!("{}/24", internet::SERVER),
        "dev",
        "eth0",
    ])?;
    i(&["link", "set", "eth0", "up"])?;
    i(&[
        "route",
        "add",
        "default",
        "via",
        &internet::GATEWAY.to_string(),
    ])?;
    // Router policy: metadata and traffic from the control plane and the
    // IGW are delivered directly; everything else follows its subnet's
    // route table (pref 200, synced), then local delivery, then nothing.
    let imds_dest = format!("{}/32", imds::ADDR);
    r(&[
        "rule", "add", "pref", "100", "to", &imds_dest, "lookup", &table,
    ])?;
    r(&[
        "rule", "add", "pref", "150", "iif", "ctl0", "lookup", &table,
    ])?;
    r(&[
        "rule",
        "add",
        "pref",
        "151",
        "iif",
        router::ROUTER_IGW_DEV,
        "lookup",
        &table,
    ])?;
    r(&["rule", "add", "pref", "250", "lookup", &table])?;
    r(&["rule", "add", "pref", "260", "unreachable"])?;
    Ok(())
}

/// An instance's single interface (eth0, with its emulator MAC) and its
/// router side: the subnet gateway address, proxy ARP, a delivery route.
fn wire_host(rtr: &str, host: &Host, mac: &str, subnet: Ipv4Net) -> Result<(), LabError> {
    let gateway = subnet.hosts().next().expect("subnet has hosts");
    let dev = host.router_dev.as_str();
    exec::ip(
        rtr,
        &[
            "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", &host.ns,
        ],
    )?;
    if !mac.is_empty() {
        exec::ip(&host.ns, &["link", "set", "eth0", "address", mac])?;
    }
    exec::ip(
        &host.ns,
        &[
            "addr",
            "add",
            &format!("{}/{}", host.ip, subnet.prefix_len()),
            "dev",
            "eth0",
        ],
    )?;
    exec::ip(&host.ns, &["link", "set", "eth0", "up"])?;
    exec::ip(
        &host.ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
            "dev",
            "eth0",
        ],
    )?;
    exec::ip(rtr, &["addr", "add", &format!("{gateway}/32"), "dev", dev])?;
    exec::ip(rtr, &["link", "set", dev, "up"])?;
    exec::ip(
        rtr,
        &[
            "route",
            "add",
            &format!("{}/32", host.ip),
            "dev",
            dev,
            "table",
            &DELIVERY_TABLE.to_string(),
        ],
    )?;
    Ok(())
}

struct Launched {
    instance_id: String,
    interface_id: String,
    subnet_id: String,
    mac: String,
    ip: Ipv4Addr,
}

struct Provisioned {
    vpc_id: String,
    public_table: String,
    private_tables: Vec<String>,
    nats: Vec<Launched>,
    clients: Vec<Launched>,
}

fn emu<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> LabError + '_ {
    move |e| LabError::Emulator(format!("{what}: {e}"))
}

fn tags(kind: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            pairs
                .iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build()
}

/// Creates the seed's topology in the emulator: a VPC with an internet
/// gateway, per AZ a public subnet (main route table: 0.0.0.0/0 -> IGW) with
/// a NAT instance holding an Elastic IP, and a private subnet with its own
/// route table tagged for natron (no default route yet) and a client.
async fn provision(ec2: &aws_sdk_ec2::Client, spec: &LabSpec) -> Result<Provisioned, LabError> {
    let vpc = ec2
        .create_vpc()
        .cidr_block(VPC_CIDR)
        .send()
        .await
        .map_err(emu("CreateVpc"))?;
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .unwrap_or_default()
        .to_string();
    let igw = ec2
        .create_internet_gateway()
        .send()
        .await
        .map_err(emu("CreateInternetGateway"))?;
    let igw_id = igw
        .internet_gateway()
        .and_then(|g| g.internet_gateway_id())
        .unwrap_or_default()
        .to_string();
    ec2.attach_internet_gateway()
        .internet_gateway_id(&igw_id)
        .vpc_id(&vpc_id)
        .send()
        .await
        .map_err(emu("AttachInternetGateway"))?;
    let main = ec2
        .describe_route_tables()
        .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
        .filters(
            Filter::builder()
                .name("association.main")
                .values("true")
                .build(),
        )
        .send()
        .await
        .map_err(emu("DescribeRouteTables"))?;
    let public_table = main
        .route_tables()
        .first()
        .and_then(|t| t.route_table_id())
        .ok_or_else(|| LabError::Emulator(format!("{vpc_id} has no main route table")))?
        .to_string();
    ec2.create_route()
        .route_table_id(&public_table)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&igw_id)
        .send()
        .await
        .map_err(emu("CreateRoute to the IGW"))?;

    let mut out = Provisioned {
        vpc_id: vpc_id.clone(),
        public_table,
        private_tables: Vec::new(),
        nats: Vec::new(),
        clients: Vec::new(),
    };
    for az in &spec.azs {
        let subnet = |cidr: Ipv4Net, name: String| {
            let (vpc_id, az_name) = (vpc_id.clone(), az.name.clone());
            async move {
                let s = ec2
                    .create_subnet()
                    .vpc_id(vpc_id)
                    .cidr_block(cidr.to_string())
                    .availability_zone(az_name)
                    .tag_specifications(tags(ResourceType::Subnet, &[("Name", &name)]))
                    .send()
                    .await
                    .map_err(emu("CreateSubnet"))?;
                Ok::<String, LabError>(
                    s.subnet()
                        .and_then(|s| s.subnet_id())
                        .unwrap_or_default()
                        .to_string(),
                )
            }
        };
        let public = subnet(az.public_cidr, format!("public-{}", az.letter)).await?;
        let private = subnet(az.private_cidr, format!("lambda-{}", az.letter)).await?;
        let rt = ec2
            .create_route_table()
            .vpc_id(&vpc_id)
            .tag_specifications(tags(
                ResourceType::RouteTable,
                &[
                    ("Name", &format!("lambda-{}", az.letter)),
                    ("natron:group", &spec.group),
                    ("natron:az", &az.name),
                ],
            ))
            .send()
            .await
            .map_err(emu("CreateRouteTable"))?;
        let rt_id = rt
            .route_table()
            .and_then(|t| t.route_table_id())
            .unwrap_or_default()
            .to_string();
        ec2.associate_route_table()
            .route_table_id(&rt_id)
            .subnet_id(&private)
            .send()
            .await
            .map_err(emu("AssociateRouteTable"))?;
        out.private_tables.push(rt_id);

        let nat = launch(
            ec2,
            &public,
            az.nat_ip,
            &[
                ("Name", &format!("nat-{}", az.letter)),
                ("natron:group", &spec.group),
            ],
        )
        .await?;
        // Tagged as `natron apply --elastic-ip` does, and left free: the
        // agent of the AZ associates it (agent/src/address.rs).
        ec2.allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .address(az.eip.to_string())
            .tag_specifications(tags(
                ResourceType::ElasticIp,
                &[("natron:group", &spec.group), ("natron:az", &az.name)],
            ))
            .send()
            .await
            .map_err(emu("AllocateAddress"))?;
        out.nats.push(nat);
        out.clients.push(
            launch(
                ec2,
                &private,
                az.client_ip,
                &[("Name", &format!("client-{}", az.letter))],
            )
            .await?,
        );
    }
    Ok(out)
}

async fn launch(
    ec2: &aws_sdk_ec2::Client,
    subnet: &str,
    ip: Ipv4Addr,
    tag_pairs: &[(&str, &str)],
) -> Result<Launched, LabError> {
    let out = ec2
        .run_instances()
        .image_id("ami-00000000000000000")
        .instance_type(aws_sdk_ec2::types::InstanceType::T4gNano)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .private_ip_address(ip.to_string())
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                .build(),
        )
        .tag_specifications(tags(ResourceType::Instance, tag_pairs))
        .send()
        .await
        .map_err(emu("RunInstances"))?;
    let i = out
        .instances()
        .first()
        .ok_or_else(|| LabError::Emulator("RunInstances returned no instance".into()))?;
    let nic = i.network_interfaces().first();
    Ok(Launched {
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        interface_id: nic
            .and_then(|n| n.network_interface_id())
            .unwrap_or_default()
            .to_string(),
        subnet_id: subnet.to_string(),
        mac: nic
            .and_then(|n| n.mac_address())
            .unwrap_or_default()
            .to_string(),
        ip,
    })
}

/// Keeps the router and IGW in step with the emulator.
struct Syncer {
    history: RouteHistory,
    ec2: aws_sdk_ec2::Client,
    vpc_id: String,
    router_ns: String,
    igw_ns: String,
    attachments: Arc<Mutex<Attachments>>,
    ids: TableIds,
    applied: Option<RouterConfig>,
    view: Arc<RwLock<VpcView>>,
    error: Arc<Mutex<Option<String>>>,
}

impl Syncer {
    async fn pass(&mut self) -> Result<(), LabError> {
        let result = self.pass_inner().await;
        *self.error.lock().expect("sync") = result.as_ref().err().map(|e| e.to_string());
        result
    }

    async fn pass_inner(&mut self) -> Result<(), LabError> {
        let view = vpc::read(&self.ec2, &self.vpc_id).await?;
        let config = {
            let attachments = self.attachments.lock().expect("attachments");
            router::render(&view, &attachments, &mut self.ids)
        };
        {
            let mut history = self.history.lock().expect("history");
            for t in &view.route_tables {
                let target = view.default_target(&t.id);
                let changes = history.entry(t.id.clone()).or_default();
                if changes.last().map(|(_, last)| last) != Some(&target) {
                    changes.push((Instant::now(), target));
                }
            }
        }
        *self.view.write().expect("view") = view;
        if self.applied.as_ref() == Some(&config) {
            return Ok(());
        }
        let (rtr, igw, old, new) = (
            self.router_ns.clone(),
            self.igw_ns.clone(),
            self.applied.clone(),
            config.clone(),
        );
        tokio::task::spawn_blocking(move || router::apply(&rtr, &igw, old.as_ref(), &new))
            .await
            .map_err(|e| LabError::Setup(format!("router sync task: {e}")))??;
        self.applied = Some(config);
        Ok(())
    }
}
