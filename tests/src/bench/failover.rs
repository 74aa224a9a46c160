//! Failover figures as users feel them, measured in the lab with the
//! production default configuration (only the probe targets are the
//! lab's), each scenario in a fresh two-AZ lab:
//!
//! - outages: a dead NAT, a NAT whose egress breaks, a planned handoff, a
//!   failback, seen by a 50 ms prober in AZ a;
//! - open connections: 200 long-lived TCP connections through NAT-A across
//!   agent restarts, crashes and configuration changes;
//! - owner changes where there should be none: partitions (both ways and
//!   one way), failures and recoveries both NATs see, a flaky probe target;
//! - EC2 requests per NAT: steady state, during a partition, throttled.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use natron_agent::core::config::Config;
use natron_lab::ec2proxy::Mode;
use natron_lab::longlived;
use natron_lab::prober::PERIOD;
use natron_lab::scenario::TwoAzs;
use natron_lab::stats::percentile;
use nix::sys::signal::Signal;

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

fn defaults(_: &mut Config) {}

/// A two-AZ lab with the defaults, changed by `tune`.
fn lab(tune: fn(&mut Config)) -> Result<TwoAzs, String> {
    TwoAzs::start_with(|_| {
        let mut c = super::default_config();
        tune(&mut c);
        c
    })
}

/// When, within the agents' cycles (probe rounds every 500 ms, peer checks
/// every 250 ms), run `i` of `runs` strikes: evenly spread over one second,
/// so that every phase is sampled rather than the one the labs start in.
fn phase(i: usize, runs: usize) -> Duration {
    Duration::from_secs_f64(i as f64 / runs.max(1) as f64)
}

/// After `phase`, NAT-A dies (`kill`) or loses its egress; the time from
/// then to AZ a's first answer through NAT-B.
fn strike(s: &TwoAzs, kill: bool, phase: Duration) -> Result<f64, String> {
    std::thread::sleep(phase);
    let t0 = Instant::now();
    if kill {
        s.lab.kill_nat(0).map_err(|e| e.to_string())?;
    } else {
        s.lab.break_egress(0).map_err(|e| e.to_string())?;
    }
    Ok(secs(s.served_via(0, 1, t0, Duration::from_secs(30))?))
}

/// The proof window traded for speed: one setting longer.
fn long_proof_window(c: &mut Config) {
    c.failover.proof_window = Duration::from_secs(2);
}

/// Broken egress, then the failback once it returns: (outage, probe time
/// lost at the failback).
fn egress_and_failback(phase: Duration) -> Result<(f64, f64), String> {
    let s = lab(|c| c.failover.hold_down = Duration::from_secs(3))?;
    let outage = strike(&s, false, phase)?;
    let t1 = Instant::now();
    s.lab.restore_egress(0).map_err(|e| e.to_string())?;
    s.owner_is(0, 0, Duration::from_secs(30))?;
    let moved = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let lost = s.probes[0].lost_between(t1, moved + Duration::from_millis(300));
    Ok((outage, lost as f64 * PERIOD.as_secs_f64()))
}

/// Planned handoff (`natron-agent handoff`): probe time lost.
fn planned() -> Result<f64, String> {
    let s = lab(defaults)?;
    let t0 = Instant::now();
    let (code, out) = s.lab.handoff(s.agents[0]);
    if code != Some(0) {
        return Err(format!("handoff: {code:?} {out}"));
    }
    s.owner_is(0, 1, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(1500));
    let lost = s.probes[0].lost_between(t0, Instant::now() - Duration::from_millis(1100));
    Ok(lost as f64 * PERIOD.as_secs_f64())
}

/// How an event treats NAT-A's agent.
#[derive(Clone, Copy)]
enum Event {
    /// `systemctl restart`.
    Restart,
    /// A crash, restarted by systemd 2 s later.
    Crash,
    /// A configuration change, then a restart.
    Reconfigure,
    /// The NAT dies (for contrast: its connections cannot survive).
    NatDies,
}

