//! The address pool (`nat.addresses = N`): a NAT translates new
//! connections over N private addresses of its interface, each with a
//! public address, so one client reaching one destination gets N times
//! the ports. The primary private address carries the AZ's Elastic IP (or
//! the instance's own public IP, `core::address`); slots 1 to N-1 are
//! secondary private addresses, each with the Elastic IP `natron apply
//! --addresses N` tagged with the group, the AZ and `natron:slot`.
//!
//! [`decide`] is pure: from the interface's addresses, the slot addresses
//! and the group it says what to ask EC2 for and which private addresses
//! translate. A slot's address follows the NAT of its AZ as the AZ's
//! address does, by the same rules (`core::address::chosen` and
//! `live_holder`): taken when free or left on an instance that is not a
//! running NAT of the group, waited for while a running one holds it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::core::address;
use crate::model::address::{Address, InterfaceAddresses};
use crate::model::instance::GroupInstance;

/// What to do about one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotStep {
    /// On `private_ip`, a secondary address of this NAT: it translates.
    Held {
        address: Address,
        private_ip: Ipv4Addr,
    },
    /// Associate `address` with `private_ip`, a free secondary address.
    Associate {
        address: Address,
        private_ip: Ipv4Addr,
    },
    /// A running NAT of the group holds it.
    Wait { address: Address, holder: String },
    /// No Elastic IP is tagged with this slot.
    NoAddress,
    /// No secondary address is free for it (yet, or the instance type's
    /// limit).
    NoPrivateAddress { address: Address },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Secondary private addresses to ask EC2 for (AssignPrivateIpAddresses).
    pub assign: u32,
    /// Slot 1..N-1 → its step.
    pub slots: BTreeMap<u32, SlotStep>,
}

impl Decision {
    /// The private addresses translating, primary first, then by slot.
    pub fn translating(&self, interface: &InterfaceAddresses) -> Vec<Ipv4Addr> {
        interface
            .primary
            .into_iter()
            .chain(self.slots.values().filter_map(|s| match s {
                SlotStep::Held { private_ip, .. } => Some(*private_ip),
                _ => None,
            }))
            .collect()
    }

    /// Whether another instance holds a slot's address, so the group is
    /// needed to tell a live sibling from a leftover.
    pub fn needs_group(tagged: &[Address], me: &str) -> bool {
        tagged.iter().any(|a| {
            a.slot.is_some() && a.instance_id.as_deref().is_some_and(|holder| holder != me)
        })
    }
}

