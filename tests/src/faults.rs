//! Failures the lab can inject, rendered as two nftables tables the lab
//! owns (`lab_fault` in the router and in the IGW), replaced whole on every
//! change so that healing is exact.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::router::{IGW_INET_DEV, IGW_VPC_DEV};
use crate::{exec, LabError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Private IP -> public IP of NATs whose internet traffic the IGW drops.
    pub egress_blocked: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
    /// Pairs of private IPs the VPC router keeps apart (both directions).
    pub partitions: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
    /// (from, to): new connections from the first to the second are
    /// dropped; the other way works, replies included (a security group
    /// admitting one NAT's checks but not the other's).
    pub one_way: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
    /// Percent of the packets to and from the internet server's HTTP port
    /// the IGW drops at random (a flaky probe target).
    pub flaky_percent: Option<u32>,
}

/// The router's fault table. Pure.
pub fn router_script(f: &Faults) -> String {
    let mut rules = String::new();
    for (a, b) in &f.partitions {
        rules.push_str(&format!("    ip saddr {a} ip daddr {b} counter drop\n"));
        rules.push_str(&format!("    ip saddr {b} ip daddr {a} counter drop\n"));
    }
    for (from, to) in &f.one_way {
        rules.push_str(&format!(
            "    ip saddr {from} ip daddr {to} ct state new counter drop\n"
        ));
    }
    format!(
        "table ip lab_fault\ndelete table ip lab_fault\ntable ip lab_fault {{\n  chain forward {{\n    \
         type filter hook forward priority -10; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// The IGW's fault table, ahead of its 1:1 NAT. Pure.
pub fn igw_script(f: &Faults) -> String {
    let mut rules = String::new();
    for (private, public) in &f.egress_blocked {
        rules.push_str(&format!(
            "    iifname \"{IGW_VPC_DEV}\" ip saddr {private} counter drop\n"
        ));
        rules.push_str(&format!(
            "    iifname \"{IGW_INET_DEV}\" ip daddr {public} counter drop\n"
        ));
    }
    if let Some(p) = f.flaky_percent {
        let server = crate::internet::SERVER;
        let port = crate::internet::HTTP_PORT;
        rules.push_str(&format!(
            "    ip daddr {server} tcp dport {port} numgen random mod 100 < {p} counter drop\n"
        ));
        rules.push_str(&format!(
            "    ip saddr {server} tcp sport {port} numgen random mod 100 < {p} counter drop\n"
        ));
    }
    format!(
        "table ip lab_fault\ndelete table ip lab_fault\ntable ip lab_fault {{\n  chain prerouting {{\n    \
         type filter hook prerouting priority -310; policy accept;\n{rules}  }}\n}}\n"
    )
}

pub fn apply(router_ns: &str, igw_ns: &str, f: &Faults) -> Result<(), LabError> {
    exec::nft_script(router_ns, &router_script(f))?;
    exec::nft_script(igw_ns, &igw_script(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_drop_both_directions() {
        let mut f = Faults::default();
        f.partitions
            .insert(("10.0.0.10".parse().unwrap(), "10.0.1.10".parse().unwrap()));
        f.egress_blocked.insert((
            "10.0.0.10".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
        ));
        let r = router_script(&f);
        assert!(
            r.contains("ip saddr 10.0.0.10 ip daddr 10.0.1.10 counter drop"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 10.0.1.10 ip daddr 10.0.0.10 counter drop"),
            "{r}"
        );
        let g = igw_script(&f);
        assert!(
            g.contains("ip saddr 10.0.0.10 counter drop")
                && g.contains("ip daddr 203.0.113.10 counter drop"),
            "{g}"
        );
        assert!(!router_script(&Faults::default()).contains("drop"));
        let mut f = Faults::default();
        f.one_way
            .insert(("10.0.1.10".parse().unwrap(), "10.0.0.10".parse().unwrap()));
        f.flaky_percent = Some(5);
        assert!(router_script(&f)
            .contains("ip saddr 10.0.1.10 ip daddr 10.0.0.10 ct state new counter drop"));
        assert!(igw_script(&f).contains("numgen random mod 100 < 5 counter drop"));
    }
}
