//! NAT64's failover beside IPv4's (issue 16's goal): two NATs that are
//! natron's image (only its kernel has Jool) in one two-AZ lab, each AZ's
//! IPv4 client and IPv6-only client probing side by side (IPv4, NAT64).
//! Each run pulls one NAT's plug (the AZs take turns), measures its
//! client's outage on both families from that one failure, then powers
//! it on again and waits for the failback, so the next run starts from
//! home.

use natron_lab::stats::{median, percentile};
use natron_lab::vm_failover::{tcg_timings, TwoVmNats};
use std::path::Path;

pub fn run(image: &Path, runs: usize) -> Result<String, String> {
    let s = TwoVmNats::start(image, tcg_timings)?;
    let (mut v4, mut v6, mut gap) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let az = i % 2;
        eprintln!("NAT64 failover run {}/{runs}: NAT {az} off", i + 1);
        let o = s.strike(az)?;
        let (a, b) = (o.ipv4.as_secs_f64(), o.ipv6.as_secs_f64());
        eprintln!("  IPv4 {a:.2} s, NAT64 {b:.2} s");
        v4.push(a);
        v6.push(b);
        gap.push(b - a);
        s.restore(az)?;
    }
    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let row = |name: &str, v: &[f64], goal: &str| {
        let v = sorted(v);
        format!(
            "| {name} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {goal} |",
            v.len(),
            median(&v),
            v.first().copied().unwrap_or(f64::NAN),
            percentile(&v, 90.0),
            v.last().copied().unwrap_or(f64::NAN),
        )
    };
    let gap_median = median(&gap);
    let verdict = if gap_median <= 0.2 {
        "met"
    } else {
        "**missed**"
    };
    let c = &s.config.failover;
    Ok([
        format!(
            "Two NATs that are the image under QEMU (TCG, both on this machine's two cores), \
             NAT64 on, in one two-AZ lab; each AZ's IPv4 client and IPv6-only client probing \
             side by side every 50 ms, over IPv4 and over NAT64 (the server's `64:ff9b::` \
             address), each request on a new connection. {runs} runs, the AZs taking turns: one \
             NAT's plug pulled, its clients' outages measured from that one instant to the first answer through \
             the peer's Elastic IP, then the NAT powered on and its failback awaited. Timings: \
             the production defaults except `peer_timeout = {:?}` (a guest under TCG answers \
             slower), `proof_window = {:?}` and `hold_down = {:?}`.",
            c.peer_timeout, c.proof_window, c.hold_down
        ),
        String::new(),
        "| outage of the dead NAT's clients | runs | median | min | p90 | max | goal |".into(),
        "|---|---|---|---|---|---|---|".into(),
        row("IPv4", &v4, ""),
        row("NAT64 (IPv6-only client)", &v6, ""),
        row(
            "NAT64 minus IPv4, same failure",
            &gap,
            &format!("median <= 0.2 s (issue 16): {verdict}"),
        ),
        String::new(),
        format!(
            "Median NAT64 / IPv4 outage: {:.2}.",
            median(&v6) / median(&v4)
        ),
    ]
    .join("\n")
        + "\n")
}
