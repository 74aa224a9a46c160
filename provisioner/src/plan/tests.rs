//! The planner and destroy, over fixture inventories.

use super::*;
use crate::layout::{self, tests as fixtures};
use crate::model::{Association, AutoScalingGroup, RouteTable, SecurityGroup, Tags, PREVIOUS_TAG};

fn layout() -> Layout {
    layout::resolve(
        &fixtures::request(),
        &fixtures::vpc(),
        fixtures::image(),
        &["arm64".into()],
    )
    .unwrap()
}

fn kinds(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| {
            format!("{a:?}")
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn group_tags(extra: &[(&str, &str)]) -> Tags {
    std::iter::once((GROUP_TAG, "g"))
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_fresh_vpc_gets_everything_in_dependency_order() {
    let p = plan(&layout(), &fixtures::vpc(), "us-east-1", 9100).unwrap();
    assert_eq!(
        kinds(&p),
        [
            "CreateSubnet",
            "CreateSecurityGroup",
            "AuthorizeIngress",
            "CreateRole",
            "PutRolePolicy",
            "CreateInstanceProfile",
            "AddRoleToInstanceProfile",
            "CreateLaunchTemplate",
            "CreateRouteTable",
            "CreateRouteTable",
            "AssociateRouteTable",
            "CreateAutoScalingGroup",
            "PutLifecycleHook",
            "CreateAutoScalingGroup",
            "PutLifecycleHook",
            "AssociateRouteTable",
        ]
    );
    // The subnet in use is associated last, once its NAT serves it;
    // the new one at once.
    let waits: Vec<bool> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::AssociateRouteTable { wait_for_claim, .. } => Some(*wait_for_claim),
            _ => None,
        })
        .collect();
    assert_eq!(waits, [false, true]);
}

#[test]
fn only_the_difference_is_planned() {
    let mut inv = fixtures::vpc();
    inv.security_groups.push(SecurityGroup {
        id: "sg-n".into(),
        name: "natron-g".into(),
        tags: group_tags(&[]),
        // One rule missing (10.0.11.0/24), one extra (22 from anywhere).
        ingress: vec![
            Permission {
                protocol: "-1".into(),
                from_port: None,
                to_port: None,
                peer: Peer::Cidr("10.0.10.0/24".parse().unwrap()),
            },
            Permission {
                protocol: "tcp".into(),
                from_port: Some(9100),
                to_port: Some(9100),
                peer: Peer::Group(Ref::Id("sg-n".into())),
            },
            Permission {
                protocol: "tcp".into(),
                from_port: Some(22),
                to_port: Some(22),
                peer: Peer::Cidr("0.0.0.0/0".parse().unwrap()),
            },
        ],
        egress: vec![],
    });
    let p = plan(&layout(), &inv, "us-east-1", 9100).unwrap();
    let sg: Vec<String> = p.actions[1..4].iter().map(ToString::to_string).collect();
    assert_eq!(
        sg,
        [
            "allow into sg-n: all traffic from 10.0.11.0/24",
            "revoke from sg-n: tcp/22 from 0.0.0.0/0",
            "allow out of sg-n: all traffic to 0.0.0.0/0",
        ]
    );
}

#[test]
fn resources_named_for_the_group_but_untagged_are_conflicts() {
    let mut inv = fixtures::vpc();
    inv.auto_scaling_groups.push(AutoScalingGroup {
        name: "natron-g-az-a".into(),
        subnet_ids: vec![],
        launch_template_id: None,
        launch_template_version: None,
        min_size: 1,
        max_size: 1,
        desired: 1,
        instance_ids: vec![],
        termination_hooks: vec![],
        tags: Tags::new(),
    });
    let err = plan(&layout(), &inv, "us-east-1", 9100).unwrap_err();
    assert!(err
        .to_string()
        .contains("auto scaling group natron-g-az-a exists without tag natron:group=g"));
}

#[test]
fn destroy_gives_subnets_back_first_and_skips_untagged() {
    let mut inv = fixtures::vpc();
    inv.route_tables.push(RouteTable {
        id: "rtb-n".into(),
        associations: vec![Association {
            id: "rtbassoc-n".into(),
            subnet_id: Some("subnet-xa".into()),
        }],
        tags: group_tags(&[(PREVIOUS_TAG, "rtb-pub")]),
        ..Default::default()
    });
    inv.security_groups.push(SecurityGroup {
        id: "sg-other".into(),
        name: "natron-g".into(),
        tags: Tags::new(),
        ingress: vec![],
        egress: vec![],
    });
    let p = destroy(&inv, "g");
    let text: Vec<String> = p.actions.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "give subnet-xa back its route table rtb-pub (association rtbassoc-n)",
            "delete route table rtb-n"
        ]
    );
}
