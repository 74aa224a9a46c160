//! The connection table's steps: its fill and the kernel's counters of
//! refused flows every pass ([`Steps::conntrack`]), and a listing of its
//! flows at most every 10 s ([`Steps::listing`]) when there is something to
//! read off it: offloaded flows (with a flowtable) or the busiest
//! destinations (when source ports may be running out). A full table or
//! exhausted ports cost new flows, never the agent: nothing here fails.

use std::time::{Duration, Instant};

use natron_contract::readyz::Area;
use natron_contract::status::{Conntrack, ConntrackDrops, DestinationUse, SourcePorts};
use tracing::{info, warn};

use super::Steps;
use crate::core::schedule::Repeats;
use crate::core::{kernel, ports};
use crate::report::metrics::counter_increase;

/// What the connection table's steps remember between passes.
#[derive(Default)]
pub struct ConntrackWatch {
    pub(super) last: Option<ConntrackDrops>,
    /// Flows tracked, as last read.
    entries: u64,
    nearly_full: bool,
    last_drop_warning: Option<Instant>,
    /// Offloaded flows as last read.
    pub(super) offloaded: Option<u64>,
    /// When the flows may be listed next.
    pub(super) listing_next: Option<Instant>,
    listing_failing: Repeats,
    /// Packets refused for lack of a source port since the last listing.
    port_errors_unlisted: u64,
    /// The last listing's busiest destinations, and when it was taken.
    busiest: Vec<DestinationUse>,
    listed_unix_ms: Option<u64>,
    /// The source-port warning, as last logged.
    ports_said: Repeats,
    /// When the warning was last written to the instance's
    /// `natron:source-ports` tag.
    ports_tagged: Option<Instant>,
    /// Public addresses new connections are translated to (the address
    /// pool's, as the table last had it); 0 counts as 1.
    pub(super) addresses: u32,
}

/// How often the `natron:source-ports` tag is written while the warning
/// lasts (CreateTags shares the account's bucket with every heartbeat).
const TAG_EVERY: Duration = Duration::from_secs(60);

/// How often the flows may be listed: a pass over every flow, so not every
/// reconcile pass.
pub(super) const LISTING_EVERY: Duration = Duration::from_secs(10);

