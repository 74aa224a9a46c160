//! The CLI where operators run it: scripts, pipelines, terminals. Against
//! the EC2 emulator: a later apply that names only some subnets keeps the
//! others served and `--remove-private` releases one as `destroy` would;
//! every command's `--output json` is one document; a closed pipe, a full
//! disk or Ctrl-C stop between actions and the next apply carries on;
//! `destroy` asks on a terminal and refuses without one.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use natron::cloud::{Aws, Cloud};
use natron::model::{Inventory, Peer};
use natron_lab::emulator::Loopback;
use tokio::io::{AsyncBufReadExt, BufReader};

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{out}"))
}

fn allows(inv: &Inventory, group: &str, cidr: &str) -> bool {
    let sg = inv
        .security_groups
        .iter()
        .find(|g| g.name == format!("natron-{group}"))
        .unwrap();
    sg.ingress
        .iter()
        .any(|p| p.peer == Peer::Cidr(cidr.parse().unwrap()))
}

/// Whether `subnet` uses one of the group's tables whose default route
/// is on a NAT: still has its way out through natron.
fn served(inv: &Inventory, group: &str, subnet: &str) -> bool {
    inv.route_table_of(subnet).is_some_and(|t| {
        t.tag("natron:group") == Some(group)
            && t.default_route()
                .and_then(|r| inv.instance_for(r))
                .is_some()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_applies_add_keep_and_remove() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let cloud = Aws::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let agents = fake_agents(ec2.clone(), "g4");
    let base = [
        "--vpc",
        v.id.as_str(),
        "--group",
        "g4",
        "--wait-timeout",
        "60s",
    ];
    let with = |extra: &[&str], command: &str| -> Vec<String> {
        std::iter::once(command)
            .chain(base.iter().copied())
            .chain(extra.iter().copied())
            .map(String::from)
            .collect()
    };
    let run = |args: Vec<String>| {
        let emu = &emu;
        async move { natron_with(emu, &args).await }
    };

    // Serve the subnet in use.
    let out = run(with(&["--private", &v.old_subnet], "apply")).await;
    assert_eq!(out.code, 0, "{out}");

    // Add a new subnet naming only it: the first one stays served, and
    // the plan says so before anything changes. As JSON: one document.
    let new = format!("{AZ_B}=10.0.11.0/24");
    let mut args = with(&["--private", &new], "apply");
    args.extend(["--output".into(), "json".into()]);
    let out = run(args).await;
    assert_eq!(out.code, 0, "{out}");
    let doc = json(&out);
    assert_eq!(doc["complete"], true, "{doc:#}");
    assert_eq!(doc["served"].as_object().unwrap().len(), 2, "{doc:#}");
    assert!(
        doc["plan"]["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains(&format!("{} (10.0.10.0/24) stays served", v.old_subnet))),
        "{doc:#}"
    );
    let actions = doc["plan"]["actions"].as_array().unwrap();
    assert!(
        actions.iter().all(|a| a["action"] != "revoke_ingress"),
        "{doc:#}"
    );
    assert_eq!(
        doc["carried_out"].as_array().unwrap().len(),
        actions
            .iter()
            .filter(|a| a["wait_for_claim"] != true)
            .count()
    );
    let inv = cloud.inventory(&v.id, "g4").await.unwrap();
    assert!(allows(&inv, "g4", "10.0.10.0/24") && allows(&inv, "g4", "10.0.11.0/24"));
    assert!(
        served(&inv, "g4", &v.old_subnet),
        "kept subnet lost its NAT"
    );

    // Stop serving the first one: the plan names the order, old table
    // first, natron's table, then the rule.
    let mut args = with(&["--remove-private", &v.old_subnet], "plan");
    args.retain(|a| a != "--wait-timeout" && a != "60s");
    args.extend(["--output".into(), "json".into()]);
    let out = run(args).await;
    assert_eq!(out.code, 0, "{out}");
    let doc = json(&out);
    let kinds: Vec<&str> = doc["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "restore_association",
            "delete_route_table",
            "revoke_ingress"
        ],
        "{doc:#}"
    );
    assert_eq!(doc["actions"][0]["to"], v.old_rt.as_str());
    assert_eq!(doc["actions"][0]["resource"], "route_table_association");
    let out = run(with(&["--remove-private", &v.old_subnet], "apply")).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("stops being served"), "{out}");
    let inv = cloud.inventory(&v.id, "g4").await.unwrap();
    assert_eq!(
        inv.explicit_route_table_of(&v.old_subnet)
            .map(|t| t.id.as_str()),
        Some(v.old_rt.as_str()),
        "the released subnet has its own table back"
    );
    assert!(!allows(&inv, "g4", "10.0.10.0/24"));
    assert!(allows(&inv, "g4", "10.0.11.0/24"));
    assert_eq!(inv.group_route_tables("g4").count(), 1);
    // Done: applying again, naming nothing, changes nothing.
    let mut args = with(&[], "plan");
    args.retain(|a| a != "--wait-timeout" && a != "60s");
    let out = run(args).await;
    assert!(out.stdout.contains("nothing to change"), "{out}");
    agents.abort();

    // status, check and destroy as JSON too.
    let removal_plan = || {
        let args: Vec<String> = [
            "plan",
            "--destroy",
            "--vpc",
            &v.id,
            "--group",
            "g4",
            "--output",
            "json",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let emu = &emu;
        async move { natron_with(emu, &args).await }
    };
    for command in ["status", "check"] {
        let out = natron(
            &emu,
            &[command, "--vpc", &v.id, "--group", "g4", "--output", "json"],
        )
        .await;
        json(&out);
    }
    let out = removal_plan().await;
    assert_eq!(out.code, 0, "{out}");
    let removal = json(&out);
    assert_eq!(removal["changes"], true);
    assert!(removal.get("layout").is_none());
    let out = natron(
        &emu,
        &[
            "destroy", "--vpc", &v.id, "--group", "g4", "--yes", "--output", "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    let doc = json(&out);
    assert_eq!(doc["complete"], true);
    assert_eq!(doc["plan"]["actions"], removal["actions"]);
    let out = removal_plan().await;
    assert_eq!(json(&out)["changes"], false, "{out}");
}

/// Spawns `natron apply` with piped output, reads lines until one
/// contains `until`, and returns the child (its stdout still open).
async fn apply_until(
    emu: &Loopback,
    args: &[&str],
    until: &str,
) -> (
    tokio::process::Child,
    BufReader<tokio::process::ChildStdout>,
) {
    let mut child = natron_command(emu, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(60), lines.read_line(&mut line))
            .await
            .expect("natron said nothing for 60 s")
            .unwrap();
        assert!(n > 0, "natron ended before {until:?}");
        if line.contains(until) {
            return (child, lines);
        }
    }
}

async fn finish(child: tokio::process::Child) -> Out {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("natron did not stop")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_a_full_disk_or_ctrl_c_stop_cleanly_and_apply_carries_on() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let new = format!("{AZ_B}=10.0.11.0/24");
    let apply = [
        "apply",
        "--vpc",
        v.id.as_str(),
        "--group",
        "g5",
        "--private",
        &v.old_subnet,
        "--private",
        &new,
        "--wait-timeout",
        "60s",
    ];

    // A full disk: the first line fails, so nothing at all is done.
    let before = snapshot(&ec2, &emu).await;
    // (spawn, not output(): tokio's output() pipes stdout whatever is set)
    let child = natron_command(&emu, &apply)
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child).await;
    let err = &out.stderr;
    assert_eq!(out.code, 1, "{err}");
    assert!(err.contains("stopped, the output failed"), "{err}");
    assert!(err.contains("0 of 16 actions carried out"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        snapshot(&ec2, &emu).await,
        before,
        "a full disk changed things"
    );

    // `natron apply | head -3`: the reader goes away part-way through.
    let (child, lines) = apply_until(&emu, &apply, "[3/16]").await;
    drop(lines);
    let out = finish(child).await;
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("stopped, the output failed"), "{out}");
    assert!(out.stderr.contains("Broken pipe"), "{out}");
    assert!(
        out.stderr.contains("`natron apply` again carries on"),
        "{out}"
    );
    assert!(!out.stderr.contains("panicked"), "{out}");

    // Ctrl-C while waiting for the NATs (no agents yet): a clean stop.
    let (child, _lines) = apply_until(&emu, &apply, "waiting (up to").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = finish(child).await;
    assert_eq!(out.code, 130, "{out}");
    assert!(
        out.stderr.contains("interrupted: stopped while waiting"),
        "{out}"
    );

    // The next apply carries on to the end.
    let agents = fake_agents(ec2.clone(), "g5");
    let out = natron(&emu, &apply).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("done: every private subnet of g5 is served"),
        "{out}"
    );
    agents.abort();
}

/// `script` gives natron a terminal, fed with `answer`.
async fn on_a_terminal(emu: &Loopback, args: &[&str], answer: &str) -> Out {
    let line = std::iter::once(env!("CARGO_BIN_EXE_natron"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = tokio::process::Command::new("/usr/bin/script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .envs(emu.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    // Let natron reach its question before the answer arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stdin.write_all(answer.as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    finish(child).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_asks_on_a_terminal_and_refuses_without_one() {
    let emu = Loopback::start().await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk_config().await);
    let v = vpc(&ec2).await;
    let out = natron(
        &emu,
        &[
            "apply",
            "--vpc",
            &v.id,
            "--group",
            "g6",
            "--private",
            "us-east-1b=10.0.11.0/24",
            "--no-wait",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    let destroy = ["destroy", "--vpc", v.id.as_str(), "--group", "g6"];
    let before = snapshot(&ec2, &emu).await;

    // No terminal, no --yes: the plan, then a refusal; nothing changed.
    let out = natron(&emu, &destroy).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stdout.contains("delete auto scaling group natron-g6-"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("not confirmed (no terminal to ask on); give --yes"),
        "{out}"
    );
    assert_eq!(snapshot(&ec2, &emu).await, before);

    // On a terminal, a wrong answer refuses; the group's name goes on.
    let out = on_a_terminal(&emu, &destroy, "yes\n").await;
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stdout.contains("Type the group's name to go on"),
        "{out}"
    );
    assert_eq!(snapshot(&ec2, &emu).await, before);
    let out = on_a_terminal(&emu, &destroy, "g6\n").await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains("done: nothing tagged natron:group=g6 is left"),
        "{out}"
    );
    assert_eq!(tagged(&emu, &v.id, "g6").await, Vec::<String>::new());
}
