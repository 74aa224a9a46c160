//! The address pool (issue 15): TCP connections held at once towards one
//! destination through natron's ruleset with one address and with a pool
//! of two, at the full port range, side by side in the data-plane
//! topology. The NAT's second address is delivered to it as the VPC
//! delivers a secondary private address.

use std::net::Ipv4Addr;

use natron_lab::dataplane::{Topology, Variant};

const NAT_GATEWAY_PER_ADDRESS: usize = 55_000;
/// Connections tried: above 2 x 64,512.
const LIMIT: usize = 140_000;
/// Client addresses, one per `natron-lab hold` connector. One source
/// address reaches one destination from at most its 64,512 ephemeral
/// ports (TCP's own 4-tuple), so no single client address can show more
/// than one NAT address's worth; and a client's bind() slows to a crawl
/// once most of its ports are bound, so each address opens at most
/// 18,000 here.
const CLIENTS: [Ipv4Addr; 8] = [
    Ipv4Addr::new(10, 0, 10, 10),
    Ipv4Addr::new(10, 0, 10, 11),
    Ipv4Addr::new(10, 0, 10, 12),
    Ipv4Addr::new(10, 0, 10, 13),
    Ipv4Addr::new(10, 0, 10, 14),
    Ipv4Addr::new(10, 0, 10, 15),
    Ipv4Addr::new(10, 0, 10, 16),
    Ipv4Addr::new(10, 0, 10, 17),
];
const SECOND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);

pub fn run() -> Result<String, String> {
    let helper = std::env::current_exe().map_err(|e| format!("natron-lab's own path: {e}"))?;
    let topo = Topology::build().map_err(|e| e.to_string())?;
    let err = |e: natron_lab::LabError| e.to_string();
    for ip in &CLIENTS[2..] {
        topo.add_client_address(*ip).map_err(err)?;
    }
    topo.add_nat_address(SECOND).map_err(err)?;
    let mut rows = Vec::new();
    for (addresses, pool, from) in [
        (1, vec![], &CLIENTS[..]),
        (2, vec![topo.nat_address(), SECOND], &CLIENTS[..]),
    ] {
        topo.set_variant(Variant::Plain).map_err(err)?;
        let mut spec = topo.natron_spec(false, (1024, 65535));
        spec.pool = pool;
        topo.apply_ruleset(&spec).map_err(err)?;
        eprintln!(
            "pool: {addresses} address(es), from {} client address(es)",
            from.len()
        );
        let held = topo.concurrent_from(&helper, from, LIMIT).map_err(err)?;
        rows.push((addresses, from.len(), held));
    }
    topo.set_variant(Variant::Plain).map_err(err)?;
    Ok(report(&rows))
}

fn report(rows: &[(usize, usize, usize)]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "TCP connections held at once towards one destination (address and port), \
         {LIMIT} tried, port range 1024-65535 (64,512 ports an address), natron's ruleset \
         with one address (masquerade) and with a pool of two (`nat.addresses = 2`: \
         `snat to numgen inc mod 2 map {{ ... }}`), from {} client addresses (one \
         source address cannot open more than its own 64,511 ephemeral ports' worth towards one \
         destination, whatever the NAT: the lab's address-pool test shows one client address \
         getting every NAT address's ports with a narrowed range). One run; each figure is a \
         count, not a rate.\n\n",
        CLIENTS.len()
    ));
    out.push_str("| NAT addresses | client addresses | held | goal | NAT Gateway with as many addresses | result |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for &(n, clients, held) in rows {
        let goal = n * 64_000;
        let result = if held >= goal { "met" } else { "**missed**" };
        out.push_str(&format!(
            "| {n} | {clients} | {held} | >= {goal} | {} | {result} |\n",
            n * NAT_GATEWAY_PER_ADDRESS
        ));
    }
    if let [(_, _, one), (_, _, two), ..] = rows {
        out.push_str(&format!(
            "\nRatio, two addresses over one: {:.2}.\n",
            *two as f64 / (*one).max(1) as f64
        ));
    }
    out
}
