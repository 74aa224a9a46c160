//! What the CLI tests against the EC2 emulator share: a VPC as users
//! have it, the `natron` binary run as a user runs it, the agents' part
//! played by a task, and summaries of the VPC to compare.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use natron::cloud::{Aws, Cloud};
use natron_lab::emulator::Loopback;

pub const AZ_A: &str = "us-east-1a";
pub const AZ_B: &str = "us-east-1b";

pub struct Vpc {
    pub id: String,
    pub igw: String,
    pub public_rt: String,
    /// A private subnet in use, with its own (untagged) route table.
    pub old_subnet: String,
    pub old_rt: String,
    pub decoy_sg: String,
    pub decoy_subnet: String,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `natron apply` serving the VPC's subnet in use and a new one in AZ b
/// (waiting up to a minute), with `extra` flags.
pub fn apply_args(v: &Vpc, group: &str, extra: &[&str]) -> Vec<String> {
    let new_private = format!("{AZ_B}=10.0.11.0/24");
    let fixed = [
        "apply",
        "--vpc",
        &v.id,
        "--group",
        group,
        "--private",
        &v.old_subnet,
        "--private",
        &new_private,
        "--wait-timeout",
        "60s",
    ];
    fixed.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// Asserts that the group's launch template (its latest version) carries
/// `section` in the agents' user data.
pub fn assert_user_data(inv: &natron::model::Inventory, section: &str) {
    let launch = inv
        .launch_template
        .as_ref()
        .and_then(|t| t.latest.as_ref())
        .expect("the group's launch template, read back");
    assert!(
        launch.user_data.contains(section),
        "{section:?} missing from:\n{}",
        launch.user_data
    );
}

/// The `natron` binary as a user runs it against the emulator: a clean
/// environment, its own HOME.
pub fn natron_command(emu: &Loopback, args: &[&str]) -> tokio::process::Command {
    let home = std::env::temp_dir().join(format!("natron-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_natron"));
    cmd.args(args)
        .env_clear()
        .env("HOME", &home)
        .envs(emu.env())
        .kill_on_drop(true);
    cmd
}

/// `natron` with arguments built at run time.
pub async fn natron_with(emu: &Loopback, args: &[String]) -> Out {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    natron(emu, &args).await
}

pub async fn natron(emu: &Loopback, args: &[&str]) -> Out {
    let out = natron_command(emu, args).output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Puts the group's NATs in natron's security group, as AWS launches them
/// from the launch template (the emulator puts them in the VPC's default
/// group, whatever the template says).
pub async fn into_natrons_group(
    ec2: &aws_sdk_ec2::Client,
    inv: &natron::model::Inventory,
    group: &str,
) {
    let sg = inv
        .security_groups
        .iter()
        .find(|g| g.name == format!("natron-{group}"))
        .expect("natron's security group");
    for nat in &inv.instances {
        ec2.modify_instance_attribute()
            .instance_id(&nat.id)
            .groups(&sg.id)
            .send()
            .await
            .unwrap();
    }
}

pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// A VPC as a user has it before natron: public subnets in two AZs behind
/// an internet gateway, a private subnet in use with its own route table,
/// and unrelated resources that must survive everything.
pub async fn vpc(ec2: &aws_sdk_ec2::Client) -> Vpc {
    let id = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let igw = ec2
        .create_internet_gateway()
        .send()
        .await
        .unwrap()
        .internet_gateway()
        .unwrap()
        .internet_gateway_id()
        .unwrap()
        .to_string();
    ec2.attach_internet_gateway()
        .internet_gateway_id(&igw)
        .vpc_id(&id)
        .send()
        .await
        .unwrap();
    let subnet = |az: &'static str, cidr: &'static str| {
        let id = id.clone();
        async move {
            ec2.create_subnet()
                .vpc_id(id)
                .availability_zone(az)
                .cidr_block(cidr)
                .send()
                .await
                .unwrap()
                .subnet()
                .unwrap()
                .subnet_id()
                .unwrap()
                .to_string()
        }
    };
    let table = || async {
        ec2.create_route_table()
            .vpc_id(&id)
            .send()
            .await
            .unwrap()
            .route_table()
            .unwrap()
            .route_table_id()
            .unwrap()
            .to_string()
    };
    let public_rt = table().await;
    ec2.create_route()
        .route_table_id(&public_rt)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&igw)
        .send()
        .await
        .unwrap();
    for (az, cidr) in [(AZ_A, "10.0.0.0/24"), (AZ_B, "10.0.1.0/24")] {
        let s = subnet(az, cidr).await;
        // AWS gives the NATs a public address through the launch
        // template; the emulator only through the subnet's setting.
        ec2.modify_subnet_attribute()
            .subnet_id(&s)
            .map_public_ip_on_launch(
                aws_sdk_ec2::types::AttributeBooleanValue::builder()
                    .value(true)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        ec2.associate_route_table()
            .route_table_id(&public_rt)
            .subnet_id(&s)
            .send()
            .await
            .unwrap();
    }
    let old_subnet = subnet(AZ_A, "10.0.10.0/24").await;
    let old_rt = table().await;
    ec2.associate_route_table()
        .route_table_id(&old_rt)
        .subnet_id(&old_subnet)
        .send()
        .await
        .unwrap();
    let decoy_subnet = subnet(AZ_B, "10.0.20.0/24").await;
    let decoy_sg = ec2
        .create_security_group()
        .group_name("natron-decoy")
        .description("not natron's")
        .vpc_id(&id)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    ec2.register_image()
        .name("natron-test-1")
        .architecture(aws_sdk_ec2::types::ArchitectureValues::Arm64)
        .root_device_name("/dev/xvda")
        .send()
        .await
        .unwrap();
    Vpc {
        id,
        igw,
        public_rt,
        old_subnet,
        old_rt,
        decoy_sg,
        decoy_subnet,
    }
}

/// Plays the agents: each group route table without a default route gets
/// one to the running NAT of its AZ, whose source/dest check goes off; a
/// table tagged `natron:nat64` gets `64:ff9b::/96` to the NAT its default
/// route names.
pub fn fake_agents(ec2: aws_sdk_ec2::Client, group: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let tables = ec2
                .describe_route_tables()
                .filters(filter("tag:natron:group", group))
                .send()
                .await
                .unwrap();
            for t in tables.route_tables() {
                follow_nat64(&ec2, t).await;
                let has_default = t
                    .routes()
                    .iter()
                    .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0"));
                let az = t
                    .tags()
                    .iter()
                    .find(|x| x.key() == Some("natron:az"))
                    .and_then(|x| x.value());
                let (false, Some(az)) = (has_default, az) else {
                    continue;
                };
                let nat = ec2
                    .describe_instances()
                    .filters(filter("tag:natron:group", group))
                    .filters(filter("tag:natron:az", az))
                    .filters(filter("instance-state-name", "running"))
                    .send()
                    .await
                    .unwrap();
                let Some(nat) = nat
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .find_map(|i| i.instance_id())
                else {
                    continue;
                };
                ec2.modify_instance_attribute()
                    .instance_id(nat)
                    .source_dest_check(
                        aws_sdk_ec2::types::AttributeBooleanValue::builder()
                            .value(false)
                            .build(),
                    )
                    .send()
                    .await
                    .unwrap();
                ec2.create_route()
                    .route_table_id(t.route_table_id().unwrap())
                    .destination_cidr_block("0.0.0.0/0")
                    .instance_id(nat)
                    .send()
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The agents' NAT64 rule: a table tagged `natron:nat64` whose default
/// route names a NAT gets `64:ff9b::/96` to it.
async fn follow_nat64(ec2: &aws_sdk_ec2::Client, t: &aws_sdk_ec2::types::RouteTable) {
    let tagged = t
        .tags()
        .iter()
        .any(|x| x.key() == Some("natron:nat64") && x.value() != Some("false"));
    let has = t
        .routes()
        .iter()
        .any(|r| r.destination_ipv6_cidr_block() == Some("64:ff9b::/96"));
    let nat = t
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .and_then(|r| r.instance_id());
    if let (true, false, Some(nat)) = (tagged, has, nat) {
        ec2.create_route()
            .route_table_id(t.route_table_id().unwrap())
            .destination_ipv6_cidr_block("64:ff9b::/96")
            .instance_id(nat)
            .send()
            .await
            .unwrap();
    }
}

/// Ids of everything in the account tagged natron:group=`group` that
/// still exists (terminated instances excluded), by kind.
pub async fn tagged(emu: &Loopback, vpc: &str, group: &str) -> Vec<String> {
    let cloud = Aws::new(&emu.sdk_config().await);
    let inv = cloud.inventory(vpc, group).await.unwrap();
    natron::plan::destroy(&inv, group)
        .actions
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A summary of the VPC that bad input must leave exactly as it was.
pub async fn snapshot(ec2: &aws_sdk_ec2::Client, emu: &Loopback) -> Vec<String> {
    let mut out = BTreeSet::new();
    for s in ec2.describe_subnets().send().await.unwrap().subnets() {
        out.insert(format!("subnet {}", s.subnet_id().unwrap()));
    }
    for t in ec2
        .describe_route_tables()
        .send()
        .await
        .unwrap()
        .route_tables()
    {
        out.insert(format!(
            "{:?}",
            t.associations()
                .iter()
                .map(|a| a.subnet_id())
                .collect::<Vec<_>>()
        ));
        out.insert(format!(
            "rtb {} {:?}",
            t.route_table_id().unwrap(),
            t.routes().len()
        ));
    }
    for g in ec2
        .describe_security_groups()
        .send()
        .await
        .unwrap()
        .security_groups()
    {
        out.insert(format!(
            "sg {} {}",
            g.group_id().unwrap(),
            g.ip_permissions().len()
        ));
    }
    for t in ec2
        .describe_launch_templates()
        .send()
        .await
        .unwrap()
        .launch_templates()
    {
        out.insert(format!("lt {}", t.launch_template_id().unwrap()));
    }
    let iam = aws_sdk_iam::Client::new(&emu.sdk_config().await);
    for r in iam.list_roles().send().await.unwrap().roles() {
        out.insert(format!("role {}", r.role_name()));
    }
    let asg = aws_sdk_autoscaling::Client::new(&emu.sdk_config().await);
    for g in asg
        .describe_auto_scaling_groups()
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()
    {
        out.insert(format!("asg {}", g.auto_scaling_group_name().unwrap()));
    }
    out.into_iter().collect()
}

/// The group's route table made for `subnet`.
pub async fn table_for(ec2: &aws_sdk_ec2::Client, subnet: &str) -> aws_sdk_ec2::types::RouteTable {
    ec2.describe_route_tables()
        .filters(filter("tag:natron:subnet", subnet))
        .send()
        .await
        .unwrap()
        .route_tables()[0]
        .clone()
}

pub fn instance_of(table: &aws_sdk_ec2::types::RouteTable) -> String {
    table
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .and_then(|r| r.instance_id())
        .unwrap()
        .to_string()
}

pub async fn expect_check(emu: &Loopback, v: &Vpc, code: i32, needle: &str) {
    let out = natron(emu, &["check", "--vpc", &v.id, "--group", "g1"]).await;
    assert_eq!(out.code, code, "check after a breakage ({needle}):\n{out}");
    assert!(out.stdout.contains(needle), "{needle:?} missing:\n{out}");
    assert!(out.stdout.contains("fix: "), "{out}");
}

/// cfn-lint (pinned in the emulator's venv) on a template file: its error
/// findings, if it has any (warnings and infos pass).
pub fn cfn_lint_errors(file: &std::path::Path) -> Option<String> {
    let lint = std::process::Command::new(natron_lab::emulator::venv_tool("cfn-lint").unwrap())
        .args(["--format", "parseable", "--regions", "us-east-1", "--"])
        .arg(file)
        .output()
        .unwrap();
    let findings = String::from_utf8_lossy(&lint.stdout).to_string();
    eprintln!("cfn-lint: exit {:?}\n{findings}", lint.status.code());
    // cfn-lint's exit code is a bit mask: 2 errors, 4 warnings, 8 infos.
    (lint.status.code().unwrap_or(-1) & 2 != 0).then_some(findings)
}
