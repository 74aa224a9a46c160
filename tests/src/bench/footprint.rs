//! The agent's footprint in the lab: start to ready, RSS after start and
//! after a soak of fast ticks, CPU idle and during a takeover, and the size
//! of the static release binary.

use std::path::Path;
use std::time::{Duration, Instant};

use natron_lab::lab::{AgentId, Lab, LabSpec};
use natron_lab::stats::median;
use nix::sys::signal::Signal;

use natron_agent::core::config::Config;

use super::default_config;

/// Every loop at its fastest allowed pace, to pack many ticks into the soak.
fn fast_config() -> Config {
    let mut c = default_config();
    c.health.interval = Duration::from_millis(100);
    c.nat.reconcile_interval = Duration::from_millis(200);
    c.ec2.route_interval = Duration::from_secs(1);
    c.failover.peer_interval = Duration::from_millis(50);
    c.failover.peer_refresh = Duration::from_secs(1);
    c.failover.heartbeat_interval = Duration::from_millis(100);
    c.failover.heartbeat_timeout = Duration::from_secs(1);
    // At most the heartbeat timeout (the agent refuses the file otherwise).
    c.failover.proof_window = Duration::from_millis(500);
    c
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS:").map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// utime + stime of the agent and of its finished children (the `nft`
/// runs of every reconcile pass), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    // USER_HZ: 100 on every Linux architecture natron runs on.
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Share of one core used by `pid` over `window`.
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = tree_cpu_secs(pid);
    std::thread::sleep(window);
    (tree_cpu_secs(pid) - before) / window.as_secs_f64()
}

/// CPU seconds of `pid` with its children: those it has reaped (in its
/// own figures) and those still running (the conntrack event watcher
/// runs as long as the agent).
fn tree_cpu_secs(pid: u32) -> f64 {
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    cpu_secs(pid)
        + children
            .into_iter()
            .map(cpu_secs)
            .filter(|c| c.is_finite())
            .sum::<f64>()
}

