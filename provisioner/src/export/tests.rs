//! The template over fixture inventories.

use super::*;
use crate::layout::tests as fixtures;
use crate::model::{Association, Route, RouteTable};

fn export(inv: &Inventory) -> Export {
    let mut req = fixtures::request();
    req.elastic_ips = true;
    req.cloudwatch_metrics = true;
    let l = fixtures::resolve_fixture(&req, inv).unwrap();
    cloudformation(&l, inv, "aws", 9100)
}

fn types(e: &Export) -> Vec<(String, String)> {
    e.template["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["Type"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn every_resource_of_apply_is_in_the_template_tagged_alike() {
    let e = export(&fixtures::vpc());
    let t = types(&e);
    for (name, kind) in [
        ("PrivateSubnetAzB0", "AWS::EC2::Subnet"),
        ("NatSecurityGroup", "AWS::EC2::SecurityGroup"),
        ("NatHealthIngress", "AWS::EC2::SecurityGroupIngress"),
        ("AgentRole", "AWS::IAM::Role"),
        ("AgentInstanceProfile", "AWS::IAM::InstanceProfile"),
        ("LaunchTemplate", "AWS::EC2::LaunchTemplate"),
        ("NatGroupAzA", "AWS::AutoScaling::AutoScalingGroup"),
        ("NatGroupAzB", "AWS::AutoScaling::AutoScalingGroup"),
        ("ElasticIpAzA", "AWS::EC2::EIP"),
        ("RouteTableSubnetXa", "AWS::EC2::RouteTable"),
        (
            "RouteTableSubnetXaAssociation",
            "AWS::EC2::SubnetRouteTableAssociation",
        ),
        ("RouteTablePrivateSubnetAzB0", "AWS::EC2::RouteTable"),
    ] {
        assert!(
            t.contains(&(name.to_string(), kind.to_string())),
            "{name} ({kind}) missing in {t:?}"
        );
    }
    let r = &e.template["Resources"];
    assert_eq!(
        r["AgentPolicy"]["Properties"]["PolicyDocument"],
        documents::agent_policy("g", "aws", &documents::AgentOptions::with_metrics(true))
    );
    assert_eq!(
        r["NatGroupAzB"]["Properties"]["LifecycleHookSpecificationList"][0]["LifecycleHookName"],
        "natron-handoff"
    );
    let table_tags = r["RouteTableSubnetXa"]["Properties"]["Tags"].to_string();
    for needle in [
        r#"{"Key":"natron:group","Value":"g"}"#,
        r#"{"Key":"natron:az","Value":"az-a"}"#,
        r#"{"Key":"natron:subnet","Value":"subnet-xa"}"#,
    ] {
        assert!(table_tags.contains(needle), "{needle} in {table_tags}");
    }
    // subnet-xa is on the main table: associated by the stack, and
    // with no default route to copy.
    assert!(r.get("RouteTableSubnetXaDefault").is_none());
    assert!(e.template["Outputs"].get("PendingAssociations").is_none());
}

#[test]
fn a_subnet_in_use_keeps_its_way_out_and_its_own_table() {
    let mut inv = fixtures::vpc();
    inv.route_tables.push(RouteTable {
        id: "rtb-own".into(),
        associations: vec![Association {
            id: "rtbassoc-own".into(),
            subnet_id: Some("subnet-xa".into()),
        }],
        routes: vec![Route {
            destination: "0.0.0.0/0".into(),
            nat_gateway_id: Some("nat-1".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    let e = export(&inv);
    let r = &e.template["Resources"];
    assert_eq!(
        r["RouteTableSubnetXaDefault"]["Properties"]["NatGatewayId"],
        "nat-1"
    );
    assert!(r.get("RouteTableSubnetXaAssociation").is_none());
    let pending = e.template["Outputs"]["PendingAssociations"].to_string();
    assert!(
        pending.contains("--association-id rtbassoc-own"),
        "{pending}"
    );
    assert!(r["RouteTableSubnetXa"]["Properties"]["Tags"]
        .to_string()
        .contains(r#"{"Key":"natron:previous-route-table","Value":"rtb-own"}"#));
    assert!(e
        .notes
        .iter()
        .any(|n| n.contains("subnet-xa has its own route table rtb-own")));
}

#[test]
fn logical_ids_are_alphanumeric() {
    assert_eq!(logical("us-east-1a"), "UsEast1a");
    assert_eq!(logical("subnet-0abc"), "Subnet0abc");
}

#[test]
fn an_address_pool_is_in_the_template_with_its_slots() {
    let inv = fixtures::vpc();
    let mut req = fixtures::request();
    req.addresses = 2;
    let l = fixtures::resolve_fixture(&req, &inv).unwrap();
    let e = cloudformation(&l, &inv, "aws", 9100);
    let r = &e.template["Resources"];
    let tags = r["ElasticIpAzBSlot1"]["Properties"]["Tags"].to_string();
    assert!(
        tags.contains(r#""Key":"natron:slot","Value":"1""#),
        "{tags}"
    );
    assert!(r.get("ElasticIpAzASlot2").is_none());
    assert_eq!(
        r["AgentPolicy"]["Properties"]["PolicyDocument"],
        documents::agent_policy("g", "aws", &l.agent_options())
    );
}