/// Of 200 long-lived connections through NAT-A (a byte each second, 3 s
/// patience), those still answering 10 s after `event`; and route moves.
fn survival(event: Event) -> Result<(usize, usize, usize), String> {
    let mut s = lab(defaults)?;
    let ns = s.lab.clients[0].ns.clone();
    let held = s.lab.run_in(
        &ns,
        longlived::hold(200, Duration::from_secs(1), Duration::from_secs(3)),
    );
    let t0 = Instant::now();
    let mut config = super::default_config();
    config.nat.reconcile_interval = Duration::from_secs(3);
    let restart = |s: &mut TwoAzs, signal, after, config: Option<&Config>| -> Result<(), String> {
        let id = s
            .lab
            .restart_agent(s.agents[0], signal, after, config)
            .map_err(|e| e.to_string())?;
        s.agents[0] = id;
        Ok(())
    };
    match event {
        Event::Restart => restart(&mut s, Signal::SIGTERM, Duration::ZERO, None)?,
        Event::Crash => restart(&mut s, Signal::SIGKILL, Duration::from_secs(2), None)?,
        Event::Reconfigure => restart(&mut s, Signal::SIGTERM, Duration::ZERO, Some(&config))?,
        Event::NatDies => s.lab.kill_nat(0).map_err(|e| e.to_string())?,
    }
    std::thread::sleep(Duration::from_secs(10));
    let alive = held.alive();
    held.stop();
    Ok((
        alive,
        held.opened(),
        s.changes_since(0, t0) + s.changes_since(1, t0),
    ))
}

/// Route table owner changes (both tables) while `what` lasts `secs`, and
/// the EC2 requests per minute of NAT-A meanwhile: (changes, all, writes).
fn owner_changes(
    secs_: u64,
    what: impl Fn(&TwoAzs) -> Result<(), String>,
) -> Result<(usize, f64, f64), String> {
    let s = lab(defaults)?;
    let t0 = Instant::now();
    what(&s)?;
    std::thread::sleep(Duration::from_secs(secs_));
    let changes = s.changes_since(0, t0) + s.changes_since(1, t0);
    let (all, writes) = per_minute(&s, t0);
    Ok((changes, all, writes))
}

/// NAT-A's EC2 requests per minute since `t0`: (all, mutating).
fn per_minute(s: &TwoAzs, t0: Instant) -> (f64, f64) {
    let ip: IpAddr = s.lab.nats[0].ip.into();
    let (all, writes, _) = s.lab.ec2_proxy.count(ip, t0, Instant::now());
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    (all as f64 / minutes, writes as f64 / minutes)
}

/// Both NATs fail together (their egress cut in one change), then recover
/// together: owner changes in each phase.
fn together() -> Result<(usize, usize), String> {
    let s = lab(defaults)?;
    let t0 = Instant::now();
    s.lab.break_egress_of(&[0, 1]).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(15));
    let failing = s.changes_since(0, t0) + s.changes_since(1, t0);
    let t1 = Instant::now();
    s.lab
        .restore_egress_of(&[0, 1])
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(40));
    let recovering = s.changes_since(0, t1) + s.changes_since(1, t1);
    Ok((failing, recovering))
}

/// EC2 requests per minute of NAT-A: steady for `window`, then with every
/// call throttled for as long: (steady, throttled, refused).
fn throttled(window: Duration) -> Result<(f64, f64, usize), String> {
    let s = lab(defaults)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let (steady, _) = per_minute(&s, t0);
    s.lab.ec2_proxy.set_mode(Mode::ThrottleAll);
    let t1 = Instant::now();
    std::thread::sleep(window);
    let (throttled, _) = per_minute(&s, t1);
    let ip: IpAddr = s.lab.nats[0].ip.into();
    let (_, _, refused) = s.lab.ec2_proxy.count(ip, t1, Instant::now());
    Ok((steady, throttled, refused))
}

