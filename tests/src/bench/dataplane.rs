//! Data plane: the four NAT variants side by side in one topology
//! (`natron_lab::dataplane`), rounds alternating the order of variants.
//! Figures are medians over rounds; ratios are taken within each round,
//! then their median is reported.

use natron_lab::dataplane::{Topology, Variant};
use natron_lab::stats::median;

/// Per variant, one value per round.
#[derive(Default, Clone)]
struct Figures {
    tcp1: Vec<f64>,
    tcp8: Vec<f64>,
    udp_kpps: Vec<f64>,
    conn_per_s: Vec<f64>,
    lat_p50: Vec<f64>,
    lat_p99: Vec<f64>,
    max_concurrent: Option<usize>,
    seen_as: String,
}

const NAT_GATEWAY_PER_DESTINATION: usize = 55_000;
/// Connections the max-concurrent test tries to open at most: above the
/// 64 512 ports of 1024-65535, so a NAT's ceiling shows.
const CONCURRENT_LIMIT: usize = 72_000;

pub fn run(rounds: usize, secs: u32) -> Result<String, String> {
    // This binary holds the connections (`natron-lab hold`).
    let helper = std::env::current_exe().map_err(|e| format!("natron-lab's own path: {e}"))?;
    let topo = Topology::build().map_err(|e| e.to_string())?;
    let mut figures = measure(&topo, &Variant::HOST, rounds, secs, 32, true)?;
    for (i, v) in Variant::HOST.iter().enumerate() {
        eprintln!("max concurrent connections: {}", v.name());
        topo.set_variant(*v).map_err(|e| e.to_string())?;
        figures[i].max_concurrent = Some(
            topo.max_concurrent(&helper, CONCURRENT_LIMIT)
                .map_err(|e| format!("{}: {e}", v.name()))?,
        );
    }
    topo.set_variant(Variant::Plain)
        .map_err(|e| e.to_string())?;
    Ok(report(&figures, rounds, secs, topo.flowtable))
}

/// Every variant measured in `rounds` rounds, each round in another order
/// (round r starts with variant r), `workers` connecting at once for
/// conn/s, latency under load only `with_latency`.
fn measure(
    topo: &Topology,
    variants: &[Variant],
    rounds: usize,
    secs: u32,
    workers: usize,
    with_latency: bool,
) -> Result<Vec<Figures>, String> {
    let mut figures: Vec<Figures> = vec![Figures::default(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let v = variants[i];
            eprintln!("data plane round {}/{rounds}: {}", round + 1, v.name());
            topo.set_variant(v).map_err(|e| e.to_string())?;
            let f = &mut figures[i];
            f.seen_as = topo.seen_source().map_err(|e| e.to_string())?;
            let e = |e: natron_lab::LabError| format!("{}: {e}", v.name());
            f.tcp1.push(topo.tcp_throughput(1, secs).map_err(e)?);
            f.tcp8.push(topo.tcp_throughput(8, secs).map_err(e)?);
            f.udp_kpps.push(topo.udp_pps(secs).map_err(e)? / 1000.0);
            f.conn_per_s
                .push(topo.connections_per_second(workers, u64::from(secs)));
            if with_latency {
                let (p50, p99) = topo.latency_under_load(secs.max(3)).map_err(e)?;
                f.lat_p50.push(p50);
                f.lat_p99.push(p99);
            }
        }
    }
    Ok(figures)
}

/// The median ratios of one row.
struct Medians {
    tcp1: f64,
    tcp8: f64,
    udp: f64,
    conn: f64,
}

/// One row of a ratio table: a/b for each measure, the goal, and the
/// verdict `result` gives on the median ratios.
fn ratio_row(
    name: &str,
    a: &Figures,
    b: &Figures,
    goal: &str,
    result: &dyn Fn(&Medians) -> String,
) -> String {
    let (t1, t8, u, c) = (
        ratio(&a.tcp1, &b.tcp1),
        ratio(&a.tcp8, &b.tcp8),
        ratio(&a.udp_kpps, &b.udp_kpps),
        ratio(&a.conn_per_s, &b.conn_per_s),
    );
    let medians = Medians {
        tcp1: t1.median,
        tcp8: t8.median,
        udp: u.median,
        conn: c.median,
    };
    format!(
        "| {name} | {t1} | {t8} | {u} | {c} | {goal} | {} |",
        result(&medians)
    )
}

