//! Pure planning: from a [`Layout`] and the VPC's [`Inventory`], the
//! [`Action`]s that make the VPC match (`apply`), or that remove the group
//! (`destroy`). Only the difference is planned: a VPC that matches gives an
//! empty plan. Actions come in dependency order; an id that does not exist
//! yet is a [`Ref::New`] that the executor fills in from an earlier action.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

use crate::documents;
use crate::layout::{Layout, Names};
use crate::model::{has_tag, Inventory, LaunchSpec, Peer, Permission, Tags, GROUP_TAG, SUBNET_TAG};

mod action;
mod addresses;
mod alarms;
mod destroy;
mod nat64;
#[cfg(test)]
mod tests;

pub use crate::model::Ref;
pub use action::*;
pub use destroy::destroy;

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

/// The CloudFormation stack that manages the group, if any: CloudFormation
/// tags what it creates with `aws:cloudformation:stack-name`. `apply` and
/// `destroy` leave such a group to its stack.
pub fn managing_stack(inv: &Inventory, group: &str) -> Option<String> {
    const STACK_TAG: &str = "aws:cloudformation:stack-name";
    let mine = |tags: &Tags| has_tag(tags, GROUP_TAG, group);
    inv.security_groups
        .iter()
        .map(|g| &g.tags)
        .chain(inv.route_tables.iter().map(|t| &t.tags))
        .chain(inv.subnets.iter().map(|s| &s.tags))
        .chain(inv.auto_scaling_groups.iter().map(|g| &g.tags))
        .chain(inv.launch_template.iter().map(|t| &t.tags))
        .chain(inv.addresses.iter().map(|a| &a.tags))
        .filter(|t| mine(t))
        .find_map(|t| t.get(STACK_TAG).cloned())
}

/// The ingress the NATs need: everything from the subnets they serve (and
/// their IPv6 blocks with NAT64), and the agent's health port from each
/// other (a rule naming their own group; for a group still to be created
/// the executor puts in its new id).
pub fn desired_ingress(
    layout: &Layout,
    inv: &Inventory,
    sg: &Ref,
    health_port: u16,
) -> BTreeSet<Permission> {
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
        .chain(nat64::ingress(layout, inv))
        .collect();
    rules.insert(Permission {
        protocol: "tcp".into(),
        from_port: Some(health_port.into()),
        to_port: Some(health_port.into()),
        peer: Peer::Group(sg.clone()),
    });
    rules
}

