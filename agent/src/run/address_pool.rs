//! The address pool step (`nat.addresses` > 1): carries out
//! `core::pool::decide` (secondary private addresses asked for, each
//! slot's Elastic IP associated with one, everything read back) and says
//! which private addresses translate. Not a readiness gate: a NAT short of
//! addresses egresses from those it has, and says so in a warning.

use std::net::Ipv4Addr;
use std::time::Duration;

use natron_contract::aws::ErrorKind;
use natron_contract::readyz::Area;
use natron_contract::status::{AddressPool, PoolSlot, SlotState};
use tracing::{info, warn};

use super::boot::Resolved;
use crate::core::pool::{self, Decision, SlotStep};
use crate::core::schedule::Repeats;
use crate::edge::ec2::{AwsError, Ec2};
use crate::model::address::InterfaceAddresses;
use crate::report::status::Shared;

/// How often a complete pool is looked at again, and an incomplete one.
const RECHECK: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(10);

/// What one pass found: when to look again, the failed call's kind, and
/// the private addresses to translate to (None: unknown, keep the last).
pub struct Outcome {
    pub next: Duration,
    pub failed: Option<ErrorKind>,
    pub translating: Option<Vec<Ipv4Addr>>,
}

/// One pass: read, ask for what is missing, read back.
pub async fn reconcile(
    ec2: &dyn Ec2,
    shared: &Shared,
    r: &Resolved,
    failing: &mut Repeats,
) -> Outcome {
    let result = pass(ec2, r).await;
    shared.update(|s| s.note_ec2(result.as_ref().err()));
    match result {
        Ok((decision, interface)) => {
            if failing.over() {
                info!("the address pool step succeeds again");
            }
            let translating = decision.translating(&interface);
            let view = view(r.addresses, &decision, &translating);
            let complete = translating.len() as u32 >= r.addresses;
            let warning = (!complete).then(|| shortfall(&view));
            shared.update(|s| {
                if s.dataplane.address_pool.as_ref() != Some(&view) {
                    info!(
                        translating = ?view.translating,
                        wanted = view.wanted,
                        "address pool"
                    );
                }
                if let Some(w) = &warning {
                    if s.warn(Area::AddressPool, w.clone()) {
                        warn!("{w}");
                    }
                } else {
                    s.set_warning(Area::AddressPool, None);
                }
                s.dataplane.address_pool = Some(view);
            });
            Outcome {
                next: if complete { RECHECK } else { RETRY },
                failed: None,
                translating: Some(translating),
            }
        }
        Err(e) => {
            shared.metrics.ec2_errors.inc();
            let message = explain(&e);
            if failing.due(&message, std::time::Instant::now()) {
                warn!("cannot reconcile the address pool: {message} (said once a minute while it lasts)");
            }
            shared.update(|s| {
                s.set_warning(Area::AddressPool, Some(message.clone()));
            });
            Outcome {
                next: RETRY,
                failed: Some(e.kind),
                translating: None,
            }
        }
    }
}

/// Read, act, read back; the decision as read back.
async fn pass(ec2: &dyn Ec2, r: &Resolved) -> Result<(Decision, InterfaceAddresses), AwsError> {
    let me = r.identity.instance_id.as_str();
    let eni = r.identity.interface_id.as_str();
    let az = r.identity.availability_zone.as_str();
    let mut interface = ec2.interface_addresses(eni).await?;
    let mut tagged = ec2.az_addresses(&r.group, az).await?;
    let group = if Decision::needs_group(&tagged, me) {
        ec2.group_instances(&r.identity.vpc_id, &r.group).await?
    } else {
        Vec::new()
    };
    let decision = pool::decide(r.addresses, &interface, &tagged, me, &group);
    if decision.assign > 0 {
        info!(
            interface = eni,
            count = decision.assign,
            "asking for secondary private addresses for the address pool"
        );
        ec2.assign_private_addresses(eni, decision.assign).await?;
        interface = ec2.interface_addresses(eni).await?;
    }
    let decision = pool::decide(r.addresses, &interface, &tagged, me, &group);
    let mut associated = false;
    for (slot, step) in &decision.slots {
        if let SlotStep::Associate {
            address,
            private_ip,
        } = step
        {
            info!(
                slot,
                allocation = %address.allocation_id,
                public_ip = %address.public_ip,
                %private_ip,
                previous_holder = address.instance_id.as_deref().unwrap_or("none"),
                "associating the slot's Elastic IP with a secondary address of this NAT"
            );
            ec2.associate_address_with(&address.allocation_id, eni, *private_ip)
                .await?;
            associated = true;
        }
    }
    if associated {
        // Read back, as for every write.
        tagged = ec2.az_addresses(&r.group, az).await?;
    }
    Ok((
        pool::decide(r.addresses, &interface, &tagged, me, &group),
        interface,
    ))
}

