//! The lab's namespaces wired: the backbone (router, control plane, IGW,
//! internet) and each instance's link to the router.

use ipnet::Ipv4Net;

use crate::imds::{self};
use crate::internet;
use crate::router::{self, DELIVERY_TABLE};
use crate::{exec, LabError};

use super::spec::*;

fn sysctl(ns: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(settings);
    exec::in_ns(ns, "sysctl", &args).map(|_| ())
}

/// Router <-> control, router <-> IGW <-> internet, and the router's rules.
pub(super) fn wire_backbone(ctl: &str, rtr: &str, igw: &str, inet: &str) -> Result<(), LabError> {
    sysctl(
        rtr,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
            "net.ipv4.conf.default.proxy_arp=1",
        ],
    )?;
    sysctl(
        igw,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ],
    )?;
    let r = |args: &[&str]| exec::ip(rtr, args).map(|_| ());
    // Control namespace: the EC2 endpoint and the metadata address.
    r(&[
        "link", "add", "ctl0", "type", "veth", "peer", "name", "eth0", "netns", ctl,
    ])?;
    r(&["addr", "add", &format!("{CTL_GATEWAY}/32"), "dev", "ctl0"])?;
    r(&["link", "set", "ctl0", "up"])?;
    let c = |args: &[&str]| exec::ip(ctl, args).map(|_| ());
    c(&[
        "addr",
        "add",
        &format!("{EC2_ENDPOINT_IP}/32"),
        "dev",
        "eth0",
    ])?;
    c(&["addr", "add", &format!("{}/32", imds::ADDR), "dev", "eth0"])?;
    c(&["link", "set", "eth0", "up"])?;
    c(&[
        "route",
        "add",
        "default",
        "via",
        &CTL_GATEWAY.to_string(),
        "dev",
        "eth0",
        "onlink",
    ])?;
    let table = DELIVERY_TABLE.to_string();
    r(&[
        "route",
        "add",
        &format!("{EC2_ENDPOINT_IP}/32"),
        "dev",
        "ctl0",
        "table",
        &table,
    ])?;
    r(&[
        "route",
        "add",
        &format!("{}/32", imds::ADDR),
        "dev",
        "ctl0",
        "table",
        &table,
    ])?;
    // IGW and internet.
    r(&[
        "link",
        "add",
        router::ROUTER_IGW_DEV,
        "type",
        "veth",
        "peer",
        "name",
        router::IGW_VPC_DEV,
        "netns",
        igw,
    ])?;
    r(&[
        "addr",
        "add",
        &format!("{}/30", router::ROUTER_IGW_ADDR),
        "dev",
        router::ROUTER_IGW_DEV,
    ])?;
    r(&["link", "set", router::ROUTER_IGW_DEV, "up"])?;
    let g = |args: &[&str]| exec::ip(igw, args).map(|_| ());
    g(&[
        "addr",
        "add",
        &format!("{}/30", router::IGW_ADDR),
        "dev",
        router::IGW_VPC_DEV,
    ])?;
    g(&["link", "set", router::IGW_VPC_DEV, "up"])?;
    g(&[
        "route",
        "add",
        VPC_CIDR,
        "via",
        &router::ROUTER_IGW_ADDR.to_string(),
    ])?;
    g(&[
        "link",
        "add",
        router::IGW_INET_DEV,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        inet,
    ])?;
    g(&[
        "addr",
        "add",
        &format!("{}/24", internet::GATEWAY),
        "dev",
        router::IGW_INET_DEV,
    ])?;
    g(&["link", "set", router::IGW_INET_DEV, "up"])?;
    let i = |args: &[&str]| exec::ip(inet, args).map(|_| ());
    i(&[
        "addr",
        "add",
        &format!("{}/24", internet::SERVER),
        "dev",
        "eth0",
    ])?;
    i(&["link", "set", "eth0", "up"])?;
    i(&[
        "route",
        "add",
        "default",
        "via",
        &internet::GATEWAY.to_string(),
    ])?;
    // Router policy: metadata and traffic from the control plane and the
    // IGW are delivered directly; everything else follows its subnet's
    // route table (pref 200, synced), then local delivery, then nothing.
    let imds_dest = format!("{}/32", imds::ADDR);
    r(&[
        "rule", "add", "pref", "100", "to", &imds_dest, "lookup", &table,
    ])?;
    r(&[
        "rule", "add", "pref", "150", "iif", "ctl0", "lookup", &table,
    ])?;
    r(&[
        "rule",
        "add",
        "pref",
        "151",
        "iif",
        router::ROUTER_IGW_DEV,
        "lookup",
        &table,
    ])?;
    r(&["rule", "add", "pref", "250", "lookup", &table])?;
    r(&["rule", "add", "pref", "260", "unreachable"])?;
    Ok(())
}

