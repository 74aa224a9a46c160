//! `natron export --format cloudformation` against the EC2 emulator: the
//! template passes cfn-lint (pinned in the emulator's venv) with no
//! error; deployed with CloudFormation on the emulator it builds the same
//! resources as `apply` does in a twin VPC (inventories compared); once
//! the NATs claim its tables, `status` and `check` work on the stack's
//! group. The emulator's gaps are stated where they are met.

mod common;

use std::collections::BTreeMap;

use common::*;
use natron::cloud::{Aws, Cloud};
use natron::model::Inventory;
use natron_lab::emulator::{venv_tool, Loopback};

/// Deploys `template` as stack `name` with boto3 (the emulator's venv),
/// waits for the outcome and fills the emulator's CloudFormation gaps
/// (natron_lab's deploy_stack.py says which).
async fn deploy(emu: &Loopback, name: &str, template: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("natron-stack-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (script, file) = (dir.join("deploy_stack.py"), dir.join("template.json"));
    std::fs::write(&script, natron_lab::emulator::DEPLOY_STACK_PY).unwrap();
    std::fs::write(&file, template).unwrap();
    let out = tokio::process::Command::new(venv_tool("python3").unwrap())
        .arg(&script)
        .arg(name)
        .arg(&file)
        .env_clear()
        .envs(emu.env())
        .env("AWS_DEFAULT_REGION", natron_lab::emulator::REGION)
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        eprintln!("{said}");
        Ok(())
    } else {
        Err(format!(
            "{said}\n--- the emulator's log\n{}",
            emu.log_tail()
        ))
    }
}

/// Tags without the `aws:cloudformation:*` ones CloudFormation adds to
/// every resource of a stack (on AWS as on the emulator).
fn own(tags: &natron::model::Tags) -> String {
    let own: BTreeMap<&String, &String> = tags
        .iter()
        .filter(|(k, _)| !k.starts_with("aws:cloudformation:"))
        .collect();
    format!("{own:?}")
}

