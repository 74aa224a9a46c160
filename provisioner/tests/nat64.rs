//! `natron apply --nat64` against the EC2 emulator: refused with nothing
//! changed on a VPC without IPv6; on one with IPv6, the agents' user data,
//! the tables' tag, `::/0` to a new tagged egress-only gateway, the served
//! subnets' IPv6 blocks in the security group and DNS64 once the NAT64
//! route is served; kept by a later apply without the flag; `check` finds
//! each broken piece of the IPv6 path and `apply` repairs it; `destroy`
//! turns DNS64 off and leaves nothing.

mod common;

use aws_sdk_ec2::types::AttributeBooleanValue;
use common::*;
use natron::cloud::{Aws, Cloud};
use natron::model::{Peer, IPV6_DEFAULT_ROUTE, NAT64_ROUTE};
use natron_lab::emulator::Loopback;

async fn dns64(ec2: &aws_sdk_ec2::Client, subnet: &str) -> bool {
    ec2.describe_subnets()
        .subnet_ids(subnet)
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .enable_dns64()
        == Some(true)
}

/// Gives the VPC an Amazon-provided IPv6 block and `subnet` a /64 of it.
async fn ipv6(ec2: &aws_sdk_ec2::Client, vpc: &str, subnet: &str) -> ipnet::Ipv6Net {
    ec2.associate_vpc_cidr_block()
        .vpc_id(vpc)
        .amazon_provided_ipv6_cidr_block(true)
        .send()
        .await
        .unwrap();
    let block: ipnet::Ipv6Net = ec2
        .describe_vpcs()
        .vpc_ids(vpc)
        .send()
        .await
        .unwrap()
        .vpcs()[0]
        .ipv6_cidr_block_association_set()[0]
        .ipv6_cidr_block()
        .unwrap()
        .parse()
        .unwrap();
    let sub = block.subnets(64).unwrap().nth(1).unwrap();
    ec2.associate_subnet_cidr_block()
        .subnet_id(subnet)
        .ipv6_cidr_block(sub.to_string())
        .send()
        .await
        .unwrap();
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat64_is_applied_checked_repaired_kept_and_destroyed() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let args = |nat64: bool| apply_args(&v, "g1", if nat64 { &["--nat64"] } else { &[] });

    // No IPv6 in the VPC: refused, nothing made.
    let before = snapshot(&ec2, &emu).await;
    let out = natron_with(&emu, &args(true)).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr
            .contains(&format!("--nat64: {} has no IPv6 CIDR block", v.id)),
        "{out}"
    );
    assert_eq!(snapshot(&ec2, &emu).await, before);

    let block = ipv6(&ec2, &v.id, &v.old_subnet).await;
    let agents = fake_agents(ec2.clone(), "g1");
    let out = natron_with(&emu, &args(true)).await;
    assert_eq!(out.code, 0, "{out}");
    for said in [
        "create an egress-only internet gateway".to_string(),
        format!("turn DNS64 on for {}", v.old_subnet),
        "subnet 10.0.11.0/24 has no IPv6 block".into(),
    ] {
        assert!(out.stdout.contains(&said), "{said:?} missing:\n{out}");
    }
    let cloud = Aws::new(&emu.sdk_config().await);
    let inv = cloud.inventory(&v.id, "g1").await.unwrap();
    let eigw = &inv.egress_only_gateways[0];
    assert_eq!(inv.egress_only_gateways.len(), 1);
    assert_eq!(eigw.tags["natron:group"], "g1");
    for t in inv.group_route_tables("g1") {
        assert!(t.serves_nat64(), "{t:?}");
        let out = t.route(IPV6_DEFAULT_ROUTE).expect("::/0");
        assert_eq!(out.egress_only_gateway(), Some(eigw.id.as_str()), "{t:?}");
        let nat = inv.instance_for(t.default_route().unwrap()).unwrap();
        assert!(nat.is_target_of(t.route(NAT64_ROUTE).unwrap()), "{t:?}");
    }
    let table_a = inv.route_table_of(&v.old_subnet).unwrap();
    assert_eq!(table_a.tag("natron:dns64"), Some("on"));
    assert!(dns64(&ec2, &v.old_subnet).await);
    let sg = inv
        .security_groups
        .iter()
        .find(|g| g.name == "natron-g1")
        .unwrap();
    assert!(
        sg.ingress.iter().any(|p| p.peer == Peer::Cidr6(block)),
        "{:?}",
        sg.ingress
    );
    assert_user_data(&inv, "[nat64]\nenabled = true");

    // Again, and without the flag: nothing to change, NAT64 stays.
    let out = natron_with(&emu, &args(true)).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("nothing to change"), "{out}");
    let out = natron_with(&emu, &args(false)).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("NAT64 stays on"), "{out}");
    assert!(out.stdout.contains("nothing to change"), "{out}");

    // Check: the IPv6 path is whole; the new subnet has no IPv6 block.
    into_natrons_group(&ec2, &inv, "g1").await;
    let out = natron(&emu, &["check", "--vpc", &v.id, "--group", "g1"]).await;
    assert_eq!(out.code, 3, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "64:ff9b::/96 to the same NAT and ::/0 to {}, DNS64 on",
            eigw.id
        )),
        "{out}"
    );
    assert!(out.stdout.contains("has no IPv6 block"), "{out}");

    // Each break found, then repaired by apply.
    agents.abort();
    ec2.modify_subnet_attribute()
        .subnet_id(&v.old_subnet)
        .enable_dns64(AttributeBooleanValue::builder().value(false).build())
        .send()
        .await
        .unwrap();
    expect_check(&emu, &v, 1, "has DNS64 off").await;
    ec2.delete_route()
        .route_table_id(&table_a.id)
        .destination_ipv6_cidr_block(IPV6_DEFAULT_ROUTE)
        .send()
        .await
        .unwrap();
    expect_check(&emu, &v, 1, "has no ::/0 route").await;
    ec2.delete_route()
        .route_table_id(&table_a.id)
        .destination_ipv6_cidr_block(NAT64_ROUTE)
        .send()
        .await
        .unwrap();
    expect_check(&emu, &v, 1, "has no 64:ff9b::/96 route").await;
    let agents = fake_agents(ec2.clone(), "g1");
    let out = natron_with(&emu, &args(false)).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains(&format!("add ::/0 → {} in {}", eigw.id, table_a.id)),
        "{out}"
    );
    assert!(dns64(&ec2, &v.old_subnet).await);
    let out = natron(&emu, &["check", "--vpc", &v.id, "--group", "g1"]).await;
    assert_eq!(out.code, 3, "only the subnet without IPv6 is left:\n{out}");
    agents.abort();

    // Destroy: DNS64 off where natron turned it on, the gateway gone.
    let out = natron(&emu, &["destroy", "--vpc", &v.id, "--group", "g1", "--yes"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(!dns64(&ec2, &v.old_subnet).await);
    let inv = cloud.inventory(&v.id, "g1").await.unwrap();
    assert!(
        inv.egress_only_gateways.is_empty(),
        "{:?}",
        inv.egress_only_gateways
    );
    assert_eq!(tagged(&emu, &v.id, "g1").await, Vec::<String>::new());
}
