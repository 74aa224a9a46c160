//! Scale: how many flows the NAT holds at the agent's autosized conntrack
//! limits, what a full table does to a running agent, and the agent with
//! 50 route tables in 3 AZs (time to claim, EC2 requests per minute).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use natron_agent::core::kernel::conntrack_max_for_memory;
use natron_lab::dataplane::{Topology, Variant};
use natron_lab::lab::{Lab, LabSpec};

use super::default_config;

const MIB: u64 = 1024 * 1024;

pub fn run() -> Result<String, String> {
    let mut out = capacity()?;
    out.push('\n');
    out.push_str(&full_table()?);
    out.push('\n');
    out.push_str(&many_tables()?);
    Ok(out)
}

/// Flows held through natron's ruleset for each memory budget's autosized
/// limit (`conntrack.memory_percent` = 10, the default).
fn capacity() -> Result<String, String> {
    let topo = Topology::build().map_err(|e| e.to_string())?;
    let kernel_max = topo.conntrack_max();
    let mut out = format!(
        "Conntrack capacity through natron's ruleset. Inside a network namespace the agent cannot \
         set `nf_conntrack_max` (the kernel refuses), so the limit here is the host's: {kernel_max}. \
         Flows: UDP, distinct 5-tuples, sent within seconds (each stays tracked 30 s unanswered).\n\n\
         | memory budget | agent's autosized limit | flows sent | held (nf_conntrack_count) | dropped for a full table | evicted early | send time |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for (label, memory) in [("512 MiB (t4g.nano)", 512 * MIB), ("1 GiB", 1024 * MIB)] {
        let target = conntrack_max_for_memory(memory, 10) as usize;
        topo.set_variant(Variant::Natron)
            .map_err(|e| e.to_string())?;
        let before = topo.conntrack_drops();
        let took = topo.udp_flows(target).map_err(|e| e.to_string())?;
        let held = topo.conntrack_count();
        let after = topo.conntrack_drops();
        out.push_str(&format!(
            "| {label} | {target} | {target} | {held} | {} | {} | {:.1} s |\n",
            after.drop - before.drop,
            after.early_drop - before.early_drop,
            took.as_secs_f64()
        ));
    }
    topo.set_variant(Variant::Plain)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// New flows tried once the table is full of assured ones.
const EXTRA_FLOWS: usize = 20_000;

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(name)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// A running agent whose NAT's conntrack table fills up with flows the
/// kernel may not evict (`Lab::fill_conntrack`); then new flows are
/// refused, which the agent must count, report and survive.
fn full_table() -> Result<String, String> {
    let lab = Lab::start(LabSpec::with_azs(1)).map_err(|e| e.to_string())?;
    let id = lab
        .start_agent(0, default_config(), &[])
        .map_err(|e| e.to_string())?;
    lab.wait_for("agent ready", Duration::from_secs(30), || {
        matches!(lab.agent_get(0, "/readyz"), Ok((200, _))).then_some(())
    })?;
    let status = lab.agent_status(0)?;
    let max = status.dataplane.conntrack.as_ref().map_or(0, |c| c.max);
    let flows = max as usize;
    let ns = lab.nats[0].ns.clone();
    let t0 = Instant::now();
    lab.fill_conntrack(0, flows, EXTRA_FLOWS)
        .map_err(|e| format!("flows in {ns}: {e}"))?;
    let filled_in = t0.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (_, metrics) = lab.agent_get(0, "/metrics")?;
    let status = lab.agent_status(0)?;
    let ready_while_full = lab.agent_get(0, "/readyz").map(|(c, _)| c);
    let log = lab.agent_log(id);
    let drops = metric(&metrics, "natron_conntrack_drops_total").unwrap_or(f64::NAN);
    let early = metric(&metrics, "natron_conntrack_early_drops_total").unwrap_or(f64::NAN);
    let entries = status.dataplane.conntrack.as_ref().map_or(0, |c| c.entries);
    let nearly_full = status
        .dataplane
        .conntrack
        .as_ref()
        .is_some_and(|c| c.nearly_full);
    let warned_full = log.contains("conntrack table at 90 %");
    let warned_drops = log.contains("conntrack table full: new flows are being dropped");
    // Assured UDP entries expire 120 s after their last packet; the agent
    // must still be there, and ready again once its egress probes pass.
    let recovered = lab
        .wait_for(
            "ready after the table drains",
            Duration::from_secs(200),
            || matches!(lab.agent_get(0, "/readyz"), Ok((200, _))).then_some(()),
        )
        .is_ok();
    let alive = lab.wait_agent_exit(id, Duration::from_millis(10)).is_none();
    Ok(format!(
        "A full table under a running agent: {flows} answered UDP flows (the limit) inside NAT-A's \
         namespace, touched again after 2 s so the kernel marks them assured and may not evict them, \
         then {EXTRA_FLOWS} new flows; {:.1} s in all:\n\n\
         | what | seen |\n|---|---|\n\
         | entries at the peak (/status) | {entries} |\n\
         | `natron_conntrack_drops_total` (packets refused) | {drops} |\n\
         | `natron_conntrack_early_drops_total` (unassured entries evicted for room) | {early} |\n\
         | /status `dataplane.conntrack.nearly_full` | {nearly_full} |\n\
         | warning logged at 90 % / when dropping | {warned_full} / {warned_drops} |\n\
         | /readyz while full (its egress probes need new flows too) | {} |\n\
         | agent still running, ready again after the flows expired (120 s) | {alive}, {recovered} |\n",
        filled_in.as_secs_f64(),
        match ready_while_full {
            Ok(code) => code.to_string(),
            Err(e) => e,
        }
    ))
}

/// natron_ec2_requests_total per operation, from one agent's /metrics.
fn requests(lab: &Lab, az: usize) -> BTreeMap<String, f64> {
    let Ok((_, body)) = lab.agent_get(az, "/metrics") else {
        return BTreeMap::new();
    };
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("natron_ec2_requests_total{operation=\"")?;
            let (op, value) = rest.split_once("\"} ")?;
            Some((op.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// 3 AZs, 50 more route tables of the group (spread over the AZs), three
/// agents with production intervals started together.
fn many_tables() -> Result<String, String> {
    let lab = Lab::start(LabSpec::with_azs(3)).map_err(|e| e.to_string())?;
    let (vpc, group) = (lab.vpc_id.clone(), lab.spec.group.clone());
    let azs: Vec<String> = lab.spec.azs.iter().map(|a| a.name.clone()).collect();
    lab.ec2(|ec2| async move {
        for i in 0..50 {
            let az = &azs[i % azs.len()];
            ec2.create_route_table()
                .vpc_id(&vpc)
                .tag_specifications(
                    aws_sdk_ec2::types::TagSpecification::builder()
                        .resource_type(aws_sdk_ec2::types::ResourceType::RouteTable)
                        .tags(tag("natron:group", &group))
                        .tags(tag("natron:az", az))
                        .tags(tag("Name", &format!("scale-{i}")))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| format!("CreateRouteTable: {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    let homes: BTreeMap<String, String> = lab
        .spec
        .azs
        .iter()
        .zip(&lab.nats)
        .map(|(az, nat)| (az.name.clone(), nat.interface_id.clone()))
        .collect();
    let t0 = Instant::now();
    for az in 0..3 {
        lab.start_agent(az, default_config(), &[])
            .map_err(|e| e.to_string())?;
    }
    let (vpc, group) = (lab.vpc_id.clone(), lab.spec.group.clone());
    let claimed = lab.wait_for("all 53 tables claimed", Duration::from_secs(120), || {
        let (vpc, group, homes) = (vpc.clone(), group.clone(), homes.clone());
        let served = lab.ec2(|ec2| async move {
            let out = ec2
                .describe_route_tables()
                .filters(filter("vpc-id", &vpc))
                .filters(filter("tag:natron:group", &group))
                .send()
                .await
                .ok()?;
            let tables = out.route_tables();
            let served = tables.iter().all(|t| {
                let az = t
                    .tags()
                    .iter()
                    .find(|g| g.key() == Some("natron:az"))
                    .and_then(|g| g.value());
                let home = az.and_then(|a| homes.get(a));
                t.routes().iter().any(|r| {
                    r.destination_cidr_block() == Some("0.0.0.0/0")
                        && r.network_interface_id() == home.map(String::as_str)
                })
            });
            Some((tables.len(), served))
        });
        matches!(served, Some((n, true)) if n == 53).then_some(())
    });
    let claim_time = t0.elapsed();
    // Steady state: requests over one minute, after a settling pause.
    std::thread::sleep(Duration::from_secs(15));
    let before: Vec<_> = (0..3).map(|az| requests(&lab, az)).collect();
    let window = Duration::from_secs(60);
    std::thread::sleep(window);
    let after: Vec<_> = (0..3).map(|az| requests(&lab, az)).collect();
    let mut per_op: BTreeMap<String, f64> = BTreeMap::new();
    for (b, a) in before.iter().zip(&after) {
        for (op, v) in a {
            *per_op.entry(op.clone()).or_default() += v - b.get(op).copied().unwrap_or(0.0);
        }
    }
    let per_minute = 60.0 / window.as_secs_f64();
    let total: f64 = per_op.values().sum::<f64>() * per_minute;
    let mutating: f64 = per_op
        .iter()
        .filter(|(op, _)| !op.starts_with("Describe"))
        .map(|(_, v)| v * per_minute)
        .sum();
    let breakdown = per_op
        .iter()
        .map(|(op, v)| format!("{op} {:.0}", v * per_minute))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "50 extra route tables of the group in 3 AZs (53 in all), three agents with production \
         intervals started together:\n\n\
         | figure | value |\n|---|---|\n\
         | start to every table served by its AZ's NAT | {} |\n\
         | EC2 requests per minute, steady state, all three agents | {total:.0} ({mutating:.0} mutating) |\n\
         | by operation, per minute | {breakdown} |\n",
        match claimed {
            Ok(()) => format!("{:.1} s", claim_time.as_secs_f64()),
            Err(e) => format!("**not within 120 s**: {e}"),
        }
    ))
}

fn tag(k: &str, v: &str) -> aws_sdk_ec2::types::Tag {
    aws_sdk_ec2::types::Tag::builder().key(k).value(v).build()
}

fn filter(name: &str, value: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(name)
        .values(value)
        .build()
}