/// The EC2 error, with what it means for the pool when EC2 says the
/// interface is full.
fn explain(e: &AwsError) -> String {
    if e.code.as_deref() == Some("PrivateIpAddressLimitExceeded") {
        format!("{e}: the instance type allows fewer private addresses per interface than nat.addresses asks for; lower nat.addresses or pick a larger type")
    } else {
        e.to_string()
    }
}

fn view(wanted: u32, decision: &Decision, translating: &[Ipv4Addr]) -> AddressPool {
    let slots = decision
        .slots
        .iter()
        .map(|(&slot, step)| {
            let (address, private_ip, state, detail) = match step {
                SlotStep::Held {
                    address,
                    private_ip,
                } => (
                    Some(address),
                    Some(*private_ip),
                    SlotState::Associated,
                    None,
                ),
                SlotStep::Associate {
                    address,
                    private_ip,
                } => (
                    Some(address),
                    Some(*private_ip),
                    SlotState::Associating,
                    None,
                ),
                SlotStep::Wait { address, holder } => {
                    (Some(address), None, SlotState::Held, Some(holder.clone()))
                }
                SlotStep::NoAddress => (
                    None,
                    None,
                    SlotState::Missing,
                    Some(format!(
                        "no Elastic IP tagged {}={slot} for this group and AZ",
                        natron_contract::tags::SLOT
                    )),
                ),
                SlotStep::NoPrivateAddress { address } => (
                    Some(address),
                    None,
                    SlotState::Missing,
                    Some("no free secondary private address on this NAT's interface".into()),
                ),
            };
            PoolSlot {
                slot,
                private_ip,
                allocation_id: address.map(|a| a.allocation_id.clone()),
                public_ip: address.map(|a| a.public_ip.clone()),
                state,
                detail,
            }
        })
        .collect();
    AddressPool {
        wanted,
        translating: translating.to_vec(),
        slots,
    }
}

