//! The planner and destroy, over fixture inventories.

use super::*;
use crate::layout::{self, tests as fixtures};
use crate::model::{
    Address, Association, AutoScalingGroup, RouteTable, SecurityGroup, Tags, AZ_TAG, PREVIOUS_TAG,
};

fn layout() -> Layout {
    fixtures::resolve_fixture(&fixtures::request(), &fixtures::vpc()).unwrap()
}

pub(super) fn kinds(p: &Plan) -> Vec<String> {
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

/// The security group rule that lets a served subnet in.
pub(super) fn all_from(cidr: &str) -> Permission {
    Permission {
        protocol: "-1".into(),
        from_port: None,
        to_port: None,
        peer: Peer::Cidr(cidr.parse().unwrap()),
    }
}

/// The agents' health port, from the group sg-n itself.
fn health_port() -> Permission {
    Permission {
        protocol: "tcp".into(),
        from_port: Some(9100),
        to_port: Some(9100),
        peer: Peer::Group(Ref::Id("sg-n".into())),
    }
}

pub(super) fn group_tags(extra: &[(&str, &str)]) -> Tags {
    std::iter::once((GROUP_TAG, "g"))
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_fresh_vpc_gets_everything_in_dependency_order() {
    let p = plan(&layout(), &fixtures::vpc(), "aws", 9100).unwrap();
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
            all_from("10.0.10.0/24"),
            health_port(),
            Permission {
                protocol: "tcp".into(),
                from_port: Some(22),
                to_port: Some(22),
                peer: Peer::Cidr("0.0.0.0/0".parse().unwrap()),
            },
        ],
        egress: vec![],
    });
    let p = plan(&layout(), &inv, "aws", 9100).unwrap();
    let sg: Vec<String> = p.actions[1..3].iter().map(ToString::to_string).collect();
    assert_eq!(
        sg,
        [
            "allow into sg-n: all traffic from 10.0.11.0/24",
            "allow out of sg-n: all traffic to 0.0.0.0/0",
        ]
    );
    // Rules are revoked last of all.
    assert_eq!(
        p.actions.last().unwrap().to_string(),
        "revoke from sg-n: tcp/22 from 0.0.0.0/0"
    );
}

/// An earlier apply serves subnet-xa (10.0.10.0/24, az-a) through rtb-n,
/// its old table rtb-old kept; the group's security group allows it.
pub(super) fn served_before() -> Inventory {
    let mut inv = fixtures::vpc();
    inv.route_tables.push(RouteTable {
        id: "rtb-old".into(),
        ..Default::default()
    });
    inv.route_tables.push(RouteTable {
        id: "rtb-n".into(),
        associations: vec![Association {
            id: "rtbassoc-n".into(),
            subnet_id: Some("subnet-xa".into()),
        }],
        tags: group_tags(&[
            (PREVIOUS_TAG, "rtb-old"),
            (SUBNET_TAG, "subnet-xa"),
            (AZ_TAG, "az-a"),
        ]),
        ..Default::default()
    });
    inv.security_groups.push(SecurityGroup {
        id: "sg-n".into(),
        name: "natron-g".into(),
        tags: group_tags(&[]),
        ingress: vec![all_from("10.0.10.0/24"), health_port()],
        egress: vec![all_from("0.0.0.0/0")],
    });
    inv
}

fn partial(remove: &[&str]) -> Plan {
    let inv = served_before();
    let mut req = fixtures::request();
    // Names only the new subnet in az-b.
    req.private = vec!["az-b=10.0.11.0/24".parse().unwrap()];
    req.remove = remove.iter().map(|s| s.to_string()).collect();
    let l = fixtures::resolve_fixture(&req, &inv).unwrap();
    plan(&l, &inv, "aws", 9100).unwrap()
}

#[test]
fn an_apply_naming_only_a_new_subnet_keeps_the_served_ones() {
    let p = partial(&[]);
    let text: Vec<String> = p.actions.iter().map(ToString::to_string).collect();
    assert!(
        !text
            .iter()
            .any(|t| t.starts_with("revoke") || t.contains("rtb-n") || t.contains("subnet-xa")),
        "{text:#?}"
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n
                .starts_with("subnet-xa (10.0.10.0/24) stays served: an earlier apply added it")),
        "{:#?}",
        p.notes
    );
}

#[test]
fn remove_private_releases_like_destroy_old_table_first_then_the_rule() {
    let p = partial(&["subnet-xa"]);
    let text: Vec<String> = p.actions.iter().map(ToString::to_string).collect();
    let tail = &text[text.len() - 3..];
    assert_eq!(
        tail,
        [
            "give subnet-xa back its route table rtb-old (association rtbassoc-n)",
            "delete route table rtb-n",
            "revoke from sg-n: all traffic from 10.0.10.0/24",
        ]
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("subnet-xa (10.0.10.0/24, az-a) stops being served")));
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
    let err = plan(&layout(), &inv, "aws", 9100).unwrap_err();
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

#[test]
fn the_table_and_rule_of_a_deleted_subnet_go() {
    let mut inv = served_before();
    inv.subnets.retain(|s| s.id != "subnet-xa");
    let mut req = fixtures::request();
    req.private = vec!["az-b=10.0.11.0/24".parse().unwrap()];
    let l = fixtures::resolve_fixture(&req, &inv).unwrap();
    let p = plan(&l, &inv, "aws", 9100).unwrap();
    let text: Vec<String> = p.actions.iter().map(ToString::to_string).collect();
    assert_eq!(
        text[text.len() - 2..],
        [
            "delete route table rtb-n",
            "revoke from sg-n: all traffic from 10.0.10.0/24",
        ]
    );
    assert!(p
        .notes
        .iter()
        .any(|n| n.contains("made for subnet-xa, which no longer exists")));
}

