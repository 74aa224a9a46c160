//! The agent's life: boot (identity, settings), start the egress prober
//! and the route coordinator, reconcile the data plane on a fixed tick
//! until asked to stop, then hand the route tables over.
//!
//! Order matters and is the invariant of this module: the coordinator
//! (route ownership) only ever points a table at this instance while
//! /readyz would answer 200, that is once forwarding, the ruleset and the
//! disabled source/dest check are verified in place and egress has been
//! proven, so a route never points at an instance that would drop traffic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{error, info, warn};

use crate::address::{self, Step};
use crate::config::{parse_port_range, Config};
use crate::coordinator::{self, Coordinator};
use crate::ec2::{Ec2, Ec2Error, GroupInstance};
use crate::identity::{read_identity_with_retries, Identity, Metadata, GROUP_TAG};
use crate::kernel::{self, Outcome, Sysctl};
use crate::lifecycle;
use crate::nft::{Nft, Pass, Reconciler};
use crate::notify;
use crate::peers::Watch;
use crate::probe::{self, RiseFall};
use crate::ruleset::{self, RulesetSpec};
use crate::state::{area, counter_increase, ConntrackStatus, ElasticIp, Shared};

/// Switches for tests; none is reachable from the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Pretend the source/dest check is disabled without calling EC2, to
    /// prove in the lab that its check is real.
    pub skip_source_dest_check: bool,
}

pub type Ec2Factory =
    Box<dyn Fn(&Identity) -> Pin<Box<dyn Future<Output = Arc<dyn Ec2>> + Send>> + Send + Sync>;

/// The kernel and cloud edges the agent works through.
pub struct Edges {
    pub metadata: Arc<dyn Metadata>,
    pub nft: Arc<dyn Nft>,
    pub sysctl: Arc<dyn Sysctl>,
    pub ec2: Ec2Factory,
}

/// Values resolved at boot from the configuration, IMDS and the kernel.
#[derive(Debug, Clone)]
struct Resolved {
    identity: Identity,
    group: String,
    spec: RulesetSpec,
    settings: Vec<kernel::Setting>,
}

pub struct Agent {
    pub config: Config,
    pub options: Options,
    pub shared: Arc<Shared>,
    pub edges: Edges,
}

/// How often a verified-disabled source/dest check is read again: someone
/// may turn it back on, which silently blackholes forwarded traffic.
const SOURCE_DEST_RECHECK: Duration = Duration::from_secs(60);
/// How often the AZ's Elastic IP is looked at once settled (on this
/// instance, or none tagged), and while it is not.
const ELASTIC_IP_RECHECK: Duration = Duration::from_secs(60);
const ELASTIC_IP_RETRY: Duration = Duration::from_secs(10);

