//! The NAT64 step: natron's Jool instance kept as `core::jool::desired`
//! says, read-compare-replace every pass like `table ip natron` (the
//! filter and counters in `table ip6 natron` are the ruleset step's). A
//! replacement keeps Jool's sessions, so a restarted agent that finds the
//! instance as it wants it changes nothing, and open NAT64 connections
//! never notice. Not ready while the instance is wrong: IPv6-only clients
//! would lose the internet.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use natron_contract::readyz::Area;
use natron_contract::status::Nat64;
use tracing::{debug, error, info, warn};

use super::boot::Resolved;
use crate::core::jool::{self, JoolConfig};
use crate::core::ruleset::nat64::PREFIX;
use crate::core::schedule::Repeats;
use crate::edge::jool::{Jool, JoolError};
use crate::report::status::Shared;

/// How often Jool's sessions are counted (a `jool session display` lists
/// every one).
const SESSIONS_EVERY: Duration = Duration::from_secs(10);

/// What the step remembers between passes.
#[derive(Default)]
pub struct Memory {
    /// The instance has been written or found right once.
    installed: bool,
    /// With NAT64 off: a stale instance has been looked for.
    swept: bool,
    sessions_next: Option<Instant>,
    failing: Repeats,
}

/// One pass: `translating` is the address pool's addresses (empty: the
/// NAT's own private address).
pub async fn reconcile(
    jool: &dyn Jool,
    shared: &Shared,
    resolved: &Resolved,
    translating: &[Ipv4Addr],
    m: &mut Memory,
) {
    let Some(spec) = &resolved.spec.nat64 else {
        if !std::mem::replace(&mut m.swept, true) {
            remove_stale(jool).await;
        }
        return;
    };
    let addresses = if translating.is_empty() {
        vec![resolved.identity.local_ipv4]
    } else {
        translating.to_vec()
    };
    let want = jool::desired(PREFIX, &addresses, spec.port_range);
    let outcome = bring_in_line(jool, &want).await;
    let repaired = matches!(outcome, Ok(Some(_))) && m.installed;
    match &outcome {
        Ok(None) => {}
        Ok(Some(found)) if m.installed => {
            warn!(
                instance = jool::INSTANCE,
                found, "Jool instance drifted; replaced it"
            )
        }
        Ok(Some(found)) => info!(instance = jool::INSTANCE, found, "Jool instance written"),
        Err(e) => {
            if m.failing.due(&e.to_string(), Instant::now()) {
                error!(error = %e, "cannot bring NAT64's Jool instance in line (said once a minute while it lasts)");
            }
        }
    }
    if outcome.is_ok() {
        if m.failing.over() {
            info!("NAT64's Jool instance in line again");
        }
        m.installed = true;
    }
    let sessions = if m.sessions_next.is_none_or(|t| Instant::now() >= t) && outcome.is_ok() {
        m.sessions_next = Some(Instant::now() + SESSIONS_EVERY);
        count_sessions(jool, shared).await
    } else {
        None
    };
    shared.update(|s| {
        let status = s.dataplane.nat64.get_or_insert_with(Nat64::default);
        status.in_place = outcome.is_ok();
        status.prefix = PREFIX.to_string();
        status.addresses = addresses.clone();
        status.port_range = spec.port_range;
        status.sources = spec.sources.clone();
        status.repairs += u64::from(repaired);
        if let Some(n) = sessions {
            status.sessions = n;
        }
        match &outcome {
            Ok(_) => s.problems.remove(&Area::Nat64),
            Err(e) => s.problems.insert(Area::Nat64, e.to_string()),
        };
    });
    if repaired {
        shared.metrics.drift_repairs.inc();
    }
}

/// Reads the instance and replaces it when it differs, then reads it
/// back: Ok(None) when it was right, Ok(Some(what was found)) when it was
/// written, Err when it cannot be made right.
async fn bring_in_line(jool: &dyn Jool, want: &JoolConfig) -> Result<Option<String>, String> {
    let live = jool.read().await.map_err(|e| e.to_string())?;
    if live.as_ref() == Some(want) {
        return Ok(None);
    }
    let found = match &live {
        None => "absent".to_string(),
        Some(l) => describe_difference(l, want),
    };
    jool.apply(want).await.map_err(|e| e.to_string())?;
    match jool.read().await.map_err(|e| e.to_string())? {
        Some(after) if &after == want => Ok(Some(found)),
        after => Err(format!(
            "Jool instance {}: still {} after writing it",
            jool::INSTANCE,
            after.map_or("absent".into(), |a| describe_difference(&a, want))
        )),
    }
}

fn describe_difference(live: &JoolConfig, want: &JoolConfig) -> String {
    if live.pool6 != want.pool6 {
        format!("pool6 {} (want {})", live.pool6, want.pool6)
    } else if live.enabled != want.enabled {
        "disabled".into()
    } else {
        format!(
            "pool4 has {} entries, {} of them wanted (want {})",
            live.pool4.len(),
            live.pool4.intersection(&want.pool4).count(),
            want.pool4.len()
        )
    }
}