fn pool_layout(addresses: u32, inv: &Inventory) -> Layout {
    let mut req = fixtures::request();
    req.addresses = addresses;
    fixtures::resolve_fixture(&req, inv).unwrap()
}

/// `--addresses 3`: two slot addresses per AZ, tagged so the agent finds
/// them; a second apply allocates nothing; a smaller pool releases the
/// slots beyond it; the agents are told the pool's size and may assign
/// addresses.
#[test]
fn an_address_pool_allocates_its_slots_once_and_releases_those_beyond_it() {
    let inv = fixtures::vpc();
    let p = plan(&pool_layout(3, &inv), &inv, "aws", 9100).unwrap();
    let slots: Vec<String> = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::AllocateAddress { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        slots,
        [
            "allocate an Elastic IP for az-a's address pool, slot 1",
            "allocate an Elastic IP for az-a's address pool, slot 2",
            "allocate an Elastic IP for az-b's address pool, slot 1",
            "allocate an Elastic IP for az-b's address pool, slot 2",
        ]
    );
    let text = format!("{:?}", p.actions);
    assert!(text.contains("addresses = 3"), "user data: {text}");
    assert!(text.contains("AssignPrivateIpAddresses"), "policy: {text}");

    let mut after = fixtures::vpc();
    for (az, slot) in [("az-a", 1), ("az-a", 2), ("az-b", 1), ("az-b", 2)] {
        after.addresses.push(Address {
            allocation_id: format!("eipalloc-{az}-{slot}"),
            public_ip: None,
            instance_id: None,
            association_id: Some(format!("eipassoc-{az}-{slot}")),
            tags: group_tags(&[
                (AZ_TAG, az),
                (natron_contract::tags::SLOT, &slot.to_string()),
            ]),
        });
    }
    let again = plan(&pool_layout(3, &after), &after, "aws", 9100).unwrap();
    assert!(
        !again.actions.iter().any(|a| matches!(
            a,
            Action::AllocateAddress { .. } | Action::ReleaseAddress { .. }
        )),
        "{:?}",
        again.actions
    );
    let smaller = plan(&pool_layout(2, &after), &after, "aws", 9100).unwrap();
    let released: Vec<String> = smaller
        .actions
        .iter()
        .filter(|a| matches!(a, Action::ReleaseAddress { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        released,
        [
            "release Elastic IP eipalloc-az-a-2",
            "release Elastic IP eipalloc-az-b-2"
        ]
    );
}

#[test]
fn a_pool_larger_than_the_instance_type_allows_is_refused_naming_both() {
    let mut req = fixtures::request();
    req.addresses = 3;
    let inv = fixtures::vpc();
    let with_limit = |limit: Option<u32>| crate::model::InstanceTypeInfo {
        addresses_per_interface: limit,
        ..crate::model::InstanceTypeInfo::running(&["arm64"])
    };
    let resolve = |req: &layout::Request, limit| {
        layout::resolve(req, &inv, Ok(fixtures::image()), &with_limit(limit))
    };
    let errors = resolve(&req, Some(2)).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert!(
        e.contains("--addresses 3") && e.contains(&req.instance_type) && e.contains("allows 2"),
        "{e}"
    );
    assert!(resolve(&req, Some(4)).is_ok());
    assert!(resolve(&req, None).is_ok());
    // Reported with every other input problem at once.
    req.group = "Bad Group".into();
    assert_eq!(resolve(&req, Some(2)).unwrap_err().len(), 2);
}

/// `--alarms`: both alarms put once, kept when they match, put again when
/// the group grows (the threshold is its NAT count), deleted without
/// `--alarms`, and deleted first of all by destroy.
#[test]
fn alarms_follow_the_flag_and_the_group_and_go_first_on_destroy() {
    let with_alarms = |inv: &Inventory, on: bool| {
        let mut req = fixtures::request();
        req.cloudwatch_metrics = true;
        req.alarms = on;
        let l = fixtures::resolve_fixture(&req, inv).unwrap();
        plan(&l, inv, "aws", 9100).unwrap()
    };
    let alarm_actions = |p: &Plan| -> Vec<String> {
        p.actions
            .iter()
            .filter(|a| a.resource() == "cloudwatch_alarm")
            .map(ToString::to_string)
            .collect()
    };
    let mut inv = fixtures::vpc();
    assert_eq!(
        alarm_actions(&with_alarms(&inv, true)),
        [
            "put CloudWatch alarm natron-g-port-allocation",
            "put CloudWatch alarm natron-g-not-ready"
        ]
    );
    inv.alarms = crate::alarms::wanted("g", 2);
    assert!(alarm_actions(&with_alarms(&inv, true)).is_empty());
    // A group of one NAT more would need another threshold.
    inv.alarms = crate::alarms::wanted("g", 3);
    assert_eq!(
        alarm_actions(&with_alarms(&inv, true)),
        ["put CloudWatch alarm natron-g-not-ready"]
    );
    assert_eq!(
        alarm_actions(&with_alarms(&inv, false)),
        [
            "delete CloudWatch alarm natron-g-port-allocation",
            "delete CloudWatch alarm natron-g-not-ready"
        ]
    );
    let d = destroy::destroy(&inv, "g");
    assert_eq!(d.actions[0].resource(), "cloudwatch_alarm");
    assert_eq!(d.actions[1].resource(), "cloudwatch_alarm");
}
