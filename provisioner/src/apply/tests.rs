//! The runner over a fake cloud: ids passed on, deferred associations,
//! interruption, the wait for the agents' claims.

use std::sync::Mutex;

use async_trait::async_trait;

use super::*;
use crate::cloud::ImageChoice;
use crate::model::{Address, Image, Instance, InstanceState, Permission, Route, RouteTable, Tags};
use crate::plan::PlannedLaunch;

/// A cloud in memory: `execute` records what it is asked and answers
/// "kind-N" ids for what it creates; `inventory` returns what the test put.
#[derive(Default)]
struct FakeCloud {
    inventory: Mutex<Inventory>,
    executed: Mutex<Vec<Action>>,
    associated: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl Cloud for FakeCloud {
    async fn inventory(&self, _vpc: &str, _group: &str) -> Result<Inventory, CloudError> {
        Ok(self.inventory.lock().unwrap().clone())
    }
    async fn find_image(&self, _choice: &ImageChoice) -> Result<Image, CloudError> {
        unreachable!("the runner never looks for images")
    }
    async fn instance_type(&self, _t: &str) -> Result<crate::model::InstanceTypeInfo, CloudError> {
        unreachable!("the runner never looks at instance types")
    }
    async fn execute(
        &self,
        action: &Action,
        _vpc: &str,
        _group: &str,
    ) -> Result<Option<String>, CloudError> {
        let mut executed = self.executed.lock().unwrap();
        executed.push(action.clone());
        let n = executed.len();
        Ok(match action {
            Action::CreateSecurityGroup { .. } => Some(format!("sg-{n}")),
            Action::CreateLaunchTemplate { .. } => Some(format!("lt-{n}")),
            Action::CreateSubnet { .. } => Some(format!("subnet-{n}")),
            Action::CreateRouteTable { .. } => Some(format!("rtb-{n}")),
            _ => None,
        })
    }
    async fn associate_address(&self, allocation: &str, instance: &str) -> Result<(), CloudError> {
        self.associated
            .lock()
            .unwrap()
            .push((allocation.into(), instance.into()));
        Ok(())
    }
}

fn launch(sg: Ref) -> PlannedLaunch {
    PlannedLaunch {
        image_id: "ami-1".into(),
        instance_type: "t4g.nano".into(),
        instance_profile: "natron-g".into(),
        security_group: sg,
        user_data: "group = \"g\"\n".into(),
    }
}

fn new_sg() -> Ref {
    Ref::New(SG_KEY.into())
}

fn plan(actions: Vec<Action>) -> Plan {
    Plan {
        actions,
        notes: vec![],
    }
}

fn keep_going(_: Event) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[tokio::test]
async fn new_ids_are_passed_to_the_actions_that_need_them() {
    let cloud = FakeCloud::default();
    let health = Permission {
        protocol: "tcp".into(),
        from_port: Some(9100),
        to_port: Some(9100),
        peer: Peer::Group(new_sg()),
    };
    let p = plan(vec![
        Action::CreateSecurityGroup {
            name: "natron-g".into(),
        },
        Action::AuthorizeIngress {
            group: new_sg(),
            rules: vec![health],
        },
        Action::CreateLaunchTemplate {
            name: "natron-g".into(),
            launch: launch(new_sg()),
        },
        Action::CreateAutoScalingGroup {
            name: "natron-g-a".into(),
            az: "az-a".into(),
            subnet: "subnet-pa".into(),
            template: Ref::New(TEMPLATE_KEY.into()),
        },
    ]);
    let mut runner = Runner::new(&cloud, "vpc-1", "g");
    let outcome = runner.run(&p, &mut keep_going).await.unwrap();
    assert!(outcome.pending.is_empty());
    let done = cloud.executed.lock().unwrap().clone();
    let sg = Ref::Id("sg-1".into());
    match &done[1] {
        Action::AuthorizeIngress { group, rules } => {
            assert_eq!(group, &sg);
            assert_eq!(
                rules[0].peer,
                Peer::Group(sg.clone()),
                "the rule names the new group"
            );
        }
        other => panic!("{other:?}"),
    }
    match &done[2] {
        Action::CreateLaunchTemplate { launch, .. } => assert_eq!(launch.security_group, sg),
        other => panic!("{other:?}"),
    }
    match &done[3] {
        Action::CreateAutoScalingGroup { template, .. } => {
            assert_eq!(template, &Ref::Id("lt-3".into()))
        }
        other => panic!("{other:?}"),
    }
}

fn associate(table: Ref, in_use: bool) -> Action {
    Action::AssociateRouteTable {
        table,
        subnet: Ref::Id("subnet-xa".into()),
        replace_association: None,
        wait_for_claim: in_use,
    }
}

#[tokio::test]
async fn associations_of_subnets_in_use_wait_and_a_stop_says_how_far_it_got() {
    let cloud = FakeCloud::default();
    let p = plan(vec![
        Action::AllocateAddress {
            az: "az-a".into(),
            slot: None,
        },
        associate(Ref::Id("rtb-n".into()), true),
        Action::AllocateAddress {
            az: "az-b".into(),
            slot: None,
        },
    ]);
    let mut runner = Runner::new(&cloud, "vpc-1", "g");
    let outcome = runner.run(&p, &mut keep_going).await.unwrap();
    assert_eq!(
        outcome.pending,
        vec![associate(Ref::Id("rtb-n".into()), true)]
    );
    assert_eq!(
        cloud.executed.lock().unwrap().len(),
        2,
        "the association waits"
    );

    let cloud = FakeCloud::default();
    let mut runner = Runner::new(&cloud, "vpc-1", "g");
    let mut seen = 0;
    let mut stop_at_second = |e: Event| {
        if matches!(e, Event::Start { .. }) {
            seen += 1;
        }
        if seen == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    match runner.run(&p, &mut stop_at_second).await {
        Err(RunError::Interrupted { done: 2, total: 3 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cloud.executed.lock().unwrap().len(),
        1,
        "nothing after the stop"
    );
}

fn tagged(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The group's table of az-a (routed to `route_to` if set), its NAT
/// running, and the AZ's Elastic IP free.
fn served_world(route_to: Option<&str>) -> Inventory {
    Inventory {
        route_tables: vec![RouteTable {
            id: "rtb-n".into(),
            tags: tagged(&[
                (GROUP_TAG, "g"),
                (AZ_TAG, "az-a"),
                (SUBNET_TAG, "subnet-xa"),
            ]),
            routes: route_to
                .map(|eni| Route {
                    destination: "0.0.0.0/0".into(),
                    interface_id: Some(eni.into()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }],
        instances: vec![Instance {
            id: "i-a".into(),
            az: "az-a".into(),
            subnet_id: Some("subnet-pa".into()),
            state: InstanceState::Running,
            private_ip: None,
            public_ip: None,
            interface_ids: vec!["eni-a".into()],
            source_dest_check: Some(false),
            security_groups: vec![],
            tags: tagged(&[(GROUP_TAG, "g")]),
        }],
        addresses: vec![Address {
            allocation_id: "eipalloc-a".into(),
            public_ip: None,
            instance_id: None,
            association_id: None,
            tags: tagged(&[(GROUP_TAG, "g"), (AZ_TAG, "az-a")]),
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn the_wait_associates_once_the_nat_serves_the_table() {
    let cloud = FakeCloud::default();
    *cloud.inventory.lock().unwrap() = served_world(Some("eni-a"));
    let mut runner = Runner::new(&cloud, "vpc-1", "g");
    let wait = Wait {
        timeout: Duration::from_secs(5),
        poll: Duration::from_millis(10),
    };
    runner
        .wait(
            vec![associate(Ref::Id("rtb-n".into()), true)],
            &wait,
            &mut keep_going,
        )
        .await
        .unwrap();
    assert_eq!(
        cloud.executed.lock().unwrap().clone(),
        vec![associate(Ref::Id("rtb-n".into()), true)]
    );
    assert_eq!(
        cloud.associated.lock().unwrap().clone(),
        vec![("eipalloc-a".to_string(), "i-a".to_string())],
        "the AZ's address goes to its running NAT"
    );
}

#[tokio::test]
async fn an_unclaimed_table_times_out_saying_why() {
    let cloud = FakeCloud::default();
    *cloud.inventory.lock().unwrap() = served_world(None);
    let mut runner = Runner::new(&cloud, "vpc-1", "g");
    let wait = Wait {
        timeout: Duration::from_millis(200),
        poll: Duration::from_millis(20),
    };
    match runner
        .wait(
            vec![associate(Ref::Id("rtb-n".into()), true)],
            &wait,
            &mut keep_going,
        )
        .await
    {
        Err(RunError::Timeout { missing, .. }) => {
            assert_eq!(missing.len(), 1);
            assert!(
                missing[0].contains("rtb-n") && missing[0].contains("has not claimed it"),
                "{missing:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        cloud.executed.lock().unwrap().is_empty(),
        "a subnet in use never moves to a table without a way out"
    );
}

#[tokio::test]
async fn dns64_waits_until_the_subnet_is_on_its_table_and_the_nat64_route_is_served() {
    let cloud = FakeCloud::default();
    // Served (0.0.0.0/0 on the NAT), the subnet associated, but no NAT64
    // route yet.
    let mut world = served_world(Some("eni-a"));
    world.route_tables[0]
        .associations
        .push(crate::model::Association {
            id: "rtbassoc-x".into(),
            subnet_id: Some("subnet-xa".into()),
        });
    *cloud.inventory.lock().unwrap() = world.clone();
    let dns64 = Action::EnableDns64 {
        subnet: "subnet-xa".into(),
        table: Ref::New("route table for subnet-xa".into()),
    };
    let mut runner = Runner::new(&cloud, "vpc-1", "g");
    runner
        .created
        .insert("route table for subnet-xa".into(), "rtb-n".into());
    let pending = runner
        .run(&plan(vec![dns64]), &mut keep_going)
        .await
        .unwrap()
        .pending;
    assert!(cloud.executed.lock().unwrap().is_empty(), "deferred");
    let wait = Wait {
        timeout: Duration::from_millis(200),
        poll: Duration::from_millis(20),
    };
    match runner.wait(pending.clone(), &wait, &mut keep_going).await {
        Err(RunError::Timeout { missing, .. }) => assert!(
            missing.len() == 1 && missing[0].contains("no 64:ff9b::/96 route"),
            "{missing:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(cloud.executed.lock().unwrap().is_empty());

    // The agent adds the NAT64 route to the same NAT: DNS64 goes on.
    world.route_tables[0].routes.push(Route {
        destination: "64:ff9b::/96".into(),
        interface_id: Some("eni-a".into()),
        ..Default::default()
    });
    *cloud.inventory.lock().unwrap() = world;
    runner.wait(pending, &wait, &mut keep_going).await.unwrap();
    assert_eq!(
        cloud.executed.lock().unwrap().clone(),
        vec![Action::EnableDns64 {
            subnet: "subnet-xa".into(),
            table: Ref::Id("rtb-n".into()),
        }]
    );
}