/// Polls every 10 ms until `done`; the time since `t0`. Not
/// `Lab::wait_for`: its 50 ms polling is too coarse for a 70 ms figure.
fn wait(t0: Instant, what: &str, done: impl Fn() -> bool) -> Result<Duration, String> {
    while t0.elapsed() < Duration::from_secs(30) {
        if done() {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("{what}: not within 30 s"))
}

struct Started {
    id: AgentId,
    /// Spawn to forwarding, ruleset and source/dest check verified.
    dataplane: Duration,
    /// Spawn to /readyz 200 (egress proven as well).
    ready: Duration,
}

fn start(lab: &Lab, az: usize, config: &Config) -> Result<Started, String> {
    let t0 = Instant::now();
    let id = lab
        .start_agent(az, config, &[])
        .map_err(|e| e.to_string())?;
    let dataplane = wait(t0, "data plane in place", || {
        lab.agent_status(az).is_ok_and(|s| {
            let d = &s.dataplane;
            d.forwarding && d.ruleset_in_place && d.source_dest_check_disabled
        })
    })
    .map_err(|e| format!("{e}\n--- agent log ---\n{}", lab.agent_log(id)))?;
    let ready = wait(t0, "ready", || {
        matches!(lab.agent_get(az, "/readyz"), Ok((200, _)))
    })?;
    Ok(Started {
        id,
        dataplane,
        ready,
    })
}

/// What CloudWatch costs, side by side, one agent after the other on the
/// same NAT: without, then with CloudWatch at its production interval (a
/// minute: the publications, and what CloudWatch turns on besides: the
/// wire counters' table listed every pass, the conntrack event watcher),
/// then with a publication every second (60 times the production rate,
/// so that one call's cost stands out of the noise). The PutMetricData
/// calls the lab's endpoint saw meanwhile. Stops `a`.
struct CloudWatchCost {
    /// Share of a core CloudWatch on at the production interval adds.
    production: f64,
    /// Calls the production agent made over its window (one a minute).
    production_calls: f64,
    /// CPU seconds per publication.
    per_call: f64,
    /// Calls per configured interval (1 by design).
    calls_per_interval: f64,
}

fn cloudwatch_cost(lab: &Lab, a: AgentId, config: &Config) -> Result<CloudWatchCost, String> {
    const WINDOW: Duration = Duration::from_secs(120);
    const FAST_WINDOW: Duration = Duration::from_secs(60);
    eprintln!("footprint: CloudWatch, 120 s without, 120 s at a minute, 60 s at a second");
    let off = cpu_share(lab.agent_pid(a), WINDOW);
    stop(lab, a);
    let puts = || {
        lab.ec2_proxy
            .requests()
            .iter()
            .filter(|r| r.action == "PutMetricData")
            .count() as f64
    };
    let mut on = config.clone();
    on.metrics.cloudwatch.enabled = true;
    let mut measure = |interval: Duration, window: Duration| -> Result<(f64, f64), String> {
        on.metrics.cloudwatch.interval = interval;
        let id = start(lab, 0, &on)?.id;
        std::thread::sleep(Duration::from_secs(3));
        let calls0 = puts();
        let share = cpu_share(lab.agent_pid(id), window);
        let calls = puts() - calls0;
        stop(lab, id);
        Ok((share, calls))
    };
    let (production, production_calls) = measure(Duration::from_secs(60), WINDOW)?;
    let (fast, calls) = measure(Duration::from_secs(1), FAST_WINDOW)?;
    if calls < 1.0 {
        return Err("CloudWatch: no PutMetricData call reached the lab's endpoint".into());
    }
    Ok(CloudWatchCost {
        // Signed: a difference below the noise may come out negative, and
        // is shown as it came out.
        production: production - off,
        production_calls,
        per_call: (fast - production) * FAST_WINDOW.as_secs_f64() / calls,
        calls_per_interval: calls / FAST_WINDOW.as_secs_f64(),
    })
}

fn stop(lab: &Lab, id: AgentId) {
    lab.signal_agent(id, Signal::SIGTERM);
    lab.wait_agent_exit(id, Duration::from_secs(15));
}

pub fn run(soak: Duration, release_binary: Option<&Path>) -> Result<String, String> {
    let lab = Lab::start(LabSpec::with_azs(2)).map_err(|e| e.to_string())?;
    let config = default_config();
    let b = start(&lab, 1, &config)?.id;
    // Start to ready, five times (stop and start again).
    let (mut ready, mut dataplane) = (Vec::new(), Vec::new());
    let mut rss_start = Vec::new();
    let mut a = None;
    for _ in 0..5 {
        if let Some(id) = a.take() {
            stop(&lab, id);
        }
        let started = start(&lab, 0, &config)?;
        ready.push(started.ready.as_secs_f64());
        dataplane.push(started.dataplane.as_secs_f64());
        std::thread::sleep(Duration::from_millis(500));
        rss_start.push(rss_mib(lab.agent_pid(started.id)));
        a = Some(started.id);
    }
    let a = a.expect("started");
    eprintln!("footprint: idle CPU over 30 s");
    let idle = cpu_share(lab.agent_pid(a), Duration::from_secs(30));
    let cloudwatch = cloudwatch_cost(&lab, a, &config)?;

    eprintln!("footprint: soak of {soak:?} at the fastest intervals");
    let fast = start(&lab, 0, &fast_config())?.id;
    let pid = lab.agent_pid(fast);
    let t0 = Instant::now();
    let mut samples = vec![rss_mib(pid)];
    while t0.elapsed() < soak {
        std::thread::sleep(Duration::from_secs(10).min(soak));
        samples.push(rss_mib(pid));
    }
    let soak_cpu = cpu_secs(pid);
    stop(&lab, fast);
    // The fast agent handed its table to B on SIGTERM; start A again so
    // the takeover below has something to take.
    start(&lab, 0, &config)?;
    std::thread::sleep(Duration::from_secs(12));

    eprintln!("footprint: CPU of NAT-B while it takes AZ a over");
    let b_pid = lab.agent_pid(b);
    let before = cpu_secs(b_pid);
    let t_kill = Instant::now();
    lab.kill_nat(0).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(10));
    let takeover_cpu = (cpu_secs(b_pid) - before) / t_kill.elapsed().as_secs_f64();
    let taken = lab.table_owner(&lab.private_tables[0]) == Some(lab.nats[1].instance_id.clone());

    let ticks = soak.as_secs_f64() / 0.2;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("| figure | value | goal | result |".into());
    line("|---|---|---|---|".into());
    let judge = |ok: bool| if ok { "met" } else { "**missed**" };
    let range = |v: &[f64]| {
        format!(
            "{:.2} s (min {:.2}, max {:.2})",
            median(v),
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max)
        )
    };
    line(format!(
        "| start to data plane in place (spawn to forwarding, ruleset and source/dest check verified; IMDS stub and emulator in the lab), median of 5 | {} | <= 1 s | {} |",
        range(&dataplane),
        judge(median(&dataplane) <= 1.0)
    ));
    line(format!(
        "| start to ready (/readyz 200: egress also proven by `health.rise` = 2 probes `health.interval` = 1 s apart), median of 5 | {} | (bounded below by 1 s by design) | |",
        range(&ready)
    ));
    let rss0 = median(&rss_start);
    line(format!(
        "| RSS after start (ready + 0.5 s), median of 5 | {rss0:.1} MiB | <= 20 MB | {} |",
        judge(rss0 * 1.048_576 <= 20.0)
    ));
    let (first, last) = (samples[0], *samples.last().expect("sample"));
    let peak = samples.iter().copied().fold(0.0, f64::max);
    line(format!(
        "| RSS over a {:.0} s soak at the fastest intervals ({ticks:.0} data-plane ticks, {:.0} decisions) | {first:.1} → {last:.1} MiB (peak {peak:.1}) | no growth | {} |",
        soak.as_secs_f64(),
        soak.as_secs_f64() * 10.0,
        judge(last <= first * 1.05 + 0.5)
    ));
    line(format!(
        "| CPU idle, production intervals, 30 s | {:.2} % of a core | < 1 % | {} |",
        idle * 100.0,
        judge(idle < 0.01)
    ));
    line(format!(
        "| CloudWatch: CPU per PutMetricData call (one a second for 60 s, less the same agent publishing once a minute; a negative figure is below the noise) | {:.1} ms | (no goal) | |",
        cloudwatch.per_call * 1000.0
    ));
    line(format!(
        "| CloudWatch on at its production interval (60 s), 120 s, less the same agent without (120 s before): CPU (publishing, the wire counters' table listed every pass, the conntrack event watcher; a negative figure is below the noise), and calls per interval (one a second for 60 s) | {:+.3} % of a core ({:.0} calls in 120 s); {:.2} calls | < 0.2 %; 1 call | {} |",
        cloudwatch.production * 100.0,
        cloudwatch.production_calls,
        cloudwatch.calls_per_interval,
        judge(cloudwatch.production < 0.002 && (cloudwatch.calls_per_interval - 1.0).abs() < 0.1)
    ));
    line(format!(
        "| CPU during the soak (fastest intervals) | {:.2} % of a core | (no goal) | |",
        soak_cpu / soak.as_secs_f64().max(1.0) * 100.0
    ));
    line(format!(
        "| CPU of the surviving NAT's agent over the 10 s after the other NAT dies (production intervals) | {:.2} % of a core | (no goal) | {} |",
        takeover_cpu * 100.0,
        if taken { "took AZ a's table over" } else { "**did not take the table within 10 s**" }
    ));
    let size = release_binary.and_then(|p| std::fs::metadata(p).ok().map(|m| (p, m.len())));
    line(match size {
        Some((p, bytes)) => format!(
            "| binary size, release, static (musl), stripped: `{}` | {:.1} MiB | (no goal) | |",
            p.display(),
            bytes as f64 / 1_048_576.0
        ),
        None => "| binary size | not measured: no release binary given | | |".into(),
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// The soak's configuration is one the agent accepts (it once was not,
    /// and the bench waited in vain for an agent that had exited).
    #[test]
    fn the_fast_configuration_is_valid() {
        if let Err(problems) = super::fast_config().validate() {
            panic!("{problems:?}");
        }
    }
}
