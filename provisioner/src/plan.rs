//! Pure planning: from a [`Layout`] and the VPC's [`Inventory`], the
//! [`Action`]s that make the VPC match (`apply`), or that remove the group
//! (`destroy`). Only the difference is planned: a VPC that matches gives an
//! empty plan. Actions come in dependency order; an id that does not exist
//! yet is a [`Ref::New`] that the executor fills in from an earlier action.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::documents;
use crate::layout::{Layout, Names};
use crate::model::{
    has_tag, Inventory, LaunchSpec, Peer, Permission, AZ_TAG, GROUP_TAG, PREVIOUS_TAG, SUBNET_TAG,
};

/// An id known now, or the key of a resource an earlier action creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Id(String),
    New(String),
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Id(id) => f.write_str(id),
            Ref::New(key) => write!(f, "<new {key}>"),
        }
    }
}

pub const SG_KEY: &str = "security group";
pub const TEMPLATE_KEY: &str = "launch template";

/// The launch template as planned (its security group may be new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLaunch {
    pub image_id: String,
    pub instance_type: String,
    pub instance_profile: String,
    pub security_group: Ref,
    pub user_data: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
    AllocateAddress {
        az: String,
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
    // destroy
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
            AllocateAddress { az } => write!(f, "allocate an Elastic IP for {az}"),
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
                Peer::Group(g) => g.clone(),
            };
            format!("{proto} from {peer}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Things the operator should know that change nothing.
    pub notes: Vec<String>,
}

/// Resources that exist under the group's names but without the group's
/// tag: natron never adopts or changes them.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Conflicts(pub Vec<String>);

/// The ingress the NATs need: everything from the subnets they serve, and
/// the agent's health port from each other (a rule naming their own group;
/// for a group still to be created the executor puts in its new id).
pub fn desired_ingress(layout: &Layout, sg: &Ref, health_port: u16) -> BTreeSet<Permission> {
    let mut rules: BTreeSet<Permission> = layout
        .zones
        .iter()
        .flat_map(|z| &z.private)
        .map(|p| Permission {
            protocol: "-1".into(),
            from_port: None,
            to_port: None,
            peer: Peer::Cidr(p.cidr),
        })
        .collect();
    rules.insert(Permission {
        protocol: "tcp".into(),
        from_port: Some(health_port.into()),
        to_port: Some(health_port.into()),
        peer: Peer::Group(sg.to_string()),
    });
    rules
}