/// What the pool of `wanted` addresses needs. `tagged` are the addresses
/// tagged with this group and AZ (those without a slot are ignored);
/// `group` is consulted only for addresses another instance holds.
pub fn decide(
    wanted: u32,
    interface: &InterfaceAddresses,
    tagged: &[Address],
    me: &str,
    group: &[GroupInstance],
) -> Decision {
    let extra = wanted.saturating_sub(1);
    let assign = extra.saturating_sub(interface.secondary.len() as u32);
    let by_slot: BTreeMap<u32, &Address> = (1..=extra)
        .filter_map(|slot| Some((slot, address::chosen(tagged, Some(slot))?)))
        .collect();
    let mine = |a: &Address| {
        a.instance_id.as_deref() == Some(me)
            && a.private_ip
                .is_some_and(|ip| interface.secondary.contains(&ip))
    };
    // Secondary addresses a slot's address is on already are taken; the
    // rest (also one a losing duplicate is on: EC2 replaces it) are handed
    // out in order to the slots that need one.
    let taken: Vec<Ipv4Addr> = by_slot
        .values()
        .filter(|a| mine(a))
        .filter_map(|a| a.private_ip)
        .collect();
    let mut free = interface
        .secondary
        .iter()
        .copied()
        .filter(|ip| !taken.contains(ip));
    let mut slots = BTreeMap::new();
    for slot in 1..=extra {
        let step = match by_slot.get(&slot) {
            None => SlotStep::NoAddress,
            Some(&a) if mine(a) => SlotStep::Held {
                address: a.clone(),
                private_ip: a.private_ip.expect("mine() checked it"),
            },
            Some(&a) => match address::live_holder(a, me, group) {
                Some(holder) => SlotStep::Wait {
                    address: a.clone(),
                    holder: holder.to_string(),
                },
                None => match free.next() {
                    Some(private_ip) => SlotStep::Associate {
                        address: a.clone(),
                        private_ip,
                    },
                    None => SlotStep::NoPrivateAddress { address: a.clone() },
                },
            },
        };
        slots.insert(slot, step);
    }
    Decision { assign, slots }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceState;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, last)
    }

    fn interface(secondary: &[u8]) -> InterfaceAddresses {
        InterfaceAddresses {
            primary: Some(ip(4)),
            secondary: secondary.iter().map(|&l| ip(l)).collect(),
        }
    }

    fn slot(id: &str, slot: u32, holder: Option<(&str, u8)>) -> Address {
        Address {
            allocation_id: id.into(),
            public_ip: format!("203.0.113.{}", 100 + slot),
            association_id: holder.map(|_| format!("eipassoc-{id}")),
            instance_id: holder.map(|(h, _)| h.to_string()),
            private_ip: holder.map(|(_, l)| ip(l)),
            slot: Some(slot),
        }
    }

    fn nat(id: &str, state: InstanceState) -> GroupInstance {
        GroupInstance {
            instance_id: id.into(),
            availability_zone: "us-east-1a".into(),
            private_ip: None,
            interface_ids: vec![],
            state,
            heartbeat_ms: None,
        }
    }

    #[test]
    fn one_address_needs_nothing() {
        let d = decide(
            1,
            &interface(&[]),
            &[slot("eipalloc-1", 1, None)],
            "i-me",
            &[],
        );
        assert_eq!(d.assign, 0);
        assert!(d.slots.is_empty());
        assert_eq!(d.translating(&interface(&[])), vec![ip(4)]);
    }

    #[test]
    fn missing_secondary_addresses_are_asked_for_and_slots_wait_for_them() {
        let tagged = [slot("eipalloc-1", 1, None), slot("eipalloc-2", 2, None)];
        let d = decide(3, &interface(&[]), &tagged, "i-me", &[]);
        assert_eq!(d.assign, 2);
        assert!(d
            .slots
            .values()
            .all(|s| matches!(s, SlotStep::NoPrivateAddress { .. })));
        assert_eq!(d.translating(&interface(&[])), vec![ip(4)]);
    }

    #[test]
    fn free_addresses_go_to_free_secondaries_and_held_ones_translate() {
        let tagged = [
            slot("eipalloc-1", 1, Some(("i-me", 96))),
            slot("eipalloc-2", 2, None),
        ];
        let nic = interface(&[45, 96]);
        let d = decide(3, &nic, &tagged, "i-me", &[]);
        assert_eq!(d.assign, 0);
        assert_eq!(
            d.slots[&2],
            SlotStep::Associate {
                address: tagged[1].clone(),
                private_ip: ip(45)
            }
        );
        assert_eq!(d.translating(&nic), vec![ip(4), ip(96)]);
    }

    #[test]
    fn a_slot_left_on_a_stopped_nat_is_taken_one_on_a_running_nat_waited_for() {
        let tagged = [
            slot("eipalloc-1", 1, Some(("i-old", 50))),
            slot("eipalloc-2", 2, Some(("i-live", 51))),
        ];
        let group = [
            nat("i-old", InstanceState::Stopped),
            nat("i-live", InstanceState::Running),
        ];
        assert!(Decision::needs_group(&tagged, "i-me"));
        let d = decide(3, &interface(&[45, 46]), &tagged, "i-me", &group);
        assert_eq!(
            d.slots[&1],
            SlotStep::Associate {
                address: tagged[0].clone(),
                private_ip: ip(45)
            }
        );
        assert_eq!(
            d.slots[&2],
            SlotStep::Wait {
                address: tagged[1].clone(),
                holder: "i-live".into()
            }
        );
    }

    #[test]
    fn slots_without_an_address_or_beyond_the_pool_are_reported_or_ignored() {
        let tagged = [slot("eipalloc-9", 5, None), slot("eipalloc-1", 1, None)];
        let d = decide(3, &interface(&[45, 46]), &tagged, "i-me", &[]);
        assert_eq!(d.slots.len(), 2);
        assert_eq!(d.slots[&2], SlotStep::NoAddress);
        assert!(matches!(d.slots[&1], SlotStep::Associate { .. }));
    }

    #[test]
    fn of_two_addresses_tagged_with_one_slot_the_lowest_allocation_id_wins() {
        let tagged = [
            slot("eipalloc-2", 1, Some(("i-me", 45))),
            slot("eipalloc-1", 1, None),
        ];
        let d = decide(2, &interface(&[45]), &tagged, "i-me", &[]);
        // The loser's secondary address goes to the winner.
        assert!(matches!(
            &d.slots[&1],
            SlotStep::Associate { address, private_ip }
                if address.allocation_id == "eipalloc-1" && *private_ip == ip(45)
        ));
    }
}
