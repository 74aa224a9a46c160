//! `natron-lab demo`: builds a two-AZ lab, shows the private clients failing
//! to reach the internet, starts natron-agent on each NAT instance, and shows
//! each client reaching the internet server through its own AZ's NAT; then
//! kills NAT-A and shows AZ a's traffic moving to NAT-B.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use natron_lab::lab::{Lab, LabSpec};
use natron_lab::vpc::Target;

mod bench;

#[derive(Parser)]
#[command(name = "natron-lab", about = "natron's local VPC lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Two AZs: private clients reaching the internet through natron.
    Demo,
    /// Benchmarks: data plane against the alternatives, footprint, scale,
    /// failover (issue 6). Prints markdown; `--write` updates BENCHMARKS.md.
    Bench(bench::Options),
    /// Boot the disk image under QEMU and check the agent inside.
    BootTest {
        #[arg(long)]
        image: std::path::PathBuf,
        /// x86_64 or arm64.
        #[arg(long, default_value = "x86_64")]
        arch: String,
        /// uefi or bios (arm64: uefi only).
        #[arg(long, default_value = "uefi")]
        firmware: String,
        /// Longest time from power-on to the agent being ready.
        #[arg(long, default_value = "240")]
        bound_secs: u64,
    },
    /// The bench's part inside the image (bench::guest): the data-plane
    /// variants on this kernel, the report on stdout. Runs in the guest.
    #[command(hide = true)]
    GuestBench {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        secs: u32,
    },
    /// Helper of the data-plane bench: hold many TCP connections open
    /// (natron_lab::hold). Runs until killed.
    #[command(hide = true)]
    Hold {
        /// Accept and keep every connection on this address.
        #[arg(long, conflicts_with = "connect")]
        listen: Option<std::net::SocketAddr>,
        /// Open `count` connections to this address from `from`.
        #[arg(long, requires_all = ["from", "count"])]
        connect: Option<std::net::SocketAddr>,
        #[arg(long)]
        from: Option<std::net::Ipv4Addr>,
        #[arg(long)]
        count: Option<usize>,
        /// Give up on a connection after this long.
        #[arg(long, default_value = "2000")]
        timeout_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo => demo(),
        Command::Bench(options) => bench::run(options),
        Command::GuestBench { rounds, secs } => {
            let report = bench::guest_dataplane(rounds, secs).map_err(anyhow::Error::msg)?;
            print!("{report}");
            Ok(())
        }
        Command::Hold {
            listen,
            connect,
            from,
            count,
            timeout_ms,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            match (listen, connect, from, count) {
                (Some(addr), None, _, _) => runtime.block_on(natron_lab::hold::listen(addr))?,
                (None, Some(to), Some(from), Some(count)) => runtime.block_on(
                    natron_lab::hold::connect(to, from, count, Duration::from_millis(timeout_ms)),
                )?,
                _ => {
                    anyhow::bail!("hold: give --listen ADDR, or --connect ADDR --from IP --count N")
                }
            }
            Ok(())
        }
        Command::BootTest {
            image,
            arch,
            firmware,
            bound_secs,
        } => {
            let arch: natron_lab::boot::Arch = arch.parse().map_err(anyhow::Error::msg)?;
            let firmware: natron_lab::boot::Firmware =
                firmware.parse().map_err(anyhow::Error::msg)?;
            let report =
                natron_lab::boot::run(&image, arch, firmware, Duration::from_secs(bound_secs))?;
            println!("boot test ({arch:?}, {firmware:?}): {}", image.display());
            for c in &report.checks {
                println!("  {c}");
            }
            println!(
                "boot to ready: {:.1} s under TCG",
                report.ready_after.as_secs_f64()
            );
            Ok(())
        }
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn demo() -> anyhow::Result<()> {
    step("building the lab: VPC 10.0.0.0/16 in the EC2 emulator, two AZs, namespaces for router, IGW, internet, NATs, clients");
    let started = Instant::now();
    let lab = Lab::start(LabSpec::with_azs(2)).context("starting the lab")?;
    println!(
        "    vpc {}  ({:.1}s)",
        lab.vpc_id,
        started.elapsed().as_secs_f64()
    );
    for (i, az) in lab.spec.azs.iter().enumerate() {
        let (nat, client) = (&lab.nats[i], &lab.clients[i]);
        println!(
            "    {}: NAT {} {} eni {} (Elastic IP {}), client {} {}, lambda route table {}",
            az.name,
            nat.instance_id,
            nat.ip,
            nat.interface_id,
            az.eip,
            client.instance_id,
            client.ip,
            lab.private_tables[i]
        );
    }

    step("before the agents: each client tries http://198.51.100.10/whoami");
    for i in 0..lab.clients.len() {
        match lab.client_get(i, "/whoami") {
            Ok(body) => anyhow::bail!("client {i} reached the internet without a NAT: {body}"),
            Err(e) => println!(
                "    {}: unreachable, as expected ({e})",
                lab.clients[i].role
            ),
        }
    }

    step("starting natron-agent on each NAT instance");
    let agents = (0..lab.nats.len())
        .map(|i| lab.start_agent(i, lab.failover_config(Duration::from_secs(30)), &[]))
        .collect::<Result<Vec<_>, _>>()?;
    let t0 = Instant::now();
    for (i, agent) in agents.iter().enumerate() {
        let (table, eni) = (&lab.private_tables[i], &lab.nats[i].interface_id);
        lab.wait_for(
            "the agent claims its AZ's route table",
            Duration::from_secs(30),
            || {
                matches!(lab.default_route_of(table), Some(Target::Interface(ref e)) if e == eni)
                    .then_some(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}\n--- agent log ---\n{}", lab.agent_log(*agent)))?;
        println!(
            "    {table}: 0.0.0.0/0 -> {eni} ({}) after {:.1}s; SourceDestCheck of {} = {:?}",
            lab.nats[i].role,
            t0.elapsed().as_secs_f64(),
            lab.nats[i].instance_id,
            lab.source_dest_check(&lab.nats[i].instance_id)
        );
    }

    step("the clients try again");
    for i in 0..lab.clients.len() {
        let body = lab
            .wait_for(
                "the client reaches the internet",
                Duration::from_secs(10),
                || lab.client_get(i, "/whoami").ok(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
        println!(
            "    {}: the internet server saw the request come from {} (the Elastic IP of {})",
            lab.clients[i].role,
            body.trim(),
            lab.nats[i].role
        );
    }

    step("agent /readyz, /status and /metrics on nat-a");
    let (code, ready) = lab
        .agent_get(0, "/readyz")
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("    /readyz {code} {}", ready.trim());
    let status = lab.agent_status(0).map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "    forwarding: {}, ruleset in place: {}, source/dest check off: {}",
        status.dataplane.forwarding,
        status.dataplane.ruleset_in_place,
        status.dataplane.source_dest_check_disabled
    );
    println!(
        "    flowtable: {:?} (this kernel {} nftables flowtables)",
        status.dataplane.flowtable,
        if status.dataplane.flowtable == Some(true) {
            "has"
        } else {
            "lacks"
        }
    );
    println!("    routes owned: {:?}", status.routes.owned);
    println!("    warnings: {:?}", status.warnings);
    // The agent reads its kernel counters once per reconcile pass (1 s here).
    std::thread::sleep(Duration::from_millis(1200));
    let (_, metrics) = lab
        .agent_get(0, "/metrics")
        .map_err(|e| anyhow::anyhow!(e))?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("natron_nat_")
            || l.starts_with("natron_routes_owned")
            || l.starts_with("natron_ready")
    }) {
        println!("    {line}");
    }

    step("failover: a prober in lambda-a sends a request every 50 ms; NAT-A dies (agent killed, links down)");
    let probes = lab.start_prober(0);
    lab.wait_for(
        "peers see each other ready",
        Duration::from_secs(15),
        || {
            let st = lab.agent_status(1).ok()?;
            (st.failover.peers.first()?.health == natron_contract::status::Health::Ready)
                .then_some(())
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    lab.kill_nat(0)?;
    let eip_b = lab.spec.azs[1].eip.to_string();
    let outage = lab
        .wait_for("AZ a served through NAT-B", Duration::from_secs(20), || {
            probes.first_via_after(t0, &eip_b)
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", lab.agent_log(agents[1])))?;
    println!(
        "    lambda-a's requests answered again through NAT-B ({eip_b}) {:.2}s after NAT-A died",
        outage.as_secs_f64()
    );
    println!(
        "    {}: 0.0.0.0/0 -> {:?}",
        lab.private_tables[0],
        lab.default_route_of(&lab.private_tables[0])
    );
    let status = lab.agent_status(1).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(event) = status.failover.events.first() {
        println!(
            "    nat-b's /status: {} of {}: {}",
            event.kind.name(),
            event.table,
            event.reason
        );
    }

    step("nat-a's nftables table (nft list table ip natron)");
    let listing =
        natron_lab::exec::in_ns(&lab.nats[0].ns, "nft", &["list", "table", "ip", "natron"])?;
    for line in listing.lines() {
        println!("    {line}");
    }
    step("done; tearing the lab down");
    drop(lab);
    Ok(())
}