pub fn plan(
    layout: &Layout,
    inv: &Inventory,
    region: &str,
    health_port: u16,
) -> Result<Plan, Conflicts> {
    let group = &layout.group;
    let mut conflicts = Vec::new();
    let mut p = Plan::default();
    let a = &mut p.actions;

    // Subnets.
    for zone in &layout.zones {
        for s in zone.private.iter().filter(|s| s.id.is_none()) {
            a.push(Action::CreateSubnet {
                key: s.key(),
                az: zone.az.clone(),
                cidr: s.cidr,
            });
        }
    }

    // Security group.
    let sg_name = Names::security_group(group);
    let sg = inv.security_groups.iter().find(|g| g.name == sg_name);
    let sg_ref = match sg {
        Some(g) if !has_tag(&g.tags, GROUP_TAG, group) => {
            conflicts.push(format!(
                "security group {sg_name} ({}) exists without tag {GROUP_TAG}={group}; natron will not adopt it",
                g.id
            ));
            Ref::Id(g.id.clone())
        }
        Some(g) => Ref::Id(g.id.clone()),
        None => {
            a.push(Action::CreateSecurityGroup {
                name: sg_name.clone(),
            });
            Ref::New(SG_KEY.into())
        }
    };
    let want = desired_ingress(layout, &sg_ref, health_port);
    let have: BTreeSet<Permission> = sg
        .map(|g| g.ingress.iter().cloned().collect())
        .unwrap_or_default();
    let add: Vec<Permission> = want.difference(&have).cloned().collect();
    let remove: Vec<Permission> = have.difference(&want).cloned().collect();
    if !add.is_empty() {
        a.push(Action::AuthorizeIngress {
            group: sg_ref.clone(),
            rules: add,
        });
    }
    if let (false, Ref::Id(id)) = (remove.is_empty(), &sg_ref) {
        a.push(Action::RevokeIngress {
            group: id.clone(),
            rules: remove,
        });
    }
    let anywhere = Permission {
        protocol: "-1".into(),
        from_port: None,
        to_port: None,
        peer: Peer::Cidr(Ipv4Net::default()),
    };
    if let Some(g) = sg.filter(|g| !g.egress.contains(&anywhere)) {
        a.push(Action::AuthorizeEgress {
            group: g.id.clone(),
            rules: vec![anywhere],
        });
    }

    // IAM.
    let role_name = Names::role(group);
    let policy = documents::agent_policy(group, documents::partition(region));
    match &inv.role {
        Some(r) if !has_tag(&r.tags, GROUP_TAG, group) => conflicts.push(format!(
            "IAM role {role_name} exists without tag {GROUP_TAG}={group}; natron will not adopt it"
        )),
        Some(r) => {
            if r.policies.get(Names::POLICY) != Some(&policy) {
                a.push(Action::PutRolePolicy {
                    role: role_name.clone(),
                    name: Names::POLICY.into(),
                    document: policy,
                });
            }
        }
        None => {
            a.push(Action::CreateRole {
                name: role_name.clone(),
            });
            a.push(Action::PutRolePolicy {
                role: role_name.clone(),
                name: Names::POLICY.into(),
                document: policy,
            });
        }
    }
    let profile_name = Names::instance_profile(group);
    match &inv.instance_profile {
        Some(ip) if !has_tag(&ip.tags, GROUP_TAG, group) => conflicts.push(format!(
            "instance profile {profile_name} exists without tag {GROUP_TAG}={group}; natron will not adopt it"
        )),
        Some(ip) => {
            if !ip.roles.contains(&role_name) {
                a.push(Action::AddRoleToInstanceProfile {
                    profile: profile_name.clone(),
                    role: role_name.clone(),
                });
            }
        }
        None => {
            a.push(Action::CreateInstanceProfile {
                name: profile_name.clone(),
            });
            a.push(Action::AddRoleToInstanceProfile {
                profile: profile_name.clone(),
                role: role_name.clone(),
            });
        }
    }

    // Launch template.
    let launch = PlannedLaunch {
        image_id: layout.image.id.clone(),
        instance_type: layout.instance_type.clone(),
        instance_profile: profile_name,
        security_group: sg_ref.clone(),
        user_data: documents::agent_config(group),
    };
    let lt_name = Names::launch_template(group);
    let template_ref = match &inv.launch_template {
        Some(t) if !has_tag(&t.tags, GROUP_TAG, group) => {
            conflicts.push(format!(
                "launch template {lt_name} ({}) exists without tag {GROUP_TAG}={group}; natron will not adopt it",
                t.id
            ));
            Ref::Id(t.id.clone())
        }
        Some(t) => {
            if t.latest.as_ref() != resolved(&launch).as_ref() {
                a.push(Action::CreateLaunchTemplateVersion {
                    template_id: t.id.clone(),
                    launch: launch.clone(),
                });
                p.notes.push(format!(
                    "launch template {lt_name} changes: NATs started from now on use the new version; replace the running ones (one AZ at a time) to roll it out"
                ));
            }
            Ref::Id(t.id.clone())
        }
        None => {
            a.push(Action::CreateLaunchTemplate {
                name: lt_name,
                launch,
            });
            Ref::New(TEMPLATE_KEY.into())
        }
    };

    // Elastic IPs.
    if layout.elastic_ips {
        for zone in &layout.zones {
            if !inv
                .addresses
                .iter()
                .any(|x| has_tag(&x.tags, GROUP_TAG, group) && has_tag(&x.tags, AZ_TAG, &zone.az))
            {
                a.push(Action::AllocateAddress {
                    az: zone.az.clone(),
                });
            }
        }
    }

    // Route tables, one per private subnet; associations of subnets in use
    // wait for their NAT (below, after the NATs exist).
    let mut late = Vec::new();
    for zone in &layout.zones {
        for s in &zone.private {
            let subnet_ref = match &s.id {
                Some(id) => Ref::Id(id.clone()),
                None => Ref::New(s.key()),
            };
            let mine = s.id.as_deref().and_then(|id| {
                inv.group_route_tables(group)
                    .find(|t| t.tag(SUBNET_TAG) == Some(id))
            });
            let (table_ref, current) = match mine {
                Some(t) => (Ref::Id(t.id.clone()), Some(t)),
                None => {
                    let key = format!("route table for {}", s.key());
                    let previous =
                        s.id.as_deref()
                            .and_then(|id| inv.explicit_route_table_of(id))
                            .map(|t| t.id.clone());
                    if let Some(prev) = s.id.as_deref().and_then(|id| inv.route_table_of(id)) {
                        let extra: Vec<String> = prev
                            .routes
                            .iter()
                            .filter(|r| {
                                r.destination != "0.0.0.0/0"
                                    && r.gateway_id.as_deref() != Some("local")
                            })
                            .map(|r| format!("{} via {}", r.destination, r.target()))
                            .collect();
                        if !extra.is_empty() {
                            p.notes.push(format!(
                                "{} now uses {}, whose routes natron's table will not have: {}; add them to natron's table if the subnet needs them",
                                s.key(),
                                prev.id,
                                extra.join(", ")
                            ));
                        }
                    }
                    a.push(Action::CreateRouteTable {
                        key: key.clone(),
                        az: zone.az.clone(),
                        subnet: subnet_ref.clone(),
                        previous,
                    });
                    (Ref::New(key), None)
                }
            };
            let associated = current.is_some_and(|t| {
                t.associations
                    .iter()
                    .any(|x| x.subnet_id.as_deref() == s.id.as_deref())
            });
            if !associated {
                let replace =
                    s.id.as_deref()
                        .and_then(|id| {
                            inv.explicit_route_table_of(id).and_then(|t| {
                                t.associations
                                    .iter()
                                    .find(|x| x.subnet_id.as_deref() == Some(id))
                            })
                        })
                        .map(|x| x.id.clone());
                let in_use = s.id.is_some();
                let assoc = Action::AssociateRouteTable {
                    table: table_ref,
                    subnet: subnet_ref,
                    replace_association: replace,
                    wait_for_claim: in_use,
                };
                if in_use {
                    late.push(assoc);
                } else {
                    a.push(assoc);
                }
            }
        }
    }

    // One auto scaling group (of one NAT) per AZ, with a termination hook.
    for zone in &layout.zones {
        let name = Names::auto_scaling_group(group, &zone.az);
        match inv.auto_scaling_groups.iter().find(|g| g.name == name) {
            Some(g) if !has_tag(&g.tags, GROUP_TAG, group) => conflicts.push(format!(
                "auto scaling group {name} exists without tag {GROUP_TAG}={group}; natron will not adopt it"
            )),
            Some(g) => {
                let template_ok = matches!(&template_ref, Ref::Id(id) if g.launch_template_id.as_deref() == Some(id.as_str()));
                if g.subnet_ids != [zone.public_subnet.clone()] || !template_ok {
                    a.push(Action::UpdateAutoScalingGroup {
                        name: name.clone(),
                        subnet: zone.public_subnet.clone(),
                        template: template_ref.to_string(),
                    });
                }
                if !g.termination_hooks.iter().any(|h| h == Names::HOOK) {
                    a.push(Action::PutLifecycleHook {
                        group: name.clone(),
                        name: Names::HOOK.into(),
                    });
                }
            }
            None => {
                a.push(Action::CreateAutoScalingGroup {
                    name: name.clone(),
                    az: zone.az.clone(),
                    subnet: zone.public_subnet.clone(),
                    template: template_ref.clone(),
                });
                a.push(Action::PutLifecycleHook {
                    group: name,
                    name: Names::HOOK.into(),
                });
            }
        }
    }
    a.extend(late);

    if conflicts.is_empty() {
        Ok(p)
    } else {
        Err(Conflicts(conflicts))
    }
}

