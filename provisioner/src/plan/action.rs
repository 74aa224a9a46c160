//! The plan's vocabulary: every change natron makes, as data, with the
//! words `plan` prints for it.

use std::fmt;

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use crate::model::{Peer, Permission, Ref};

pub const SG_KEY: &str = "security group";
pub const TEMPLATE_KEY: &str = "launch template";
pub const EGRESS_ONLY_KEY: &str = "egress-only internet gateway";

/// The launch template as planned (its security group may be new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedLaunch {
    pub image_id: String,
    pub instance_type: String,
    pub instance_profile: String,
    pub security_group: Ref,
    pub user_data: String,
}

/// Serialized (`--output json`) as `{"action": "create_subnet", …fields}`;
/// the field names are part of the documented schema (docs/provisioner.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    CreateSubnet {
        key: String,
        az: String,
        cidr: Ipv4Net,
    },
    CreateSecurityGroup {
        name: String,
    },
    AuthorizeIngress {
        group: Ref,
        rules: Vec<Permission>,
    },
    RevokeIngress {
        group: String,
        rules: Vec<Permission>,
    },
    /// Puts back the NATs' egress to anywhere (a new group has it).
    AuthorizeEgress {
        group: String,
        rules: Vec<Permission>,
    },
    CreateRole {
        name: String,
    },
    PutRolePolicy {
        role: String,
        name: String,
        document: Value,
    },
    CreateInstanceProfile {
        name: String,
    },
    AddRoleToInstanceProfile {
        profile: String,
        role: String,
    },
    CreateLaunchTemplate {
        name: String,
        launch: PlannedLaunch,
    },
    /// A new version that becomes the default; running NATs keep theirs
    /// until replaced.
    CreateLaunchTemplateVersion {
        template_id: String,
        launch: PlannedLaunch,
    },
    /// The AZ's address (`slot` None, `--elastic-ip`) or one of its
    /// NAT's address pool (`--addresses`).
    AllocateAddress {
        az: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        slot: Option<u32>,
    },
    /// Tagged with the group, the AZ and the subnet, with no route: the
    /// agent of that AZ claims 0.0.0.0/0.
    CreateRouteTable {
        key: String,
        az: String,
        subnet: Ref,
        previous: Option<String>,
    },
    /// Points a private subnet at natron's table. For a subnet in use this
    /// waits until the table's default route is served by a NAT of its AZ,
    /// so traffic never meets a table without a way out.
    AssociateRouteTable {
        table: Ref,
        subnet: Ref,
        replace_association: Option<String>,
        wait_for_claim: bool,
    },
    CreateAutoScalingGroup {
        name: String,
        az: String,
        subnet: String,
        template: Ref,
    },
    UpdateAutoScalingGroup {
        name: String,
        subnet: String,
        template: String,
    },
    PutLifecycleHook {
        group: String,
        name: String,
    },
    /// Tagged with the group: the NAT64 tables' `::/0` goes to it when the
    /// VPC has no egress-only internet gateway.
    CreateEgressOnlyGateway {},
    /// `::/0` of one of natron's NAT64 tables to the egress-only gateway
    /// (replacing a route elsewhere when `replace`).
    RouteIpv6Out {
        table: Ref,
        gateway: Ref,
        replace: bool,
    },
    /// Tags one of natron's tables `natron:nat64`: the agent whose NAT the
    /// default route names gives it a `64:ff9b::/96` route too.
    TagNat64 {
        table: Ref,
    },
    /// Turns DNS64 on for a served subnet with IPv6, once its table's
    /// NAT64 route is served by its NAT (before, dual-stack clients would
    /// be handed addresses they cannot reach); tags the table
    /// `natron:dns64` first, so that releasing the subnet turns it off.
    EnableDns64 {
        subnet: String,
        table: Ref,
    },
    // destroy
    /// Turns DNS64 off where natron turned it on.
    DisableDns64 {
        subnet: String,
    },
    DeleteEgressOnlyGateway {
        id: String,
    },
    RestoreAssociation {
        association: String,
        subnet: String,
        to: String,
    },
    Disassociate {
        association: String,
        subnet: String,
    },
    DeleteAutoScalingGroup {
        name: String,
    },
    WaitInstancesTerminated {
        ids: Vec<String>,
    },
    ReleaseAddress {
        allocation_id: String,
        association_id: Option<String>,
    },
    DeleteRouteTable {
        id: String,
    },
    DeleteLaunchTemplate {
        id: String,
        name: String,
    },
    RemoveRoleFromInstanceProfile {
        profile: String,
        role: String,
    },
    DeleteInstanceProfile {
        name: String,
    },
    DeleteRolePolicy {
        role: String,
        name: String,
    },
    DeleteRole {
        name: String,
    },
    DeleteSecurityGroup {
        id: String,
    },
    DeleteSubnet {
        id: String,
    },
    /// Creates or replaces the alarm (`--alarms`).
    PutAlarm {
        alarm: crate::alarms::AlarmSpec,
    },
    DeleteAlarm {
        name: String,
    },
}

