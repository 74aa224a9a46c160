//! The data-plane loop: every `nat.reconcile_interval`, the ruleset,
//! NAT64's translator (`run::nat64`), the sysctls, the connection table (`conntrack`: fill, drops, source ports),
//! the source/dest check and the AZ's Elastic IP, each a step of one shape (`&self` plus the loop's [`Memory`]) that
//! reads live state, changes only the difference and reports into
//! [`Shared`]. Every step is safe to repeat after a crash.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use natron_contract::aws::ErrorKind;
use natron_contract::readyz::Area;
use natron_contract::status::Repair;
use nftables::schema::NfListObject;
use tracing::{error, info, warn};

use super::boot::Resolved;
use super::ruleset::{Pass, Reconciler};
use super::{unix_ms, Edges, Options};
use crate::core::schedule::{Backoff, Repeats};
use crate::edge::ec2::{AwsError, Ec2};
use crate::edge::sysctl::{self, Outcome};
use crate::report::notify;
use crate::report::status::Shared;

mod conntrack;
pub use conntrack::ConntrackWatch;

/// How often a verified-disabled source/dest check is read again: someone
/// may turn it back on, which silently blackholes forwarded traffic.
const SOURCE_DEST_RECHECK: Duration = Duration::from_secs(60);

/// How long the last EC2 error stays in /status.
const RECENT_ERROR: Duration = Duration::from_secs(300);

/// What the loop remembers between passes.
#[derive(Default)]
pub struct Memory {
    pub nft: Reconciler,
    /// The table has been written once (later writes are repairs).
    pub installed: bool,
    pub notified_ready: bool,
    /// When the source/dest check is looked at next.
    pub sdc_next: Option<Instant>,
    pub sdc_backoff: Backoff,
    /// When the Elastic IP is looked at next.
    pub eip_next: Option<Instant>,
    pub eip_backoff: Backoff,
    pub conntrack: ConntrackWatch,
    /// Why the NAT is not ready, as last logged.
    pub not_ready: Repeats,
    /// The source/dest check step's and the Elastic IP step's failures,
    /// as last logged.
    pub sdc_failing: Repeats,
    pub eip_failing: Repeats,
    /// The private addresses new connections are translated to (the
    /// address pool); None until known: the live table's are kept.
    pub pool: Option<Vec<Ipv4Addr>>,
    pub pool_next: Option<Instant>,
    pub pool_backoff: Backoff,
    pub pool_failing: Repeats,
    pub nat64: super::nat64::Memory,
}

/// The wait after a failed EC2 step: at least `floor`, doubling to a
/// minute (to seconds while credentials are missing: `Backoff`).
fn step_backoff(b: &mut Backoff, kind: ErrorKind, floor: Duration) -> Duration {
    b.fail(kind, super::backoff_jitter()).max(floor)
}

/// The steps, over the edges and what boot resolved.
pub struct Steps<'a> {
    pub edges: &'a Edges,
    pub shared: &'a Shared,
    pub resolved: &'a Resolved,
    pub options: &'a Options,
    pub ec2: &'a dyn Ec2,
}