/// The planned launch settings as the API reads them back, when every id
/// is known.
fn resolved(launch: &PlannedLaunch) -> Option<LaunchSpec> {
    match &launch.security_group {
        Ref::Id(sg) => Some(LaunchSpec {
            image_id: launch.image_id.clone(),
            instance_type: launch.instance_type.clone(),
            instance_profile: launch.instance_profile.clone(),
            security_group_id: sg.clone(),
            user_data: launch.user_data.clone(),
        }),
        Ref::New(_) => None,
    }
}

/// Everything tagged with the group, removed in dependency order. Untagged
/// resources are not in the list, whatever their names.
pub fn destroy(inv: &Inventory, group: &str) -> Plan {
    let mut p = Plan::default();
    let a = &mut p.actions;
    let tables: Vec<_> = inv.group_route_tables(group).collect();
    // Subnets in use go back to their old table first, while the NATs
    // still run, so they never lose their way out to a deleted table.
    for t in &tables {
        for x in &t.associations {
            let Some(subnet) = &x.subnet_id else { continue };
            match t
                .tag(PREVIOUS_TAG)
                .filter(|prev| inv.route_table(prev).is_some())
            {
                Some(prev) => a.push(Action::RestoreAssociation {
                    association: x.id.clone(),
                    subnet: subnet.clone(),
                    to: prev.to_string(),
                }),
                None => a.push(Action::Disassociate {
                    association: x.id.clone(),
                    subnet: subnet.clone(),
                }),
            }
        }
    }
    for g in inv
        .auto_scaling_groups
        .iter()
        .filter(|g| has_tag(&g.tags, GROUP_TAG, group))
    {
        a.push(Action::DeleteAutoScalingGroup {
            name: g.name.clone(),
        });
    }
    let instances: Vec<String> = inv.instances.iter().map(|i| i.id.clone()).collect();
    if !instances.is_empty() {
        a.push(Action::WaitInstancesTerminated { ids: instances });
    }
    for x in inv
        .addresses
        .iter()
        .filter(|x| has_tag(&x.tags, GROUP_TAG, group))
    {
        a.push(Action::ReleaseAddress {
            allocation_id: x.allocation_id.clone(),
            association_id: x.association_id.clone(),
        });
    }
    for t in &tables {
        a.push(Action::DeleteRouteTable { id: t.id.clone() });
    }
    if let Some(t) = inv
        .launch_template
        .as_ref()
        .filter(|t| has_tag(&t.tags, GROUP_TAG, group))
    {
        a.push(Action::DeleteLaunchTemplate {
            id: t.id.clone(),
            name: t.name.clone(),
        });
    }
    if let Some(ip) = inv
        .instance_profile
        .as_ref()
        .filter(|ip| has_tag(&ip.tags, GROUP_TAG, group))
    {
        for role in &ip.roles {
            a.push(Action::RemoveRoleFromInstanceProfile {
                profile: ip.name.clone(),
                role: role.clone(),
            });
        }
        a.push(Action::DeleteInstanceProfile {
            name: ip.name.clone(),
        });
    }
    if let Some(r) = inv
        .role
        .as_ref()
        .filter(|r| has_tag(&r.tags, GROUP_TAG, group))
    {
        for name in r.policies.keys() {
            a.push(Action::DeleteRolePolicy {
                role: r.name.clone(),
                name: name.clone(),
            });
        }
        a.push(Action::DeleteRole {
            name: r.name.clone(),
        });
    }
    for g in inv
        .security_groups
        .iter()
        .filter(|g| has_tag(&g.tags, GROUP_TAG, group))
    {
        a.push(Action::DeleteSecurityGroup { id: g.id.clone() });
    }
    for s in inv
        .subnets
        .iter()
        .filter(|s| has_tag(&s.tags, GROUP_TAG, group))
    {
        a.push(Action::DeleteSubnet { id: s.id.clone() });
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{self, tests as fixtures};
    use crate::model::{Association, AutoScalingGroup, RouteTable, SecurityGroup, Tags};

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
                    peer: Peer::Group("sg-n".into()),
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
}
