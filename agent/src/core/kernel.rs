//! The kernel a NAT instance needs, decided from plain data: its sysctls,
//! conntrack sizing, and the parsers of the /proc files the agent reads
//! (the reading itself is `edge::sysctl`). Pure.

pub use natron_contract::status::{ConntrackDrops, Setting};

pub fn setting(key: impl Into<String>, value: impl ToString, required: bool) -> Setting {
    Setting {
        key: key.into(),
        value: value.to_string(),
        required,
    }
}

/// The sysctls of a NAT instance egressing through `egress`.
pub fn desired_settings(
    egress: &str,
    conntrack_max: u64,
    tcp_timeout_established_secs: u64,
) -> Vec<Setting> {
    let mut out = vec![setting("net.ipv4.ip_forward", 1, true)];
    // A one-interface NAT forwards out the interface it received on; the
    // kernel would answer each such packet with an ICMP redirect (send_redirects
    // is OR-ed over "all" and the device, so both must be off).
    for scope in ["all", "default", egress] {
        out.push(setting(
            format!("net.ipv4.conf.{scope}.send_redirects"),
            0,
            true,
        ));
        out.push(setting(
            format!("net.ipv4.conf.{scope}.accept_redirects"),
            0,
            true,
        ));
    }
    // Global knobs: writable on an instance, read-only inside a container or
    // a network namespace, hence optional.
    out.push(setting(
        "net.netfilter.nf_conntrack_max",
        conntrack_max,
        false,
    ));
    out.push(setting(
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        tcp_timeout_established_secs,
        false,
    ));
    out
}

/// Bytes one conntrack entry costs, with its hash bucket share (measured on
/// 6.1 x86_64: ~320 B per `nf_conntrack` slab object plus the hash).
pub const CONNTRACK_ENTRY_BYTES: u64 = 384;

/// Conntrack entries for `memory_bytes` when conntrack may use `percent` of it.
/// A t4g.nano (512 MiB) at 10 % gets 139 810; bounded to [16 384, 4 194 304].
pub fn conntrack_max_for_memory(memory_bytes: u64, percent: u8) -> u64 {
    (memory_bytes / 100 * u64::from(percent) / CONNTRACK_ENTRY_BYTES).clamp(16_384, 4_194_304)
}

/// MemTotal from /proc/meminfo text, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The interface of the IPv4 default route in /proc/net/route text (the one
/// with the lowest metric when there are several).
pub fn parse_default_route_interface(route: &str) -> Option<String> {
    route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
                Some((f[6].parse::<u32>().unwrap_or(u32::MAX), f[0].to_string()))
            } else {
                None
            }
        })
        .min()
        .map(|(_, iface)| iface)
}

/// /proc/net/dev: (packets, bytes) received plus sent, summed over every
/// interface but loopback. Columns after "name:": rx bytes, packets, errs,
/// drop, fifo, frame, compressed, multicast, then tx bytes, packets, ...
pub fn parse_net_dev(text: &str) -> Option<(u64, u64)> {
    let mut total = (0u64, 0u64);
    let mut seen = false;
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        if f.len() < 10 {
            return None;
        }
        total.0 += f[1] + f[9];
        total.1 += f[0] + f[8];
        seen = true;
    }
    seen.then_some(total)
}

/// Flows `conntrack -L` marks as offloaded to a flowtable (`[OFFLOAD]`,
/// or `[HW_OFFLOAD]` on a NIC that takes them).
pub fn count_offloaded(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.contains("[OFFLOAD]") || l.contains("[HW_OFFLOAD]"))
        .count() as u64
}

/// Whether a `conntrack -E` line tells of an idle timeout: a TCP
/// connection destroyed while still ESTABLISHED (one that closed as it
/// should is destroyed from TIME_WAIT or CLOSE; an established one goes
/// only when its `conntrack.tcp_timeout_established` runs out, or when
/// someone deletes it by hand).
/// `[DESTROY] tcp      6 ESTABLISHED src=… dst=… sport=… dport=… src=… [ASSURED]`
pub fn is_idle_timeout(event: &str) -> bool {
    let mut words = event.split_whitespace();
    words.next() == Some("[DESTROY]")
        && words.next() == Some("tcp")
        && words.nth(1) == Some("ESTABLISHED")
}

/// Parses /proc/net/stat/nf_conntrack: a header of column names, then one
/// line of hexadecimal counters per CPU.
pub fn parse_conntrack_drops(text: &str) -> Option<ConntrackDrops> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (drop, early) = (column("drop")?, column("early_drop")?);
    let insert_failed = column("insert_failed");
    let mut sum = ConntrackDrops::default();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let values: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| u64::from_str_radix(values.get(i)?, 16).ok();
        sum.drop += hex(drop)?;
        sum.early_drop += hex(early)?;
        sum.insert_failed += insert_failed.and_then(hex).unwrap_or(0);
    }
    Some(sum)
}

