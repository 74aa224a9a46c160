//! The `natron` CLI against the EC2 emulator (moto on 127.0.0.1): apply,
//! plan, status, check (and each breakage it must find), destroy, bad
//! input, and an interrupted apply. The NAT agents' part (claiming routes,
//! disabling the source/dest check) is played by a task of the test.

mod common;

use std::ops::ControlFlow;
use std::time::Duration;

use common::*;
use natron::apply::Runner;
use natron::cloud::{Aws, Cloud};
use natron_lab::emulator::Loopback;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_check_break_destroy() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let new_private = format!("{AZ_B}=10.0.11.0/24");
    let apply_args = [
        "apply",
        "--vpc",
        &v.id,
        "--group",
        "g1",
        "--private",
        &v.old_subnet,
        "--private",
        &new_private,
        "--elastic-ip",
        "--cloudwatch-metrics",
        "--wait-timeout",
        "60s",
    ];

    // Apply, with the agents' part played alongside.
    let agents = fake_agents(ec2.clone(), "g1");
    let out = natron(&emu, &apply_args).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("done: every private subnet of g1 is served"),
        "{out}"
    );

    // Everything tagged and associated.
    let cloud = Aws::new(&emu.sdk_config().await);
    let inv = cloud.inventory(&v.id, "g1").await.unwrap();
    let tagged_g1 =
        |t: &natron::model::Tags| t.get("natron:group").map(String::as_str) == Some("g1");
    let sg = inv
        .security_groups
        .iter()
        .find(|g| g.name == "natron-g1")
        .unwrap();
    assert!(tagged_g1(&sg.tags));
    assert!(sg
        .ingress
        .iter()
        .any(|p| p.peer == natron::model::Peer::Cidr("10.0.10.0/24".parse().unwrap())));
    assert!(sg.ingress.iter().any(|p| p.peer
        == natron::model::Peer::Group(natron::model::Ref::Id(sg.id.clone()))
        && p.from_port == Some(9100)));
    let role = inv.role.as_ref().unwrap();
    assert!(tagged_g1(&role.tags));
    assert_eq!(
        role.policies["natron-agent"],
        natron::documents::agent_policy(
            "g1",
            "aws",
            &natron::documents::AgentOptions::with_metrics(true)
        )
    );
    assert!(tagged_g1(&inv.instance_profile.as_ref().unwrap().tags));
    let lt = inv.launch_template.as_ref().unwrap();
    assert!(tagged_g1(&lt.tags));
    let launch = lt.latest.as_ref().unwrap();
    assert_eq!(launch.security_group_id, sg.id);
    assert!(launch.user_data.contains("group = \"g1\""));
    assert!(
        launch
            .user_data
            .contains("[metrics.cloudwatch]\nenabled = true"),
        "{}",
        launch.user_data
    );
    assert_eq!(inv.auto_scaling_groups.len(), 2);
    for g in &inv.auto_scaling_groups {
        assert!(tagged_g1(&g.tags));
        assert_eq!(g.termination_hooks, vec!["natron-handoff".to_string()]);
        assert_eq!((g.min_size, g.max_size, g.desired), (1, 1, 1));
    }
    assert_eq!(inv.instances.len(), 2);
    let new_subnet = inv
        .subnets
        .iter()
        .find(|s| s.cidr.to_string() == "10.0.11.0/24")
        .unwrap();
    assert!(tagged_g1(&new_subnet.tags));
    for (subnet, az) in [(&v.old_subnet, AZ_A), (&new_subnet.id, AZ_B)] {
        let t = inv.route_table_of(subnet).unwrap();
        assert_eq!(t.tag("natron:group"), Some("g1"), "{subnet}");
        assert_eq!(t.tag("natron:az"), Some(az), "{subnet}");
        assert_eq!(t.tag("natron:subnet"), Some(subnet.as_str()));
        let nat = inv.instance_for(t.default_route().unwrap()).unwrap();
        assert_eq!(nat.az, az);
    }
    assert_eq!(
        inv.route_table_of(&v.old_subnet)
            .unwrap()
            .tag("natron:previous-route-table"),
        Some(v.old_rt.as_str())
    );
    assert_eq!(inv.addresses.len(), 2);
    for a in &inv.addresses {
        let nat = inv
            .instances
            .iter()
            .find(|i| Some(&i.id) == a.instance_id.as_ref())
            .unwrap();
        assert_eq!(
            Some(&nat.az),
            a.tags.get("natron:az"),
            "each AZ's EIP on its NAT"
        );
    }

    // Plan and apply again: nothing to change.
    let plan_args: Vec<&str> = std::iter::once("plan")
        .chain(apply_args[1..apply_args.len() - 2].iter().copied())
        .collect();
    let out = natron(&emu, &plan_args).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("nothing to change"), "{out}");
    let out = natron(&emu, &apply_args).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("nothing to change"), "{out}");
    agents.abort();

    // Status.
    let out = natron(
        &emu,
        &[
            "status", "--vpc", &v.id, "--group", "g1", "--output", "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    for zone in status["zones"].as_array().unwrap() {
        let nat = &zone["nats"][0];
        assert_eq!(nat["state"], "running");
        assert_eq!(nat["tables"][0]["role"], "home", "{status}");
        assert!(nat["elastic_ip"].is_string(), "{status}");
        assert!(zone["auto_scaling_group"].is_string());
    }
    assert_eq!(status["unserved"].as_array().unwrap().len(), 0);

    // The emulator ignores the launch template's network interface
    // settings and puts instances in the VPC's default group: check says
    // how to attach natron's group (apply does not change instances).
    let out = natron(&emu, &["check", "--vpc", &v.id, "--group", "g1"]).await;
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stdout.contains(&format!(
            "is not in natron's security group natron-g1 ({}): attach it (`aws ec2 modify-instance-attribute --instance-id",
            sg.id
        )),
        "{out}"
    );
    // Check passes once they are in natron's, as AWS launches them.
    into_natrons_group(&ec2, &inv, "g1").await;
    let out = natron(&emu, &["check", "--vpc", &v.id, "--group", "g1"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout.matches("ok ").count(), 2, "{out}");

    // Each breakage: its own finding and a non-zero exit; then repaired.
    let table_a = table_for(&ec2, &v.old_subnet).await;
    let table_b = table_for(&ec2, &new_subnet.id).await;
    let nat_a = instance_of(&table_a);
    let nat_b = instance_of(&table_b);
    let set_check = |on: bool, nat: String| {
        let ec2 = ec2.clone();
        async move {
            ec2.modify_instance_attribute()
                .instance_id(nat)
                .source_dest_check(
                    aws_sdk_ec2::types::AttributeBooleanValue::builder()
                        .value(on)
                        .build(),
                )
                .send()
                .await
                .unwrap();
        }
    };
    set_check(true, nat_a.clone()).await;
    expect_check(
        &emu,
        &v,
        1,
        &format!("NAT {nat_a} has source/destination check on"),
    )
    .await;
    set_check(false, nat_a.clone()).await;

    let rt_b = table_b.route_table_id().unwrap();
    ec2.delete_route()
        .route_table_id(rt_b)
        .destination_cidr_block("0.0.0.0/0")
        .send()
        .await
        .unwrap();
    expect_check(&emu, &v, 1, &format!("{rt_b} has no 0.0.0.0/0 route")).await;
    ec2.create_route()
        .route_table_id(rt_b)
        .destination_cidr_block("0.0.0.0/0")
        .instance_id(&nat_b)
        .send()
        .await
        .unwrap();

    let rt_a = table_a.route_table_id().unwrap();
    let replace = |nat: String| {
        let ec2 = ec2.clone();
        async move {
            ec2.replace_route()
                .route_table_id(rt_a)
                .destination_cidr_block("0.0.0.0/0")
                .instance_id(nat)
                .send()
                .await
                .unwrap();
        }
    };
    replace(nat_b.clone()).await;
    expect_check(
        &emu,
        &v,
        3,
        &format!("goes through NAT {nat_b} in {AZ_B}: cross-AZ"),
    )
    .await;
    replace(nat_a.clone()).await;

    let perm = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("-1")
        .ip_ranges(
            aws_sdk_ec2::types::IpRange::builder()
                .cidr_ip("10.0.10.0/24")
                .build(),
        )
        .build();
    ec2.revoke_security_group_ingress()
        .group_id(&sg.id)
        .ip_permissions(perm)
        .send()
        .await
        .unwrap();
    expect_check(&emu, &v, 1, "do not allow TCP 443 from").await;
    // apply repairs exactly that rule.
    let out = natron(&emu, &plan_args).await;
    assert!(out.stdout.contains("plan: 1 actions"), "{out}");
    assert!(
        out.stdout.contains("all traffic from 10.0.10.0/24"),
        "{out}"
    );
    let out = natron(&emu, &apply_args).await;
    assert_eq!(out.code, 0, "{out}");

    ec2.delete_route()
        .route_table_id(&v.public_rt)
        .destination_cidr_block("0.0.0.0/0")
        .send()
        .await
        .unwrap();
    expect_check(&emu, &v, 1, "has no 0.0.0.0/0 route to an internet gateway").await;
    ec2.create_route()
        .route_table_id(&v.public_rt)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&v.igw)
        .send()
        .await
        .unwrap();

    let acl = ec2
        .describe_network_acls()
        .filters(filter("vpc-id", &v.id))
        .filters(filter("default", "true"))
        .send()
        .await
        .unwrap()
        .network_acls()[0]
        .network_acl_id()
        .unwrap()
        .to_string();
    ec2.create_network_acl_entry()
        .network_acl_id(&acl)
        .rule_number(50)
        .protocol("6")
        .rule_action(aws_sdk_ec2::types::RuleAction::Deny)
        .egress(true)
        .cidr_block("0.0.0.0/0")
        .port_range(
            aws_sdk_ec2::types::PortRange::builder()
                .from(443)
                .to(443)
                .build(),
        )
        .send()
        .await
        .unwrap();
    expect_check(
        &emu,
        &v,
        1,
        "blocks requests out (TCP 443 to 198.51.100.1): rule 50 denies",
    )
    .await;
    ec2.delete_network_acl_entry()
        .network_acl_id(&acl)
        .rule_number(50)
        .egress(true)
        .send()
        .await
        .unwrap();

    let out = natron(&emu, &["check", "--vpc", &v.id, "--group", "g1"]).await;
    assert_eq!(out.code, 0, "repaired:\n{out}");

    // Destroy: nothing tagged is left; untagged resources are as they were.
    let out = natron(&emu, &["destroy", "--vpc", &v.id, "--group", "g1", "--yes"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(tagged(&emu, &v.id, "g1").await, Vec::<String>::new());
    let inv = cloud.inventory(&v.id, "g1").await.unwrap();
    assert!(inv.role.is_none() && inv.instance_profile.is_none() && inv.launch_template.is_none());
    assert!(inv.auto_scaling_groups.is_empty());
    assert_eq!(
        inv.explicit_route_table_of(&v.old_subnet)
            .map(|t| t.id.as_str()),
        Some(v.old_rt.as_str()),
        "the subnet in use got its own table back"
    );
    assert!(inv.subnet(&v.decoy_subnet).is_some());
    assert!(inv.security_group(&v.decoy_sg).is_some());
    assert!(inv.subnet(&v.old_subnet).is_some());
    assert!(inv.is_public(
        &inv.subnets
            .iter()
            .find(|s| s.az == AZ_A && s.cidr.to_string() == "10.0.0.0/24")
            .unwrap()
            .id
    ));
    let out = natron(&emu, &["destroy", "--vpc", &v.id, "--group", "g1", "--yes"]).await;
    assert_eq!(out.code, 0, "destroy again:\n{out}");
    assert!(out.stdout.contains("nothing to change"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_before_any_change() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let before = snapshot(&ec2, &emu).await;
    let overlap = format!("overlaps {}", v.old_subnet);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--vpc", "vpc-00000000000000000", "--private", &v.old_subnet],
            "vpc-00000000000000000",
        ),
        (
            vec![
                "--vpc",
                &v.id,
                "--az",
                "us-east-1c",
                "--private",
                "us-east-1c=10.0.30.0/24",
            ],
            "AZ us-east-1c: no public subnet",
        ),
        (
            vec!["--vpc", &v.id, "--private", "us-east-1a=10.0.10.128/25"],
            &overlap,
        ),
        (
            vec!["--vpc", &v.id, "--private", "subnet-0123456789abcdef0"],
            "private subnet subnet-0123456789abcdef0: not found",
        ),
        (
            vec![
                "--vpc",
                &v.id,
                "--private",
                &v.old_subnet,
                "--ami",
                "ami-00000000",
            ],
            "ami-00000000",
        ),
    ];
    // Each problem named, and all of them at once: a failed image lookup
    // hides none of the others.
    let mut cases: Vec<(Vec<&str>, Vec<&str>)> = cases
        .into_iter()
        .map(|(args, needle)| (args, vec![needle]))
        .collect();
    cases.extend([
        (
            vec![
                "--vpc",
                &v.id,
                "--private",
                &v.old_subnet,
                "--region",
                "xx-nowhere-9",
            ],
            vec!["region \"xx-nowhere-9\": not an AWS region"],
        ),
        (
            vec![
                "--vpc",
                &v.id,
                "--private",
                &v.old_subnet,
                "--instance-type",
                "x9.tiny",
            ],
            vec!["instance type x9.tiny: unknown in this region"],
        ),
        (
            vec![
                "--vpc",
                &v.id,
                "--private",
                "subnet-0123456789abcdef0",
                "--instance-type",
                "x9.tiny",
                "--ami-name",
                "nothing-like-this-*",
            ],
            vec![
                "instance type x9.tiny: unknown in this region",
                "image: ",
                "nothing-like-this-*",
                "private subnet subnet-0123456789abcdef0: not found",
            ],
        ),
        (
            vec![
                "--vpc",
                &v.id,
                "--private",
                &v.old_subnet,
                "--remove-private",
                &v.decoy_subnet,
            ],
            vec!["not served by group g1"],
        ),
    ]);
    for (args, needles) in cases {
        let mut full = vec!["apply", "--group", "g1"];
        full.extend(args);
        let out = natron(&emu, &full).await;
        assert_eq!(out.code, 2, "{full:?}:\n{out}");
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "{needle:?} missing for {full:?}:\n{out}"
            );
        }
        assert!(out.stderr.contains("nothing was changed"), "{out}");
        if full.contains(&"x9.tiny") && !full.contains(&"--ami-name") {
            // The image exists: a bad type is not reported as a missing image.
            assert!(!out.stderr.contains("image"), "{out}");
        }
        assert_eq!(
            snapshot(&ec2, &emu).await,
            before,
            "{full:?} changed something"
        );
    }
    // Contradictory flags are usage errors (exit 2) naming both flags.
    for (args, flags) in [
        (
            vec!["apply", "--ami", "ami-1", "--ami-name", "x-*"],
            ["--ami", "--ami-name"],
        ),
        (
            vec!["apply", "--no-wait", "--wait-timeout", "1m"],
            ["--no-wait", "--wait-timeout"],
        ),
        (
            vec!["plan", "--destroy", "--private", "subnet-1"],
            ["--destroy", "--private"],
        ),
        (
            vec!["plan", "--destroy", "--ami-name", "x-*"],
            ["--destroy", "--ami-name"],
        ),
    ] {
        let mut full = args.clone();
        full.extend(["--vpc", &v.id, "--group", "g1"]);
        let out = natron(&emu, &full).await;
        assert_eq!(out.code, 2, "{full:?}:\n{out}");
        assert!(out.stderr.contains("cannot be used with"), "{out}");
        for flag in flags {
            assert!(out.stderr.contains(flag), "{flag} missing:\n{out}");
        }
    }
    assert_eq!(snapshot(&ec2, &emu).await, before);
    // A resource with the group's name but not its tag is never adopted.
    ec2.create_security_group()
        .group_name("natron-g2")
        .description("someone else's")
        .vpc_id(&v.id)
        .send()
        .await
        .unwrap();
    let before = snapshot(&ec2, &emu).await;
    let out = natron(
        &emu,
        &[
            "apply",
            "--group",
            "g2",
            "--vpc",
            &v.id,
            "--private",
            &v.old_subnet,
        ],
    )
    .await;
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains("security group natron-g2") && out.stderr.contains("will not adopt"),
        "{out}"
    );
    assert_eq!(snapshot(&ec2, &emu).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_apply_resumes_cleanly() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let cloud = Aws::new(&emu.sdk_config().await);
    let request = natron::layout::Request {
        vpc_id: v.id.clone(),
        group: "g3".into(),
        azs: vec![],
        private: vec![
            v.old_subnet.parse().unwrap(),
            format!("{AZ_B}=10.0.11.0/24").parse().unwrap(),
        ],
        public_subnets: vec![],
        instance_type: "t4g.nano".into(),
        elastic_ips: false,
        cloudwatch_metrics: false,
        addresses: 1,
        alarms: false,
        remove: vec![],
        nat64: false,
    };
    let plan = |cloud: Aws| {
        let request = request.clone();
        async move {
            let inv = cloud
                .inventory(&request.vpc_id, &request.group)
                .await
                .unwrap();
            let image = cloud
                .find_image(&natron::cloud::ImageChoice::Newest {
                    name: "natron-*".into(),
                    owner: "self".into(),
                    architectures: vec!["arm64".into()],
                })
                .await
                .unwrap();
            let layout = natron::layout::resolve(
                &request,
                &inv,
                Ok(image),
                &natron::model::InstanceTypeInfo::running(&["arm64"]),
            )
            .unwrap();
            (
                layout.clone(),
                natron::plan::plan(&layout, &inv, "aws", 9100).unwrap(),
            )
        }
    };
    let (_, full) = plan(Aws::new(&emu.sdk_config().await)).await;
    // Stop after 7 actions, as a crash would.
    let mut seen = 0;
    let mut stop = |e: natron::apply::Event| {
        if let natron::apply::Event::Start { .. } = e {
            seen += 1;
            if seen > 7 {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    let err = Runner::new(&cloud, &v.id, "g3")
        .run(&full, &mut stop)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stopped after 7 of"), "{err}");

    // The next plan carries on with exactly the rest.
    let (_, rest) = plan(Aws::new(&emu.sdk_config().await)).await;
    assert_eq!(
        rest.actions.len(),
        full.actions.len() - 7,
        "{:#?}",
        rest.actions
    );
    let agents = fake_agents(ec2.clone(), "g3");
    let mut runner = Runner::new(&cloud, &v.id, "g3");
    let outcome = runner
        .run(&rest, &mut |_| ControlFlow::Continue(()))
        .await
        .unwrap();
    runner
        .wait(
            outcome.pending,
            &natron::apply::Wait {
                timeout: Duration::from_secs(60),
                poll: Duration::from_millis(200),
            },
            &mut |_| ControlFlow::Continue(()),
        )
        .await
        .unwrap();
    agents.abort();
    let (_, after) = plan(Aws::new(&emu.sdk_config().await)).await;
    assert!(after.actions.is_empty(), "{:#?}", after.actions);
    let inv = cloud.inventory(&v.id, "g3").await.unwrap();
    assert_eq!(
        inv.security_groups
            .iter()
            .filter(|g| g.name == "natron-g3")
            .count(),
        1
    );
    assert_eq!(
        inv.subnets
            .iter()
            .filter(|s| s.cidr.to_string() == "10.0.11.0/24")
            .count(),
        1
    );
    assert_eq!(inv.group_route_tables("g3").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_publish_uploads_the_non_zero_blocks_and_registers() {
    use natron::publish::BLOCK;
    let emu = Loopback::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("natron-publish-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("natron.raw");
    // 7 blocks and a bit: data in blocks 0, 2, 5 and the short tail (7).
    let mut data = vec![0u8; 7 * BLOCK + 4096];
    for (i, b) in [0usize, 2, 5].iter().enumerate() {
        data[b * BLOCK..(b + 1) * BLOCK].fill(i as u8 + 1);
    }
    data[7 * BLOCK + 100] = 0xab;
    std::fs::write(&raw, &data).unwrap();

    let out = natron(
        &emu,
        &[
            "--output",
            "json",
            "image",
            "publish",
            "--raw",
            raw.to_str().unwrap(),
            "--name",
            "natron-test-x86_64",
            "--arch",
            "x86_64",
            "--regions",
            "us-west-2",
            "--public",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    // stdout is one JSON document; progress goes to stderr.
    let published: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(published["blocks_uploaded"], 4, "{published}");
    assert_eq!(published["blocks_total"], 8);
    assert_eq!(published["register"]["boot_mode"], "uefi-preferred");
    let snapshot = published["snapshot_id"].as_str().unwrap();

    // The snapshot's blocks read back equal the image's non-zero blocks.
    let ebs = aws_sdk_ebs::Client::new(&emu.sdk_config().await);
    let listed = ebs
        .list_snapshot_blocks()
        .snapshot_id(snapshot)
        .send()
        .await
        .unwrap();
    let mut indices: Vec<i32> = listed
        .blocks()
        .iter()
        .filter_map(|b| b.block_index())
        .collect();
    indices.sort();
    assert_eq!(indices, [0, 2, 5, 7]);
    let mut padded = data.clone();
    padded.resize(8 * BLOCK, 0);
    for block in listed.blocks() {
        let index = block.block_index().unwrap() as usize;
        let got = ebs
            .get_snapshot_block()
            .snapshot_id(snapshot)
            .block_index(index as i32)
            .block_token(block.block_token().unwrap())
            .send()
            .await
            .unwrap()
            .block_data
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert!(
            got[..] == padded[index * BLOCK..(index + 1) * BLOCK],
            "block {index} differs"
        );
    }

    // Registered under its name, and copied.
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let images = ec2
        .describe_images()
        .owners("self")
        .filters(filter("name", "natron-test-x86_64"))
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = images
        .images()
        .iter()
        .filter_map(|i| i.image_id())
        .collect();
    assert!(
        ids.contains(&published["image_id"].as_str().unwrap()),
        "{ids:?}"
    );
    assert_eq!(published["copies"][0][0], "us-west-2");
    assert!(out.stderr.contains("is public"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
