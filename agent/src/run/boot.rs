//! Boot: who this instance is and what its data plane should be, resolved
//! once from the settings, IMDS and the kernel, retried with backoff until
//! everything needed is known. Problems show in /readyz meanwhile.

use std::time::Duration;

use natron_contract::readyz::Area;
use natron_contract::tags;
use tracing::{info, warn};

use super::Edges;
use crate::core::kernel::{self, Setting};
use crate::core::ruleset::nat64::Nat64Spec;
use crate::core::ruleset::{self, RulesetSpec};
use crate::core::settings::Settings;
use crate::edge::identity::{read_identity_with_retries, Identity};
use crate::edge::sysctl;
use crate::report::status::Shared;

/// What boot resolved: fixed for the agent's life.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub identity: Identity,
    pub group: String,
    pub spec: RulesetSpec,
    pub sysctls: Vec<Setting>,
    /// `nat.addresses`: the address pool's size.
    pub addresses: u32,
}

/// Resolves, retrying with doubling backoff (capped at 10 s) until it can.
pub async fn boot(settings: &Settings, edges: &Edges, shared: &Shared) -> Resolved {
    let mut delay = Duration::from_millis(500);
    loop {
        shared.mark_pass();
        match try_boot(settings, edges, shared).await {
            Ok(r) => return r,
            Err((area, message)) => {
                warn!(%area, "{message}; retrying in {delay:?}");
                shared.set_problem(area, message);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// One attempt; the area and message of what is missing.
pub async fn try_boot(
    settings: &Settings,
    edges: &Edges,
    shared: &Shared,
) -> Result<Resolved, (Area, String)> {
    let identity =
        read_identity_with_retries(edges.metadata.as_ref(), 3, Duration::from_millis(200))
            .await
            .map_err(|e| (Area::Metadata, e.to_string()))?;
    shared.clear_problem(Area::Metadata);
    let group = settings
        .group
        .clone()
        .or_else(|| identity.group_tag.clone())
        .ok_or((
            Area::Group,
            format!(
                "no `group` in the configuration and instance {} has no {} tag in its metadata \
                 (tag it, or enable instance tags in its metadata options)",
                identity.instance_id,
                tags::GROUP
            ),
        ))?;
    match (&settings.group, &identity.group_tag) {
        (Some(configured), Some(tagged)) if configured != tagged => {
            // Its peers and route tables are found by the tag: a NAT that
            // believes it is in another group sees none of them.
            shared.set_problem(
                Area::Group,
                format!(
                    "configured group {configured:?} but instance {} is tagged {}={tagged:?}: it would see no peers and no route tables (fix the configuration or the tag)",
                    identity.instance_id,
                    tags::GROUP
                ),
            );
        }
        _ => shared.clear_problem(Area::Group),
    }
    let sys = edges.sysctl.as_ref();
    let egress = match &settings.nat.egress_interface {
        Some(name) => name.clone(),
        None => sysctl::default_route_interface(sys).ok_or((
            Area::EgressInterface,
            "no IPv4 default route to take the egress interface from (set nat.egress_interface)"
                .to_string(),
        ))?,
    };
    shared.clear_problem(Area::EgressInterface);
    let flowtable = settings.nat.flowtable
        && edges
            .nft
            .check(&ruleset::flowtable_probe(&egress))
            .await
            .is_ok();
    shared.update(|s| s.dataplane.flowtable = Some(flowtable));
    if settings.nat.flowtable && !flowtable {
        info!(egress = %egress, "kernel has no nftables flowtables; using the slow path only");
    }
    // The wire counters feed CloudWatch's directional metrics only: a
    // kernel without the netdev egress hook publishes without them.
    let wire_counters = settings.cloudwatch.is_some()
        && match edges.nft.check(&ruleset::wire::probe(&egress)).await {
            Ok(()) => true,
            Err(e) => {
                warn!(egress = %egress, error = %e, "kernel has no netdev egress hook; CloudWatch gets no directional metrics (BytesInFromSource and the like)");
                false
            }
        };
    let spec = RulesetSpec {
        egress: egress.clone(),
        sources: settings
            .nat
            .source_cidrs
            .clone()
            .unwrap_or_else(|| identity.vpc_cidrs.clone()),
        port_range: settings.nat.port_range,
        fully_random: settings.nat.fully_random,
        flowtable,
        agent_port: settings.listen.port(),
        vpc: identity.vpc_cidrs.clone(),
        mss: settings.nat.mss,
        pool: Vec::new(),
        wire_counters,
        nat64: settings.nat64.as_ref().map(|n| Nat64Spec {
            sources: n
                .source_cidrs
                .clone()
                .unwrap_or_else(|| identity.vpc_ipv6_cidrs.clone()),
            port_range: n.port_range,
        }),
    };
    if spec.nat64.as_ref().is_some_and(|n| n.sources.is_empty()) {
        warn!("NAT64 is on but the VPC has no IPv6 CIDR block and nat64.source_cidrs is not set: no IPv6 network may use it");
    }
    let ct = &settings.conntrack;
    let conntrack_max = ct.max.unwrap_or_else(|| {
        kernel::conntrack_max_for_memory(
            sysctl::mem_total(sys).unwrap_or(512 << 20),
            ct.memory_percent,
        )
    });
    let sysctls =
        kernel::desired_settings(&egress, conntrack_max, ct.tcp_timeout_established.as_secs());
    Ok(Resolved {
        identity,
        group,
        spec,
        sysctls,
        addresses: settings.nat.addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::identity::fake::FakeMetadata;
    use crate::run::tests::edges;

    #[tokio::test(start_paused = true)]
    async fn resolves_identity_group_egress_and_sizing() {
        let (edges, fakes) = edges(FakeMetadata::typical());
        fakes
            .sysctl
            .values
            .lock()
            .unwrap()
            .insert("proc:meminfo".into(), "MemTotal: 524288 kB\n".into());
        let shared = Shared::new();
        let settings = Settings::default();
        let r = try_boot(&settings, &edges, &shared).await.unwrap();
        assert_eq!(r.identity.instance_id, "i-0abc");
        assert_eq!(r.group, "prod", "from the instance's tag");
        assert_eq!(r.spec.egress, "ens5", "the default route's interface");
        assert_eq!(r.spec.sources.len(), 2, "the VPC's CIDRs");
        let max = r
            .sysctls
            .iter()
            .find(|s| s.key == "net.netfilter.nf_conntrack_max")
            .unwrap();
        assert_eq!(max.value, "139810", "10 % of 512 MiB");
        assert_eq!(shared.read(|s| s.dataplane.flowtable), Some(true));
        assert!(!r.spec.wire_counters, "only for CloudWatch");
        let cloudwatch = Settings {
            cloudwatch: Some(crate::core::settings::CloudWatch {
                namespace: "natron".into(),
                interval: Duration::from_secs(60),
            }),
            ..Settings::default()
        };
        let r = try_boot(&cloudwatch, &edges, &shared).await.unwrap();
        assert!(r.spec.wire_counters, "CloudWatch's directional metrics");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_group_is_a_problem_naming_the_instance() {
        let mut md = FakeMetadata::typical();
        md.values
            .remove(&crate::edge::identity::paths::group_tag_path());
        let (edges, _) = edges(md);
        let (area, message) = try_boot(&Settings::default(), &edges, &Shared::new())
            .await
            .unwrap_err();
        assert_eq!(area, Area::Group);
        assert!(
            message.contains("i-0abc") && message.contains("natron:group"),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_group_other_than_the_instances_tag_is_not_ready() {
        let (edges, _) = edges(FakeMetadata::typical());
        let settings = Settings {
            group: Some("staging".into()),
            ..Default::default()
        };
        let shared = Shared::new();
        try_boot(&settings, &edges, &shared).await.unwrap();
        let body = shared.read(|s| s.readyz());
        assert!(!body.ready && body.has(Area::Group), "{body:?}");
        assert!(body.summary().contains("\"prod\""), "{}", body.summary());
        assert!(!body.starting, "a configuration error, not a NAT coming up");
    }

    #[tokio::test(start_paused = true)]
    async fn no_default_route_and_no_interface_configured_is_a_problem() {
        let (edges, fakes) = edges(FakeMetadata::typical());
        fakes.sysctl.values.lock().unwrap().remove("proc:net/route");
        let (area, _) = try_boot(&Settings::default(), &edges, &Shared::new())
            .await
            .unwrap_err();
        assert_eq!(area, Area::EgressInterface);
        let mut settings = Settings::default();
        settings.nat.egress_interface = Some("eth0".into());
        let r = try_boot(&settings, &edges, &Shared::new()).await.unwrap();
        assert_eq!(r.spec.egress, "eth0");
    }
}
