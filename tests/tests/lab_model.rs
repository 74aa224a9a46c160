//! The lab itself must behave like a VPC, or the agent's tests prove
//! nothing: these check the IGW, the metadata stub and two AZs.

use natron_contract::status::MoveKind;
use std::time::Duration;

use natron_lab::imds;
use natron_lab::lab::{Lab, LabSpec};
use natron_lab::vpc::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Routes the private table straight to the IGW (as a public subnet would).
fn route_private_to_igw(lab: &Lab) {
    let (vpc, table) = (lab.vpc_id.clone(), lab.private_tables[0].clone());
    lab.ec2(|ec2| async move {
        let igws = ec2
            .describe_internet_gateways()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("attachment.vpc-id")
                    .values(vpc)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let igw = igws.internet_gateways()[0]
            .internet_gateway_id()
            .unwrap()
            .to_string();
        ec2.create_route()
            .route_table_id(table)
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id(igw)
            .send()
            .await
            .unwrap();
    });
}

#[test]
fn igw_drops_addresses_without_a_public_ip_and_maps_elastic_ips() {
    let lab = Lab::start(LabSpec::with_azs(1)).unwrap();
    route_private_to_igw(&lab);
    lab.wait_for(
        "router follows the new route",
        Duration::from_secs(5),
        || {
            matches!(
                lab.view
                    .read()
                    .unwrap()
                    .default_target(&lab.private_tables[0]),
                Some(Target::InternetGateway(_))
            )
            .then_some(())
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let err = lab
        .client_get(0, "/whoami")
        .expect_err("no public IP: the IGW drops it");
    assert!(err.contains("no answer"), "{err}");

    // Give the client an Elastic IP: the IGW maps it 1:1.
    let client = lab.clients[0].instance_id.clone();
    lab.ec2(|ec2| async move {
        let eip = ec2
            .allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .address("203.0.113.99")
            .send()
            .await
            .unwrap();
        ec2.associate_address()
            .allocation_id(eip.allocation_id().unwrap())
            .instance_id(client)
            .send()
            .await
            .unwrap();
    });
    let seen = lab
        .wait_for(
            "client reaches the internet with its EIP",
            Duration::from_secs(5),
            || lab.client_get(0, "/whoami").ok(),
        )
        .unwrap();
    assert!(seen.starts_with("203.0.113.99:"), "{seen}");
}

/// One raw HTTP exchange with the metadata stub from `ns`.
fn imds_call(lab: &Lab, ns: &str, request: String) -> (u16, String) {
    lab.run_in(ns, async move {
        let mut s = tokio::net::TcpStream::connect((imds::ADDR, 80))
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        (out[9..12].parse().unwrap(), out)
    })
}

#[test]
fn metadata_stub_speaks_imdsv2_for_the_caller() {
    let lab = Lab::start(LabSpec::with_azs(1)).unwrap();
    let nat = lab.nats[0].clone();
    let get = |path: &str, token: &str| {
        format!("GET /latest/{path} HTTP/1.0\r\nx-aws-ec2-metadata-token: {token}\r\n\r\n")
    };
    assert_eq!(
        imds_call(&lab, &nat.ns, get("meta-data/instance-id", "none")).0,
        401,
        "IMDSv2 needs a token"
    );
    let (code, _) = imds_call(
        &lab,
        &nat.ns,
        "PUT /latest/api/token HTTP/1.0\r\n\r\n".into(),
    );
    assert_eq!(code, 400, "a token request needs a TTL");
    let (code, raw) = imds_call(
        &lab,
        &nat.ns,
        "PUT /latest/api/token HTTP/1.0\r\nx-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n".into(),
    );
    assert_eq!(code, 200);
    assert!(
        raw.to_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 60"),
        "{raw}"
    );
    let token = raw.split("\r\n\r\n").nth(1).unwrap().trim().to_string();
    let body = |ns: &str, path: &str| {
        let (code, raw) = imds_call(&lab, ns, get(path, &token));
        (
            code,
            raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
        )
    };
    assert_eq!(
        body(&nat.ns, "meta-data/instance-id"),
        (200, nat.instance_id.clone())
    );
    // The lab leaves the Elastic IP to the agent: none yet, so no address.
    assert_eq!(body(&nat.ns, "meta-data/public-ipv4").0, 404);
    let (eip, instance) = (lab.spec.azs[0].eip.to_string(), nat.instance_id.clone());
    lab.ec2(|ec2| async move {
        let out = ec2
            .describe_addresses()
            .public_ips(eip)
            .send()
            .await
            .unwrap();
        let allocation = out.addresses()[0].allocation_id().unwrap().to_string();
        ec2.associate_address()
            .allocation_id(allocation)
            .instance_id(instance)
            .send()
            .await
            .unwrap();
    });
    // The stub answers from the lab's view, synced every 100 ms.
    let eip = lab.spec.azs[0].eip.to_string();
    lab.wait_for("the Elastic IP in IMDS", Duration::from_secs(5), || {
        (body(&nat.ns, "meta-data/public-ipv4") == (200, eip.clone())).then_some(())
    })
    .unwrap();
    assert_eq!(
        body(&nat.ns, "meta-data/placement/availability-zone"),
        (200, "us-east-1a".into())
    );
    assert_eq!(
        body(&nat.ns, "meta-data/tags/instance/natron:group"),
        (200, "lab".into())
    );
    let (_, mac) = body(&nat.ns, "meta-data/mac");
    assert_eq!(
        body(
            &nat.ns,
            &format!("meta-data/network/interfaces/macs/{mac}/interface-id")
        ),
        (200, nat.interface_id.clone())
    );
    assert_eq!(
        body(
            &nat.ns,
            &format!("meta-data/network/interfaces/macs/{mac}/vpc-ipv4-cidr-blocks")
        ),
        (200, "10.0.0.0/16".into())
    );
    // The same token from another instance answers for that instance.
    let client = lab.clients[0].clone();
    assert_eq!(
        body(&client.ns, "meta-data/instance-id"),
        (200, client.instance_id)
    );
    assert_eq!(body(&client.ns, "meta-data/public-ipv4").0, 404);
}

#[test]
fn two_azs_each_served_by_their_own_nat() {
    let lab = Lab::start(LabSpec::with_azs(2)).unwrap();
    // Start AZ b with its table pointing at AZ a's client (somewhere wrong):
    // the agent must replace it.
    let (table_b, wrong) = (
        lab.private_tables[1].clone(),
        lab.clients[0].interface_id.clone(),
    );
    let wrong_eni = wrong.clone();
    lab.ec2(|ec2| async move {
        ec2.create_route()
            .route_table_id(table_b)
            .destination_cidr_block("0.0.0.0/0")
            .network_interface_id(wrong)
            .send()
            .await
            .unwrap();
    });
    let agents: Vec<_> = (0..2)
        .map(|az| lab.start_agent(az, lab.agent_config(), &[]).unwrap())
        .collect();
    for (az, agent) in agents.iter().enumerate() {
        let (table, eni) = (&lab.private_tables[az], &lab.nats[az].interface_id);
        lab.wait_for(
            "each AZ's table claimed by its own NAT",
            Duration::from_secs(30),
            || {
                matches!(lab.default_route_of(table), Some(Target::Interface(ref e)) if e == eni)
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log(*agent)));
        let seen = lab
            .wait_for(
                "client reaches the internet",
                Duration::from_secs(10),
                || lab.client_get(az, "/whoami").ok(),
            )
            .unwrap();
        let eip = lab.spec.azs[az].eip;
        assert!(
            seen.starts_with(&format!("{eip}:")),
            "AZ {az}: server saw {seen}, expected {eip}"
        );
    }
    let status = lab.agent_status(1).unwrap();
    assert!(
        status
            .failover
            .events
            .iter()
            .any(|e| e.kind == MoveKind::Claim && e.from == wrong_eni),
        "{status:?}"
    );
}

/// The packets the lab's egress-only gateway refused (rule `refused`).
fn eigw_refused(lab: &Lab) -> u64 {
    let table = lab
        .nft_table(&lab.eigw_ns, "ip6", "eigw")
        .expect("table ip6 eigw");
    table["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .find(|r| r["comment"] == "refused")
        .and_then(|r| {
            r["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
        })
        .expect("rule refused with a counter")
}

/// IPv6 as in a VPC with an egress-only internet gateway: the client's
/// IPv6 follows its table's `::/0`, rendered from the emulator, to the
/// gateway and not to a NAT; the server sees the client's own address (no
/// translation); a connection from the internet to the client is dropped
/// at the gateway and counted; the route deleted, the way out is gone.
#[test]
fn ipv6_leaves_through_the_egress_only_gateway_which_lets_only_answers_in() {
    use std::net::{IpAddr, Ipv6Addr};
    let lab = Lab::start(LabSpec::with_azs(1).with_ipv6_clients()).unwrap();
    let client6 = lab.client6(0).unwrap().clone();
    let (client, ns) = (client6.ip, client6.ns.clone());
    let get = || {
        lab.run_in(
            &ns,
            natron_lab::internet::http_get_from(
                IpAddr::V6(natron_lab::internet::SERVER6),
                "/whoami",
                Duration::from_secs(2),
            ),
        )
    };
    assert!(get().is_err(), "no ::/0 yet: no IPv6 way out");

    let table = lab.private_tables[0].clone();
    lab.route_ipv6_out(&table).unwrap();
    let seen = lab
        .wait_for(
            "the client reaches the IPv6 server through the egress-only gateway",
            Duration::from_secs(10),
            || get().ok(),
        )
        .unwrap();
    let (ip, _port) = seen.trim().rsplit_once(':').expect("[ip]:port");
    let ip: Ipv6Addr = ip.trim_matches(['[', ']']).parse().unwrap();
    assert_eq!(ip, client, "the gateway does not translate");
    let route = natron_lab::exec::in_ns(
        &lab.router_ns,
        "ip",
        &[
            "-6",
            "route",
            "get",
            &natron_lab::internet::SERVER6.to_string(),
            "from",
            &client.to_string(),
            "iif",
            &client6.router_dev,
        ],
    )
    .unwrap();
    assert!(
        route.contains(natron_lab::router::ROUTER_EIGW_DEV),
        "through the egress-only gateway, not a NAT: {route}"
    );

    // From the internet to a listening client: dropped at the gateway.
    let _listener = lab
        .run_in(&ns, async { std::net::TcpListener::bind("[::]:8080") })
        .unwrap();
    let refused = eigw_refused(&lab);
    let inbound = lab.run_in(&lab.inet_ns.clone(), async move {
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((client, 8080)),
        )
        .await
    });
    assert!(inbound.is_err(), "no way in: {inbound:?}");
    assert!(eigw_refused(&lab) > refused, "counted as refused");

    // The route deleted in the emulator: the router follows.
    lab.ec2(|ec2| async move {
        ec2.delete_route()
            .route_table_id(table)
            .destination_ipv6_cidr_block("::/0")
            .send()
            .await
            .unwrap();
    });
    lab.wait_for(
        "the client loses its IPv6 way out",
        Duration::from_secs(10),
        || get().is_err().then_some(()),
    )
    .unwrap();
}