async fn count_sessions(jool: &dyn Jool, shared: &Shared) -> Option<u64> {
    match jool.sessions().await {
        Ok(counts) => {
            for (protocol, n) in &counts {
                let labels = vec![("protocol".to_string(), protocol.name().to_lowercase())];
                shared
                    .metrics
                    .nat64_sessions
                    .get_or_create(&labels)
                    .set(*n as i64);
            }
            Some(counts.iter().map(|(_, n)| n).sum())
        }
        Err(e) => {
            warn!(error = %e, "cannot count NAT64 sessions");
            None
        }
    }
}

/// With NAT64 off, an instance a previous configuration left is removed
/// (once, at the first pass). A machine without Jool has none to remove.
async fn remove_stale(jool: &dyn Jool) {
    match jool.read().await {
        Ok(Some(_)) => match jool.remove().await {
            Ok(()) => info!(
                instance = jool::INSTANCE,
                "NAT64 is off: removed the Jool instance a previous configuration left"
            ),
            Err(e) => warn!(error = %e, "NAT64 is off but its Jool instance could not be removed"),
        },
        Ok(None) => {}
        Err(JoolError::Exec(e)) => {
            debug!(error = %e, "no Jool here to look for a stale instance in")
        }
        Err(e) => warn!(error = %e, "NAT64 is off; cannot read Jool to look for a stale instance"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ruleset::nat64::Nat64Spec;
    use crate::edge::jool::fake::FakeJool;

    fn resolved_with_nat64() -> Resolved {
        let mut r = crate::run::tests::resolved();
        r.spec.nat64 = Some(Nat64Spec {
            sources: vec!["2600:1f18:aa::/56".parse().unwrap()],
            port_range: (61001, 65535),
        });
        r
    }

    #[tokio::test]
    async fn writes_once_keeps_it_and_repairs_drift() {
        let (jool, shared, r) = (FakeJool::default(), Shared::new(), resolved_with_nat64());
        let mut m = Memory::default();
        reconcile(&jool, &shared, &r, &[], &mut m).await;
        let live = jool.instance.lock().unwrap().clone().expect("created");
        assert_eq!(live.pool6, "64:ff9b::/96");
        assert!(live
            .pool4
            .iter()
            .all(|e| e.address == r.identity.local_ipv4));
        assert_eq!(live.pool4.len(), 3, "TCP, UDP and ICMP");
        for _ in 0..3 {
            reconcile(&jool, &shared, &r, &[], &mut m).await;
        }
        assert_eq!(
            *jool.applies.lock().unwrap(),
            1,
            "unchanged: never rewritten"
        );
        let status = shared.read(|s| s.dataplane.nat64.clone()).unwrap();
        assert!(status.in_place && status.repairs == 0, "{status:?}");
        // Someone disables it: replaced, counted as a repair.
        jool.instance.lock().unwrap().as_mut().unwrap().enabled = false;
        reconcile(&jool, &shared, &r, &[], &mut m).await;
        assert!(jool.instance.lock().unwrap().as_ref().unwrap().enabled);
        let status = shared.read(|s| s.dataplane.nat64.clone()).unwrap();
        assert_eq!(status.repairs, 1);
        // The address pool translates: Jool follows it.
        let pool: Vec<Ipv4Addr> = vec!["10.0.1.20".parse().unwrap(), "10.0.1.21".parse().unwrap()];
        reconcile(&jool, &shared, &r, &pool, &mut m).await;
        let live = jool.instance.lock().unwrap().clone().unwrap();
        assert_eq!(live.pool4.len(), 6);
        assert!(live.pool4.iter().all(|e| pool.contains(&e.address)));
        assert!(shared.read(|s| !s.problems.contains_key(&Area::Nat64)));
    }

    #[tokio::test]
    async fn a_restarted_agent_keeps_the_instance_it_finds_as_wanted() {
        // The first agent's instance, as Jool keeps it across the restart.
        let (jool, r) = (FakeJool::default(), resolved_with_nat64());
        let mut first = Memory::default();
        reconcile(&jool, &Shared::new(), &r, &[], &mut first).await;
        assert_eq!(*jool.applies.lock().unwrap(), 1);
        // A new process: fresh memory and state, the same configuration.
        let (shared, mut m) = (Shared::new(), Memory::default());
        reconcile(&jool, &shared, &r, &[], &mut m).await;
        assert_eq!(
            *jool.applies.lock().unwrap(),
            1,
            "not replaced: Jool's sessions (open NAT64 connections) stay"
        );
        let status = shared.read(|s| s.dataplane.nat64.clone()).unwrap();
        assert!(status.in_place && status.repairs == 0, "{status:?}");
    }

    #[tokio::test]
    async fn off_removes_a_stale_instance_once() {
        let (jool, shared) = (FakeJool::default(), Shared::new());
        let r = crate::run::tests::resolved();
        *jool.instance.lock().unwrap() = Some(jool::desired(PREFIX, &[], (1, 2)));
        let mut m = Memory::default();
        reconcile(&jool, &shared, &r, &[], &mut m).await;
        assert!(jool.instance.lock().unwrap().is_none());
        assert!(shared.read(|s| s.dataplane.nat64.is_none()));
    }
}
