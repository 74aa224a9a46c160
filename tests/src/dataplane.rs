//! The data-plane benchmark (issue 6): four namespaces in a line, the same
//! path a packet takes in a VPC, and four configurations of the NAT.
//!
//! ```text
//! client 10.0.10.10, .11 ── rtr (VPC router + IGW) ── nat 10.0.0.10 (one interface, eth0)
//!                               └── inet 198.51.100.10 (iperf3, echo, whoami-and-close, connection holders)
//! ```
//!
//! The router sends what arrives from the client subnet to the NAT (policy
//! routing, as a VPC route table does) and everything else by destination.
//! The NAT forwards out of the interface it received on, as on EC2. Without
//! translation (variant `plain`) replies return to the client directly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natron_agent::core::ruleset::{self, RulesetSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::netns::{self, NsRuntime};
use crate::{exec, LabError};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const CLIENT_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 10, 10), Ipv4Addr::new(10, 0, 10, 11)];
const NAT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const ECHO_PORT: u16 = 7;
const CLOSE_PORT: u16 = 9001;
const HOLD_PORT: u16 = 9004;
/// IPv6 (NAT64's variant): the client's network and the NAT's link.
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x10);
const NAT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0x10);
/// The server's address in NAT64's prefix (RFC 6052: 198.51.100.10).
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xc633, 0x640a);
/// Where the client sends, and from, but with NAT64: the server, from
/// the client's first address.
const IPV4_DEST: (IpAddr, IpAddr) = (IpAddr::V4(SERVER), IpAddr::V4(CLIENT_IPS[0]));
/// TAYGA's program: `$NATRON_TAYGA` (`cargo xtask setup` unpacks Debian's
/// package into its cache and sets it), else `tayga` on the PATH (in the
/// guest bench, the data disk's copy).
pub fn tayga_program() -> PathBuf {
    std::env::var_os("NATRON_TAYGA").map_or_else(|| PathBuf::from("tayga"), PathBuf::from)
}

/// TAYGA's TUN device, IPv4 pool and prefix (TAYGA variant). TAYGA,
/// rightly (RFC 6052), refuses to put the lab server's documentation
/// address (TEST-NET-2) in the well-known prefix, so it gets a
/// network-specific one: the translation is the same work.
const TAYGA_PREFIX: &str = "2001:db8:64::/96";
const TAYGA_SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0xc633, 0x640a);
const TAYGA_DEV: &str = "nat64";
const TAYGA_POOL: &str = "192.168.255.0/24";
/// NAT64's ports, as `nat64.port_range` defaults them.
const NAT64_PORTS: (u16, u16) = (61001, 65535);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Forwarding only, no translation: the physical limit here.
    Plain,
    /// fck-nat's rule: one iptables(-nft) MASQUERADE, forwarding on.
    FckNat,
    /// natron's ruleset as the agent renders and applies it.
    Natron,
    /// The same with `nat.fully_random = true`.
    NatronFullyRandom,
    /// natron with `nat.flowtable = false`: its slow path on a kernel that
    /// has the fast path.
    NatronNoFlowtable,
    /// natron with the wire counters CloudWatch's directional metrics need
    /// (`netdev natron`, on with `metrics.cloudwatch`).
    NatronWireCounters,
    /// natron with NAT64 (`nat64.enabled`): Jool's instance as the agent
    /// writes it and `table ip6 natron`, the client speaking IPv6 to the
    /// server's `64:ff9b::` address. Needs Jool: the image's kernel only.
    NatronNat64,
    /// NAT64 by TAYGA (userspace, a TUN device, stateless: each IPv6
    /// client gets an address of a private IPv4 pool) behind natron's
    /// masquerade, the alternative to Jool the issue names.
    TaygaNat64,
}

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::Plain,
        Variant::FckNat,
        Variant::Natron,
        Variant::NatronFullyRandom,
        Variant::NatronNoFlowtable,
        Variant::NatronWireCounters,
        Variant::NatronNat64,
        Variant::TaygaNat64,
    ];
    /// What the host's bench compares (its kernel has no flowtable, so
    /// natron without one is natron).
    pub const HOST: [Variant; 4] = [
        Variant::Plain,
        Variant::FckNat,
        Variant::Natron,
        Variant::NatronFullyRandom,
    ];
    /// What the bench inside the image compares (its kernel has the
    /// flowtable, which the wire counters' hooks see around).
    pub const GUEST: [Variant; 7] = [
        Variant::Plain,
        Variant::FckNat,
        Variant::Natron,
        Variant::NatronNoFlowtable,
        Variant::NatronWireCounters,
        Variant::NatronNat64,
        Variant::TaygaNat64,
    ];

    /// NAT64's variants run only in the image (Jool's module, TAYGA).
    pub fn needs_image(self) -> bool {
        matches!(self, Variant::NatronNat64 | Variant::TaygaNat64)
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain forwarding",
            Variant::FckNat => "fck-nat rule (iptables MASQUERADE)",
            Variant::Natron => "natron",
            Variant::NatronFullyRandom => "natron, fully-random",
            Variant::NatronNoFlowtable => "natron without its flowtable",
            Variant::NatronWireCounters => "natron with the wire counters (CloudWatch)",
            Variant::NatronNat64 => "natron NAT64 (Jool), IPv6 client",
            Variant::TaygaNat64 => "TAYGA NAT64 + natron's masquerade, IPv6 client",
        }
    }
}