impl Steps<'_> {
    /// Conntrack's fill and the kernel's counters of refused flows: gauges,
    /// counters, /status, and warnings when the table nears full, refuses
    /// flows, or new connections find no free source port.
    pub fn conntrack(&self, m: &mut super::Memory) {
        let w = &mut m.conntrack;
        let sys = self.edges.sysctl.as_ref();
        let Some((count, max)) = crate::edge::sysctl::conntrack_usage(sys) else {
            return;
        };
        let metrics = &self.shared.metrics;
        metrics.conntrack_entries.set(count as i64);
        metrics.conntrack_max.set(max as i64);
        w.entries = count;
        let drops = sys
            .conntrack_stats()
            .ok()
            .and_then(|t| kernel::parse_conntrack_drops(&t));
        if let Some(d) = drops {
            let last = w.last.unwrap_or_default();
            let new_drops = counter_increase(d.drop, last.drop);
            let new_early = counter_increase(d.early_drop, last.early_drop);
            let new_port_errors = counter_increase(d.insert_failed, last.insert_failed);
            metrics.conntrack_drops.inc_by(new_drops);
            metrics.conntrack_early_drops.inc_by(new_early);
            metrics.port_allocation_errors.inc_by(new_port_errors);
            // Both count a connection that found no free port; only the
            // rest is a full table (the listing says which destination).
            let table_full = new_drops.saturating_sub(new_port_errors);
            let quiet = w
                .last_drop_warning
                .is_some_and(|t| t.elapsed() < Duration::from_secs(60));
            if w.last.is_some() && table_full > 0 && !quiet {
                warn!(
                    dropped = table_full,
                    entries = count,
                    max,
                    "conntrack table full: new flows are being dropped (raise conntrack.max or conntrack.memory_percent)"
                );
                w.last_drop_warning = Some(Instant::now());
            }
            if w.last.is_some() {
                w.port_errors_unlisted += new_port_errors;
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
        let capacity = self.pool(w).capacity;
        metrics.source_port_capacity.set(capacity as i64);
        // No destination can hold more flows than the table has: below 90 %
        // of the pool in all, the last listing's verdict no longer holds.
        if !ports::worth_listing(count, capacity, w.port_errors_unlisted) {
            w.busiest.clear();
            w.listed_unix_ms = None;
            self.ports_warning(w, 0);
        }
        let status = Conntrack {
            entries: count,
            max,
            drops: w.last.unwrap_or_default(),
            nearly_full,
            offloaded: w.offloaded,
        };
        self.shared.update(|s| s.dataplane.conntrack = Some(status));
        self.publish_ports(w);
    }

    /// The pool new connections are translated over: its addresses (the
    /// egress interface's alone with masquerade) x the configured port
    /// range.
    fn pool(&self, w: &ConntrackWatch) -> SourcePorts {
        ports::pool(w.addresses.max(1), self.resolved.spec.port_range)
    }

    /// The pool, the kernel's count of refusals and the last listing.
    fn source_ports(&self, w: &ConntrackWatch) -> SourcePorts {
        SourcePorts {
            allocation_errors: w.last.unwrap_or_default().insert_failed,
            busiest: w.busiest.clone(),
            listed_unix_ms: w.listed_unix_ms,
            ..self.pool(w)
        }
    }

    /// [`Self::source_ports`] in /status.
    fn publish_ports(&self, w: &ConntrackWatch) {
        let ports = self.source_ports(w);
        self.shared
            .update(|s| s.dataplane.source_ports = Some(ports));
    }

    /// Lists the flows when something is to be read off them and the last
    /// listing is 10 s old: offloaded flows with a flowtable, the busiest
    /// destinations when ports ran out or one destination may be near the
    /// pool (see `core::ports::worth_listing`).
    pub async fn listing(&self, m: &mut super::Memory) {
        let w = &mut m.conntrack;
        let capacity = self.pool(w).capacity;
        let for_ports = ports::worth_listing(w.entries, capacity, w.port_errors_unlisted);
        let for_flowtable = self.resolved.spec.flowtable;
        if !(for_ports || for_flowtable) || w.listing_next.is_some_and(|t| Instant::now() < t) {
            return;
        }
        w.listing_next = Some(Instant::now() + LISTING_EVERY);
        let listing = match self.edges.flows.list().await {
            Ok(text) => {
                w.listing_failing.over();
                text
            }
            Err(e) => {
                w.offloaded = None;
                if w.listing_failing.due(&e.to_string(), Instant::now()) {
                    warn!(error = %e, "cannot list conntrack's flows (said once a minute while it lasts)");
                }
                return;
            }
        };
        if for_flowtable {
            let n = kernel::count_offloaded(&listing);
            w.offloaded = Some(n);
            self.shared.metrics.conntrack_offloaded.set(n as i64);
        }
        if for_ports {
            w.busiest = ports::busiest(&listing, ports::BUSIEST);
            w.listed_unix_ms = Some(super::unix_ms());
            let new_errors = std::mem::take(&mut w.port_errors_unlisted);
            let warning = self.ports_warning(w, new_errors);
            self.publish_ports(w);
            if let Some(text) = warning {
                self.tag_ports(w, &text).await;
            }
        }
    }

    /// The source-port warning in /status (replaced on every listing) and
    /// the journal (when it starts, when its busiest destination changes,
    /// and once a minute).
    fn ports_warning(&self, w: &mut ConntrackWatch, new_errors: u64) -> Option<String> {
        let message = ports::warning(&self.source_ports(w), new_errors);
        match &message {
            Some(text) => {
                let key = w
                    .busiest
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                if w.ports_said.due(&key, Instant::now()) {
                    warn!("{text}");
                }
            }
            None => {
                if w.ports_said.over() {
                    info!("source ports: no destination near the pool's size again");
                }
            }
        }
        self.shared
            .update(|s| s.set_warning(Area::SourcePorts, message.clone()));
        message
    }

    /// The warning on the instance's `natron:source-ports` tag, for
    /// `natron status` (at most once a minute; one attempt, the next
    /// minute's is the retry).
    async fn tag_ports(&self, w: &mut ConntrackWatch, text: &str) {
        if w.ports_tagged.is_some_and(|t| t.elapsed() < TAG_EVERY) {
            return;
        }
        w.ports_tagged = Some(Instant::now());
        let instance = &self.resolved.identity.instance_id;
        let value = natron_contract::tags::source_ports_value(super::unix_ms(), text);
        if let Err(e) = self.ec2.put_source_ports(instance, &value).await {
            self.shared.metrics.ec2_errors.inc();
            warn!(error = %e, "cannot write the source-port warning to the instance's tags (natron status will not show it)");
        }
    }
}