/// Median over rounds of the per-round ratio a/b, with its range.
fn ratio(a: &[f64], b: &[f64]) -> Ratio {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    Ratio {
        median: median(&r),
        min: r.iter().copied().fold(f64::INFINITY, f64::min),
        max: r.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

struct Ratio {
    median: f64,
    min: f64,
    max: f64,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} ({:.2}–{:.2})", self.median, self.min, self.max)
    }
}

fn verdict(value: f64, goal: f64) -> &'static str {
    if value >= goal {
        "met"
    } else {
        "**missed**"
    }
}

fn report(f: &[Figures], rounds: usize, secs: u32, flowtable: bool) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "Medians of {rounds} rounds, {secs} s per measurement, variants alternating order each round. \
         natron's flowtable: {}.",
        if flowtable {
            "in use"
        } else {
            "not available in this kernel (slow path only)"
        }
    ));
    line(String::new());
    line("| variant | server sees | TCP 1 stream | TCP 8 streams | UDP 64 B | new TCP conn/s | RTT under load p50 / p99 | max concurrent to one destination |".into());
    line("|---|---|---|---|---|---|---|---|".into());
    for (v, x) in Variant::HOST.iter().zip(f) {
        line(format!(
            "| {} | {} | {:.2} Gbit/s | {:.2} Gbit/s | {:.0} kpps | {:.0} | {:.2} / {:.2} ms | {} |",
            v.name(),
            x.seen_as,
            median(&x.tcp1),
            median(&x.tcp8),
            median(&x.udp_kpps),
            median(&x.conn_per_s),
            median(&x.lat_p50),
            median(&x.lat_p99),
            match x.max_concurrent {
                Some(n) if n >= CONCURRENT_LIMIT => format!("{n} (all attempted)"),
                Some(n) => n.to_string(),
                None => "-".into(),
            }
        ));
    }
    let (plain, fck, natron, random) = (&f[0], &f[1], &f[2], &f[3]);
    line(String::new());
    line("Ratios: median of the per-round ratios (their range over the rounds):".into());
    line(String::new());
    line("| ratio | TCP 1 stream | TCP 8 streams | UDP pps | new conn/s | goal | result |".into());
    line("|---|---|---|---|---|---|---|".into());
    let against_plain = |m: &Medians| {
        format!(
            "throughput {}, conn/s {}",
            verdict(m.tcp1.min(m.tcp8), 0.95),
            verdict(m.conn, 0.9)
        )
    };
    let row = ratio_row;
    line(row(
        "natron / plain",
        natron,
        plain,
        "throughput >= 0.95, conn/s >= 0.9",
        &against_plain,
    ));
    line(row(
        "natron / fck-nat rule",
        natron,
        fck,
        "TCP 1 stream and UDP pps >= 1.0",
        &|m| {
            format!(
                "TCP 1 stream {}, UDP {}",
                verdict(m.tcp1, 1.0),
                verdict(m.udp, 1.0)
            )
        },
    ));
    line(row(
        "fully-random / plain",
        random,
        plain,
        "(as natron)",
        &against_plain,
    ));
    line(row(
        "fck-nat rule / plain",
        fck,
        plain,
        "(reference)",
        &|_| String::new(),
    ));
    line(String::new());
    line(format!(
        "Max concurrent: TCP connections to one destination (address and port) held open at \
         once, {CONCURRENT_LIMIT} tried from two client addresses (`natron-lab hold` processes, \
         18,000 connections each, as this sandbox allows a process 20,000 open files; an attempt \
         gives up after 2 s). Through a NAT the figure is the ports it could allocate towards \
         that destination. The NAT Gateway allows {NAT_GATEWAY_PER_DESTINATION} concurrent \
         connections per destination per address."
    ));
    out
}