pub fn run(runs: usize, partition_secs: u64, flaky_secs: u64) -> Result<String, String> {
    let mut dead = Series::new(
        "NAT dead (killed, links down)",
        "p50 <= 1.5 s, p99 <= 2.5 s",
    );
    let mut dead_long = Series::new(
        "NAT dead, `failover.proof_window = \"2s\"`",
        "(the trade-off: see the analysis)",
    );
    let mut egress = Series::new("NAT egress broken", "p50 <= 1.5 s, p99 <= 2.5 s");
    let mut handoff = Series::new(
        "planned handoff (`natron-agent handoff`), probe time lost",
        "0 s",
    );
    let mut failback = Series::new("failback after the hold-down, probe time lost", "~0 s");
    for i in 0..runs {
        eprintln!("failover run {}/{runs}", i + 1);
        let at = phase(i, runs);
        dead.values.push(strike(&lab(defaults)?, true, at)?);
        dead_long
            .values
            .push(strike(&lab(long_proof_window)?, true, at)?);
        let (outage, lost) = egress_and_failback(at)?;
        egress.values.push(outage);
        failback.values.push(lost);
        handoff.values.push(planned()?);
    }

    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "Production default configuration throughout (only the egress probe targets are the lab's \
         server). {runs} runs of each failure, each in a fresh two-AZ lab. Outage: from the failure \
         to AZ a's first answer through NAT-B, as a 50 ms prober sees it; the failure instant is \
         spread evenly over one second across the runs."
    ));
    line(String::new());
    line("| failure | runs | p50 | p99 | max | goal |".into());
    line("|---|---|---|---|---|---|".into());
    for s in [&dead, &dead_long, &egress, &handoff, &failback] {
        let mut v = s.values.clone();
        v.sort_by(f64::total_cmp);
        line(format!(
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {} |",
            s.name,
            v.len(),
            percentile(&v, 50.0),
            percentile(&v, 99.0),
            v.last().copied().unwrap_or(f64::NAN),
            s.goal,
        ));
    }
    line(String::new());

    eprintln!("open connections");
    line("200 long-lived TCP connections from AZ a through NAT-A (a byte each second, echoed; broken after 3 s without an echo), counted 10 s after the event:".into());
    line(String::new());
    line("| event | connections surviving | route moves | goal |".into());
    line("|---|---|---|---|".into());
    for (name, event, goal) in [
        (
            "agent restart (SIGTERM, started again)",
            Event::Restart,
            "100 %",
        ),
        (
            "agent crash (SIGKILL), restarted 2 s later",
            Event::Crash,
            "100 %",
        ),
        (
            "configuration change and restart",
            Event::Reconfigure,
            "100 %",
        ),
        (
            "NAT-A dies (for contrast)",
            Event::NatDies,
            "(cannot survive: another NAT, another address)",
        ),
    ] {
        let (alive, opened, moves) = survival(event)?;
        line(format!(
            "| {name} | {alive} of {opened} ({:.0} %) | {moves} | {goal} |",
            100.0 * alive as f64 / opened.max(1) as f64
        ));
    }
    line(String::new());

    eprintln!("owner changes");
    line("Route table owner changes (both tables) where nothing should move, and NAT-A's EC2 requests meanwhile:".into());
    line(String::new());
    line(
        "| situation | length | owner changes | EC2 requests / min | of which mutating | goal |"
            .into(),
    );
    line("|---|---|---|---|---|---|".into());
    let (c, all, w) = owner_changes(partition_secs, |_| Ok(()))?;
    line(format!(
        "| steady state | {partition_secs} s | {c} | {all:.1} | {w:.1} | 0 changes; <= 20 / min, <= 6 mutating |"
    ));
    let (c, all, w) = owner_changes(partition_secs, |s| {
        s.lab.partition(0, 1).map_err(|e| e.to_string())
    })?;
    line(format!(
        "| partition, both ways | {partition_secs} s | {c} | {all:.1} | {w:.1} | 0 changes; <= 40 / min |"
    ));
    let (c, all, w) = owner_changes(partition_secs, |s| {
        s.lab.partition_one_way(1, 0).map_err(|e| e.to_string())
    })?;
    line(format!(
        "| partition, one way (B cannot reach A) | {partition_secs} s | {c} | {all:.1} | {w:.1} | 0 changes; <= 40 / min |"
    ));
    let (failing, recovering) = together()?;
    line(format!(
        "| both NATs lose egress together | 15 s | {failing} | | | 0 |"
    ));
    line(format!(
        "| both NATs recover together | 40 s | {recovering} | | | 0 |"
    ));
    eprintln!("flaky probe target ({flaky_secs} s)");
    let (c, all, w) = owner_changes(flaky_secs, |s| {
        s.lab.flaky_internet(Some(5)).map_err(|e| e.to_string())
    })?;
    line(format!(
        "| probe target drops 5 % of packets | {flaky_secs} s | {c} | {all:.1} | {w:.1} | 0 changes |"
    ));
    line(String::new());

    eprintln!("throttling");
    let window = Duration::from_secs(120);
    let (steady, throttled, refused) = throttled(window)?;
    line(format!(
        "EC2 throttled: NAT-A sent {steady:.1} requests a minute in {}s of steady state, then \
         {throttled:.1} a minute in {}s with every call answered `RequestLimitExceeded` ({refused} \
         refused). Goal: throttled <= steady.",
        window.as_secs(),
        window.as_secs()
    ));
    Ok(out)
}