/// The group's resources as names, tags and settings, with the ids of one
/// emulator replaced by what they stand for, so two VPCs compare.
fn summary(inv: &Inventory, group: &str) -> BTreeMap<String, String> {
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for s in &inv.subnets {
        ids.insert(s.id.clone(), format!("<subnet {} {}>", s.az, s.cidr));
    }
    for g in &inv.security_groups {
        ids.insert(g.id.clone(), format!("<sg {}>", g.name));
    }
    for t in &inv.route_tables {
        let name = match t.tag("natron:subnet") {
            Some(subnet) => format!("natron's for {}", ids.get(subnet).map_or(subnet, |s| s)),
            None if t.main => "main".into(),
            None => format!("{} routes", t.routes.len()),
        };
        ids.insert(t.id.clone(), format!("<rtb {name}>"));
    }
    if let Some(t) = &inv.launch_template {
        ids.insert(t.id.clone(), "<launch template>".into());
    }
    let norm = |s: String| {
        let mut s = s;
        // Longest first, so no id is a prefix of a replaced one.
        let mut keys: Vec<&String> = ids.keys().collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
        for k in keys {
            s = s.replace(k.as_str(), &ids[k]);
        }
        s
    };
    let mut m = BTreeMap::new();
    for s in inv
        .subnets
        .iter()
        .filter(|s| s.tags.get("natron:group").map(String::as_str) == Some(group))
    {
        m.insert(norm(format!("subnet {}", s.id)), norm(own(&s.tags)));
    }
    for g in inv
        .security_groups
        .iter()
        .filter(|g| g.name == format!("natron-{group}"))
    {
        let mut ingress: Vec<String> = g.ingress.iter().map(|p| norm(format!("{p:?}"))).collect();
        ingress.sort();
        m.insert(
            "security group".into(),
            norm(format!(
                "{} in {ingress:?} out {:?}",
                own(&g.tags),
                g.egress
            )),
        );
    }
    if let Some(r) = &inv.role {
        m.insert(
            format!("role {}", r.name),
            format!("{} {:?}", own(&r.tags), r.policies),
        );
    }
    if let Some(p) = &inv.instance_profile {
        m.insert(
            format!("instance profile {}", p.name),
            format!("{:?}", p.roles),
        );
    }
    if let Some(t) = &inv.launch_template {
        let mut spec = t.latest.clone();
        if let Some(s) = spec.as_mut() {
            s.image_id = "<image>".into();
        }
        m.insert(
            format!("launch template {}", t.name),
            norm(format!("{} {spec:?}", own(&t.tags))),
        );
    }
    for g in &inv.auto_scaling_groups {
        m.insert(
            format!("asg {}", g.name),
            norm(format!(
                "{} {}/{}/{} in {:?} template {:?}",
                own(&g.tags),
                g.min_size,
                g.max_size,
                g.desired,
                g.subnet_ids,
                g.launch_template_id
            )),
        );
    }
    for t in inv.group_route_tables(group) {
        let mut assoc: Vec<String> = t
            .associations
            .iter()
            .filter_map(|a| a.subnet_id.clone())
            .map(&norm)
            .collect();
        assoc.sort();
        m.insert(
            norm(format!("route table {}", t.id)),
            norm(format!("{} for {assoc:?}", own(&t.tags))),
        );
    }
    let mut eips: Vec<String> = inv.addresses.iter().map(|a| own(&a.tags)).collect();
    eips.sort();
    m.insert("elastic ips".into(), format!("{eips:?}"));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exported_stack_builds_what_apply_builds() {
    // Twin VPCs: one built by apply, one by the stack.
    let applied = Loopback::start().await.unwrap();
    let stacked = Loopback::start().await.unwrap();
    let ec2_a = aws_sdk_ec2::Client::new(&applied.sdk_config().await);
    let ec2_s = aws_sdk_ec2::Client::new(&stacked.sdk_config().await);
    let (va, vs) = (vpc(&ec2_a).await, vpc(&ec2_s).await);
    let new = format!("{AZ_B}=10.0.11.0/24");
    let topology = |v: &Vpc| -> Vec<String> {
        [
            "--vpc",
            &v.id,
            "--group",
            "g7",
            "--private",
            &v.decoy_subnet,
            "--private",
            &new,
            "--elastic-ip",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let export = || {
        let mut args = vec![
            "export".to_string(),
            "--format".into(),
            "cloudformation".into(),
        ];
        args.extend(topology(&vs));
        let stacked = &stacked;
        async move { natron_with(stacked, &args).await }
    };

    // The template, linted.
    let out = export().await;
    assert_eq!(out.code, 0, "{out}");
    let template: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let dir = std::env::temp_dir().join(format!("natron-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("natron-g7.json");
    std::fs::write(&file, &out.stdout).unwrap();
    if let Some(errors) = cfn_lint_errors(&file) {
        panic!("cfn-lint errors:\n{errors}");
    }

    // Deployed with CloudFormation, then the agents' part played.
    if let Err(e) = deploy(&stacked, "natron-g7", &out.stdout).await {
        panic!("the stack failed:\n{e}");
    }
    let agents_s = fake_agents(ec2_s.clone(), "g7");
    // The same topology through apply.
    let agents_a = fake_agents(ec2_a.clone(), "g7");
    let mut args = vec!["apply".to_string()];
    args.extend(topology(&va));
    args.extend(["--wait-timeout".into(), "60s".into()]);
    let out = natron_with(&applied, &args).await;
    assert_eq!(out.code, 0, "{out}");
    // Let the played agents claim the stack's tables.
    let cloud_s = Aws::new(&stacked.sdk_config().await);
    for _ in 0..100 {
        let inv = cloud_s.inventory(&vs.id, "g7").await.unwrap();
        if natron::apply::served_tables(&inv, "g7").len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    agents_s.abort();
    agents_a.abort();

    let inv_a = Aws::new(&applied.sdk_config().await)
        .inventory(&va.id, "g7")
        .await
        .unwrap();
    let inv_s = cloud_s.inventory(&vs.id, "g7").await.unwrap();
    let (a, s) = (summary(&inv_a, "g7"), summary(&inv_s, "g7"));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(s.keys()).collect();
    let mut differences = Vec::new();
    for k in keys {
        if a.get(k) != s.get(k) {
            differences.push(format!(
                "{k}\n  apply: {:?}\n  stack: {:?}",
                a.get(k),
                s.get(k)
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(template["Outputs"].get("PendingAssociations").is_none());

    // The stack's group is the stack's: export, plan, apply and destroy refuse.
    let out = export().await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("group g7 already exists in"), "{out}");
    for command in ["plan", "apply", "destroy"] {
        let mut args = vec![command.to_string()];
        args.extend(topology(&vs));
        if command == "destroy" {
            args.truncate(5);
            args.push("--yes".into());
        }
        let out = natron_with(&stacked, &args).await;
        assert_eq!(out.code, 2, "{out}");
        assert!(
            out.stderr
                .contains("is managed by CloudFormation stack natron-g7"),
            "{out}"
        );
    }

    // status and check on the stack's group. (The emulator launches
    // instances in the VPC's default group, whatever the launch template
    // says; AWS puts them in natron's, as the test does here.)
    let out = natron(
        &stacked,
        &[
            "status", "--vpc", &vs.id, "--group", "g7", "--output", "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        status["unserved"].as_array().unwrap().len(),
        0,
        "{status:#}"
    );
    into_natrons_group(&ec2_s, &inv_s, "g7").await;
    let out = natron(&stacked, &["check", "--vpc", &vs.id, "--group", "g7"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout.matches("ok ").count(), 2, "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
