//! NAT64 on natron's disk image as a NAT instance of the lab (only the
//! image's kernel has Jool): translation for the VPC's IPv6 networks, path
//! MTU across it, an agent restart inside the VM, and failover between two
//! NATs that are the image.
//!
//! These need the built x86_64 image: `cargo xtask test` builds it and runs
//! them with `NATRON_IMAGE` set (`--ignored`, one at a time under TCG on
//! the machine's two cores).

mod vm;

use std::time::{Duration, Instant};

use natron_lab::lab::{Lab, LabSpec, Until};
use natron_lab::{internet, longlived};
use vm::*;

/// NAT64 on the image's kernel (its Jool): an IPv6-only client (no IPv4
/// address at all) in the VPC's IPv6 block finds the IPv4-only internet server by name through the
/// VPC's DNS64 resolver and reaches it at that `64:ff9b::` address over
/// TCP (a 10 MB download too), UDP and ping, seen there as the NAT's
/// Elastic IP with a port of NAT64's range; IPv4 clients still egress
/// beside it; a source outside the VPC's IPv6 blocks is refused and
/// counted. The client's `64:ff9b::/96` is the route the VM's agent adds
/// to the table tagged for NAT64, which the lab's router follows. Path MTU
/// discovery works across the translation, down to IPv6's 1,280. An
/// agent restart inside the VM keeps NAT64's state: open connections
/// over NAT64 stay open, Jool's instance is neither replaced nor flushed.
#[test]
#[ignore = "needs the built image: cargo xtask test runs it"]
fn the_image_translates_nat64_for_the_vpcs_ipv6_networks_only() {
    use natron_lab::lab::{nat64_address, SERVER_NAME};
    use std::net::IpAddr;
    let lab = Lab::start(
        LabSpec::with_azs(1)
            .with_vm_nat(0, image())
            .with_vm_control()
            .with_ipv6_clients(),
    )
    .unwrap();
    let mut config = lab.vm_nat_config();
    config.nat64.enabled = true;
    config.nat.reconcile_interval = Duration::from_secs(2);
    lab.boot_vm_nat(0, &config, Until::Ready, BOOT_BOUND)
        .unwrap_or_else(|e| panic!("{e}"));
    let eip = lab.spec.azs[0].eip;
    wait_egress_via(&lab, 0, eip, Duration::from_secs(30));
    let nat64 = lab
        .wait_for(
            "NAT64 in place, in /status",
            Duration::from_secs(30),
            || status(&lab).dataplane.nat64.filter(|n| n.in_place),
        )
        .unwrap_or_else(|e| panic!("{e}\n/status: {:?}\n{}", lab.agent_status(0), tail(&lab, 0)));
    assert_eq!(
        nat64.sources,
        vec![lab.vpc_ipv6().unwrap()],
        "the VPC's IPv6 block, from IMDS"
    );
    assert_eq!(nat64.addresses, vec![lab.nats[0].ip]);
    assert_eq!(nat64.port_range, (61001, 65535));

    let client = lab.nat64_client(0).unwrap().ns.clone();
    // IPv6 only: no IPv4 address, so nothing of IPv4 leaves it.
    let v4 = natron_lab::exec::in_ns(&client, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(v4.trim().is_empty(), "the IPv6-only client has IPv4: {v4}");
    let over_v4 = lab.run_in(
        &client,
        internet::http_get_from(
            IpAddr::V4(internet::SERVER),
            "/whoami",
            Duration::from_secs(2),
        ),
    );
    assert!(
        over_v4.is_err(),
        "the IPv6-only client reached IPv4: {over_v4:?}"
    );
    let table = lab.private_tables[0].clone();
    lab.wait_for(
        "the VM NAT's agent adds the tagged table's NAT64 route to itself",
        Duration::from_secs(30),
        || (lab.nat64_target(&table).ok()? == Some(lab.nats[0].interface_id.clone())).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n/status: {:?}\n{}", lab.agent_status(0), tail(&lab, 0)));
    let resolver = lab.dns64_resolver().unwrap();
    let found = lab
        .run_in(
            &client,
            natron_lab::dns64::resolve(resolver, SERVER_NAME, Duration::from_secs(3)),
        )
        .unwrap_or_else(|e| panic!("DNS64 from the IPv6 client: {e}"));
    assert_eq!(
        found,
        vec![nat64_address(internet::SERVER)],
        "{SERVER_NAME}, IPv4 only, synthesized in 64:ff9b::/96"
    );
    let server = IpAddr::V6(found[0]);
    let seen = lab
        .wait_for(
            "the IPv6 client reaches the server through NAT64",
            Duration::from_secs(60),
            || {
                lab.run_in(
                    &client,
                    internet::http_get_from(server, "/whoami", Duration::from_secs(3)),
                )
                .ok()
            },
        )
        .unwrap_or_else(|e| {
            let ra = lab.vm_nat_link_log(0);
            panic!(
                "{e}\n/status: {:?}\n{}\n--- the VM link's dnsmasq (router advertisements) ---\n{ra}",
                lab.agent_status(0),
                tail(&lab, 0)
            )
        });
    let (ip, port) = seen.trim().rsplit_once(':').expect("ip:port");
    assert_eq!(
        ip,
        eip.to_string(),
        "the server sees the NAT's Elastic IP: {seen}"
    );
    let port: u16 = port.parse().unwrap();
    assert!(
        (61001..=65535).contains(&port),
        "a port of NAT64's range: {seen}"
    );
    // IPv4 clients' ports stay out of NAT64's range.
    let seen4 = lab.client_get(0, "/whoami").unwrap();
    let port4: u16 = seen4.trim().rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(
        port4 <= 61000,
        "masquerade's port {port4} is outside NAT64's range"
    );

    lab.run_in(
        &client,
        internet::download_from(server, 10 << 20, Duration::from_secs(30)),
    )
    .unwrap_or_else(|e| panic!("10 MB over NAT64: {e}"));
    lab.run_in(
        &client,
        internet::udp_echo(server, None, Duration::from_secs(3)),
    )
    .unwrap_or_else(|e| panic!("UDP over NAT64: {e}"));
    natron_lab::exec::in_ns(
        &client,
        "ping",
        &["-6", "-c", "2", "-W", "3", &server.to_string()],
    )
    .unwrap_or_else(|e| panic!("ping over NAT64: {e}"));
    // Echo probes (-I): the IPv4 hops beyond the NAT answer with ICMP
    // errors, which Jool translates to ICMPv6 from their addresses in the
    // prefix (the VPC router's 10.0.0.1 is 64:ff9b::a00:1); the server
    // answers the echo. (The lab's IGW rewrites addresses statelessly and
    // so drops its own errors, where AWS's translates them: no hop there.)
    let trace = natron_lab::exec::in_ns(
        &client,
        "traceroute6",
        &[
            "-I",
            "-n",
            "-q",
            "1",
            "-w",
            "3",
            "-m",
            "8",
            &server.to_string(),
        ],
    )
    .unwrap_or_else(|e| panic!("traceroute6 over NAT64: {e}"));
    eprintln!("traceroute6 over NAT64:\n{trace}");
    let hops: Vec<&str> = trace
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        hops.last().copied(),
        Some(server.to_string().as_str()),
        "{trace}"
    );
    assert!(
        hops.contains(&"64:ff9b::a00:1"),
        "the VPC router's ICMP time exceeded, translated: {trace}"
    );
    assert!(
        lab.rule_packets(0, "nat64-in") > 0.0 || {
            std::thread::sleep(config.nat.reconcile_interval * 2);
            lab.rule_packets(0, "nat64-in") > 0.0
        }
    );
    let sessions = lab
        .wait_for("NAT64 sessions counted", Duration::from_secs(25), || {
            status(&lab)
                .dataplane
                .nat64
                .map(|n| n.sessions)
                .filter(|n| *n > 0)
        })
        .unwrap();
    eprintln!("NAT64: {sessions} sessions in Jool's table");
    assert!(
        lab.rule_packets(0, "nat64-out") > 0.0,
        "translated replies counted"
    );

    // Not an open relay: a source outside the VPC's IPv6 blocks.
    let foreign = lab.foreign_ipv6(0).unwrap();
    let refused = lab.rule_packets(0, "nat64-refuse");
    let answer = lab.run_in(
        &client,
        internet::udp_echo(server, Some(IpAddr::V6(foreign)), Duration::from_secs(2)),
    );
    assert!(answer.is_err(), "{foreign} was translated: {answer:?}");
    lab.wait_for("the refusal counted", Duration::from_secs(10), || {
        (lab.rule_packets(0, "nat64-refuse") > refused).then_some(())
    })
    .unwrap();
    // The VPC's own source still is translated.
    lab.run_in(
        &client,
        internet::udp_echo(server, None, Duration::from_secs(3)),
    )
    .unwrap();
    assert_eq!(
        status(&lab).dataplane.nat64.unwrap().repairs,
        0,
        "found as written every pass"
    );

    // Path MTU over NAT64, with the way out narrowed to 1,400 bytes: the
    // client's 1,460-byte segments (the server's MSS) leave the NAT as
    // 1,500-byte IPv4 packets that may not be fragmented; the router's
    // "fragmentation needed" (1,400) to the NAT's address comes back to
    // the client translated as "packet too big" (1,420: the IPv6 header is
    // 20 bytes longer), and the upload completes in smaller segments.
    let cached_mtu = || {
        natron_lab::exec::in_ns(&client, "ip", &["-6", "route", "get", &server.to_string()])
            .unwrap_or_else(|e| panic!("ip -6 route get: {e}"))
    };
    for (narrow, learned) in [(1400, "mtu 1420"), (1000, "mtu 1280")] {
        lab.narrow_path_out(0, narrow).unwrap();
        lab.run_in(
            &client,
            internet::upload_to(server, 2 << 20, Duration::from_secs(20)),
        )
        .unwrap_or_else(|e| {
            panic!(
                "2 MB up over NAT64 through a {narrow}-byte hop: {e}\n{}",
                cached_mtu()
            )
        });
        let route = cached_mtu();
        assert!(
            route.contains(learned),
            "the client learned the path MTU ({learned}) through a {narrow}-byte hop: {route}"
        );
    }
    lab.narrow_path_out(0, 1500).unwrap();

    // The agent restarted inside the VM (`systemctl restart`, as an
    // upgrade does) while connections are open over NAT64 and over IPv4
    // beside them: the restarted agent finds Jool's instance as it wants
    // it and keeps it, so no session is lost and no route moves.
    let every = Duration::from_secs(1);
    let patience = Duration::from_secs(5);
    let held6 = lab.run_in(&client, longlived::hold_to(server, 20, every, patience));
    let held4 = lab.run_in(&lab.clients[0].ns, longlived::hold(20, every, patience));
    assert_eq!(
        (held6.alive(), held4.alive()),
        (20, 20),
        "open before the restart: {:?} {:?}",
        held6.broken(),
        held4.broken()
    );
    let starts = |lab: &Lab| lab.vm_nat_console(0).matches("identity resolved").count();
    let (started0, moves0) = (starts(&lab), lab.route_changes(&table).len());
    lab.vm_nat_say(0, "restart").unwrap();
    lab.wait_for("the agent started again", Duration::from_secs(90), || {
        (starts(&lab) > started0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&lab, 0)));
    assert!(
        lab.vm_nat_console(0)
            .contains("natron-lab control: restart"),
        "the guest took the word"
    );
    lab.wait_for("ready after the restart", Duration::from_secs(60), || {
        matches!(lab.agent_readyz(0), Ok((200, _))).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&lab, 0)));
    // Several echoes and reconcile passes of the new agent.
    std::thread::sleep(Duration::from_secs(8));
    for (family, held) in [("NAT64", &held6), ("IPv4", &held4)] {
        assert!(
            held.broken().is_empty(),
            "{family} connections broken by the agent restart: {:?}",
            held.broken()
        );
        held.stop();
    }
    assert_eq!(
        lab.route_changes(&table).len(),
        moves0,
        "the restart moved the table's default route"
    );
    assert_eq!(
        lab.nat64_target(&table).unwrap(),
        Some(lab.nats[0].interface_id.clone()),
        "the NAT64 route stays on the VM"
    );
    // The new agent counts the sessions it found (every 10 s).
    lab.wait_for(
        "NAT64 in place with its sessions",
        Duration::from_secs(25),
        || {
            status(&lab)
                .dataplane
                .nat64
                .filter(|n| n.in_place && n.sessions > 0)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n/status: {:?}", lab.agent_status(0)));

    // Written once, at the first pass, and never replaced: each pass read
    // it back as the agent wants it, before and after the restart. (The
    // kernel logs each replacement; creating it from the atomic
    // configuration logs nothing.)
    let console = lab.vm_nat_console(0);
    let replaced = console.matches("Replaced instance 'natron'").count();
    assert_eq!(replaced, 0, "Jool's instance rewritten {replaced} times");
    lab.power_off_vm_nat(0).unwrap();
}

/// NAT64 fails over as IPv4 does: two NATs that are the image, each AZ's
/// private subnet with an IPv4 client and an IPv6-only one, its table
/// serving NAT64. Powering one NAT off moves both of its table's routes
/// (`0.0.0.0/0` and `64:ff9b::/96`) to the other, and both clients' new
/// connections recover through the peer's Elastic IP; powered on again,
/// it takes both back.
/// (The outages' figures and the goal are the bench's: `cargo xtask
/// bench --only nat64-failover`.)
#[test]
#[ignore = "needs the built image: cargo xtask test runs it"]
fn two_images_fail_nat64_over_and_back_with_ipv4() {
    use natron_lab::vm_failover::{tcg_timings, TwoVmNats};
    let s = TwoVmNats::start(&image(), tcg_timings).unwrap_or_else(|e| panic!("{e}"));
    let outage = s.strike(0).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "NAT-A off: IPv4 answered through NAT-B after {:.2} s, NAT64 after {:.2} s",
        outage.ipv4.as_secs_f64(),
        outage.ipv6.as_secs_f64()
    );
    // AZ b's own clients never left their NAT.
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    for (family, probes) in [("IPv4", &s.probes4[1]), ("NAT64", &s.probes6[1])] {
        assert_eq!(
            probes.lost_between(since, Instant::now()),
            0,
            "AZ b's {family} probes lost while NAT-B served both tables"
        );
    }
    s.restore(0).unwrap_or_else(|e| panic!("{e}"));
    s.lab.power_off_vm_nat(0).unwrap();
    s.lab.power_off_vm_nat(1).unwrap();
}
