//! Kernel settings: the sysctls a NAT instance needs, applied by
//! read-compare-write, plus the few /proc readings the agent uses (memory
//! for conntrack sizing, the default route's interface, conntrack usage).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One sysctl the agent wants, by its dotted name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: String,
    /// A required setting that cannot be applied keeps the data plane down;
    /// an optional one is reported as a warning.
    pub required: bool,
}

fn setting(key: impl Into<String>, value: impl ToString, required: bool) -> Setting {
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

/// The narrow edge to sysctls (and conntrack's statistics beside them).
pub trait Sysctl: Send + Sync {
    fn read(&self, key: &str) -> std::io::Result<String>;
    fn write(&self, key: &str, value: &str) -> std::io::Result<()>;
    /// /proc/net/stat/nf_conntrack, as text.
    fn conntrack_stats(&self) -> std::io::Result<String>;
}

/// Sysctls through /proc/sys.
pub struct ProcSys {
    pub root: PathBuf,
}

impl Default for ProcSys {
    fn default() -> Self {
        ProcSys {
            root: "/proc/sys".into(),
        }
    }
}

impl ProcSys {
    fn path(&self, key: &str) -> PathBuf {
        // An interface name may itself contain dots (VLANs: "eth0.100").
        if let Some((iface, leaf)) = key
            .strip_prefix("net.ipv4.conf.")
            .and_then(|r| r.rsplit_once('.'))
        {
            return self.root.join("net/ipv4/conf").join(iface).join(leaf);
        }
        self.root.join(key.replace('.', "/"))
    }
}

impl Sysctl for ProcSys {
    fn read(&self, key: &str) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(self.path(key))?.trim().to_string())
    }
    fn write(&self, key: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.path(key), value)
    }
    fn conntrack_stats(&self) -> std::io::Result<String> {
        let proc = self.root.parent().unwrap_or(Path::new("/proc"));
        std::fs::read_to_string(proc.join("net/stat/nf_conntrack"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Unchanged,
    Written { previous: String },
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub setting: Setting,
    pub outcome: Outcome,
}

/// Applies each setting by read-compare-write: nothing is written when the
/// live value is already right.
pub fn apply_settings(sys: &dyn Sysctl, settings: &[Setting]) -> Vec<Applied> {
    settings
        .iter()
        .map(|s| {
            let outcome = match sys.read(&s.key) {
                Ok(live) if live == s.value => Outcome::Unchanged,
                Ok(live) => match sys.write(&s.key, &s.value) {
                    Ok(()) => Outcome::Written { previous: live },
                    Err(e) => Outcome::Failed {
                        error: format!("{}: cannot write {}: {e}", s.key, s.value),
                    },
                },
                Err(e) => Outcome::Failed {
                    error: format!("{}: cannot read: {e}", s.key),
                },
            };
            Applied {
                setting: s.clone(),
                outcome,
            }
        })
        .collect()
}

/// MemTotal from /proc/meminfo text, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn mem_total() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
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

pub fn default_route_interface() -> Option<String> {
    parse_default_route_interface(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// Kernel counters of a full conntrack table, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConntrackDrops {
    /// Packets dropped: no entry could be made for a new flow.
    pub drop: u64,
    /// Unconfirmed entries evicted to make room for new ones.
    pub early_drop: u64,
}

/// Parses /proc/net/stat/nf_conntrack: a header of column names, then one
/// line of hexadecimal counters per CPU.
pub fn parse_conntrack_drops(text: &str) -> Option<ConntrackDrops> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (drop, early) = (column("drop")?, column("early_drop")?);
    let mut sum = ConntrackDrops::default();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let values: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| u64::from_str_radix(values.get(i)?, 16).ok();
        sum.drop += hex(drop)?;
        sum.early_drop += hex(early)?;
    }
    Some(sum)
}

/// Whether the table is full enough to warn: at 90 % new flows are close
/// to being refused.
pub fn conntrack_nearly_full(count: u64, max: u64) -> bool {
    max > 0 && count * 10 >= max * 9
}

/// Conntrack entries in use and the table's limit, when conntrack is loaded.
pub fn conntrack_usage(sys: &dyn Sysctl) -> Option<(u64, u64)> {
    let count = sys
        .read("net.netfilter.nf_conntrack_count")
        .ok()?
        .parse()
        .ok()?;
    let max = sys
        .read("net.netfilter.nf_conntrack_max")
        .ok()?
        .parse()
        .ok()?;
    Some((count, max))
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeSysctl {
        pub values: Mutex<BTreeMap<String, String>>,
        pub read_only: Vec<String>,
        pub writes: Mutex<Vec<String>>,
    }

    impl Sysctl for FakeSysctl {
        fn read(&self, key: &str) -> std::io::Result<String> {
            self.values
                .lock()
                .unwrap()
                .get(key)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn conntrack_stats(&self) -> std::io::Result<String> {
            self.read("stat:nf_conntrack")
        }
        fn write(&self, key: &str, value: &str) -> std::io::Result<()> {
            if self.read_only.iter().any(|k| k == key) {
                return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
            }
            self.writes.lock().unwrap().push(key.to_string());
            self.values.lock().unwrap().insert(key.into(), value.into());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSysctl;
    use super::*;

    #[test]
    fn conntrack_drops_are_summed_over_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 0000000a 00000001 00000000  00000000 00000000 00000000 00000000\n\
                    00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000006 00000000 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(
            parse_conntrack_drops(text),
            Some(ConntrackDrops {
                drop: 16,
                early_drop: 1
            })
        );
        assert_eq!(parse_conntrack_drops("entries found\n1 2\n"), None);
        assert!(!conntrack_nearly_full(89, 100));
        assert!(conntrack_nearly_full(90, 100));
        assert!(!conntrack_nearly_full(0, 0));
    }

    #[test]
    fn read_compare_write() {
        let sys = FakeSysctl::default();
        sys.values
            .lock()
            .unwrap()
            .insert("net.ipv4.ip_forward".into(), "1".into());
        sys.values
            .lock()
            .unwrap()
            .insert("net.ipv4.conf.all.send_redirects".into(), "1".into());
        let settings = vec![
            setting("net.ipv4.ip_forward", 1, true),
            setting("net.ipv4.conf.all.send_redirects", 0, true),
        ];
        let out = apply_settings(&sys, &settings);
        assert_eq!(out[0].outcome, Outcome::Unchanged);
        assert_eq!(
            out[1].outcome,
            Outcome::Written {
                previous: "1".into()
            }
        );
        assert_eq!(
            *sys.writes.lock().unwrap(),
            vec!["net.ipv4.conf.all.send_redirects"]
        );
        // A second pass writes nothing.
        let again = apply_settings(&sys, &settings);
        assert!(again.iter().all(|a| a.outcome == Outcome::Unchanged));
        assert_eq!(sys.writes.lock().unwrap().len(), 1);
    }

    #[test]
    fn failures_name_the_key() {
        let sys = FakeSysctl {
            read_only: vec!["net.netfilter.nf_conntrack_max".into()],
            ..Default::default()
        };
        sys.values
            .lock()
            .unwrap()
            .insert("net.netfilter.nf_conntrack_max".into(), "262144".into());
        let out = apply_settings(
            &sys,
            &[setting("net.netfilter.nf_conntrack_max", 131072, false)],
        );
        match &out[0].outcome {
            Outcome::Failed { error } => assert!(error.contains("nf_conntrack_max"), "{error}"),
            other => panic!("{other:?}"),
        }
        let out = apply_settings(&sys, &[setting("net.ipv4.ip_forward", 1, true)]);
        assert!(
            matches!(&out[0].outcome, Outcome::Failed { error } if error.contains("ip_forward"))
        );
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
    fn sysctl_paths_keep_dotted_interface_names() {
        let p = ProcSys { root: "/p".into() };
        assert_eq!(
            p.path("net.ipv4.conf.eth0.100.send_redirects"),
            PathBuf::from("/p/net/ipv4/conf/eth0.100/send_redirects")
        );
        assert_eq!(
            p.path("net.ipv4.ip_forward"),
            PathBuf::from("/p/net/ipv4/ip_forward")
        );
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
}
