//! What natron's processes and crates agree on, defined once.
//!
//! - [`tags`] and [`AGENT_PORT`]: the names the provisioner writes and the
//!   agent reads;
//! - [`ec2`]: instance states and route targets, as both see EC2;
//! - [`readyz`] and [`status`]: the documents the agent serves on its port,
//!   which peers, `natron` and the lab read back into the same types;
//! - [`arch`]: the image architectures;
//! - `aws` (feature `aws`): one error for every AWS call, its
//!   classification and the retry policy;
//! - `client` (feature `client`): a minimal GET for reading the agent's
//!   endpoints.
//!
//! Plain data only: nothing here touches the network or the kernel except
//! the optional client.

pub mod arch;
pub mod ec2;
pub mod readyz;
pub mod status;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "client")]
pub mod client;

/// Tags natron writes and reads.
pub mod tags {
    /// Ties instances, route tables, addresses and every created resource
    /// to one natron group.
    pub const GROUP: &str = "natron:group";
    /// The AZ whose NAT is a route table's (or an Elastic IP's) home.
    pub const AZ: &str = "natron:az";
    /// Unix milliseconds of an agent's last proof of life, on its own
    /// instance.
    pub const HEARTBEAT: &str = "natron:heartbeat";
    /// The last time this NAT's source ports ran out (or neared it)
    /// towards a destination, on its own instance, written at most once a
    /// minute while it lasts: `<unix ms> <what>`. What `natron status`
    /// shows of it, without reaching the agent.
    pub const SOURCE_PORTS: &str = "natron:source-ports";
    /// An Elastic IP of a NAT's address pool (`nat.addresses`): its slot,
    /// 1 to N-1, matched to a secondary private address of the NAT's
    /// interface. The AZ's address on the primary private address has no
    /// slot tag.
    pub const SLOT: &str = "natron:slot";
    /// On a route table: it serves NAT64 (`natron apply --nat64`), so the
    /// NAT its default route names gives it a `64:ff9b::/96` route too.
    /// Any value but `false` means yes.
    pub const NAT64: &str = "natron:nat64";

    /// A value for [`SOURCE_PORTS`]: `<unix ms> <what>`, within EC2's 256
    /// characters.
    pub fn source_ports_value(unix_ms: u64, what: &str) -> String {
        let mut value = format!("{unix_ms} {what}");
        if value.len() > 256 {
            let mut end = 253;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
            value.push_str("...");
        }
        value
    }

    /// The time and text of a [`SOURCE_PORTS`] value.
    pub fn parse_source_ports(value: &str) -> Option<(u64, &str)> {
        let (ms, what) = value.split_once(' ')?;
        Some((ms.parse().ok()?, what))
    }
}

/// What the agents publish to CloudWatch and what alarms read there.
pub mod cloudwatch {
    /// The agents' default namespace (`metrics.cloudwatch.namespace`).
    pub const NAMESPACE: &str = "natron";
    /// Dimensions of every metric: the NAT's instance and its group.
    pub const DIMENSION_INSTANCE: &str = "NatInstanceId";
    pub const DIMENSION_GROUP: &str = "Group";
    /// New connections refused for lack of a source port (the NAT
    /// Gateway's name).
    pub const ERROR_PORT_ALLOCATION: &str = "ErrorPortAllocation";
    /// 1 while the NAT is ready (natron's own).
    pub const READY: &str = "Ready";
    /// Every metric an agent publishes, in its order (the agent's
    /// `core::cloudwatch`; the provisioner prices this many). Of the last
    /// ten, nine come from the wire counters, on kernels with the netdev
    /// egress hook (the image's), and IdleTimeoutCount from conntrack's
    /// events.
    pub const METRICS: [&str; 19] = [
        "ActiveConnectionCount",
        "ConnectionAttemptCount",
        ERROR_PORT_ALLOCATION,
        "PacketsDropCount",
        "BytesForwarded",
        "PacketsForwarded",
        READY,
        "RoutesOwned",
        "Failovers",
        "BytesInFromSource",
        "BytesOutToDestination",
        "BytesInFromDestination",
        "BytesOutToSource",
        "PacketsInFromSource",
        "PacketsOutToDestination",
        "PacketsInFromDestination",
        "PacketsOutToSource",
        "ConnectionEstablishedCount",
        "IdleTimeoutCount",
    ];
}

/// The agent's HTTP port (/healthz, /readyz, /metrics, /status) unless its
/// configuration says otherwise; security groups open it between NATs.
pub const AGENT_PORT: u16 = 9100;

/// An error and its sources, joined with ": ", for messages that must say
/// what actually went wrong (SDK errors hide it in their sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tags::{parse_source_ports, source_ports_value};

    #[test]
    fn a_source_port_warning_fits_a_tag_and_reads_back() {
        let v = source_ports_value(1_700_000_000_000, "no free source port");
        assert_eq!(
            parse_source_ports(&v),
            Some((1_700_000_000_000, "no free source port"))
        );
        let long = source_ports_value(1, &"é".repeat(300));
        assert!(long.len() <= 256 && long.ends_with("..."), "{}", long.len());
        assert_eq!(parse_source_ports("x y"), None);
    }
}
