//! The group's Elastic IPs: each AZ's own (`--elastic-ip`, no slot tag)
//! and its NAT's address pool (`--addresses N`: slots 1 to N-1, tagged
//! `natron:slot`; the agent puts each on a secondary private address).

use super::Action;
use crate::layout::Layout;
use crate::model::{has_tag, Address, Inventory, AZ_TAG, GROUP_TAG};

/// Allocates the missing addresses; a slot beyond a smaller pool is
/// released (the agent no longer translates to it).
pub(super) fn plan(layout: &Layout, inv: &Inventory, a: &mut Vec<Action>) {
    let group = &layout.group;
    for zone in &layout.zones {
        let of_zone =
            |x: &&Address| has_tag(&x.tags, GROUP_TAG, group) && has_tag(&x.tags, AZ_TAG, &zone.az);
        let has_slot = |slot: Option<u32>| {
            inv.addresses
                .iter()
                .filter(of_zone)
                .any(|x| x.slot() == slot)
        };
        if layout.elastic_ips && !has_slot(None) {
            a.push(Action::AllocateAddress {
                az: zone.az.clone(),
                slot: None,
            });
        }
        for slot in 1..layout.addresses {
            if !has_slot(Some(slot)) {
                a.push(Action::AllocateAddress {
                    az: zone.az.clone(),
                    slot: Some(slot),
                });
            }
        }
        for x in inv.addresses.iter().filter(of_zone) {
            if x.slot().is_some_and(|s| s >= layout.addresses) {
                a.push(Action::ReleaseAddress {
                    allocation_id: x.allocation_id.clone(),
                    association_id: x.association_id.clone(),
                });
            }
        }
    }
}
