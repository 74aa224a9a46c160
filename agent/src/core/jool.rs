//! NAT64's translator, Jool: the configuration natron owns (instance
//! `natron`, netfilter framework), built from plain data, written with
//! `jool file handle` and read back from `jool`'s CSV displays. Pure; the
//! `jool` runs are `edge::jool`.
//!
//! Why Jool (ARCHITECTURE.md, "NAT64"): a kernel module translating in
//! netfilter's prerouting hook, so translated packets never cross to
//! userspace (TAYGA reads and writes every packet through a TUN device),
//! with stateful NAT64 (RFC 6146) itself rather than beside a NAT44, and a
//! configuration replaced atomically that keeps its sessions.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::json;

/// The instance natron owns; any other instance is not touched.
pub const INSTANCE: &str = "natron";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp];

    /// Jool's spelling, in JSON and in its displays.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Icmp => "ICMP",
        }
    }

    /// The `jool pool4 display` / `session display` switch.
    pub fn flag(self) -> &'static str {
        match self {
            Protocol::Tcp => "--tcp",
            Protocol::Udp => "--udp",
            Protocol::Icmp => "--icmp",
        }
    }

    fn parse(text: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == text)
    }
}

/// One pool4 entry: the IPv4 transport addresses NAT64 translates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pool4Entry {
    pub protocol: Protocol,
    pub address: Ipv4Addr,
    /// Ports, or ICMP identifiers.
    pub ports: (u16, u16),
}

/// What natron's Jool instance is, as far as natron sets it: every other
/// global stays at Jool's default (a `file handle` resets what it omits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoolConfig {
    pub pool6: String,
    pub enabled: bool,
    pub pool4: BTreeSet<Pool4Entry>,
}

/// The instance for the addresses that translate (the NAT's private
/// address, or the address pool's) and NAT64's port range.
pub fn desired(prefix: &str, addresses: &[Ipv4Addr], ports: (u16, u16)) -> JoolConfig {
    JoolConfig {
        pool6: prefix.to_string(),
        enabled: true,
        pool4: addresses
            .iter()
            .flat_map(|&address| {
                Protocol::ALL.map(|protocol| Pool4Entry {
                    protocol,
                    address,
                    ports,
                })
            })
            .collect(),
    }
}

/// The atomic configuration file (`jool file handle`): the whole instance,
/// created when absent, replaced in one step when present (its BIB and
/// sessions kept).
pub fn file(config: &JoolConfig) -> String {
    let pool4: Vec<_> = config
        .pool4
        .iter()
        .map(|e| {
            json!({
                "protocol": e.protocol.name(),
                "prefix": format!("{}/32", e.address),
                "port range": format!("{}-{}", e.ports.0, e.ports.1),
            })
        })
        .collect();
    let doc = json!({
        "comment": "written by natron-agent; replaced whenever it differs",
        "instance": INSTANCE,
        "framework": "netfilter",
        "global": { "pool6": config.pool6, "manually-enabled": config.enabled },
        "pool4": pool4,
    });
    serde_json::to_string_pretty(&doc).expect("plain JSON")
}

/// A display `jool` printed that natron cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jool {what}: cannot read line {line:?}")]
pub struct DisplayError {
    pub what: &'static str,
    pub line: String,
}

/// Whether `jool instance display --csv --no-headers` lists natron's
/// instance (lines `namespace,name,framework`).
pub fn has_instance(display: &str) -> bool {
    display
        .lines()
        .any(|l| l.split(',').nth(1).map(str::trim) == Some(INSTANCE))
}