/// The warning of a pool short of addresses: how many translate, and why
/// each missing slot is missing.
fn shortfall(pool: &AddressPool) -> String {
    let why = pool
        .slots
        .iter()
        .filter(|s| s.state != SlotState::Associated)
        .map(|s| {
            let state = format!("{:?}", s.state).to_lowercase();
            match &s.detail {
                Some(d) => format!("slot {} {state}: {d}", s.slot),
                None => format!("slot {} {state}", s.slot),
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "address pool: {} of nat.addresses = {} translate ({why})",
        pool.translating.len(),
        pool.wanted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::ec2::fake::FakeEc2;
    use crate::model::address::Address;
    use crate::run::tests::resolved;

    fn slot_address(slot: u32) -> Address {
        Address {
            allocation_id: format!("eipalloc-{slot}"),
            public_ip: format!("203.0.113.{}", 100 + slot),
            slot: Some(slot),
            ..Default::default()
        }
    }

    fn with_pool(n: u32) -> Resolved {
        Resolved {
            addresses: n,
            ..resolved()
        }
    }

    #[tokio::test]
    async fn a_pool_is_built_from_nothing_and_read_back() {
        let ec2 = FakeEc2::default();
        let r = with_pool(3);
        ec2.interfaces.lock().unwrap().insert(
            r.identity.interface_id.clone(),
            InterfaceAddresses {
                primary: Some(r.identity.local_ipv4),
                secondary: vec![],
            },
        );
        ec2.instances
            .lock()
            .unwrap()
            .push(crate::model::instance::GroupInstance {
                instance_id: r.identity.instance_id.clone(),
                availability_zone: r.identity.availability_zone.clone(),
                private_ip: Some(r.identity.local_ipv4),
                interface_ids: vec![r.identity.interface_id.clone()],
                state: crate::model::InstanceState::Running,
                heartbeat_ms: None,
            });
        ec2.addresses
            .lock()
            .unwrap()
            .extend([slot_address(1), slot_address(2)]);
        let shared = Shared::new();
        let out = reconcile(&ec2, &shared, &r, &mut Repeats::default()).await;
        assert_eq!(out.failed, None);
        assert_eq!(out.next, RECHECK);
        let translating = out.translating.unwrap();
        assert_eq!(translating.len(), 3, "{translating:?}");
        assert_eq!(translating[0], r.identity.local_ipv4);
        let calls = ec2.calls.lock().unwrap().clone();
        assert!(
            calls.contains(&format!(
                "AssignPrivateIpAddresses {} 2",
                r.identity.interface_id
            )),
            "{calls:?}"
        );
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.starts_with("AssociateAddress"))
                .count(),
            2
        );
        let pool = shared.read(|s| s.dataplane.address_pool.clone()).unwrap();
        assert!(pool.slots.iter().all(|s| s.state == SlotState::Associated));
        assert!(shared.read(|s| s.warnings.iter().all(|w| w.area != Area::AddressPool)));
        // A second pass changes nothing.
        ec2.calls.lock().unwrap().clear();
        let again = reconcile(&ec2, &shared, &r, &mut Repeats::default()).await;
        assert_eq!(again.translating.unwrap(), translating);
        assert!(ec2
            .calls
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.starts_with("Describe")));
    }

    #[tokio::test]
    async fn a_slot_without_an_address_is_a_warning_naming_it() {
        let ec2 = FakeEc2::default();
        let r = with_pool(2);
        let shared = Shared::new();
        let out = reconcile(&ec2, &shared, &r, &mut Repeats::default()).await;
        assert_eq!(out.next, RETRY);
        assert_eq!(out.translating.unwrap().len(), 0);
        let warning = shared.read(|s| {
            s.warnings
                .iter()
                .find(|w| w.area == Area::AddressPool)
                .map(|w| w.message.clone())
        });
        let warning = warning.expect("a warning");
        assert!(warning.contains("slot 1 missing"), "{warning}");
        assert!(warning.contains("natron:slot=1"), "{warning}");
    }

    #[test]
    fn the_interface_limit_is_explained() {
        let e = AwsError {
            code: Some("PrivateIpAddressLimitExceeded".into()),
            ..AwsError::new(
                "EC2",
                "AssignPrivateIpAddresses",
                "2 secondary private address(es) on eni-1",
                ErrorKind::Client,
                "Number of private addresses will exceed limit.",
            )
        };
        let message = explain(&e);
        assert!(message.contains("eni-1"), "{message}");
        assert!(message.contains("instance type allows fewer"), "{message}");
    }

    #[tokio::test]
    async fn a_failed_call_keeps_the_pool_and_warns() {
        let ec2 = FakeEc2::default();
        ec2.fail_next
            .lock()
            .unwrap()
            .push(crate::edge::ec2::fake::throttled(
                "DescribeNetworkInterfaces",
            ));
        let shared = Shared::new();
        let out = reconcile(&ec2, &shared, &with_pool(3), &mut Repeats::default()).await;
        assert_eq!(out.failed, Some(ErrorKind::Throttled));
        assert!(out.translating.is_none(), "the last pool stays");
        assert!(shared.read(|s| s.warnings.iter().any(|w| w.area == Area::AddressPool)));
    }
}
