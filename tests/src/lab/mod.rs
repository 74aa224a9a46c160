//! The lab: a VPC of network namespaces driven by the EC2 emulator.
//!
//! ```text
//!   cli-a (10.0.10.10) ─┐                      ┌─ ctl: moto (10.0.255.10:5000), IMDS (169.254.169.254)
//!   nat-a (10.0.0.10)  ─┤── rtr (VPC router) ──┤
//!   cli-b, nat-b ...   ─┘   policy routing per └─ igw: 1:1 NAT ── inet: server 198.51.100.10
//!   (c6-a: IPv6 only)       subnet route table,    eigw: egress-only ──┘ (and 2001:db8:…)
//!                           source/dest check
//! ```
//! Every namespace is named `nt-<pid>-<seq>-<role>` and deleted when the
//! [`Lab`] is dropped (even on panic), after killing what runs inside.
//!
//! The parts: `spec` (the topology as data), `provision` (it, in the
//! emulator), `wiring` (its namespaces and links), `sync` (the router kept
//! in step with the emulator), `agents` (natron-agent processes and their
//! endpoints), `failures` (what the lab can break).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::emulator::{self, REGION};
use crate::faults::Faults;
use crate::imds::{self, Imds};
use crate::internet;
use crate::netns::{self, NsRuntime};
use crate::prober::{self, Records};
use crate::router::{Attachments, TableIds};
use crate::vpc::{self, VpcView};
use crate::{exec, LabError};

mod agents;
mod failures;
mod ipv6;
mod observe;
mod paths;
mod provision;
mod routes;
mod spec;
mod sync;
mod vm;
mod wiring;