impl Action {
    /// The kind of resource the action creates, changes or deletes.
    pub fn resource(&self) -> &'static str {
        use Action::*;
        match self {
            CreateSubnet { .. } | DeleteSubnet { .. } => "subnet",
            CreateSecurityGroup { .. }
            | AuthorizeIngress { .. }
            | RevokeIngress { .. }
            | AuthorizeEgress { .. }
            | DeleteSecurityGroup { .. } => "security_group",
            CreateRole { .. } | DeleteRole { .. } => "iam_role",
            PutRolePolicy { .. } | DeleteRolePolicy { .. } => "iam_role_policy",
            CreateInstanceProfile { .. }
            | AddRoleToInstanceProfile { .. }
            | RemoveRoleFromInstanceProfile { .. }
            | DeleteInstanceProfile { .. } => "instance_profile",
            CreateLaunchTemplate { .. }
            | CreateLaunchTemplateVersion { .. }
            | DeleteLaunchTemplate { .. } => "launch_template",
            AllocateAddress { .. } | ReleaseAddress { .. } => "elastic_ip",
            CreateRouteTable { .. } | DeleteRouteTable { .. } => "route_table",
            AssociateRouteTable { .. } | RestoreAssociation { .. } | Disassociate { .. } => {
                "route_table_association"
            }
            CreateAutoScalingGroup { .. }
            | UpdateAutoScalingGroup { .. }
            | DeleteAutoScalingGroup { .. } => "auto_scaling_group",
            PutLifecycleHook { .. } => "lifecycle_hook",
            WaitInstancesTerminated { .. } => "instance",
            PutAlarm { .. } | DeleteAlarm { .. } => "cloudwatch_alarm",
            CreateEgressOnlyGateway { .. } | DeleteEgressOnlyGateway { .. } => {
                "egress_only_internet_gateway"
            }
            RouteIpv6Out { .. } => "route",
            TagNat64 { .. } => "route_table",
            EnableDns64 { .. } | DisableDns64 { .. } => "subnet_dns64",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Action::*;
        match self {
            CreateSubnet { az, cidr, .. } => write!(f, "create subnet {cidr} in {az}"),
            CreateSecurityGroup { name } => write!(f, "create security group {name}"),
            AuthorizeIngress { group, rules } => {
                write!(f, "allow into {group}: {}", describe_rules(rules))
            }
            RevokeIngress { group, rules } => {
                write!(f, "revoke from {group}: {}", describe_rules(rules))
            }
            AuthorizeEgress { group, rules } => {
                write!(f, "allow out of {group}: {}", describe_rules(rules).replace(" from ", " to "))
            }
            CreateRole { name } => write!(f, "create IAM role {name}"),
            PutRolePolicy { role, name, .. } => write!(f, "put policy {name} on IAM role {role}"),
            CreateInstanceProfile { name } => write!(f, "create instance profile {name}"),
            AddRoleToInstanceProfile { profile, role } => {
                write!(f, "add role {role} to instance profile {profile}")
            }
            CreateLaunchTemplate { name, launch } => write!(
                f,
                "create launch template {name} ({} {})",
                launch.image_id, launch.instance_type
            ),
            CreateLaunchTemplateVersion {
                template_id,
                launch,
            } => write!(
                f,
                "new default version of launch template {template_id} ({} {}); running NATs keep theirs until replaced",
                launch.image_id, launch.instance_type
            ),
            AllocateAddress { az, slot: None } => write!(f, "allocate an Elastic IP for {az}"),
            AllocateAddress {
                az,
                slot: Some(slot),
            } => write!(
                f,
                "allocate an Elastic IP for {az}'s address pool, slot {slot}"
            ),
            CreateRouteTable { az, subnet, .. } => {
                write!(f, "create route table for {subnet} ({az})")
            }
            AssociateRouteTable {
                table,
                subnet,
                replace_association,
                wait_for_claim,
            } => {
                write!(f, "associate {subnet} with {table}")?;
                if let Some(a) = replace_association {
                    write!(f, " (replacing association {a})")?;
                }
                if *wait_for_claim {
                    write!(f, " once its NAT serves the default route")?;
                }
                Ok(())
            }
            CreateAutoScalingGroup {
                name, az, subnet, ..
            } => write!(
                f,
                "create auto scaling group {name} (1 NAT in {az}, subnet {subnet})"
            ),
            UpdateAutoScalingGroup {
                name,
                subnet,
                template,
            } => write!(
                f,
                "update auto scaling group {name} (subnet {subnet}, template {template})"
            ),
            PutLifecycleHook { group, name } => {
                write!(f, "put termination lifecycle hook {name} on {group}")
            }
            RestoreAssociation {
                subnet,
                to,
                association,
            } => write!(
                f,
                "give {subnet} back its route table {to} (association {association})"
            ),
            Disassociate {
                subnet,
                association,
            } => write!(
                f,
                "disassociate {subnet} (association {association}); it falls back to the main route table"
            ),
            DeleteAutoScalingGroup { name } => {
                write!(f, "delete auto scaling group {name} and its NAT")
            }
            WaitInstancesTerminated { ids } => {
                write!(f, "wait until {} terminated", ids.join(", "))
            }
            ReleaseAddress { allocation_id, .. } => {
                write!(f, "release Elastic IP {allocation_id}")
            }
            DeleteRouteTable { id } => write!(f, "delete route table {id}"),
            DeleteLaunchTemplate { id, name } => write!(f, "delete launch template {name} ({id})"),
            RemoveRoleFromInstanceProfile { profile, role } => {
                write!(f, "remove role {role} from instance profile {profile}")
            }
            DeleteInstanceProfile { name } => write!(f, "delete instance profile {name}"),
            DeleteRolePolicy { role, name } => write!(f, "delete policy {name} of IAM role {role}"),
            DeleteRole { name } => write!(f, "delete IAM role {name}"),
            DeleteSecurityGroup { id } => write!(f, "delete security group {id}"),
            DeleteSubnet { id } => write!(f, "delete subnet {id}"),
            PutAlarm { alarm } => write!(f, "put CloudWatch alarm {}", alarm.name),
            CreateEgressOnlyGateway {} => write!(f, "create an egress-only internet gateway"),
            RouteIpv6Out {
                table,
                gateway,
                replace,
            } => write!(
                f,
                "{} ::/0 → {gateway} in {table}",
                if *replace { "point" } else { "add" }
            ),
            TagNat64 { table } => write!(
                f,
                "tag {table} for NAT64: its NAT adds 64:ff9b::/96 beside 0.0.0.0/0"
            ),
            EnableDns64 { subnet, table } => write!(
                f,
                "turn DNS64 on for {subnet} once {table}'s NAT64 route is served"
            ),
            DisableDns64 { subnet } => write!(f, "turn DNS64 off for {subnet}"),
            DeleteEgressOnlyGateway { id } => {
                write!(f, "delete egress-only internet gateway {id}")
            }
            DeleteAlarm { name } => write!(f, "delete CloudWatch alarm {name}"),
        }
    }
}

fn describe_rules(rules: &[Permission]) -> String {
    rules
        .iter()
        .map(|r| {
            let proto = match (r.protocol.as_str(), r.from_port, r.to_port) {
                ("-1", _, _) => "all traffic".to_string(),
                (p, Some(a), Some(b)) if a == b => format!("{p}/{a}"),
                (p, Some(a), Some(b)) => format!("{p}/{a}-{b}"),
                (p, _, _) => p.to_string(),
            };
            let peer = match &r.peer {
                Peer::Cidr(c) => c.to_string(),
                Peer::Cidr6(c) => c.to_string(),
                Peer::Group(g) => g.to_string(),
            };
            format!("{proto} from {peer}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
