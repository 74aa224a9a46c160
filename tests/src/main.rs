//! `natron-lab demo`: builds the lab, shows a private client failing to
//! reach the internet, starts natron-agent on the NAT instance, and shows
//! the same client reaching the internet server through it.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use natron_lab::lab::{Lab, LabSpec};
use natron_lab::vpc::Target;

#[derive(Parser)]
#[command(name = "natron-lab", about = "natron's local VPC lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One AZ: a private client reaching the internet through natron.
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo => demo(),
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn demo() -> anyhow::Result<()> {
    step("building the lab: VPC 10.0.0.0/16 in the EC2 emulator, namespaces for router, IGW, internet, NAT, client");
    let started = Instant::now();
    let lab = Lab::start(LabSpec::with_azs(1)).context("starting the lab")?;
    let (nat, client, table) = (&lab.nats[0], &lab.clients[0], &lab.private_tables[0]);
    println!(
        "    vpc {}  ({:.1}s)",
        lab.vpc_id,
        started.elapsed().as_secs_f64()
    );
    println!(
        "    NAT instance    {} {} eni {} (Elastic IP {})",
        nat.instance_id, nat.ip, nat.interface_id, lab.spec.azs[0].eip
    );
    println!(
        "    private client  {} {} in {}",
        client.instance_id, client.ip, client.subnet_id
    );
    println!(
        "    lambda route table {table} tagged natron:group={} natron:az={}",
        lab.spec.group, lab.spec.azs[0].name
    );

    step("before the agent: the client tries http://198.51.100.10/whoami");
    match lab.client_get(0, "/whoami") {
        Ok(body) => anyhow::bail!("the client reached the internet without a NAT: {body}"),
        Err(e) => println!("    unreachable, as expected: {e}"),
    }

    step("starting natron-agent in the NAT instance's namespace");
    let agent = lab.start_agent(0, &lab.agent_config(), &[])?;
    let t0 = Instant::now();
    lab.wait_for("the agent claims the route table", Duration::from_secs(30), || {
        matches!(lab.default_route_of(table), Some(Target::Interface(ref e)) if *e == nat.interface_id).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n--- agent log ---\n{}", lab.agent_log(agent)))?;
    println!(
        "    {table}: 0.0.0.0/0 -> {} after {:.1}s",
        nat.interface_id,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "    emulator: SourceDestCheck of {} = {:?}",
        nat.instance_id,
        lab.source_dest_check(&nat.instance_id)
    );

    step("the client tries again");
    let body = lab
        .wait_for(
            "the client reaches the internet",
            Duration::from_secs(10),
            || lab.client_get(0, "/whoami").ok(),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "    the internet server saw the request come from {}",
        body.trim()
    );

    step("agent /readyz and a part of /status");
    let (code, ready) = lab
        .agent_get(0, "/readyz")
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("    /readyz {code} {}", ready.trim());
    let status = lab.agent_status(0).map_err(|e| anyhow::anyhow!(e))?;
    println!("    dataplane: {}", status["dataplane"]["forwarding"]);
    println!(
        "    flowtable: {} (this kernel {} nftables flowtables)",
        status["dataplane"]["flowtable"],
        if status["dataplane"]["flowtable"] == true {
            "has"
        } else {
            "lacks"
        }
    );
    println!("    routes owned: {}", status["routes"]["owned"]);
    println!("    warnings: {}", status["warnings"]);
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

    step("the NAT's nftables table (nft list table ip natron)");
    let listing = natron_lab::exec::in_ns(&nat.ns, "nft", &["list", "table", "ip", "natron"])?;
    for line in listing.lines() {
        println!("    {line}");
    }
    step("done; tearing the lab down");
    drop(lab);
    Ok(())
}