pub fn plan(
    layout: &Layout,
    inv: &Inventory,
    partition: &str,
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
    let sg_ref = match adopt(
        sg,
        |g| (&g.tags, Some(&g.id)),
        "security group",
        &sg_name,
        group,
        &mut conflicts,
    ) {
        Found::Foreign(g) | Found::Ours(g) => Ref::Id(g.id.clone()),
        Found::Absent => {
            a.push(Action::CreateSecurityGroup {
                name: sg_name.clone(),
            });
            Ref::New(SG_KEY.into())
        }
    };
    let want = desired_ingress(layout, inv, &sg_ref, health_port);
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
    // Revoked last, after any released subnet has its old table back:
    // traffic never meets a NAT that refuses it.
    let revoke = match (remove.is_empty(), &sg_ref) {
        (false, Ref::Id(id)) => Some(Action::RevokeIngress {
            group: id.clone(),
            rules: remove,
        }),
        _ => None,
    };
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
    let policy = documents::agent_policy(group, partition, &layout.agent_options());
    match adopt(
        inv.role.as_ref(),
        |r| (&r.tags, None),
        "IAM role",
        &role_name,
        group,
        &mut conflicts,
    ) {
        Found::Foreign(_) => {}
        Found::Ours(r) => {
            if r.policies.get(Names::POLICY) != Some(&policy) {
                a.push(Action::PutRolePolicy {
                    role: role_name.clone(),
                    name: Names::POLICY.into(),
                    document: policy,
                });
            }
        }
        Found::Absent => {
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
    match adopt(
        inv.instance_profile.as_ref(),
        |ip| (&ip.tags, None),
        "instance profile",
        &profile_name,
        group,
        &mut conflicts,
    ) {
        Found::Foreign(_) => {}
        Found::Ours(ip) => {
            if !ip.roles.contains(&role_name) {
                a.push(Action::AddRoleToInstanceProfile {
                    profile: profile_name.clone(),
                    role: role_name.clone(),
                });
            }
        }
        Found::Absent => {
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
        user_data: documents::agent_config(group, &layout.agent_options()),
    };
    let lt_name = Names::launch_template(group);
    let template_ref = match adopt(
        inv.launch_template.as_ref(),
        |t| (&t.tags, Some(&t.id)),
        "launch template",
        &lt_name,
        group,
        &mut conflicts,
    ) {
        Found::Foreign(t) => Ref::Id(t.id.clone()),
        Found::Ours(t) => {
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
        Found::Absent => {
            a.push(Action::CreateLaunchTemplate {
                name: lt_name,
                launch,
            });
            Ref::New(TEMPLATE_KEY.into())
        }
    };

    addresses::plan(layout, inv, a);
    let gateway = nat64::gateway(layout, inv, a, &mut p.notes);
    nat64::notes(layout, inv, &mut p.notes);

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
            let dns64 = gateway
                .as_ref()
                .and_then(|gw| nat64::table(inv, s, &table_ref, current, gw, a));
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
            late.extend(dns64);
        }
    }

    // One auto scaling group (of one NAT) per AZ, with a termination hook.
    for zone in &layout.zones {
        let name = Names::auto_scaling_group(group, &zone.az);
        let found = inv.auto_scaling_groups.iter().find(|g| g.name == name);
        match adopt(
            found,
            |g| (&g.tags, None),
            "auto scaling group",
            &name,
            group,
            &mut conflicts,
        ) {
            Found::Foreign(_) => {}
            Found::Ours(g) => {
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
            Found::Absent => {
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

    // Subnets served before and kept, or released, said in words.
    for s in layout
        .zones
        .iter()
        .flat_map(|z| &z.private)
        .filter(|s| s.kept)
    {
        p.notes.push(format!(
            "{} ({}) stays served: an earlier apply added it and this one does not name it; `--remove-private {}` stops serving it",
            s.key(),
            s.cidr,
            s.key()
        ));
    }
    for r in &layout.released {
        if let Some(table) = inv.route_table(&r.table) {
            p.actions.extend(destroy::give_back(inv, table));
        }
        p.actions.push(Action::DeleteRouteTable {
            id: r.table.clone(),
        });
        p.notes.push(format!(
            "{} ({}, {}) stops being served: it gets back the route table it had before natron (or the main one), then natron's table {} is deleted and its rule in the NATs' security group revoked",
            r.subnet, r.cidr, r.az, r.table
        ));
    }
    for table in &layout.stale_tables {
        p.actions
            .push(Action::DeleteRouteTable { id: table.clone() });
        p.notes.push(format!(
            "route table {table} was made for {}, which no longer exists: deleted",
            inv.route_table(table)
                .and_then(|t| t.tag(SUBNET_TAG))
                .unwrap_or("a subnet")
        ));
    }
    p.actions.extend(revoke);
    alarms::plan(layout, inv, &mut p.actions);

    if conflicts.is_empty() {
        Ok(p)
    } else {
        Err(Conflicts(conflicts))
    }
}

/// What exists under one of the group's names.
enum Found<'a, T> {
    Absent,
    /// Tagged with the group: natron's own.
    Ours(&'a T),
    /// Not tagged with the group: a conflict, never adopted or changed.
    Foreign(&'a T),
}

/// Tells natron's own resource from a foreign one of the same name,
/// recording the conflict for a foreign one. `tags_and_id` gives the
/// resource's tags and, where the name alone does not identify it, its id.
fn adopt<'a, T>(
    found: Option<&'a T>,
    tags_and_id: impl Fn(&T) -> (&Tags, Option<&String>),
    kind: &str,
    name: &str,
    group: &str,
    conflicts: &mut Vec<String>,
) -> Found<'a, T> {
    let Some(r) = found else {
        return Found::Absent;
    };
    let (tags, id) = tags_and_id(r);
    if has_tag(tags, GROUP_TAG, group) {
        return Found::Ours(r);
    }
    let id = id.map(|i| format!(" ({i})")).unwrap_or_default();
    conflicts.push(format!(
        "{kind} {name}{id} exists without tag {GROUP_TAG}={group}; natron will not adopt it"
    ));
    Found::Foreign(r)
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