/// The data plane inside natron's image (run there by `natron-lab
/// guest-bench`, see `bench::guest`): plain forwarding, fck-nat's rule,
/// natron with its flowtable and without, in rounds alternating their
/// order, on the image's kernel. Latency and the connection ceiling are
/// left to the host's bench (TCG's timing says nothing about them).
pub fn guest(rounds: usize, secs: u32) -> Result<String, String> {
    let topo = Topology::build().map_err(|e| e.to_string())?;
    if !topo.flowtable {
        return Err("this kernel has no flowtable: not the image's".into());
    }
    let figures = measure(&topo, &Variant::GUEST, rounds, secs, 8, false)?;
    topo.set_variant(Variant::Plain)
        .map_err(|e| e.to_string())?;
    Ok(guest_report(&figures, rounds, secs))
}

fn guest_report(f: &[Figures], rounds: usize, secs: u32) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "Medians of {rounds} rounds, {secs} s per measurement, variants alternating order each round, \
         all inside one guest (client, router, NAT and server in network namespaces of the image)."
    ));
    line(String::new());
    line(
        "| variant | server sees | TCP 1 stream | TCP 8 streams | UDP 64 B | new TCP conn/s |"
            .into(),
    );
    line("|---|---|---|---|---|---|".into());
    for (v, x) in Variant::GUEST.iter().zip(f) {
        line(format!(
            "| {} | {} | {:.3} Gbit/s | {:.3} Gbit/s | {:.1} kpps | {:.0} |",
            v.name(),
            x.seen_as,
            median(&x.tcp1),
            median(&x.tcp8),
            median(&x.udp_kpps),
            median(&x.conn_per_s),
        ));
    }
    let (plain, fck, natron, slow, wire) = (&f[0], &f[1], &f[2], &f[3], &f[4]);
    let (nat64, tayga) = (&f[5], &f[6]);
    line(String::new());
    line("Ratios: median of the per-round ratios (their range over the rounds):".into());
    line(String::new());
    line("| ratio | TCP 1 stream | TCP 8 streams | UDP pps | new conn/s | goal | result |".into());
    line("|---|---|---|---|---|---|---|".into());
    let row = ratio_row;
    line(row(
        "natron (flowtable) / plain",
        natron,
        plain,
        "TCP 1 stream >= 0.95",
        &|m| format!("TCP 1 stream {}", verdict(m.tcp1, 0.95)),
    ));
    line(row(
        "natron (flowtable) / fck-nat rule",
        natron,
        fck,
        "TCP 1 stream >= 1.2, conn/s >= 0.95",
        &|m| {
            format!(
                "TCP 1 stream {}, conn/s {}",
                verdict(m.tcp1, 1.2),
                verdict(m.conn, 0.95)
            )
        },
    ));
    line(row(
        "natron without flowtable / fck-nat rule",
        slow,
        fck,
        "(the slow path)",
        &|_| String::new(),
    ));
    line(row(
        "natron with the wire counters / natron",
        wire,
        natron,
        "(no goal: the price of CloudWatch's directional metrics)",
        &|_| String::new(),
    ));
    line(row(
        "natron NAT64 (Jool, IPv6 client) / natron (IPv4 client)",
        nat64,
        natron,
        "TCP 1 stream >= 0.8 (issue 16)",
        &|m| format!("TCP 1 stream {}", verdict(m.tcp1, 0.8)),
    ));
    line(row(
        "natron NAT64 / natron without flowtable",
        nat64,
        slow,
        "(both on the slow path: no flowtable offloads what Jool translates)",
        &|_| String::new(),
    ));
    line(row(
        "TAYGA NAT64 / natron NAT64 (Jool)",
        tayga,
        nat64,
        "(the choice of mechanism: Jool unless TAYGA is faster)",
        &|m| {
            if m.tcp1 > 1.0 {
                "TAYGA faster for one TCP stream".into()
            } else {
                "Jool faster for one TCP stream".into()
            }
        },
    ));
    line(row(
        "fck-nat rule / plain",
        fck,
        plain,
        "(reference)",
        &|_| String::new(),
    ));
    out
}