/// Whether the table is full enough to warn: at 90 % new flows are close
/// to being refused.
pub fn conntrack_nearly_full(count: u64, max: u64) -> bool {
    max > 0 && count * 10 >= max * 9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_established_connection_destroyed_is_an_idle_timeout() {
        let line = "[DESTROY] tcp      6 ESTABLISHED src=10.0.1.5 dst=198.51.100.7 sport=40000 dport=443 src=198.51.100.7 dst=10.0.0.10 sport=443 dport=40000 [ASSURED]";
        assert!(is_idle_timeout(line));
        for other in [
            "[DESTROY] tcp      6 TIME_WAIT src=10.0.1.5 dst=198.51.100.7 sport=40000 dport=443",
            "[DESTROY] tcp      6 CLOSE src=10.0.1.5 dst=198.51.100.7 sport=40000 dport=443",
            "[DESTROY] udp      17 src=10.0.1.5 dst=198.51.100.7 sport=40000 dport=53",
            "    [NEW] tcp      6 120 SYN_SENT src=10.0.1.5 dst=198.51.100.7",
            " [UPDATE] tcp      6 432000 ESTABLISHED src=10.0.1.5 dst=198.51.100.7",
            "conntrack v1.4.8 (conntrack-tools): 3 flow events have been shown.",
            "",
        ] {
            assert!(!is_idle_timeout(other), "{other}");
        }
    }

    #[test]
    fn conntrack_drops_are_summed_over_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 0000000a 00000001 00000000  00000000 00000000 00000000 00000000\n\
                    00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000006 00000000 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(
            parse_conntrack_drops(text),
            Some(ConntrackDrops {
                drop: 16,
                early_drop: 1,
                insert_failed: 3,
            })
        );
        assert_eq!(parse_conntrack_drops("entries found\n1 2\n"), None);
        assert!(!conntrack_nearly_full(89, 100));
        assert!(conntrack_nearly_full(90, 100));
        assert!(!conntrack_nearly_full(0, 0));
    }

    #[test]
    fn desired_covers_forwarding_redirects_and_conntrack() {
        let s = desired_settings("ens5", 131072, 7440);
        let keys: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
        assert!(keys.contains(&"net.ipv4.ip_forward"));
        assert!(keys.contains(&"net.ipv4.conf.ens5.send_redirects"));
        assert!(keys.contains(&"net.ipv4.conf.all.send_redirects"));
        assert!(keys.contains(&"net.netfilter.nf_conntrack_max"));
        assert!(s
            .iter()
            .find(|s| s.key == "net.netfilter.nf_conntrack_max")
            .is_some_and(|s| !s.required));
    }

    #[test]
    fn conntrack_sizing() {
        assert_eq!(conntrack_max_for_memory(512 << 20, 10), 139_810);
        assert_eq!(conntrack_max_for_memory(1 << 30, 10), 279_620);
        assert_eq!(conntrack_max_for_memory(64 << 20, 1), 16_384);
        assert_eq!(conntrack_max_for_memory(1 << 40, 50), 4_194_304);
    }

    #[test]
    fn interface_totals_leave_loopback_out() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 5000 50 0 0 0 0 0 0 5000 50 0 0 0 0 0 0\n  \
eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n  \
eth1: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), Some((33, 3300)));
        assert_eq!(parse_net_dev("header\nheader\n"), None);
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_mem_total("MemTotal:        1000 kB\nMemFree: 1 kB\n"),
            Some(1_024_000)
        );
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth1\t00000000\t0100000A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
                     ens5\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     ens5\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_default_route_interface(route).as_deref(),
            Some("ens5")
        );
        assert_eq!(parse_default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn offloaded_flows_are_counted_from_the_listing() {
        let listing = "tcp      6 src=10.0.10.10 dst=198.51.100.10 sport=40000 dport=9002 src=198.51.100.10 dst=10.0.0.10 sport=9002 dport=40000 [OFFLOAD] mark=0 use=2\n\
            tcp      6 431999 ESTABLISHED src=10.0.10.10 dst=198.51.100.10 sport=40002 dport=80 src=198.51.100.10 dst=10.0.0.10 sport=80 dport=40002 [ASSURED] mark=0 use=1\n\
            udp      17 src=10.0.10.10 dst=198.51.100.10 sport=5000 dport=53 src=198.51.100.10 dst=10.0.0.10 sport=53 dport=5000 [HW_OFFLOAD] mark=0 use=2\n";
        assert_eq!(count_offloaded(listing), 2);
        assert_eq!(count_offloaded(""), 0);
    }
}
