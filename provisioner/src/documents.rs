//! Documents natron writes: the agent's IAM policy, the role's trust
//! policy and the agent configuration carried in user data. Pure.

use serde_json::{json, Value};

use natron_contract::tags;

use crate::model::GROUP_TAG;

/// What `natron apply` turns on in the agents beyond their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AgentOptions {
    /// Publish the NAT Gateway's metrics to CloudWatch.
    pub cloudwatch_metrics: bool,
    /// `nat.addresses`: the address pool's size (1: none).
    pub addresses: u32,
    /// `nat64.enabled`: translate the VPC's IPv6 clients to IPv4.
    pub nat64: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            cloudwatch_metrics: false,
            addresses: 1,
            nat64: false,
        }
    }
}

impl AgentOptions {
    pub fn with_metrics(cloudwatch_metrics: bool) -> AgentOptions {
        AgentOptions {
            cloudwatch_metrics,
            ..AgentOptions::default()
        }
    }
}

/// Exactly what the agent calls (see agent/src/ec2.rs). Reads cannot be
/// scoped by resource in EC2; every write is limited to resources tagged
/// with the group. The only instance attribute it may set is the
/// source/destination check, and only to false; the only tag it may write
/// is its heartbeat; with `cloudwatch_metrics`, it may publish metrics in
/// natron's namespace only. (Scoping those two to the caller's own instance is
/// not done yet: see docs/provisioner.md, "The agent's IAM policy".)
pub fn agent_policy(group: &str, partition: &str, options: &AgentOptions) -> Value {
    let tagged = json!({ "StringEquals": { format!("ec2:ResourceTag/{GROUP_TAG}"): group } });
    let mut policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadGroupState",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeInstances",
                    "ec2:DescribeRouteTables",
                    "ec2:DescribeAddresses"
                ],
                "Resource": "*"
            },
            {
                "Sid": "DisableSourceDestCheckOnGroupInstances",
                "Effect": "Allow",
                "Action": "ec2:ModifyInstanceAttribute",
                "Resource": format!("arn:{partition}:ec2:*:*:instance/*"),
                "Condition": {
                    "StringEquals": {
                        format!("ec2:ResourceTag/{GROUP_TAG}"): group,
                        "ec2:Attribute/SourceDestCheck": "false"
                    }
                }
            },
            {
                // The heartbeat, and the last source-port exhaustion
                // (`natron status` shows it).
                "Sid": "WriteHeartbeatTagOnGroupInstances",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": format!("arn:{partition}:ec2:*:*:instance/*"),
                "Condition": {
                    "StringEquals": { format!("ec2:ResourceTag/{GROUP_TAG}"): group },
                    "ForAllValues:StringEquals": { "aws:TagKeys": [tags::HEARTBEAT, tags::SOURCE_PORTS] }
                }
            },
            {
                "Sid": "MoveDefaultRoutesOfGroupTables",
                "Effect": "Allow",
                "Action": ["ec2:CreateRoute", "ec2:ReplaceRoute"],
                "Resource": format!("arn:{partition}:ec2:*:*:route-table/*"),
                "Condition": tagged
            },
            {
                // The AZ's Elastic IP follows its NAT (agent/src/address.rs).
                "Sid": "MoveGroupElasticIpsBetweenGroupInstances",
                "Effect": "Allow",
                "Action": ["ec2:AssociateAddress", "ec2:DisassociateAddress"],
                "Resource": [
                    format!("arn:{partition}:ec2:*:*:elastic-ip/*"),
                    format!("arn:{partition}:ec2:*:*:instance/*"),
                    format!("arn:{partition}:ec2:*:*:network-interface/*")
                ],
                "Condition": tagged.clone()
            }
        ]
    });
    let statements = policy["Statement"].as_array_mut().expect("a list");
    if options.addresses > 1 {
        // The address pool: the agent reads its interface's addresses and
        // asks for secondary ones on its own (group-tagged) interface; the
        // slots' Elastic IPs move as the AZ's does (the statement above).
        statements[0]["Action"]
            .as_array_mut()
            .expect("a list")
            .push(json!("ec2:DescribeNetworkInterfaces"));
        statements.push(json!({
            "Sid": "AddPoolAddressesToGroupInterfaces",
            "Effect": "Allow",
            "Action": "ec2:AssignPrivateIpAddresses",
            "Resource": format!("arn:{partition}:ec2:*:*:network-interface/*"),
            "Condition": tagged
        }));
    }
    if options.cloudwatch_metrics {
        // PutMetricData has no resources to scope; its namespace can be.
        statements.push(json!({
            "Sid": "PublishNatMetrics",
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": { "StringEquals": { "cloudwatch:namespace": METRICS_NAMESPACE } }
        }));
    }
    policy
}

/// Where the agents publish their metrics (the agent's default
/// `metrics.cloudwatch.namespace`).
pub const METRICS_NAMESPACE: &str = natron_contract::cloudwatch::NAMESPACE;

/// The actions a policy's Allow statements name (`ec2:CreateRoute`…).
pub fn allowed_actions(policy: &Value) -> std::collections::BTreeSet<String> {
    let statements = policy["Statement"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    statements
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| match &s["Action"] {
            Value::Array(list) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Value::String(one) => vec![one.clone()],
            _ => vec![],
        })
        .collect()
}

pub fn trust_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": "ec2.amazonaws.com" },
            "Action": "sts:AssumeRole"
        }]
    })
}

/// The agent's configuration file (docs/agent-config.md), carried as the
/// instance's user data. Everything else keeps the agent's defaults.
pub fn agent_config(group: &str, options: &AgentOptions) -> String {
    let mut config = format!(
        "# natron-agent configuration, written by `natron apply` for group {group}.\n\
         # Keys: docs/agent-config.md.\n\
         group = \"{group}\"\n"
    );
    if options.addresses > 1 {
        config.push_str(&format!("\n[nat]\naddresses = {}\n", options.addresses));
    }
    if options.nat64 {
        config.push_str("\n[nat64]\nenabled = true\n");
    }
    if options.cloudwatch_metrics {
        config.push_str("\n[metrics.cloudwatch]\nenabled = true\n");
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_is_scoped_to_the_group_and_attributes_to_source_dest_check() {
        let policy = agent_policy("g", "aws", &AgentOptions::default());
        for statement in policy["Statement"].as_array().unwrap() {
            let actions = statement["Action"].to_string();
            if actions.contains("Describe") {
                continue;
            }
            assert_eq!(
                statement["Condition"]["StringEquals"]["ec2:ResourceTag/natron:group"], "g",
                "{statement}"
            );
            let resources = match &statement["Resource"] {
                Value::Array(list) => list.clone(),
                one => vec![one.clone()],
            };
            for r in resources {
                assert!(r.as_str().unwrap().starts_with("arn:aws:ec2:"), "{r}");
            }
        }
        let attribute = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Action"] == "ec2:ModifyInstanceAttribute")
            .unwrap();
        assert_eq!(
            attribute["Condition"]["StringEquals"]["ec2:Attribute/SourceDestCheck"],
            "false"
        );
    }

    #[test]
    fn metrics_are_published_only_when_asked_and_only_in_natrons_namespace() {
        assert!(!agent_policy("g", "aws", &AgentOptions::default())
            .to_string()
            .contains("cloudwatch"));
        assert!(!agent_config("g", &AgentOptions::default()).contains("metrics"));
        let policy = agent_policy("g", "aws", &AgentOptions::with_metrics(true));
        let publish = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Action"] == "cloudwatch:PutMetricData")
            .unwrap();
        assert_eq!(
            publish["Condition"]["StringEquals"]["cloudwatch:namespace"],
            "natron"
        );
        // The agent reads the user data as its configuration: it must parse
        // and turn publishing on.
        let config: toml::Value =
            toml::from_str(&agent_config("g", &AgentOptions::with_metrics(true))).unwrap();
        assert_eq!(
            config["metrics"]["cloudwatch"]["enabled"].as_bool(),
            Some(true)
        );
    }

    #[test]
    fn a_pool_adds_only_its_two_calls_scoped_to_group_interfaces() {
        let one = allowed_actions(&agent_policy("g", "aws", &AgentOptions::default()));
        let options = AgentOptions {
            addresses: 3,
            ..AgentOptions::default()
        };
        let policy = agent_policy("g", "aws", &options);
        let pool = allowed_actions(&policy);
        let added: Vec<&String> = pool.difference(&one).collect();
        assert_eq!(
            added,
            [
                "ec2:AssignPrivateIpAddresses",
                "ec2:DescribeNetworkInterfaces"
            ]
        );
        let assign = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Action"] == "ec2:AssignPrivateIpAddresses")
            .unwrap();
        assert_eq!(
            assign["Condition"]["StringEquals"]["ec2:ResourceTag/natron:group"],
            "g"
        );
        let config: toml::Value = toml::from_str(&agent_config("g", &options)).unwrap();
        assert_eq!(config["nat"]["addresses"].as_integer(), Some(3));
        assert!(!agent_config("g", &AgentOptions::default()).contains("[nat]"));
    }
}
