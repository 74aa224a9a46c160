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
}

/// The router's fault table. Pure.
pub fn router_script(f: &Faults) -> String {
    let mut rules = String::new();
    for (a, b) in &f.partitions {
        rules.push_str(&format!("    ip saddr {a} ip daddr {b} counter drop\n"));
        rules.push_str(&format!("    ip saddr {b} ip daddr {a} counter drop\n"));
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
    }
}