use agents::AgentProcess;
pub use agents::{
    agent_binary, default_config, failover_config, fast_config, AgentConfig, AgentId,
    NO_ENV_CREDENTIALS,
};
pub use ipv6::{link_local, nat64_address, Ipv6Client, RESOLVER_IPV6, SERVER_NAME};
pub use observe::masked_lines;
pub use paths::VPC_MTU;
use provision::provision;
pub use spec::*;
pub use sync::RouteHistory;
use sync::Syncer;
pub use vm::Until;
use wiring::{wire_backbone, wire_host};

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
    /// The VPC's egress-only internet gateway (IPv6 out, answers in).
    pub eigw_ns: String,
    pub vpc_id: String,
    pub nats: Vec<Host>,
    pub clients: Vec<Host>,
    /// The IPv6-only clients, one per AZ, when the spec asks for them
    /// ([`LabSpec::with_ipv6_clients`]).
    pub clients6: Vec<Ipv6Client>,
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
    /// The EC2 endpoint the agents use: counts their requests, can throttle.
    pub ec2_proxy: crate::ec2proxy::Proxy,
    /// The IMDS stub's request counts, per caller.
    pub imds_requests: imds::Requests,
    /// The user data IMDS serves, per instance.
    imds_user_data: imds::UserData,
    /// The NATs that are virtual machines, as the spec asks.
    vms: Vec<vm::VmNat>,
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
        let (ctl_ns, router_ns, igw_ns, inet_ns, eigw_ns) = (
            name("ctl"),
            name("rtr"),
            name("igw"),
            name("inet"),
            name("eigw"),
        );
        for ns in [&ctl_ns, &router_ns, &igw_ns, &inet_ns, &eigw_ns] {
            netns::create(ns)?;
            cleanup.namespaces.push(ns.clone());
        }
        wire_backbone(&ctl_ns, &router_ns, &igw_ns, &inet_ns)?;
        wiring::wire_egress_only(&router_ns, &eigw_ns, &inet_ns)?;

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
        let mut vms = Vec::new();
        let mut nats = Vec::new();
        let mut clients = Vec::new();
        let mut hosts6 = Vec::new();
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
                let vm_spec = spec
                    .vm_nats
                    .iter()
                    .find(|v| v.az == i)
                    .filter(|_| role.starts_with("nat-"));
                let is_vm = vm_spec.is_some();
                let host = launched.host(name(&role), role, is_vm);
                netns::create(&host.ns)?;
                cleanup.namespaces.push(host.ns.clone());
                if let Some(v) = vm_spec {
                    cleanup.children.push(vm::wire(
                        &router_ns,
                        &host,
                        &launched.mac,
                        gateway_net,
                        &dir,
                    )?);
                    // Two guests under TCG with two virtual CPUs each
                    // starve each other on two cores (RCU stalls, minutes
                    // to boot): one each then.
                    let cpus = if spec.vm_nats.len() > 1 { 1 } else { 2 };
                    vms.push(vm::VmNat::new(v, &launched.mac, &dir, cpus)?);
                } else {
                    wire_host(&router_ns, &host, &launched.mac, gateway_net)?;
                }
                attachments.insert(host.instance_id.clone(), host.router_dev.clone());
                list.push(host);
            }
            if let Some(launched) = provisioned.clients6.get(i) {
                // Its link comes once the VPC's IPv6 block is known (after
                // the first sync); its rule (by instance) is there before.
                let role = format!("c6-{}", az.letter);
                let host = launched.host(name(&role), role, false);
                netns::create(&host.ns)?;
                cleanup.namespaces.push(host.ns.clone());
                attachments.insert(host.instance_id.clone(), host.router_dev.clone());
                hosts6.push((host, launched.mac.clone()));
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
        let clients6 = match view.read().expect("view").ipv6_cidrs.first() {
            Some(block) => hosts6
                .into_iter()
                .enumerate()
                .map(|(az, (host, mac))| ipv6::wire_ipv6_only(&router_ns, &host, &mac, *block, az))
                .collect::<Result<Vec<_>, _>>()?,
            None if hosts6.is_empty() => Vec::new(),
            None => return Err(LabError::Setup("the lab's VPC has no IPv6 block".into())),
        };
        ctl.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = syncer.pass().await;
            }
        });
        let ec2_proxy =
            crate::ec2proxy::Proxy::new(&format!("http://127.0.0.1:{}", emulator::PORT));
        {
            let proxy = ec2_proxy.clone();
            ctl.run(async move {
                let listener = tokio::net::TcpListener::bind((EC2_ENDPOINT_IP, EC2_PROXY_PORT))
                    .await
                    .map_err(|e| {
                        LabError::Setup(format!(
                            "EC2 proxy on {EC2_ENDPOINT_IP}:{EC2_PROXY_PORT}: {e}"
                        ))
                    })?;
                tokio::spawn(proxy.serve(listener));
                Ok::<_, LabError>(())
            })?;
        }
        let imds_server = Imds::new(view.clone(), REGION);
        let imds_requests = imds_server.requests.clone();
        let imds_user_data = imds_server.user_data.clone();
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
            eigw_ns,
            vpc_id: provisioned.vpc_id,
            nats,
            clients,
            clients6,
            private_tables: provisioned.private_tables,
            public_table: provisioned.public_table,
            view,
            sync_error,
            history,
            attachments,
            faults: Mutex::new(Faults::default()),
            ec2_proxy,
            imds_requests,
            imds_user_data,
            vms,
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

    /// Starts a 50 ms prober in client `az`'s subnet.
    pub fn start_prober(&self, az: usize) -> Records {
        self.start_prober_in(&self.clients[az].ns, crate::internet::SERVER.into())
    }

    /// A 50 ms prober in namespace `ns` to `server` (the internet server's
    /// NAT64 address from an [`Ipv6Client`]).
    pub fn start_prober_in(&self, ns: &str, server: std::net::IpAddr) -> Records {
        let records = Records::default();
        self.spawn_in(ns, prober::run_to(records.clone(), server));
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
        self.tag_nat(az, imds::LIFECYCLE_TAG, "Terminated")
    }

    /// NAT `az` loses its instance profile: IMDS serves it no credentials
    /// (start its agent with [`NO_ENV_CREDENTIALS`](super::NO_ENV_CREDENTIALS)
    /// so that it has none from its environment either).
    pub fn without_instance_profile(&self, az: usize) -> Result<(), LabError> {
        self.tag_nat(az, imds::NO_PROFILE_TAG, "true")
    }

    /// NAT `az`'s instance profile is back: IMDS serves credentials again.
    pub fn restore_instance_profile(&self, az: usize) -> Result<(), LabError> {
        let id = self.nats[az].instance_id.clone();
        self.ec2(|c| async move {
            c.delete_tags()
                .resources(&id)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(imds::NO_PROFILE_TAG)
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    LabError::Emulator(format!("DeleteTags {id} {}: {e}", imds::NO_PROFILE_TAG))
                })
        })
    }

    /// EC2 gives NAT `az` its two-minute Spot interruption notice.
    pub fn spot_interruption(&self, az: usize) -> Result<(), LabError> {
        self.tag_nat(
            az,
            imds::SPOT_ACTION_TAG,
            r#"{"action": "terminate", "time": "2026-12-02T18:00:00Z"}"#,
        )
    }

    fn tag_nat(&self, az: usize, key: &'static str, value: &'static str) -> Result<(), LabError> {
        self.tag(&self.nats[az].instance_id, key, value)
    }

    /// Tags the emulator's resource `id` (an instance, a route table...).
    fn tag(&self, id: &str, key: &'static str, value: &'static str) -> Result<(), LabError> {
        let id = id.to_string();
        self.ec2(|c| async move {
            c.create_tags()
                .resources(&id)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(key)
                        .value(value)
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| LabError::Emulator(format!("CreateTags {id} {key}: {e}")))
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
        for qemu in self.vms.iter().filter_map(|vm| vm.take_process()) {
            self.cleanup.children.push(qemu);
        }
        // Stop the harness's threads before their namespaces go.
        self.ctl.take();
        self.runtimes.lock().map(|mut r| r.clear()).ok();
        // `cleanup` then kills the processes and deletes the namespaces.
    }
}