impl Agent {
    /// Runs until `shutdown` resolves, then hands the route tables this
    /// agent serves to a ready peer. The data plane is left in place on
    /// exit: the agent is never in the data path.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let resolved = tokio::select! {
            _ = &mut shutdown => {
                info!("stopping before the data plane was set up");
                notify::stopping();
                return;
            }
            r = self.boot() => r,
        };
        self.shared.update(|s| {
            s.identity = Some(resolved.identity.clone());
            s.group = Some(resolved.group.clone());
            s.config = json!({
                "file": &self.config,
                "effective": {
                    "group": resolved.group,
                    "ruleset": resolved.spec,
                    "sysctls": resolved.settings,
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
        tokio::spawn(run_prober(self.config.clone(), self.shared.clone()));
        let ec2 = (self.edges.ec2)(&resolved.identity).await;
        let coordinator = Arc::new(Coordinator::new(
            ec2.clone(),
            self.shared.clone(),
            Arc::new(Watch::default()),
            self.config.failover.clone(),
            self.config.ec2.route_interval,
            GroupInstance {
                instance_id: resolved.identity.instance_id.clone(),
                availability_zone: resolved.identity.availability_zone.clone(),
                private_ip: Some(resolved.identity.local_ipv4),
                interface_ids: vec![resolved.identity.interface_id.clone()],
                state: "running".into(),
                heartbeat_ms: None,
            },
            resolved.identity.vpc_id.clone(),
            resolved.group.clone(),
        ));
        coordinator::spawn(&coordinator, self.config.http.listen.port());
        let terminating = lifecycle::terminating(
            self.edges.metadata.as_ref(),
            self.config.failover.lifecycle_interval,
        );
        tokio::select! {
            _ = &mut shutdown => {}
            _ = self.control_loop(&resolved, ec2.as_ref()) => {}
            _ = terminating => {
                info!("auto scaling is terminating this instance: handing its route tables to peers now");
                coordinator.handoff().await;
                self.release_elastic_ip(ec2.as_ref(), &resolved).await;
                // Draining (503) until the instance shuts down: a peer must
                // not hand the tables back, nor this agent claim them.
                shutdown.await;
                notify::stopping();
                return;
            }
        }
        notify::stopping();
        coordinator.handoff().await;
    }

    /// Reads identity and resolves settings, retrying with backoff until
    /// everything needed is known. Problems show in /readyz meanwhile.
    async fn boot(&self) -> Resolved {
        let mut delay = Duration::from_millis(500);
        loop {
            *self.shared.last_pass.lock().expect("lock") = Instant::now();
            match self.try_boot().await {
                Ok(r) => return r,
                Err((area, message)) => {
                    warn!(area, "{message}; retrying in {delay:?}");
                    self.shared.set_problem(area, message);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn try_boot(&self) -> Result<Resolved, (&'static str, String)> {
        let identity =
            read_identity_with_retries(self.edges.metadata.as_ref(), 3, Duration::from_millis(200))
                .await
                .map_err(|e| (area::METADATA, e.to_string()))?;
        self.shared.clear_problem(area::METADATA);
        let group = self.config.group.clone().or_else(|| identity.group_tag.clone()).ok_or((
            area::GROUP,
            format!(
                "no `group` in the configuration and instance {} has no {GROUP_TAG} tag in its metadata \
                 (tag it, or enable instance tags in its metadata options)",
                identity.instance_id
            ),
        ))?;
        self.shared.clear_problem(area::GROUP);
        let egress = match &self.config.nat.egress_interface {
            Some(name) => name.clone(),
            None => kernel::default_route_interface().ok_or((
                area::EGRESS_INTERFACE,
                "no IPv4 default route to take the egress interface from (set nat.egress_interface)".to_string(),
            ))?,
        };
        self.shared.clear_problem(area::EGRESS_INTERFACE);
        let flowtable = self.config.nat.flowtable
            && self
                .edges
                .nft
                .check(&ruleset::flowtable_probe(&egress))
                .await
                .is_ok();
        self.shared
            .update(|s| s.dataplane.flowtable = Some(flowtable));
        if self.config.nat.flowtable && !flowtable {
            info!(egress = %egress, "kernel has no nftables flowtables; using the slow path only");
        }
        let spec = RulesetSpec {
            egress: egress.clone(),
            sources: self
                .config
                .nat
                .source_cidrs
                .clone()
                .unwrap_or_else(|| identity.vpc_cidrs.clone()),
            port_range: parse_port_range(&self.config.nat.port_range).expect("validated"),
            fully_random: self.config.nat.fully_random,
            flowtable,
            agent_port: self.config.http.listen.port(),
        };
        let ct = &self.config.conntrack;
        let conntrack_max = ct.max.unwrap_or_else(|| {
            kernel::conntrack_max_for_memory(
                kernel::mem_total().unwrap_or(512 << 20),
                ct.memory_percent,
            )
        });
        let settings =
            kernel::desired_settings(&egress, conntrack_max, ct.tcp_timeout_established.as_secs());
        Ok(Resolved {
            identity,
            group,
            spec,
            settings,
        })
    }

    /// The data plane: ruleset, sysctls, source/dest check, every tick.
    async fn control_loop(&self, r: &Resolved, ec2: &dyn Ec2) {
        let desired = ruleset::render(&r.spec);
        let mut nft = Reconciler::default();
        let mut installed = false;
        let mut notified_ready = false;
        let mut sdc_checked: Option<Instant> = None;
        let mut eip_next = Instant::now();
        let mut conntrack = ConntrackWatch::default();
        let mut tick = tokio::time::interval(self.config.nat.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reconcile_ruleset(&mut nft, &desired, &mut installed)
                .await;
            self.reconcile_sysctls(&r.settings);
            self.observe_conntrack(&mut conntrack);
            if sdc_checked.is_none_or(|t| t.elapsed() >= SOURCE_DEST_RECHECK) {
                if self
                    .reconcile_source_dest_check(ec2, &r.identity.instance_id)
                    .await
                {
                    sdc_checked = Some(Instant::now());
                } else {
                    sdc_checked = None;
                }
            }
            if Instant::now() >= eip_next {
                eip_next = Instant::now() + self.reconcile_elastic_ip(ec2, r).await;
            }
            let status = self.shared.snapshot();
            if status.dataplane_ready() && !notified_ready {
                info!("data plane in place: forwarding on, table ip natron loaded, source/dest check off");
                notify::ready();
                notified_ready = true;
            }
            let summary = match status.readiness() {
                Ok(()) => format!("ready; {} route table(s) owned", status.routes.owned.len()),
                Err(reasons) => format!("not ready: {}", reasons.join("; ")),
            };
            notify::status(&summary);
            *self.shared.last_pass.lock().expect("lock") = Instant::now();
        }
    }

    async fn reconcile_ruleset(
        &self,
        nft: &mut Reconciler,
        desired: &[nftables::schema::NfListObject<'static>],
        installed: &mut bool,
    ) {
        match nft.reconcile(self.edges.nft.as_ref(), desired).await {
            Ok(pass) => {
                if let Pass::Applied(reason) = pass {
                    if *installed {
                        warn!(reason, "table ip natron drifted; replaced it");
                        self.shared.metrics.drift_repairs.inc();
                        let when = format!("unix_ms:{} ({reason})", coordinator::unix_ms());
                        self.shared.update(|s| {
                            s.dataplane.drift_repairs += 1;
                            s.dataplane.last_repair = Some(when);
                        });
                    } else {
                        info!(reason, "table ip natron written");
                    }
                    if nft.canonical_mismatch {
                        warn!("the kernel lists table ip natron differently from how it was rendered; drift is judged against the listing taken after writing it");
                    }
                }
                *installed = true;
                self.shared.metrics.observe_rule_counters(&nft.counters);
                self.shared.update(|s| {
                    s.dataplane.ruleset_in_place = true;
                    s.problems.remove(area::RULESET);
                });
            }
            Err(e) => {
                error!(error = %e, "cannot reconcile the nftables table");
                self.shared.update(|s| {
                    s.dataplane.ruleset_in_place = false;
                    s.problems.insert(area::RULESET, e.to_string());
                });
            }
        }
    }

    fn reconcile_sysctls(&self, settings: &[kernel::Setting]) {
        let applied = kernel::apply_settings(self.edges.sysctl.as_ref(), settings);
        let mut required_failures = Vec::new();
        let mut warnings = Vec::new();
        for a in &applied {
            match &a.outcome {
                Outcome::Written { previous } => {
                    info!(key = %a.setting.key, "sysctl {} {previous} -> {}", a.setting.key, a.setting.value)
                }
                Outcome::Failed { error } if a.setting.required => {
                    required_failures.push(error.clone())
                }
                Outcome::Failed { error } => warnings.push(error.clone()),
                Outcome::Unchanged => {}
            }
        }
        let forwarding = applied.iter().any(|a| {
            a.setting.key == "net.ipv4.ip_forward" && !matches!(a.outcome, Outcome::Failed { .. })
        });
        self.shared.update(|s| {
            for w in &warnings {
                if !s.warnings.contains(w) {
                    warn!("{w} (optional setting; continuing)");
                    s.warnings.push(w.clone());
                }
            }
            s.dataplane.forwarding = forwarding;
            s.dataplane.sysctls = applied;
            if required_failures.is_empty() {
                s.problems.remove(area::SYSCTL);
            } else {
                s.problems
                    .insert(area::SYSCTL, required_failures.join("; "));
            }
        });
    }

    /// Puts this AZ's Elastic IP on this instance (see `address`). Not a
    /// readiness gate: without it the NAT still egresses, from its own
    /// public IP. Runs before the first route claim in practice, as egress
    /// has to be proven first. Returns when to look again.
    async fn reconcile_elastic_ip(&self, ec2: &dyn Ec2, r: &Resolved) -> Duration {
        let me = r.identity.instance_id.as_str();
        let result = async {
            let tagged = ec2
                .az_addresses(&r.group, &r.identity.availability_zone)
                .await?;
            // The group is only needed to tell a live sibling from a leftover.
            let group = if address::held_by_other(&tagged, me) {
                ec2.group_instances(&r.identity.vpc_id, &r.group).await?
            } else {
                Vec::new()
            };
            let step = address::decide(&tagged, me, &group);
            if let Step::Associate(a) = &step {
                info!(
                    allocation = %a.allocation_id,
                    public_ip = %a.public_ip,
                    previous_holder = a.instance_id.as_deref().unwrap_or("none"),
                    "associating this AZ's Elastic IP with this instance"
                );
                ec2.associate_address(&a.allocation_id, me).await?;
                // Read back, as for every write.
                let again = ec2
                    .az_addresses(&r.group, &r.identity.availability_zone)
                    .await?;
                if let held @ Step::Held(_) = address::decide(&again, me, &[]) {
                    return Ok(held);
                }
            }
            Ok::<Step, Ec2Error>(step)
        }
        .await;
        let (elastic_ip, next) = match result {
            Ok(Step::NoAddress) => (None, ELASTIC_IP_RECHECK),
            Ok(Step::Held(a)) => (Some(ElasticIp::of(&a, "associated")), ELASTIC_IP_RECHECK),
            // Not on this instance when read back: look again soon.
            Ok(Step::Associate(a)) => (Some(ElasticIp::of(&a, "associating")), ELASTIC_IP_RETRY),
            Ok(Step::Wait { address, holder }) => {
                let state =
                    format!("held by running NAT {holder}; taken when it releases it or stops");
                (Some(ElasticIp::of(&address, &state)), ELASTIC_IP_RETRY)
            }
            Err(e) => {
                self.shared.metrics.ec2_errors.inc();
                warn!(error = %e, "cannot reconcile this AZ's Elastic IP");
                let state = format!("error: {e}");
                let previous = self.shared.snapshot().dataplane.elastic_ip;
                let kept = match previous {
                    Some(p) => ElasticIp { state, ..p },
                    None => ElasticIp {
                        allocation_id: None,
                        public_ip: None,
                        state,
                    },
                };
                (Some(kept), ELASTIC_IP_RETRY)
            }
        };
        let held = elastic_ip.as_ref().is_some_and(|e| e.state == "associated");
        self.shared.metrics.elastic_ip_held.set(i64::from(held));
        self.shared.update(|s| {
            if s.dataplane.elastic_ip != elastic_ip {
                if let Some(e) = &elastic_ip {
                    info!(state = %e.state, allocation = ?e.allocation_id, "Elastic IP");
                }
            }
            s.dataplane.elastic_ip = elastic_ip;
        });
        next
    }

    /// On a planned termination: frees this AZ's Elastic IP for the
    /// replacement NAT, which may be booting already.
    async fn release_elastic_ip(&self, ec2: &dyn Ec2, r: &Resolved) {
        let me = r.identity.instance_id.as_str();
        let released = async {
            let tagged = ec2
                .az_addresses(&r.group, &r.identity.availability_zone)
                .await?;
            for a in tagged.iter().filter(|a| a.instance_id.as_deref() == Some(me)) {
                ec2.disassociate_address(a).await?;
                info!(allocation = %a.allocation_id, public_ip = %a.public_ip, "released this AZ's Elastic IP for the replacement NAT");
            }
            Ok::<(), Ec2Error>(())
        }
        .await;
        if let Err(e) = released {
            self.shared.metrics.ec2_errors.inc();
            warn!(error = %e, "cannot release this AZ's Elastic IP; the replacement takes it once this instance stops");
        }
    }

    /// Conntrack fill and drops: gauges, counters, /status, and warnings
    /// when the table nears full or refuses flows. A full table costs new
    /// flows, never the agent: nothing here fails.
    fn observe_conntrack(&self, w: &mut ConntrackWatch) {
        let sys = self.edges.sysctl.as_ref();
        let Some((count, max)) = kernel::conntrack_usage(sys) else {
            return;
        };
        let m = &self.shared.metrics;
        m.conntrack_entries.set(count as i64);
        m.conntrack_max.set(max as i64);
        let drops = sys
            .conntrack_stats()
            .ok()
            .and_then(|t| kernel::parse_conntrack_drops(&t));
        if let Some(d) = drops {
            let last = w.last.unwrap_or_default();
            let new_drops = counter_increase(d.drop, last.drop);
            let new_early = counter_increase(d.early_drop, last.early_drop);
            m.conntrack_drops.inc_by(new_drops);
            m.conntrack_early_drops.inc_by(new_early);
            let quiet = w
                .last_drop_warning
                .is_some_and(|t| t.elapsed() < Duration::from_secs(60));
            if w.last.is_some() && new_drops > 0 && !quiet {
                warn!(
                    dropped = new_drops,
                    entries = count,
                    max,
                    "conntrack table full: new flows are being dropped (raise conntrack.max or conntrack.memory_percent)"
                );
                w.last_drop_warning = Some(Instant::now());
            }
            w.last = Some(d);
        }
        let nearly_full = kernel::conntrack_nearly_full(count, max);
        if nearly_full != w.nearly_full {
            if nearly_full {
                warn!(
                    entries = count,
                    max, "conntrack table at 90 % or more of its limit"
                );
            } else {
                info!(entries = count, max, "conntrack table below 90 % again");
            }
            w.nearly_full = nearly_full;
        }
        let status = ConntrackStatus {
            entries: count,
            max,
            drops: w.last.unwrap_or_default(),
            nearly_full,
        };
        self.shared.update(|s| s.dataplane.conntrack = Some(status));
    }

    /// Returns true once the check is verified off (read back from EC2).
    async fn reconcile_source_dest_check(&self, ec2: &dyn Ec2, instance: &str) -> bool {
        if self.options.skip_source_dest_check {
            self.shared.update(|s| {
                s.dataplane.source_dest_check_disabled = true;
                let w = "source/dest check step skipped by a test switch".to_string();
                if !s.warnings.contains(&w) {
                    s.warnings.push(w);
                }
            });
            return true;
        }
        let result = async {
            if ec2.source_dest_check(instance).await? {
                info!(instance, "disabling the source/dest check");
                ec2.disable_source_dest_check(instance).await?;
                if ec2.source_dest_check(instance).await? {
                    return Ok(false);
                }
            }
            Ok::<bool, crate::ec2::Ec2Error>(true)
        }
        .await;
        let ok = matches!(result, Ok(true));
        if let Err(e) = &result {
            self.shared.metrics.ec2_errors.inc();
            error!(error = %e, "source/dest check");
        }
        self.shared.update(|s| {
            s.dataplane.source_dest_check_disabled = ok;
            match result {
                Ok(true) => s.problems.remove(area::SOURCE_DEST_CHECK),
                Ok(false) => s.problems.insert(
                    area::SOURCE_DEST_CHECK,
                    format!("instance {instance}: SourceDestCheck still true after ModifyInstanceAttribute"),
                ),
                Err(e) => s.problems.insert(area::SOURCE_DEST_CHECK, e.to_string()),
            };
        });
        ok
    }
}

/// What `observe_conntrack` remembers between ticks.
#[derive(Default)]
struct ConntrackWatch {
    last: Option<kernel::ConntrackDrops>,
    nearly_full: bool,
    last_drop_warning: Option<Instant>,
}

/// Probes egress every interval and keeps the rise/fall state in `shared`.
async fn run_prober(config: Config, shared: Arc<Shared>) {
    let targets = config.probe_targets();
    let h = &config.health;
    if targets.is_empty() {
        info!("no egress probe targets configured; egress counts as healthy");
        shared.update(|s| s.egress.healthy = true);
        return;
    }
    let mut state = RiseFall::new(h.rise, h.fall);
    let mut tick = tokio::time::interval(h.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let results =
            futures_util::future::join_all(targets.iter().map(|t| probe::probe(t, h.timeout)))
                .await;
        let passed = results.iter().filter(|r| r.ok).count();
        for r in &results {
            let labels = vec![("target".to_string(), r.target.clone())];
            shared
                .metrics
                .probe_up
                .get_or_create(&labels)
                .set(i64::from(r.ok));
            shared
                .metrics
                .probe_latency
                .get_or_create(&labels)
                .set(r.latency_ms / 1000.0);
            let mut by_result = labels.clone();
            by_result.push(("result".into(), if r.ok { "pass" } else { "fail" }.into()));
            shared.metrics.probe_results.get_or_create(&by_result).inc();
        }
        let why = results
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.target)))
            .collect::<Vec<_>>()
            .join("; ");
        if state.observe(passed >= h.min_passing) {
            if state.healthy {
                info!(passed, "egress healthy");
            } else {
                warn!(passed, "egress failed: {why}");
            }
        }
        let healthy = state.healthy;
        shared.update(|s| {
            s.egress.healthy = healthy;
            s.egress.probes = results.clone();
            if healthy {
                s.problems.remove(area::EGRESS);
            } else if !why.is_empty() {
                s.problems.insert(area::EGRESS, why.clone());
            } else {
                s.problems.remove(area::EGRESS);
            }
        });
    }
}
