//! A group built by the CloudFormation template `natron export` writes,
//! served by real agents in the lab (issue 14). The lab's private subnets
//! start on their own untagged route tables, as a user has them; the
//! template is deployed with CloudFormation on the lab's emulator (its
//! measured gaps filled, see deploy_stack.py), the lab's NATs stand in for
//! the stack's instances, their agents claim the stack's tables, and the
//! stack's `PendingAssociations` output moves each subnet to its table:
//! the client then reaches the internet through its AZ's NAT.

use std::time::Duration;

use natron::layout::{self, PrivateRequest, Request};
use natron::model::Image;
use natron_lab::emulator::{self, venv_tool};
use natron_lab::exec;
use natron_lab::lab::{Lab, LabSpec};
use natron_lab::vpc::Target;

#[test]
fn agents_serve_the_tables_of_an_exported_stack() {
    let lab = Lab::start(LabSpec::with_azs(2).with_user_tables()).expect("lab starts");
    let group = lab.spec.group.clone();
    let subnets: Vec<String> = lab.clients.iter().map(|c| c.subnet_id.clone()).collect();

    // The template for the lab's VPC, as `natron export` writes it.
    let template = {
        let (vpc, group, subnets) = (lab.vpc_id.clone(), group.clone(), subnets.clone());
        lab.ec2(|_| async move {
            let endpoint = format!("http://127.0.0.1:{}", emulator::PORT);
            let cloud = natron::cloud::Aws::new(&emulator::sdk_config(&endpoint).await);
            let inv = natron::cloud::Cloud::inventory(&cloud, &vpc, &group)
                .await
                .expect("inventory");
            assert!(natron::export::existing(&inv, &group).is_empty());
            let request = Request {
                vpc_id: vpc,
                group: group.clone(),
                azs: vec![],
                private: subnets.into_iter().map(PrivateRequest::Existing).collect(),
                public_subnets: vec![],
                instance_type: "t4g.nano".into(),
                elastic_ips: false,
                cloudwatch_metrics: false,
                addresses: 1,
                alarms: false,
                remove: vec![],
                nat64: false,
            };
            let image = Image {
                id: "ami-00000000000000000".into(),
                name: "natron-lab".into(),
                architecture: None,
            };
            let layout = layout::resolve(
                &request,
                &inv,
                Ok(image),
                &natron::model::InstanceTypeInfo::running(&["arm64"]),
            )
            .expect("the lab's VPC is a valid layout");
            natron::export::cloudformation(&layout, &inv, "aws", natron_lab::lab::AGENT_PORT)
        })
    };
    assert!(
        template
            .notes
            .iter()
            .filter(|n| n.contains("has its own route table"))
            .count()
            == 2,
        "{:?}",
        template.notes
    );

    // Deployed on the lab's emulator; the lab's NATs stand in for the
    // stack's instances.
    let (script, file) = (lab.dir.join("deploy_stack.py"), lab.dir.join("stack.json"));
    std::fs::write(&script, emulator::DEPLOY_STACK_PY).unwrap();
    std::fs::write(&file, template.template.to_string()).unwrap();
    let env: Vec<(String, String)> = [
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", emulator::PORT),
        ),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_DEFAULT_REGION", emulator::REGION.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (code, said) = exec::output_in_ns(
        &lab.ctl_ns,
        &venv_tool("python3").unwrap(),
        &[
            script.to_str().unwrap(),
            "natron-lab",
            file.to_str().unwrap(),
            "--without-instances",
        ],
        &env,
    );
    assert_eq!(code, Some(0), "the stack failed:\n{said}");
    let outputs: serde_json::Value = said
        .lines()
        .find_map(|l| l.strip_prefix("OUTPUTS "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("no outputs:\n{said}"));

    // The agents claim the stack's tables (one per subnet, tagged by the
    // stack), while the subnets still use their own.
    let agents: Vec<_> = (0..2)
        .map(|az| {
            lab.start_agent(az, lab.agent_config(), &[])
                .expect("agent starts")
        })
        .collect();
    let tables: Vec<String> = subnets
        .iter()
        .map(|s| {
            let key = natron::export::table_output(s);
            outputs[&key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} missing in {outputs}"))
                .to_string()
        })
        .collect();
    for (az, table) in tables.iter().enumerate() {
        let eni = lab.nats[az].interface_id.clone();
        lab.wait_for("the stack's table claimed", Duration::from_secs(30), || {
            matches!(lab.default_route_of(table), Some(Target::Interface(ref e)) if *e == eni)
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(agents[az])));
    }
    assert!(
        lab.client_get(0, "/whoami").is_err(),
        "the client had a way out before its subnet moved"
    );

    // The stack's PendingAssociations, carried out: each subnet moves to
    // natron's table and egresses through its AZ's NAT.
    let pending = outputs["PendingAssociations"].as_str().unwrap().to_string();
    let commands: Vec<(String, String)> = pending
        .split(" ; ")
        .map(|c| {
            let words: Vec<&str> = c.split_whitespace().collect();
            let after =
                |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1].to_string();
            (after("--association-id"), after("--route-table-id"))
        })
        .collect();
    assert_eq!(commands.len(), 2, "{pending}");
    lab.ec2(move |ec2| async move {
        for (association, table) in commands {
            ec2.replace_route_table_association()
                .association_id(association)
                .route_table_id(table)
                .send()
                .await
                .expect("the output's command");
        }
    });
    for (az, agent) in agents.iter().enumerate() {
        let eip = lab.spec.azs[az].eip;
        lab.wait_for(
            "egress through the AZ's NAT",
            Duration::from_secs(20),
            || lab.egress_via(az, eip),
        )
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(*agent)));
    }
}
