//! Failover figures, measured in the lab. Each failure runs in a fresh
//! two-AZ lab; the outage is what AZ a's 50 ms prober sees.

use std::time::{Duration, Instant};

use natron_lab::prober::PERIOD;
use natron_lab::scenario::TwoAzs;
use natron_lab::stats::percentile;
use nix::sys::signal::Signal;

const HOLD_DOWN: Duration = Duration::from_secs(3);

/// One failure's outages (or probe time lost), in seconds.
struct Series {
    name: &'static str,
    goal: &'static str,
    values: Vec<f64>,
}

impl Series {
    fn new(name: &'static str, goal: &'static str) -> Series {
        Series {
            name,
            goal,
            values: Vec::new(),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// When, within the agents' one-second cycles (heartbeat, egress probe
/// rounds), run `i` of `runs` strikes: evenly spread over one second. The
/// labs start alike, so a failure injected at once would hit every run at
/// the same phase of those cycles and measure that phase only.
fn phase(i: usize, runs: usize) -> Duration {
    Duration::from_secs_f64(i as f64 / runs.max(1) as f64)
}

/// After `phase`, NAT-A dies (`kill`) or loses its egress; the time from
/// then to AZ a's first answer through NAT-B, waited for up to `timeout`.
fn strike(s: &TwoAzs, kill: bool, phase: Duration, timeout: Duration) -> Result<f64, String> {
    std::thread::sleep(phase);
    let t0 = Instant::now();
    if kill {
        s.lab.kill_nat(0).map_err(|e| e.to_string())?;
    } else {
        s.lab.break_egress(0).map_err(|e| e.to_string())?;
    }
    Ok(secs(s.served_via(0, 1, t0, timeout)?))
}

/// Unplanned failure: kill or egress break, time to first answer via NAT-B;
/// for the egress case also the failback once egress returns.
fn unplanned(kill: bool, phase: Duration) -> Result<(f64, Option<(f64, f64)>), String> {
    let s = TwoAzs::start(HOLD_DOWN)?;
    let outage = strike(&s, kill, phase, Duration::from_secs(20))?;
    if kill {
        return Ok((outage, None));
    }
    let t1 = Instant::now();
    s.lab.restore_egress(0).map_err(|e| e.to_string())?;
    s.owner_is(0, 0, HOLD_DOWN + Duration::from_secs(20))?;
    let moved = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let lost = s.probes[0].lost_between(t1, moved + Duration::from_millis(300));
    let longest = s.probes[0].longest_loss(t1, moved + Duration::from_millis(300));
    Ok((
        outage,
        Some((lost as f64 * PERIOD.as_secs_f64(), secs(longest))),
    ))
}

/// An unplanned failure (`kill`: the NAT dies, else its egress breaks)
/// while both agents run with production default timings, `extra` TOML
/// appended (only the probe targets are the lab's): the outage in seconds.
fn unplanned_with_defaults(kill: bool, extra: &str, phase: Duration) -> Result<f64, String> {
    let s = TwoAzs::start_with(|_| format!("{}{extra}", super::default_config()))?;
    strike(&s, kill, phase, Duration::from_secs(30))
}

/// The one setting the dead-NAT figure with defaults hinges on.
const SHORT_HEARTBEAT_TIMEOUT: &str = "\n[failover]\nheartbeat_timeout = \"2s\"\n";

/// Planned handoff: probe time lost around SIGTERM.
fn planned() -> Result<f64, String> {
    let s = TwoAzs::start(Duration::from_secs(30))?;
    let t0 = Instant::now();
    s.lab.signal_agent(s.agents[0], Signal::SIGTERM);
    s.lab
        .wait_agent_exit(s.agents[0], Duration::from_secs(15))
        .ok_or("agent did not exit")?;
    s.owner_is(0, 1, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(1500));
    let lost = s.probes[0].lost_between(t0, Instant::now() - Duration::from_millis(1100));
    Ok(lost as f64 * PERIOD.as_secs_f64())
}

/// Route table owner changes during a partition of `secs`.
fn partition(secs: u64) -> Result<(usize, f64), String> {
    let s = TwoAzs::start(Duration::from_secs(30))?;
    let t0 = Instant::now();
    s.lab.partition(0, 1).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(secs));
    let flaps = s.changes_since(0, t0) + s.changes_since(1, t0);
    let loss = (0..2)
        .map(|az| secs_f(s.probes[az].longest_loss(t0, Instant::now())))
        .fold(0.0, f64::max);
    Ok((flaps, loss))
}

fn secs_f(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Round trips (sorted, seconds) of the emulator's DescribeRouteTables and
/// ReplaceRoute, 50 each, from the lab, while both agents run.
fn api_latency() -> Result<(Vec<f64>, Vec<f64>), String> {
    let s = TwoAzs::start(Duration::from_secs(30))?;
    let table = s.lab.private_tables[1].clone();
    let eni = s.lab.nats[1].interface_id.clone();
    let (mut describe, mut replace): (Vec<f64>, Vec<f64>) = s.lab.ec2(|ec2| async move {
        let (mut d, mut r) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let t = Instant::now();
            if ec2
                .describe_route_tables()
                .route_table_ids(&table)
                .send()
                .await
                .is_ok()
            {
                d.push(t.elapsed().as_secs_f64());
            }
            let t = Instant::now();
            let ok = ec2
                .replace_route()
                .route_table_id(&table)
                .destination_cidr_block("0.0.0.0/0")
                .network_interface_id(&eni)
                .send()
                .await
                .is_ok();
            if ok {
                r.push(t.elapsed().as_secs_f64());
            }
        }
        (d, r)
    });
    describe.sort_by(f64::total_cmp);
    replace.sort_by(f64::total_cmp);
    Ok((describe, replace))
}

pub fn run(runs: usize, partition_secs: u64) -> Result<String, String> {
    let mut kill = Series::new("NAT dead (killed, links down)", "p50 <= 2 s, p99 <= 3 s");
    let mut egress = Series::new("NAT egress broken", "p50 <= 2 s");
    let mut handoff = Series::new("planned handoff (SIGTERM), probe time lost", "<= 0.2 s");
    let mut dead_defaults = Series::new(
        "NAT dead, production default timings",
        "p50 <= 2 s, p99 <= 3 s",
    );
    let mut egress_defaults = Series::new(
        "NAT egress broken, production default timings",
        "p50 <= 2 s, p99 <= 3 s",
    );
    let mut dead_short = Series::new(
        "NAT dead, defaults but `failover.heartbeat_timeout = \"2s\"`",
        "p50 <= 2 s, p99 <= 3 s",
    );
    let mut failback = Series::new(
        "failback after hold-down, probe time lost",
        "(no goal; should be ~0)",
    );
    for i in 0..runs {
        eprintln!("run {}/{runs}", i + 1);
        let at = phase(i, runs);
        kill.values.push(unplanned(true, at)?.0);
        let (outage, back) = unplanned(false, at)?;
        egress.values.push(outage);
        if let Some((lost, _)) = back {
            failback.values.push(lost);
        }
        handoff.values.push(planned()?);
        dead_defaults
            .values
            .push(unplanned_with_defaults(true, "", at)?);
        egress_defaults
            .values
            .push(unplanned_with_defaults(false, "", at)?);
        dead_short
            .values
            .push(unplanned_with_defaults(true, SHORT_HEARTBEAT_TIMEOUT, at)?);
    }
    eprintln!("partition run ({partition_secs} s)");
    let (flaps, partition_loss) = partition(partition_secs)?;
    let (describe, replace) = api_latency()?;

    let mut out = String::new();
    let mut println = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    println(format!(
        "{runs} runs of each failure, each in a fresh two-AZ lab with the lab's failover timings \
         (peer checks every 200 ms, 3 misses; heartbeat timeout 1.2 s; hold-down {} s). \
         Outage: from the failure to the first answer through the other NAT, as seen by a 50 ms prober. \
         Unplanned failures strike at instants spread evenly over one second across the runs \
         (run i waits i/{runs} s once the lab is ready), so that every phase of the agents' \
         one-second cycles (heartbeat, egress probe rounds) is sampled.",
        HOLD_DOWN.as_secs()
    ));
    println(String::new());
    println("| failure | runs | p50 | p99 | max | goal |".into());
    println("|---|---|---|---|---|---|".into());
    for s in [
        &kill,
        &egress,
        &handoff,
        &failback,
        &dead_defaults,
        &egress_defaults,
        &dead_short,
    ] {
        let mut v = s.values.clone();
        v.sort_by(f64::total_cmp);
        println(format!(
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {} |",
            s.name,
            v.len(),
            percentile(&v, 50.0),
            percentile(&v, 99.0),
            v.last().copied().unwrap_or(f64::NAN),
            s.goal,
        ));
    }
    println(format!("| partition of NAT-A and NAT-B for {partition_secs} s: route table owner changes | 1 | {flaps} | | | 0 |"));
    println(String::new());
    println(format!(
        "Longest client loss during the partition: {partition_loss:.2} s."
    ));
    println(String::new());
    let ms = |v: &[f64], p: f64| percentile(v, p) * 1000.0;
    println(format!(
        "Emulator API latency beside these figures (50 calls each, from the lab): DescribeRouteTables \
         p50 {:.1} ms, p99 {:.1} ms; ReplaceRoute p50 {:.1} ms, p99 {:.1} ms. A takeover makes one \
         read and one write, so about {:.0} ms of each outage is the emulator's.",
        ms(&describe, 50.0),
        ms(&describe, 99.0),
        ms(&replace, 50.0),
        ms(&replace, 99.0),
        ms(&describe, 50.0) + ms(&replace, 50.0)
    ));
    Ok(out)
}