/// The egress-only internet gateway between the router and the internet
/// (IPv6): out from the VPC goes through, in only what answers it;
/// nothing is translated. Its refusals count in rule `refused`.
pub(super) fn wire_egress_only(rtr: &str, eigw: &str, inet: &str) -> Result<(), LabError> {
    use router::{EIGW_ADDR, IGW_INET_DEV, IGW_VPC_DEV, ROUTER_EIGW_ADDR, ROUTER_EIGW_DEV};
    let forward = ["net.ipv6.conf.all.forwarding=1"];
    sysctl(rtr, &forward)?;
    sysctl(eigw, &forward)?;
    exec::ip_batch(
        rtr,
        &[
            format!("link add {ROUTER_EIGW_DEV} type veth peer name {IGW_VPC_DEV} netns {eigw}"),
            format!("addr add {ROUTER_EIGW_ADDR}/64 dev {ROUTER_EIGW_DEV} nodad"),
            format!("link set {ROUTER_EIGW_DEV} up"),
        ],
    )?;
    exec::ip_batch(
        eigw,
        &[
            format!("addr add {EIGW_ADDR}/64 dev {IGW_VPC_DEV} nodad"),
            format!("link set {IGW_VPC_DEV} up"),
            format!("route add default via {ROUTER_EIGW_ADDR} dev {IGW_VPC_DEV}"),
            format!("link add {IGW_INET_DEV} type veth peer name eth6 netns {inet}"),
            format!(
                "addr add {}/64 dev {IGW_INET_DEV} nodad",
                internet::GATEWAY6
            ),
            format!("link set {IGW_INET_DEV} up"),
        ],
    )?;
    exec::ip_batch(
        inet,
        &[
            format!("addr add {}/64 dev eth6 nodad", internet::SERVER6),
            "link set eth6 up".to_string(),
            format!("route add default via {} dev eth6", internet::GATEWAY6),
        ],
    )?;
    exec::nft_script(
        eigw,
        &format!(
            "table ip6 eigw {{\n  chain forward {{\n    type filter hook forward priority 0; policy drop;\n\
             \x20   iifname \"{IGW_VPC_DEV}\" oifname \"{IGW_INET_DEV}\" counter accept\n\
             \x20   iifname \"{IGW_INET_DEV}\" ct state established,related counter accept\n\
             \x20   iifname \"{IGW_INET_DEV}\" counter drop comment \"refused\"\n  }}\n}}\n"
        ),
    )
}

/// The link from the router to `host`'s namespace (`eth0` there), with
/// `mtu` on both ends when given, and its router side: the subnet's gateway
/// address (proxy ARP answers for the rest), and a delivery route to the
/// instance. Returns the gateway.
pub(super) fn link_to_router(
    rtr: &str,
    host: &Host,
    subnet: Ipv4Net,
    mtu: Option<u16>,
) -> Result<std::net::Ipv4Addr, LabError> {
    let gateway = subnet.hosts().next().expect("subnet has hosts");
    let (dev, ns) = (host.router_dev.as_str(), host.ns.as_str());
    let mtu = mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
    exec::ip_batch(
        rtr,
        &[
            format!("link add {dev}{mtu} type veth peer name eth0{mtu} netns {ns}"),
            format!("addr add {gateway}/32 dev {dev}"),
            format!("link set {dev} up"),
            format!("route add {}/32 dev {dev} table {DELIVERY_TABLE}", host.ip),
        ],
    )?;
    Ok(gateway)
}

/// An instance's single interface (eth0, with its emulator MAC, its address
/// and a default route to the gateway) on its link to the router.
pub(super) fn wire_host(
    rtr: &str,
    host: &Host,
    mac: &str,
    subnet: Ipv4Net,
) -> Result<(), LabError> {
    let gateway = link_to_router(rtr, host, subnet, None)?;
    wire_eth0(
        &host.ns,
        mac,
        &format!("{}/{}", host.ip, subnet.prefix_len()),
        gateway.into(),
    )
}

/// The instance's side of its link in namespace `ns`: `eth0` with its
/// emulator MAC (when it has one), `addr` (a prefix and any flags, as `ip
/// addr add` takes them), up, and a default route to `gateway`.
pub(super) fn wire_eth0(
    ns: &str,
    mac: &str,
    addr: &str,
    gateway: std::net::IpAddr,
) -> Result<(), LabError> {
    let mut lines = Vec::new();
    if !mac.is_empty() {
        lines.push(format!("link set eth0 address {mac}"));
    }
    lines.extend([
        format!("addr add {addr} dev eth0"),
        "link set eth0 up".to_string(),
        format!("route add default via {gateway} dev eth0"),
    ]);
    exec::ip_batch(ns, &lines)
}