impl Steps<'_> {
    /// Runs forever, a pass every `interval`.
    pub async fn run(&self, interval: Duration) {
        let mut memory = Memory::default();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.pass(&mut memory).await;
        }
    }

    /// One pass of every step, then readiness reported to systemd.
    pub async fn pass(&self, m: &mut Memory) {
        self.ruleset(m).await;
        self.nat64(m).await;
        self.sysctls();
        self.conntrack(m);
        self.listing(m).await;
        self.source_dest_check(m).await;
        self.elastic_ip(m).await;
        self.address_pool(m).await;
        let state = self.shared.snapshot();
        // systemd hears READY once this NAT forwards and translates. The
        // source/dest check waits on EC2 (credentials, throttling), which a
        // restart by systemd cannot fix; /readyz tells the rest.
        if state.local_dataplane_ready() && !m.notified_ready {
            info!("data plane in place: forwarding on, table ip natron loaded");
            notify::ready();
            m.notified_ready = true;
        }
        let summary = match state.readiness() {
            Ok(()) => {
                if m.not_ready.over() {
                    info!("ready");
                }
                format!("ready; {} route table(s) owned", state.routes.owned.len())
            }
            Err(reasons) => {
                let why = reasons
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                // Said when the areas holding readiness back change and
                // once a minute: their messages carry details (a probe's
                // error, an EC2 request's) that change between passes.
                let areas = reasons
                    .iter()
                    .map(|r| r.area.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                if m.not_ready.due(&areas, Instant::now()) {
                    warn!("not ready, so not claiming routes: {why}");
                }
                format!("not ready: {why}")
            }
        };
        notify::status(&summary);
        self.recent_ec2_error();
        self.shared.mark_pass();
    }

    /// The latest EC2 error into /status while it is recent.
    fn recent_ec2_error(&self) {
        let last = self
            .shared
            .metrics
            .ec2_last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let recent =
            last.filter(|e| unix_ms().saturating_sub(e.unix_ms) < RECENT_ERROR.as_millis() as u64);
        self.shared.update(|s| s.ec2.last_error = recent);
    }

    /// The table as it should be, with the address pool.
    fn desired(&self, m: &Memory) -> Vec<NfListObject<'static>> {
        let mut spec = self.resolved.spec.clone();
        spec.pool = m.pool.clone().unwrap_or_default();
        crate::core::ruleset::render(&spec)
    }

    /// natron's table: written when absent, repaired when it drifted.
    pub async fn ruleset(&self, m: &mut Memory) {
        if m.pool.is_none() && self.resolved.addresses > 1 {
            // A restarted agent keeps translating over the pool the live
            // table has until EC2 has been read, rather than rewrite the
            // table twice.
            let live = self.edges.nft.list_table(&[]).await.ok().flatten();
            m.pool = Some(
                live.map(|l| crate::core::ruleset::pool::translated(&l))
                    .unwrap_or_default(),
            );
        }
        let desired = self.desired(m);
        m.conntrack.addresses = m.pool.as_ref().map_or(1, |p| p.len().max(1) as u32);
        match m.nft.reconcile(self.edges.nft.as_ref(), &desired).await {
            Ok(pass) => {
                if let Pass::Applied(reason) = pass {
                    if m.installed {
                        warn!(reason, "table ip natron drifted; replaced it");
                        self.shared.metrics.drift_repairs.inc();
                        let repair = Repair {
                            unix_ms: unix_ms(),
                            reason: reason.to_string(),
                        };
                        self.shared.update(|s| {
                            s.dataplane.drift_repairs += 1;
                            s.dataplane.last_repair = Some(repair);
                        });
                    } else {
                        info!(reason, "table ip natron written");
                    }
                    if let Some(difference) = &m.nft.canonical_mismatch {
                        warn!(difference, "the kernel lists table ip natron differently from how it was rendered; drift is judged against the listing taken after writing it");
                    }
                    let exact = m.nft.canonical_mismatch.is_none();
                    self.shared
                        .update(|s| s.dataplane.listing_matches_render = Some(exact));
                }
                m.installed = true;
                let own = self.shared.metrics.observe_rule_counters(&m.nft.counters);
                if let Some(totals) = sysctl::interface_totals(self.edges.sysctl.as_ref()) {
                    self.shared.metrics.observe_interfaces(totals, own);
                }
                self.shared.update(|s| {
                    s.dataplane.ruleset_in_place = true;
                    s.problems.remove(&Area::Ruleset);
                });
            }
            Err(e) => {
                error!(error = %e, "cannot reconcile the nftables table");
                self.shared.update(|s| {
                    s.dataplane.ruleset_in_place = false;
                    s.problems.insert(Area::Ruleset, e.to_string());
                });
            }
        }
    }

    /// NAT64's Jool instance (see `run::nat64`), over the addresses the
    /// ruleset translates to.
    pub async fn nat64(&self, m: &mut Memory) {
        super::nat64::reconcile(
            self.edges.jool.as_ref(),
            self.shared,
            self.resolved,
            m.pool.as_deref().unwrap_or_default(),
            &mut m.nat64,
        )
        .await;
    }

    /// Forwarding, redirects and conntrack's limits, read-compare-write.
    pub fn sysctls(&self) {
        let applied = sysctl::apply_settings(self.edges.sysctl.as_ref(), &self.resolved.sysctls);
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
                if s.warn(Area::Sysctl, w.clone()) {
                    warn!("{w} (optional setting; continuing)");
                }
            }
            s.dataplane.forwarding = forwarding;
            s.dataplane.sysctls = applied;
            if required_failures.is_empty() {
                s.problems.remove(&Area::Sysctl);
            } else {
                s.problems
                    .insert(Area::Sysctl, required_failures.join("; "));
            }
        });
    }

    /// The instance's source/dest check, disabled and read back; looked at
    /// again every minute once verified, and after a backoff when EC2
    /// fails.
    pub async fn source_dest_check(&self, m: &mut Memory) {
        if m.sdc_next.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let instance = self.resolved.identity.instance_id.as_str();
        if self.options.skip_source_dest_check {
            self.shared.update(|s| {
                s.dataplane.source_dest_check_disabled = true;
                s.warn(
                    Area::Test,
                    "source/dest check step skipped by a test switch",
                );
            });
            m.sdc_next = Some(Instant::now() + SOURCE_DEST_RECHECK);
            return;
        }
        let ec2 = self.ec2;
        let result = async {
            if ec2.source_dest_check(instance).await? {
                info!(instance, "disabling the source/dest check");
                ec2.disable_source_dest_check(instance).await?;
                if ec2.source_dest_check(instance).await? {
                    return Ok(false);
                }
            }
            Ok::<bool, AwsError>(true)
        }
        .await;
        let ok = matches!(result, Ok(true));
        let wait = match &result {
            Ok(true) => {
                m.sdc_backoff.succeed();
                SOURCE_DEST_RECHECK
            }
            Ok(false) => Duration::ZERO,
            Err(e) => step_backoff(&mut m.sdc_backoff, e.kind, Duration::ZERO),
        };
        m.sdc_next = Some(Instant::now() + wait);
        match &result {
            Err(e) => {
                self.shared.metrics.ec2_errors.inc();
                if m.sdc_failing.due(&e.to_string(), Instant::now()) {
                    error!(error = %e, "source/dest check; retrying in {wait:?} (said once a minute while it lasts)");
                }
            }
            Ok(_) => {
                if m.sdc_failing.over() {
                    info!(instance, "source/dest check step succeeds again");
                }
            }
        }
        self.shared.update(|s| {
            s.note_ec2(result.as_ref().err());
            s.dataplane.source_dest_check_disabled = ok;
            match result {
                Ok(true) => s.problems.remove(&Area::SourceDestCheck),
                Ok(false) => s.problems.insert(
                    Area::SourceDestCheck,
                    format!("instance {instance}: SourceDestCheck still true after ModifyInstanceAttribute"),
                ),
                Err(e) => s.problems.insert(Area::SourceDestCheck, e.to_string()),
            };
        });
    }

    /// The address pool (see `run::address_pool`), when it is due and
    /// there is one.
    pub async fn address_pool(&self, m: &mut Memory) {
        if self.resolved.addresses < 2 || m.pool_next.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let out = super::address_pool::reconcile(
            self.ec2,
            self.shared,
            self.resolved,
            &mut m.pool_failing,
        )
        .await;
        let wait = match out.failed {
            None => {
                m.pool_backoff.succeed();
                out.next
            }
            Some(kind) => step_backoff(&mut m.pool_backoff, kind, out.next),
        };
        m.pool_next = Some(Instant::now() + wait);
        if let Some(translating) = out.translating {
            m.pool = Some(translating);
        }
    }

    /// This AZ's Elastic IP (see `run::elastic_ip`), when it is due.
    pub async fn elastic_ip(&self, m: &mut Memory) {
        if m.eip_next.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let (next, failed) =
            super::elastic_ip::reconcile(self.ec2, self.shared, self.resolved, &mut m.eip_failing)
                .await;
        let wait = match failed {
            None => {
                m.eip_backoff.succeed();
                next
            }
            Some(kind) => step_backoff(&mut m.eip_backoff, kind, next),
        };
        m.eip_next = Some(Instant::now() + wait);
    }
}

#[cfg(test)]
mod tests;
