//! The kernel's sysctls and /proc files: read, compared and written
//! through the narrow [`Sysctl`] trait (one real implementation over
//! /proc/sys, one fake), and read-compare-write applied to a list of
//! settings.

use std::path::{Path, PathBuf};

pub use natron_contract::status::{Applied, Outcome};

use crate::core::kernel::{self, Setting};

/// The narrow edge to sysctls (and conntrack's statistics beside them).
pub trait Sysctl: Send + Sync {
    fn read(&self, key: &str) -> std::io::Result<String>;
    fn write(&self, key: &str, value: &str) -> std::io::Result<()>;
    /// /proc/net/stat/nf_conntrack, as text.
    fn conntrack_stats(&self) -> std::io::Result<String>;
    /// /proc/meminfo, as text.
    fn meminfo(&self) -> std::io::Result<String>;
    /// /proc/net/route, as text.
    fn routes(&self) -> std::io::Result<String>;
    /// /proc/net/dev (the interfaces' counters), as text.
    fn net_dev(&self) -> std::io::Result<String>;
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
    fn proc(&self) -> &Path {
        self.root.parent().unwrap_or(Path::new("/proc"))
    }

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
        std::fs::read_to_string(self.proc().join("net/stat/nf_conntrack"))
    }
    fn meminfo(&self) -> std::io::Result<String> {
        std::fs::read_to_string(self.proc().join("meminfo"))
    }
    fn routes(&self) -> std::io::Result<String> {
        std::fs::read_to_string(self.proc().join("net/route"))
    }
    fn net_dev(&self) -> std::io::Result<String> {
        std::fs::read_to_string(self.proc().join("net/dev"))
    }
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

/// MemTotal of this machine, in bytes.
pub fn mem_total(sys: &dyn Sysctl) -> Option<u64> {
    kernel::parse_mem_total(&sys.meminfo().ok()?)
}

/// The interface of this machine's IPv4 default route.
pub fn default_route_interface(sys: &dyn Sysctl) -> Option<String> {
    kernel::parse_default_route_interface(&sys.routes().ok()?)
}

/// Packets and bytes received plus sent over every interface but loopback.
pub fn interface_totals(sys: &dyn Sysctl) -> Option<(u64, u64)> {
    kernel::parse_net_dev(&sys.net_dev().ok()?)
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
        pub read_only: Mutex<Vec<String>>,
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
        fn meminfo(&self) -> std::io::Result<String> {
            self.read("proc:meminfo")
        }
        fn routes(&self) -> std::io::Result<String> {
            self.read("proc:net/route")
        }
        fn net_dev(&self) -> std::io::Result<String> {
            self.read("proc:net/dev")
        }
        fn write(&self, key: &str, value: &str) -> std::io::Result<()> {
            if self.read_only.lock().unwrap().iter().any(|k| k == key) {
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
    use crate::core::kernel::setting;

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
        let sys = FakeSysctl::default();
        sys.read_only
            .lock()
            .unwrap()
            .push("net.netfilter.nf_conntrack_max".into());
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
}
