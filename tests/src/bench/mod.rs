//! `natron-lab bench` (run by `cargo xtask bench`): natron's figures beside
//! the alternatives, measured in one run on this machine. Prints markdown
//! and, with `--write`, replaces each part's generated block in
//! BENCHMARKS.md (between its `bench:<part>:begin` and `:end` markers); the
//! analysis around them is written by hand.

mod dataplane;
mod failover;
mod footprint;
mod guest;
mod nat64_failover;
mod pool;
mod scale;

pub use dataplane::guest as guest_dataplane;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Options {
    /// Repetitions of each failure.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Length of each run that should move nothing (steady state,
    /// partitions).
    #[arg(long, default_value_t = 120)]
    pub partition_secs: u64,
    /// Length of the flaky probe target run.
    #[arg(long, default_value_t = 600)]
    pub flaky_secs: u64,
    /// Data-plane rounds (variants alternate within each).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per data-plane measurement.
    #[arg(long, default_value_t = 3)]
    pub secs: u32,
    /// Length of the footprint soak at the fastest intervals: 720 s
    /// is 3,600 data-plane ticks, an hour's worth at the default 1 s.
    #[arg(long, default_value_t = 720)]
    pub soak_secs: u64,
    /// Run one part only: dataplane, pool, guest, nat64-failover,
    /// footprint, scale or failover.
    #[arg(long)]
    pub only: Option<String>,
    /// The x86_64 disk image, for the data plane inside it (`guest`);
    /// without it that part is skipped.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Rounds of the data plane inside the image (TCG is noisy: 7 rounds
    /// take about 11 minutes).
    #[arg(long, default_value_t = 7)]
    pub guest_rounds: usize,
    /// Seconds per measurement inside the image.
    #[arg(long, default_value_t = 5)]
    pub guest_secs: u32,
    /// NAT64 failovers between two image NATs (each powers a NAT on
    /// again: about two minutes a run under TCG).
    #[arg(long, default_value_t = 6)]
    pub nat64_runs: usize,
    /// The static release agent: footprint, scale and failover run it.
    #[arg(long)]
    pub release_binary: Option<PathBuf>,
    /// Replace the parts' generated blocks in this file (BENCHMARKS.md).
    #[arg(long)]
    pub write: Option<PathBuf>,
}

/// Production defaults except what the lab needs: its probe targets.
fn default_config() -> natron_agent::core::config::Config {
    natron_lab::lab::default_config()
}

/// The parts, in the order they run: name (for `--only` and the markers
/// in BENCHMARKS.md) and title.
const PARTS: [(&str, &str); 7] = [
    ("dataplane", "Data plane"),
    ("pool", "Address pool"),
    ("guest", "Data plane on the image's kernel"),
    ("nat64-failover", "NAT64 failover on the image"),
    ("footprint", "Footprint"),
    ("scale", "Scale"),
    ("failover", "Failover"),
];

pub fn run(o: Options) -> anyhow::Result<()> {
    if let Some(only) = &o.only {
        if !PARTS.iter().any(|(name, _)| name == only) {
            anyhow::bail!(
                "--only {only}: expected one of dataplane, pool, guest, nat64-failover, footprint, scale, failover"
            );
        }
    }
    if let Some(agent) = &o.release_binary {
        // Footprint, scale and failover run the binary users get.
        std::env::set_var("NATRON_AGENT_BIN", agent);
    }
    for (name, title) in PARTS {
        if o.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let started = Instant::now();
        let body = match name {
            "dataplane" => dataplane::run(o.rounds, o.secs),
            "pool" => pool::run(),
            "guest" => match &o.image {
                Some(image) => guest::run(image, o.guest_rounds, o.guest_secs),
                None => {
                    eprintln!("bench: no --image, so no data plane inside the image");
                    continue;
                }
            },
            "nat64-failover" => match &o.image {
                Some(image) => nat64_failover::run(image, o.nat64_runs),
                None => {
                    eprintln!("bench: no --image, so no NAT64 failover between image NATs");
                    continue;
                }
            },
            "footprint" => footprint::run(
                Duration::from_secs(o.soak_secs),
                o.release_binary.as_deref(),
            ),
            "scale" => scale::run(),
            _ => failover::run(o.runs, o.partition_secs, o.flaky_secs),
        }
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let block = format!(
            "### {title}\n\n{}\n\n{body}\nPart wall time: {:.0} s.\n",
            context(&o, name),
            started.elapsed().as_secs_f64()
        );
        println!("{block}");
        if let Some(path) = &o.write {
            write_section(path, name, &block)?;
            eprintln!("bench: wrote the {name} section of {}", path.display());
        }
    }
    Ok(())
}

/// Replaces the text between `name`'s markers (appends them if absent).
fn write_section(path: &Path, name: &str, block: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- bench:{name}:begin (generated by `cargo xtask bench`) -->");
    let end = format!("<!-- bench:{name}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{block}{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &text[..b], &text[e + end.len()..])
        }
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

fn first_line(program: &str, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            text.lines().next().map(str::to_string)
        })
        .unwrap_or_else(|| format!("{program}: not found"))
}

/// Where, when, with what, and how a part was measured.
fn context(o: &Options, part: &str) -> String {
    let agent = match (&o.release_binary, &o.image) {
        // Its NATs run the agent the image carries.
        (_, Some(image)) if part == "nat64-failover" => {
            format!("Agent: the image's ({}).", image.display())
        }
        (Some(p), _) => format!("Agent: the static release build ({}).", p.display()),
        (None, _) => "Agent: the dev build.".into(),
    };
    let command = if o.only.is_some() {
        format!("`cargo xtask bench --only {part}`")
    } else {
        "`cargo xtask bench`".into()
    };
    format!("{} {agent} Command: {command}.", machine())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = natron_agent::edge::sysctl::mem_total(&natron_agent::edge::sysctl::ProcSys::default())
        .unwrap_or(0) / 1_073_741_824;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    format!(
        "Measured {} on {cores} × {model}, {mem} GiB, kernel {kernel}; {}, {}, {}.",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        first_line("iperf3", "--version"),
        first_line("nft", "--version"),
        first_line("iptables", "--version"),
    )
}
