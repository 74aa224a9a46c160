//! `natron destroy` as a plan: everything tagged with the group, in the
//! order that keeps subnets served until the end.

use super::{Action, Plan};
use crate::model::{has_tag, Inventory, RouteTable, GROUP_TAG, PREVIOUS_TAG};

/// Everything tagged with the group, removed in dependency order. Untagged
/// resources are not in the list, whatever their names.
pub fn destroy(inv: &Inventory, group: &str) -> Plan {
    let mut p = Plan::default();
    let a = &mut p.actions;
    super::alarms::delete_all(inv, a);
    let tables: Vec<_> = inv.group_route_tables(group).collect();
    // Subnets in use go back to their old table first, while the NATs
    // still run, so they never lose their way out to a deleted table.
    for t in &tables {
        a.extend(give_back(inv, t));
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
    super::nat64::destroy(inv, group, a, &mut p.notes);
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

/// Gives each subnet on one of natron's tables its old table back (the
/// one it had before natron, when that still exists) or the main table,
/// then DNS64 off where natron turned it on. Used by `destroy` and by an
/// apply that releases a subnet, so both release it the same way.
pub(super) fn give_back(inv: &Inventory, table: &RouteTable) -> Vec<Action> {
    table
        .associations
        .iter()
        .flat_map(|x| {
            let Some(subnet) = x.subnet_id.clone() else {
                return vec![];
            };
            let dns64 = super::nat64::release(inv, table, &subnet);
            let back = match table
                .tag(PREVIOUS_TAG)
                .filter(|prev| inv.route_table(prev).is_some())
            {
                Some(prev) => Action::RestoreAssociation {
                    association: x.id.clone(),
                    subnet,
                    to: prev.to_string(),
                },
                None => Action::Disassociate {
                    association: x.id.clone(),
                    subnet,
                },
            };
            std::iter::once(back).chain(dns64).collect()
        })
        .collect()
}
