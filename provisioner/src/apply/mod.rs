//! Runs a [`Plan`] through a [`Cloud`]: actions in order, new ids passed on
//! to the actions that need them, then (for `apply`) the wait until every
//! private subnet's table is served by a NAT of its own AZ. Associations of
//! subnets in use happen in that wait, once their table has a NAT route,
//! and DNS64 is turned on there once the table's NAT64 route is served.
//! Interrupted, a run leaves only tagged resources behind; the next plan,
//! read from the VPC again, carries on from there.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::cloud::{Cloud, CloudError};
use crate::model::{has_tag, Inventory, Peer, AZ_TAG, GROUP_TAG, NAT64_ROUTE, SUBNET_TAG};
use crate::plan::{Action, Plan, Ref, EGRESS_ONLY_KEY, SG_KEY, TEMPLATE_KEY};

/// What a run reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// About to carry out action `index` (from 1) of `total`.
    Start {
        index: usize,
        total: usize,
        action: &'a Action,
    },
    Created {
        what: String,
        id: String,
    },
    /// A change seen while waiting.
    Progress(String),
    /// Between two polls of a wait: a chance to stop it.
    Poll,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Cloud(#[from] CloudError),
    #[error("stopped after {done} of {total} actions; run it again to carry on")]
    Interrupted { done: usize, total: usize },
    #[error("stopped while waiting for the NATs, with {pending} association(s) of subnets in use not made yet; every action before is in place; run it again to carry on")]
    StoppedWaiting { pending: usize },
    #[error("gave up waiting after {waited:?}:\n{}", .missing.join("\n"))]
    Timeout {
        waited: Duration,
        missing: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Wait {
    pub timeout: Duration,
    pub poll: Duration,
}

/// Associations left for later because their NAT had not claimed the route.
#[derive(Debug, Default)]
pub struct Outcome {
    pub pending: Vec<Action>,
}

pub struct Runner<'a> {
    pub cloud: &'a dyn Cloud,
    pub vpc_id: &'a str,
    pub group: &'a str,
    created: BTreeMap<String, String>,
}

impl<'a> Runner<'a> {
    pub fn new(cloud: &'a dyn Cloud, vpc_id: &'a str, group: &'a str) -> Runner<'a> {
        Runner {
            cloud,
            vpc_id,
            group,
            created: BTreeMap::new(),
        }
    }

    fn resolve(&self, r: &Ref) -> Ref {
        match r {
            Ref::New(key) => match self.created.get(key) {
                Some(id) => Ref::Id(id.clone()),
                None => r.clone(),
            },
            id => id.clone(),
        }
    }

    /// The action with every reference to something created earlier in
    /// this run replaced by its id.
    fn resolved(&self, action: &Action) -> Action {
        let mut a = action.clone();
        match &mut a {
            Action::AuthorizeIngress { group, rules } => {
                for rule in rules.iter_mut() {
                    if let Peer::Group(r) = &rule.peer {
                        rule.peer = Peer::Group(self.resolve(r));
                    }
                }
                *group = self.resolve(group);
            }
            Action::CreateLaunchTemplate { launch, .. }
            | Action::CreateLaunchTemplateVersion { launch, .. } => {
                launch.security_group = self.resolve(&launch.security_group);
            }
            Action::CreateRouteTable { subnet, .. } => *subnet = self.resolve(subnet),
            Action::AssociateRouteTable { table, subnet, .. } => {
                *table = self.resolve(table);
                *subnet = self.resolve(subnet);
            }
            Action::CreateAutoScalingGroup { template, .. } => *template = self.resolve(template),
            Action::RouteIpv6Out { table, gateway, .. } => {
                *table = self.resolve(table);
                *gateway = self.resolve(gateway);
            }
            Action::TagNat64 { table } | Action::EnableDns64 { table, .. } => {
                *table = self.resolve(table)
            }
            _ => {}
        }
        a
    }

    fn key_of(action: &Action) -> Option<String> {
        match action {
            Action::CreateSubnet { key, .. } | Action::CreateRouteTable { key, .. } => {
                Some(key.clone())
            }
            Action::CreateSecurityGroup { .. } => Some(SG_KEY.into()),
            Action::CreateLaunchTemplate { .. } => Some(TEMPLATE_KEY.into()),
            Action::CreateEgressOnlyGateway {} => Some(EGRESS_ONLY_KEY.into()),
            _ => None,
        }
    }

    /// Carries out the plan's actions in order. `on` sees each step and may
    /// stop the run (tests use this to interrupt it).
    pub async fn run(
        &mut self,
        plan: &Plan,
        on: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<Outcome, RunError> {
        let mut outcome = Outcome::default();
        let total = plan.actions.len();
        for (i, action) in plan.actions.iter().enumerate() {
            let action = self.resolved(action);
            if waits(&action) {
                let _ = on(Event::Progress(format!(
                    "[{}/{total}] later, once its NAT serves the route: {action}",
                    i + 1
                )));
                outcome.pending.push(action);
                continue;
            }
            if on(Event::Start {
                index: i + 1,
                total,
                action: &action,
            })
            .is_break()
            {
                return Err(RunError::Interrupted { done: i, total });
            }
            let id = self.cloud.execute(&action, self.vpc_id, self.group).await?;
            if let (Some(key), Some(id)) = (Self::key_of(&action), id) {
                let _ = on(Event::Created {
                    what: key.clone(),
                    id: id.clone(),
                });
                self.created.insert(key, id);
            }
        }
        Ok(outcome)
    }

    /// Waits until every route table of the group has its default route on
    /// a running NAT of its own AZ, giving each AZ's NAT its Elastic IP and
    /// making the pending associations as their tables become served.
    /// Returns each table with the NAT serving it.
    pub async fn wait(
        &mut self,
        mut pending: Vec<Action>,
        wait: &Wait,
        on: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<BTreeMap<String, String>, RunError> {
        let start = Instant::now();
        let mut said: Vec<String> = Vec::new();
        loop {
            let inv = self.cloud.inventory(self.vpc_id, self.group).await?;
            for line in self.give_addresses(&inv).await? {
                let _ = on(Event::Progress(line));
            }
            let served = served_tables(&inv, self.group);
            let mut still = Vec::new();
            let (count, mut made) = (pending.len(), 0);
            for a in pending {
                if ready(&a, &inv, &served) {
                    if on(Event::Start {
                        index: 0,
                        total: 0,
                        action: &a,
                    })
                    .is_break()
                    {
                        return Err(RunError::StoppedWaiting {
                            pending: count - made,
                        });
                    }
                    self.cloud.execute(&a, self.vpc_id, self.group).await?;
                    made += 1;
                } else {
                    still.push(a);
                }
            }
            pending = still;
            let missing = unserved(&inv, self.group, &served);
            for (table, nat) in &served {
                let line = format!("{table}: default route served by {nat}");
                if !said.contains(&line) {
                    let _ = on(Event::Progress(line.clone()));
                    said.push(line);
                }
            }
            if missing.is_empty() && pending.is_empty() {
                return Ok(served);
            }
            if start.elapsed() >= wait.timeout {
                let mut missing = missing;
                missing.extend(pending.iter().filter_map(|a| match a {
                    Action::EnableDns64 { subnet, table } => Some(format!(
                        "{table} (subnet {subnet}): no {NAT64_ROUTE} route on its NAT yet, so DNS64 stays off (the agent adds it beside the default route; a NAT launched before `--nat64` does not translate: replace it)"
                    )),
                    _ => None,
                }));
                return Err(RunError::Timeout {
                    waited: start.elapsed(),
                    missing,
                });
            }
            if on(Event::Poll).is_break() {
                return Err(RunError::StoppedWaiting {
                    pending: pending.len(),
                });
            }
            tokio::time::sleep(wait.poll).await;
        }
    }

    /// Associates each AZ's Elastic IP with the AZ's running NAT, so it
    /// holds when `apply` returns. The agents do the same at boot, so a
    /// replaced NAT gets its AZ's address back without an `apply`.
    async fn give_addresses(&self, inv: &Inventory) -> Result<Vec<String>, CloudError> {
        let mut done = Vec::new();
        for address in &inv.addresses {
            let Some(az) = address.tags.get(AZ_TAG) else {
                continue;
            };
            let nat = inv.instances.iter().find(|i| i.is_running() && &i.az == az);
            if let Some(nat) = nat {
                if address.instance_id.as_deref() != Some(nat.id.as_str()) {
                    self.cloud
                        .associate_address(&address.allocation_id, &nat.id)
                        .await?;
                    done.push(format!(
                        "Elastic IP {} ({}) → {}",
                        address.public_ip.map_or("?".into(), |a| a.to_string()),
                        address.allocation_id,
                        nat.id
                    ));
                }
            }
        }
        Ok(done)
    }
}

/// Actions the run leaves to the wait: associations of subnets in use, and
/// DNS64, which waits for the NAT64 route.
fn waits(action: &Action) -> bool {
    matches!(
        action,
        Action::AssociateRouteTable {
            wait_for_claim: true,
            ..
        } | Action::EnableDns64 { .. }
    )
}

/// Whether a waiting action can go now: an association once its table is
/// served; DNS64 once the subnet is on its table and the table's NAT64
/// route goes to the NAT that serves it.
fn ready(action: &Action, inv: &Inventory, served: &BTreeMap<String, String>) -> bool {
    match action {
        Action::AssociateRouteTable {
            table: Ref::Id(t), ..
        } => served.contains_key(t),
        Action::EnableDns64 {
            subnet,
            table: Ref::Id(t),
        } => {
            let (Some(nat), Some(table)) = (served.get(t), inv.route_table(t)) else {
                return false;
            };
            let on_table = table
                .associations
                .iter()
                .any(|a| a.subnet_id.as_deref() == Some(subnet.as_str()));
            let nat64 = table
                .route(NAT64_ROUTE)
                .zip(inv.instances.iter().find(|i| &i.id == nat))
                .is_some_and(|(r, nat)| nat.is_target_of(r));
            on_table && nat64
        }
        other => unreachable!("{other} does not wait"),
    }
}

/// The group's tables whose default route is on a running NAT of the
/// table's own AZ, with that NAT.
pub fn served_tables(inv: &Inventory, group: &str) -> BTreeMap<String, String> {
    inv.group_route_tables(group)
        .filter_map(|t| {
            let nat = inv.instance_for(t.default_route()?)?;
            (nat.is_running()
                && has_tag(&nat.tags, GROUP_TAG, group)
                && t.tag(AZ_TAG) == Some(nat.az.as_str()))
            .then(|| (t.id.clone(), nat.id.clone()))
        })
        .collect()
}

fn unserved(inv: &Inventory, group: &str, served: &BTreeMap<String, String>) -> Vec<String> {
    inv.group_route_tables(group)
        .filter(|t| !served.contains_key(&t.id))
        .map(|t| {
            let az = t.tag(AZ_TAG).unwrap_or("?");
            let subnet = t.tag(SUBNET_TAG).unwrap_or("?");
            let nat = inv.instances.iter().find(|i| i.az == az);
            let why = match (t.default_route(), nat) {
                (_, None) => format!("no NAT instance in {az} yet (is its auto scaling group launching one?)"),
                (_, Some(n)) if !n.is_running() => format!("NAT {} is {}", n.id, n.state),
                (None, Some(n)) => format!(
                    "no default route yet: the agent on {} has not claimed it (see `natron status`, and `journalctl -u natron-agent` on the instance)",
                    n.id
                ),
                (Some(r), Some(_)) => format!("default route points at {}, not at a NAT of {az}", r.target()),
            };
            format!("{} (subnet {subnet}, {az}): {why}", t.id)
        })
        .collect()
}

#[cfg(test)]
mod tests;