/// The namespaces and the runtimes the measurements run on. Dropping it
/// deletes every namespace, even after a failed measurement.
pub struct Topology {
    pub client: String,
    pub rtr: String,
    pub nat: String,
    pub inet: String,
    client_rt: NsRuntime,
    inet_rt: NsRuntime,
    iperf: Option<std::process::Child>,
    /// TAYGA's process while its variant is set.
    tayga: std::sync::Mutex<Option<std::process::Child>>,
    /// Output of the helper processes.
    dir: PathBuf,
    /// Whether the kernel accepted natron's flowtable.
    pub flowtable: bool,
    /// Where the client sends, and from: the server's IPv4 address from
    /// the client's, or with NAT64 its `64:ff9b::` address from the
    /// client's IPv6 one.
    dest: std::sync::RwLock<(IpAddr, IpAddr)>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let tayga = self.tayga.lock().expect("tayga").take();
        for mut child in [self.iperf.take(), tayga].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client, &self.rtr, &self.nat, &self.inet] {
            netns::delete(ns);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sysctl(ns: &str, pairs: &[&str]) -> Result<(), LabError> {
    for p in pairs {
        exec::in_ns(ns, "sysctl", &["-q", "-w", p])?;
    }
    Ok(())
}

/// A veth pair between `a` and `b`, named `a_if`/`b_if` inside them.
fn link(a: &str, a_if: &str, b: &str, b_if: &str) -> Result<(), LabError> {
    let tmp = format!("dp{}", std::process::id() % 100_000);
    exec::run(
        "ip",
        &[
            "link",
            "add",
            &format!("{tmp}a"),
            "netns",
            a,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{tmp}b"),
            "netns",
            b,
        ],
    )?;
    exec::ip(a, &["link", "set", &format!("{tmp}a"), "name", a_if])?;
    exec::ip(b, &["link", "set", &format!("{tmp}b"), "name", b_if])?;
    exec::ip(a, &["link", "set", a_if, "up"])?;
    exec::ip(b, &["link", "set", b_if, "up"])?;
    Ok(())
}

impl Topology {
    pub fn build() -> Result<Topology, LabError> {
        netns::sweep_stale();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = format!(
            "{}dp{}-",
            netns::prefix(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let names = ["client", "rtr", "nat", "inet"].map(|n| format!("{p}{n}"));
        for n in &names {
            netns::create(n)?;
        }
        let [client, rtr, nat, inet] = names;
        let dir = std::env::temp_dir().join(p.trim_end_matches('-'));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::Setup(format!("{}: {e}", dir.display())))?;
        let mut topo = Topology {
            client_rt: NsRuntime::new(&client)?,
            inet_rt: NsRuntime::new(&inet)?,
            client,
            rtr,
            nat,
            inet,
            iperf: None,
            tayga: std::sync::Mutex::new(None),
            dir,
            flowtable: false,
            dest: std::sync::RwLock::new(IPV4_DEST),
        };
        topo.wire()?;
        Ok(topo)
    }

    fn wire(&mut self) -> Result<(), LabError> {
        let (client, rtr, nat, inet) = (&self.client, &self.rtr, &self.nat, &self.inet);
        link(client, "eth0", rtr, "c0")?;
        link(nat, "eth0", rtr, "n0")?;
        link(inet, "eth0", rtr, "i0")?;
        for ip in CLIENT_IPS {
            exec::ip(client, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        }
        exec::ip(client, &["route", "add", "default", "via", "10.0.10.1"])?;
        exec::ip(rtr, &["addr", "add", "10.0.10.1/24", "dev", "c0"])?;
        exec::ip(rtr, &["addr", "add", "10.0.0.1/24", "dev", "n0"])?;
        exec::ip(rtr, &["addr", "add", "198.51.100.1/24", "dev", "i0"])?;
        exec::ip(
            rtr,
            &[
                "route",
                "add",
                "default",
                "via",
                &NAT_IP.to_string(),
                "table",
                "100",
            ],
        )?;
        exec::ip(rtr, &["rule", "add", "iif", "c0", "lookup", "100"])?;
        exec::ip(
            nat,
            &["addr", "add", &format!("{NAT_IP}/24"), "dev", "eth0"],
        )?;
        exec::ip(nat, &["route", "add", "default", "via", "10.0.0.1"])?;
        // IPv6 for NAT64's variant: the router sends the prefix to the NAT,
        // the NAT's translated replies return by its default route.
        exec::ip_batch(
            client,
            &[
                format!("addr add {CLIENT_V6}/64 dev eth0 nodad"),
                "route add default via fd00:10::1".into(),
            ],
        )?;
        exec::ip_batch(
            rtr,
            &[
                "addr add fd00:10::1/64 dev c0 nodad".into(),
                "addr add fd00:0:0:1::1/64 dev n0 nodad".into(),
                format!("route add 64:ff9b::/96 via {NAT_V6}"),
                format!("route add {TAYGA_PREFIX} via {NAT_V6}"),
            ],
        )?;
        exec::ip_batch(
            nat,
            &[
                format!("addr add {NAT_V6}/64 dev eth0 nodad"),
                "route add default via fd00:0:0:1::1".into(),
            ],
        )?;
        sysctl(rtr, &["net.ipv6.conf.all.forwarding=1"])?;
        exec::ip(
            inet,
            &["addr", "add", &format!("{SERVER}/24"), "dev", "eth0"],
        )?;
        exec::ip(inet, &["route", "add", "default", "via", "198.51.100.1"])?;
        let no_rp = [
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ];
        sysctl(rtr, &["net.ipv4.ip_forward=1"])?;
        sysctl(rtr, &no_rp)?;
        for dev in ["c0", "n0", "i0"] {
            sysctl(rtr, &[&format!("net.ipv4.conf.{dev}.rp_filter=0")])?;
        }
        // Every variant forwards with the same sysctls; only rules differ.
        sysctl(
            nat,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.eth0.rp_filter=0",
            ],
        )?;
        // One client may hold 64 k connections to one destination.
        sysctl(client, &["net.ipv4.ip_local_port_range=1024 65535"])?;
        let probe = serde_json::to_string(&ruleset::flowtable_probe("eth0"))
            .map_err(|e| LabError::Setup(format!("flowtable probe: {e}")))?;
        self.flowtable = exec::run_with_input(
            "ip",
            &["netns", "exec", nat, "nft", "-c", "-j", "-f", "-"],
            Some(&probe),
        )
        .is_ok();
        let iperf = exec::spawn_in_ns(
            inet,
            std::path::Path::new("iperf3"),
            &["-s".into(), "--bind".into(), SERVER.to_string()],
            &[],
            std::path::Path::new("/dev/null"),
        )?;
        self.iperf = Some(iperf);
        self.inet_rt
            .run(async move {
                let bind = |port| TcpListener::bind((SERVER, port));
                let (echo, close) = (bind(ECHO_PORT).await?, bind(CLOSE_PORT).await?);
                tokio::spawn(serve_echo(echo));
                tokio::spawn(serve_close(close));
                Ok::<(), std::io::Error>(())
            })
            .map_err(|e| LabError::Setup(format!("servers in {inet}: {e}")))?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Resets the NAT namespace (no rules, empty conntrack), then applies
    /// `variant`'s configuration.
    pub fn set_variant(&self, variant: Variant) -> Result<(), LabError> {
        self.set_variant_with_ports(variant, (1024, 65535))
    }

    /// As [`Topology::set_variant`], natron's masquerade limited to `ports`.
    pub fn set_variant_with_ports(
        &self,
        variant: Variant,
        ports: (u16, u16),
    ) -> Result<(), LabError> {
        exec::in_ns(&self.nat, "nft", &["flush", "ruleset"])?;
        let _ = exec::in_ns(&self.nat, "conntrack", &["-F"]);
        // Only NAT64's variants made a Jool instance or started TAYGA (and
        // only where they are).
        if let Some(mut tayga) = self.tayga.lock().expect("tayga").take() {
            let _ = tayga.kill();
            let _ = tayga.wait();
            exec::ip(&self.nat, &["link", "del", TAYGA_DEV])?;
        } else if self.dest() != IPV4_DEST {
            exec::in_ns(
                &self.nat,
                "jool",
                &["instance", "remove", natron_agent::core::jool::INSTANCE],
            )?;
        }
        *self.dest.write().expect("dest") = IPV4_DEST;
        match variant {
            Variant::Plain => {}
            Variant::FckNat => {
                exec::in_ns(
                    &self.nat,
                    "iptables",
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-o",
                        "eth0",
                        "-j",
                        "MASQUERADE",
                    ],
                )?;
            }
            Variant::Natron
            | Variant::NatronFullyRandom
            | Variant::NatronNoFlowtable
            | Variant::NatronWireCounters => {
                let mut spec = self.natron_spec(variant == Variant::NatronFullyRandom, ports);
                spec.flowtable &= variant != Variant::NatronNoFlowtable;
                spec.wire_counters = variant == Variant::NatronWireCounters;
                self.apply_ruleset(&spec)?;
            }
            Variant::NatronNat64 => self.nat64(ports)?,
            Variant::TaygaNat64 => self.tayga(ports)?,
        }
        Ok(())
    }

    /// natron with NAT64 as the agent sets it up: masquerade's ports with
    /// NAT64's taken out, `table ip6 natron`, and Jool's instance from the
    /// agent's own file; the client then speaks IPv6.
    fn nat64(&self, ports: (u16, u16)) -> Result<(), LabError> {
        use natron_agent::core::{jool, ruleset::nat64};
        let carved =
            natron_agent::core::settings::carve(ports, NAT64_PORTS).map_err(LabError::Setup)?;
        let mut spec = self.natron_spec(false, carved);
        spec.nat64 = Some(nat64::Nat64Spec {
            sources: vec!["fd00:10::/64".parse().expect("prefix")],
            port_range: NAT64_PORTS,
        });
        self.apply_ruleset(&spec)?;
        let file = self.dir.join("jool.json");
        let config = jool::desired(nat64::PREFIX, &[NAT_IP], NAT64_PORTS);
        std::fs::write(&file, jool::file(&config))
            .map_err(|e| LabError::Setup(format!("{}: {e}", file.display())))?;
        exec::in_ns(
            &self.nat,
            "jool",
            &["file", "handle", &file.display().to_string()],
        )?;
        *self.dest.write().expect("dest") = (SERVER_V6.into(), CLIENT_V6.into());
        Ok(())
    }

    /// TAYGA as its documentation sets it up: a TUN device holding the
    /// NAT's addresses, the prefix and a private IPv4 pool routed into it,
    /// TAYGA mapping each IPv6 client to a pool address; natron's
    /// masquerade (the pool among its sources) then translates the pool to
    /// the NAT's address. (`table ip6 natron` filters the well-known prefix
    /// only, so it is left out here.)
    fn tayga(&self, ports: (u16, u16)) -> Result<(), LabError> {
        let mut spec = self.natron_spec(false, ports);
        spec.sources.push(TAYGA_POOL.parse().expect("pool"));
        self.apply_ruleset(&spec)?;
        let data = self.dir.join("tayga");
        std::fs::create_dir_all(&data)
            .map_err(|e| LabError::Setup(format!("{}: {e}", data.display())))?;
        let conf = self.dir.join("tayga.conf");
        let text = format!(
            "tun-device {TAYGA_DEV}\nipv4-addr 192.168.255.1\nipv6-addr fd00:0:0:2::1\nprefix {TAYGA_PREFIX}\ndynamic-pool {TAYGA_POOL}\ndata-dir {}\n",
            data.display()
        );
        std::fs::write(&conf, text)
            .map_err(|e| LabError::Setup(format!("{}: {e}", conf.display())))?;
        let conf = conf.display().to_string();
        let tayga = tayga_program();
        let program = tayga.display().to_string();
        exec::in_ns(&self.nat, &program, &["--mktun", "-c", &conf])?;
        sysctl(&self.nat, &["net.ipv6.conf.all.forwarding=1"])?;
        exec::ip_batch(
            &self.nat,
            &[
                format!("link set {TAYGA_DEV} up"),
                format!("addr add {NAT_IP} dev {TAYGA_DEV}"),
                format!("addr add {NAT_V6} dev {TAYGA_DEV} nodad"),
                format!("route add {TAYGA_POOL} dev {TAYGA_DEV}"),
                format!("route add {TAYGA_PREFIX} dev {TAYGA_DEV}"),
            ],
        )?;
        let child = exec::spawn_in_ns(
            &self.nat,
            &tayga,
            &["--nodetach".into(), "-c".into(), conf],
            &[],
            &self.dir.join("tayga.log"),
        )?;
        *self.tayga.lock().expect("tayga") = Some(child);
        std::thread::sleep(Duration::from_millis(300));
        *self.dest.write().expect("dest") = (TAYGA_SERVER_V6.into(), CLIENT_V6.into());
        Ok(())
    }

    /// Where the client sends, and from (see `dest`).
    fn dest(&self) -> (IpAddr, IpAddr) {
        *self.dest.read().expect("dest")
    }

    /// natron's ruleset for this NAT, as the agent would derive it.
    pub fn natron_spec(&self, fully_random: bool, ports: (u16, u16)) -> RulesetSpec {
        RulesetSpec {
            egress: "eth0".into(),
            sources: vec!["10.0.0.0/16".parse().expect("cidr")],
            port_range: ports,
            fully_random,
            flowtable: self.flowtable,
            agent_port: crate::lab::AGENT_PORT,
            vpc: vec!["10.0.0.0/16".parse().unwrap()],
            mss: Some(1460),
            pool: Vec::new(),
            wire_counters: false,
            nat64: None,
        }
    }

    /// Loads natron's table as the agent does: one atomic batch.
    pub fn apply_ruleset(&self, spec: &RulesetSpec) -> Result<(), LabError> {
        let batch =
            natron_agent::core::listing::batch_json(&ruleset::apply_batch(&ruleset::render(spec)))
                .map_err(|e| LabError::Setup(format!("ruleset: {e}")))?;
        exec::run_with_input(
            "ip",
            &["netns", "exec", &self.nat, "nft", "-j", "-f", "-"],
            Some(&batch),
        )
        .map(|_| ())
    }

    /// Another address of the client subnet on the client (a second
    /// Hyperplane ENI, say): one source address can open at most its
    /// ephemeral ports' worth of connections to one destination.
    pub fn add_client_address(&self, ip: Ipv4Addr) -> Result<(), LabError> {
        exec::ip(
            &self.client,
            &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )
        .map(|_| ())
    }

    /// A secondary address of the NAT, as the VPC delivers one: to the
    /// NAT's interface without ARP (routed via its primary address). The
    /// NAT itself does not configure it (nor does natron-agent).
    pub fn add_nat_address(&self, ip: Ipv4Addr) -> Result<(), LabError> {
        exec::ip(
            &self.rtr,
            &[
                "route",
                "replace",
                &format!("{ip}/32"),
                "via",
                &NAT_IP.to_string(),
                "dev",
                "n0",
            ],
        )
        .map(|_| ())
    }

    /// The NAT's primary address.
    pub fn nat_address(&self) -> Ipv4Addr {
        NAT_IP
    }

    /// Connections to one destination held at once from `from`, up to
    /// `limit` tried.
    pub fn concurrent_from(
        &self,
        helper: &Path,
        from: &[Ipv4Addr],
        limit: usize,
    ) -> Result<usize, LabError> {
        crate::hold::concurrent_connections(&crate::hold::Plan {
            helper,
            client_ns: &self.client,
            server_ns: &self.inet,
            server: SocketAddr::from((SERVER, HOLD_PORT)),
            from,
            total: limit,
            dir: &self.dir,
        })
    }

    /// `nft -j list table FAMILY natron` in the NAT namespace.
    pub fn list_table(&self, family: &str) -> Result<String, LabError> {
        exec::in_ns(&self.nat, "nft", &["-j", "list", "table", family, "natron"])
    }

    /// The source address the server sees: the NAT's when translated.
    pub fn seen_source(&self) -> Result<String, LabError> {
        let (server, _) = self.dest();
        self.client_rt
            .run(async move {
                let mut s = TcpStream::connect((server, CLOSE_PORT)).await?;
                let mut seen = String::new();
                s.read_to_string(&mut seen).await?;
                Ok::<String, std::io::Error>(seen)
            })
            .map_err(|e| LabError::Setup(format!("whoami from {}: {e}", self.client)))
    }

    /// An iperf3 client run from the client (`-J` added) and its report.
    fn iperf3(&self, args: &[&str]) -> Result<serde_json::Value, LabError> {
        let (server, from) = self.dest();
        let (server, from) = (server.to_string(), from.to_string());
        let mut all = vec!["-c", server.as_str(), "--bind", from.as_str(), "-J"];
        all.extend_from_slice(args);
        let out = exec::in_ns(&self.client, "iperf3", &all)?;
        serde_json::from_str(&out).map_err(|e| LabError::Setup(format!("iperf3 -J: {e}: {out}")))
    }

    /// TCP throughput in Gbit/s with `streams` parallel streams.
    pub fn tcp_throughput(&self, streams: u32, secs: u32) -> Result<f64, LabError> {
        let (p, t) = (streams.to_string(), secs.to_string());
        let v = self.iperf3(&["-P", &p, "-t", &t, "-O", "1"])?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .ok_or_else(|| LabError::Setup(format!("iperf3: no sum_received in {v}")))
    }

    /// UDP packets per second delivered, 64-byte payloads, unlimited rate.
    pub fn udp_pps(&self, secs: u32) -> Result<f64, LabError> {
        let t = secs.to_string();
        let v = self.iperf3(&["-u", "-l", "64", "-b", "0", "-t", &t])?;
        let sum = &v["end"]["sum"];
        let (packets, lost, seconds) = (
            sum["packets"].as_f64(),
            sum["lost_packets"].as_f64(),
            sum["seconds"].as_f64(),
        );
        match (packets, lost, seconds) {
            (Some(p), Some(l), Some(s)) if s > 0.0 => Ok((p - l) / s),
            _ => Err(LabError::Setup(format!(
                "iperf3 -u: no packet counts in {v}"
            ))),
        }
    }

    /// New TCP connections per second: connect, read what the server sends
    /// (its close comes with it), close; `workers` at a time for `secs`.
    pub fn connections_per_second(&self, workers: usize, secs: u64) -> f64 {
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        let (server, _) = self.dest();
        let elapsed = self.client_rt.run(async move {
            let start = Instant::now();
            let end = start + Duration::from_secs(secs);
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let done = d.clone();
                    tokio::spawn(async move {
                        while Instant::now() < end {
                            let attempt = async {
                                let mut s = TcpStream::connect((server, CLOSE_PORT)).await?;
                                let mut seen = Vec::with_capacity(16);
                                s.read_to_end(&mut seen).await?;
                                Ok::<(), std::io::Error>(())
                            };
                            if let Ok(Ok(())) =
                                tokio::time::timeout(Duration::from_secs(1), attempt).await
                            {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
            start.elapsed()
        });
        done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
    }

    /// Round trips of one byte on one TCP connection, every 5 ms for
    /// `secs`, in milliseconds (sorted).
    pub fn echo_rtts(&self, secs: u64) -> Result<Vec<f64>, LabError> {
        self.client_rt
            .run(async move {
                let mut s = TcpStream::connect((SERVER, ECHO_PORT)).await?;
                s.set_nodelay(true)?;
                let end = Instant::now() + Duration::from_secs(secs);
                let mut out = Vec::new();
                let mut b = [7u8; 1];
                while Instant::now() < end {
                    let t = Instant::now();
                    s.write_all(&b).await?;
                    s.read_exact(&mut b).await?;
                    out.push(t.elapsed().as_secs_f64() * 1000.0);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                out.sort_by(f64::total_cmp);
                Ok::<Vec<f64>, std::io::Error>(out)
            })
            .map_err(|e| LabError::Setup(format!("echo from {}: {e}", self.client)))
    }

    /// Latency (p50, p99 in ms) while 8 iperf3 streams load the NAT.
    pub fn latency_under_load(&self, secs: u32) -> Result<(f64, f64), LabError> {
        std::thread::scope(|scope| {
            let load = scope.spawn(|| self.tcp_throughput(8, secs + 1));
            std::thread::sleep(Duration::from_millis(700));
            let rtts = self.echo_rtts(u64::from(secs) - 1);
            load.join().expect("iperf3 thread")?;
            let rtts = rtts?;
            Ok((
                crate::stats::percentile(&rtts, 50.0),
                crate::stats::percentile(&rtts, 99.0),
            ))
        })
    }

    /// TCP connections held at once to one destination (server:9004),
    /// from both client addresses, `limit` tried: through a NAT, the ports
    /// it could allocate towards that destination. `helper` is the
    /// natron-lab binary (its `hold` subcommand holds the connections).
    pub fn max_concurrent(&self, helper: &Path, limit: usize) -> Result<usize, LabError> {
        self.concurrent_from(helper, &CLIENT_IPS, limit)
    }

    /// `n` distinct UDP flows through the NAT, within seconds: each client
    /// address and source port sends to 64 destination ports (nothing
    /// listens there). Returns how long sending took.
    pub fn udp_flows(&self, n: usize) -> Result<Duration, LabError> {
        self.client_rt
            .run(async move {
                let start = Instant::now();
                let mut sent = 0;
                'all: for port in 1024..=u16::MAX {
                    for ip in CLIENT_IPS {
                        let socket = tokio::net::UdpSocket::bind((ip, port)).await?;
                        for dport in 20_000..20_064 {
                            if sent == n {
                                break 'all;
                            }
                            socket.send_to(b"x", (SERVER, dport)).await?;
                            sent += 1;
                        }
                    }
                }
                Ok::<Duration, std::io::Error>(start.elapsed())
            })
            .map_err(|e| LabError::Setup(format!("flows from {}: {e}", self.client)))
    }

    /// A /proc file as the NAT namespace sees it.
    fn nat_proc(&self, path: &str) -> Option<String> {
        exec::in_ns(&self.nat, "cat", &[path]).ok()
    }

    /// The NAT namespace's conntrack limit (the kernel's, global).
    pub fn conntrack_max(&self) -> u64 {
        self.nat_proc("/proc/sys/net/netfilter/nf_conntrack_max")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The NAT namespace's full-table counters.
    pub fn conntrack_drops(&self) -> natron_contract::status::ConntrackDrops {
        self.nat_proc("/proc/net/stat/nf_conntrack")
            .and_then(|t| natron_agent::core::kernel::parse_conntrack_drops(&t))
            .unwrap_or_default()
    }

    /// Connections tracked in the NAT namespace now.
    pub fn conntrack_count(&self) -> u64 {
        self.nat_proc("/proc/sys/net/netfilter/nf_conntrack_count")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The next connection; waits out transient errors (out of files) so a
/// server outlives a test that overshoots.
async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    loop {
        match listener.accept().await {
            Ok(conn) => return Some(conn),
            Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(_) => return None,
        }
    }
}

async fn serve_echo(listener: TcpListener) {
    while let Some((mut s, _)) = accept(&listener).await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).await.is_ok() {
                if s.write_all(&b).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Writes the caller's address as seen here, then closes first (so the
/// server, not the client, holds TIME_WAIT).
async fn serve_close(listener: TcpListener) {
    while let Some((mut s, peer)) = accept(&listener).await {
        tokio::spawn(async move {
            let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
        });
    }
}
