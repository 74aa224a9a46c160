//! The AZ's Elastic IP follows its NAT. `natron apply --elastic-ip`
//! allocates one address per AZ, tagged `natron:group` and `natron:az`; the
//! agent of that AZ associates it with its own instance at boot and keeps
//! it there, so a NAT replaced by auto scaling egresses from the same
//! address without another `apply`. On a planned termination the agent
//! releases it for its replacement.
//!
//! [`decide`] is pure; the agent's control loop carries out its answer.

use crate::model::address::Address;
use crate::model::instance::GroupInstance;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No address is tagged for this AZ: the NAT keeps its own public IP.
    NoAddress,
    /// The address is on this instance already.
    Held(Address),
    /// Associate the address with this instance (taking it from `from`,
    /// an instance that is not a running NAT of the group, when set).
    Associate(Address),
    /// A running NAT of the group holds it (a replacement overlapping the
    /// instance it replaces): wait until that one releases it or stops,
    /// rather than break its flows.
    Wait { address: Address, holder: String },
}

/// What to do about the AZ's address. `tagged` are the addresses tagged
/// with this group and AZ; more than one is an operator's mistake, and the
/// lowest allocation id wins so every run picks the same one. `group` is
/// only consulted when another instance holds the address.
pub fn decide(tagged: &[Address], me: &str, group: &[GroupInstance]) -> Step {
    let Some(address) = chosen(tagged, None) else {
        return Step::NoAddress;
    };
    if address.instance_id.as_deref() == Some(me) {
        return Step::Held(address.clone());
    }
    match live_holder(address, me, group) {
        Some(holder) => Step::Wait {
            address: address.clone(),
            holder: holder.to_string(),
        },
        None => Step::Associate(address.clone()),
    }
}

/// The running NAT of the group other than `me` that holds `address`:
/// one to wait for rather than break its flows (a stopped or foreign
/// holder is a leftover to take the address from).
pub fn live_holder<'a>(address: &'a Address, me: &str, group: &[GroupInstance]) -> Option<&'a str> {
    address.instance_id.as_deref().filter(|&holder| {
        holder != me
            && group
                .iter()
                .any(|i| i.instance_id == holder && i.state.is_live())
    })
}

/// Whether another instance holds the address, so `decide` needs the group.
pub fn held_by_other(tagged: &[Address], me: &str) -> bool {
    chosen(tagged, None)
        .and_then(|a| a.instance_id.as_deref())
        .is_some_and(|holder| holder != me)
}

/// The address of `slot` (None: the AZ's own; a number: the address
/// pool's, `core::pool`): of those tagged with it, the lowest allocation
/// id, so every run picks the same.
pub fn chosen(tagged: &[Address], slot: Option<u32>) -> Option<&Address> {
    tagged
        .iter()
        .filter(|a| a.slot == slot)
        .min_by(|a, b| a.allocation_id.cmp(&b.allocation_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(id: &str, holder: Option<&str>) -> Address {
        Address {
            allocation_id: id.into(),
            public_ip: "203.0.113.10".into(),
            association_id: holder.map(|_| format!("eipassoc-{id}")),
            instance_id: holder.map(str::to_string),
            ..Default::default()
        }
    }

    fn nat(id: &str, state: &str) -> GroupInstance {
        GroupInstance {
            instance_id: id.into(),
            availability_zone: "us-east-1a".into(),
            private_ip: None,
            interface_ids: vec![],
            state: crate::model::InstanceState::parse(state),
            heartbeat_ms: None,
        }
    }

    #[test]
    fn no_tagged_address_means_nothing_to_do() {
        assert_eq!(decide(&[], "i-me", &[]), Step::NoAddress);
    }

    #[test]
    fn a_free_address_is_taken() {
        let a = address("eipalloc-1", None);
        assert_eq!(
            decide(std::slice::from_ref(&a), "i-me", &[]),
            Step::Associate(a)
        );
    }

    #[test]
    fn an_address_on_this_instance_is_left_alone() {
        let a = address("eipalloc-1", Some("i-me"));
        assert_eq!(decide(std::slice::from_ref(&a), "i-me", &[]), Step::Held(a));
        assert!(!held_by_other(
            &[address("eipalloc-1", Some("i-me"))],
            "i-me"
        ));
    }

    #[test]
    fn an_address_left_on_a_stopped_or_foreign_instance_is_taken() {
        let a = address("eipalloc-1", Some("i-old"));
        assert!(held_by_other(std::slice::from_ref(&a), "i-me"));
        for group in [
            vec![],
            vec![nat("i-old", "stopped")],
            vec![nat("i-old", "shutting-down")],
        ] {
            assert_eq!(
                decide(std::slice::from_ref(&a), "i-me", &group),
                Step::Associate(a.clone())
            );
        }
    }

    #[test]
    fn an_address_on_a_running_nat_of_the_group_is_waited_for() {
        let a = address("eipalloc-1", Some("i-old"));
        let group = [nat("i-old", "running"), nat("i-me", "running")];
        assert_eq!(
            decide(std::slice::from_ref(&a), "i-me", &group),
            Step::Wait {
                address: a,
                holder: "i-old".into()
            }
        );
    }

    #[test]
    fn a_pool_slots_address_is_never_the_azs() {
        let pool = Address {
            slot: Some(1),
            ..address("eipalloc-0", None)
        };
        assert_eq!(
            decide(std::slice::from_ref(&pool), "i-me", &[]),
            Step::NoAddress
        );
        let az = address("eipalloc-5", None);
        assert_eq!(
            decide(&[pool, az.clone()], "i-me", &[]),
            Step::Associate(az)
        );
    }

    #[test]
    fn of_several_tagged_addresses_the_lowest_allocation_id_wins() {
        let low = address("eipalloc-1", None);
        let high = address("eipalloc-2", Some("i-me"));
        assert_eq!(
            decide(&[high, low.clone()], "i-me", &[]),
            Step::Associate(low)
        );
    }
}