/// The instance from `jool global display --csv --no-headers` (lines
/// `field,value`) and `jool pool4 display --csv --no-headers` of each
/// protocol (lines `mark,protocol,address,min,max,iterations,fixed`).
pub fn parse(global: &str, pool4: &[String]) -> Result<JoolConfig, DisplayError> {
    let field = |name: &str| {
        global
            .lines()
            .find_map(|l| l.split_once(',').filter(|(k, _)| k.trim() == name))
            .map(|(_, v)| v.trim().to_string())
    };
    let pool6 = field("pool6").ok_or_else(|| DisplayError {
        what: "global display",
        line: "(no pool6)".into(),
    })?;
    // The CSV display prints booleans as TRUE and FALSE.
    let enabled = field("manually-enabled").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut entries = BTreeSet::new();
    for line in pool4.iter().flat_map(|d| d.lines()) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || DisplayError {
            what: "pool4 display",
            line: line.to_string(),
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(protocol), Some(address), Some(lo), Some(hi)) =
            (cols.get(1), cols.get(2), cols.get(3), cols.get(4))
        else {
            return Err(bad());
        };
        // A prefix other than /32 is one we did not write: kept as its
        // network address with a marker port range that never matches.
        let (address, whole) = match address.split_once('/') {
            Some((a, _)) => (a, false),
            None => (*address, true),
        };
        let entry = Pool4Entry {
            protocol: Protocol::parse(protocol).ok_or_else(bad)?,
            address: address.parse().map_err(|_| bad())?,
            ports: if whole {
                (
                    lo.parse().map_err(|_| bad())?,
                    hi.parse().map_err(|_| bad())?,
                )
            } else {
                (0, 0)
            },
        };
        entries.insert(entry);
    }
    Ok(JoolConfig {
        pool6,
        enabled,
        pool4: entries,
    })
}

/// Sessions in `jool session display --csv --no-headers` output.
pub fn count_sessions(display: &str) -> u64 {
    display.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn desired_covers_every_address_and_protocol() {
        let c = desired(
            "64:ff9b::/96",
            &[addr("10.0.1.10"), addr("10.0.1.11")],
            (61001, 65535),
        );
        assert_eq!(c.pool4.len(), 6);
        assert!(c.enabled);
        let text = file(&c);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["instance"], "natron");
        assert_eq!(v["framework"], "netfilter");
        assert_eq!(v["global"]["pool6"], "64:ff9b::/96");
        assert_eq!(v["pool4"][0]["port range"], "61001-65535");
        assert_eq!(v["pool4"][0]["prefix"], "10.0.1.10/32");
    }

    #[test]
    fn a_live_instance_reads_back_equal_to_what_was_written() {
        let want = desired("64:ff9b::/96", &[addr("10.0.1.10")], (61001, 65535));
        // As jool 4.1.13 prints it (`global display --csv --no-headers`).
        let global = "manually-enabled,TRUE\npool6,64:ff9b::/96\nzeroize-traffic-class,FALSE\n";
        let pool4: Vec<String> = ["TCP", "UDP", "ICMP"]
            .iter()
            .map(|p| format!("0,{p},10.0.1.10,61001,65535,1024,0\n"))
            .collect();
        assert_eq!(parse(global, &pool4), Ok(want.clone()));
        // Drift: someone added an entry, or disabled the instance.
        let mut extra = pool4.clone();
        extra[0].push_str("0,TCP,10.0.1.99,1,65535,1024,0\n");
        assert_ne!(parse(global, &extra).unwrap(), want);
        let off = global.replace("manually-enabled,TRUE", "manually-enabled,FALSE");
        assert_ne!(parse(&off, &pool4).unwrap(), want);
        // A wider prefix is never taken for one of ours.
        let wide = vec!["0,TCP,10.0.1.10/31,61001,65535,1024,0\n".to_string()];
        assert!(!parse(global, &wide).unwrap().pool4.contains(&Pool4Entry {
            protocol: Protocol::Tcp,
            address: addr("10.0.1.10"),
            ports: (61001, 65535)
        }));
        let bad = vec!["0,SCTP,10.0.1.10,1,2,3,0\n".to_string()];
        assert!(parse(global, &bad)
            .unwrap_err()
            .to_string()
            .contains("SCTP"));
    }

    #[test]
    fn the_instance_list_names_ours() {
        assert!(has_instance("ffff8f3a01,natron,netfilter\n"));
        assert!(!has_instance("ffff8f3a01,other,netfilter\n"));
        assert!(!has_instance(""));
        assert_eq!(count_sessions("a,b\nc,d\n\n"), 2);
    }
}
