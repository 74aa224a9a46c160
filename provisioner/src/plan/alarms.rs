//! The group's CloudWatch alarms (`--alarms`, docs/provisioner.md): put
//! when absent or different, deleted when no longer asked for.

use super::Action;
use crate::alarms;
use crate::layout::Layout;
use crate::model::Inventory;

pub(super) fn plan(layout: &Layout, inv: &Inventory, a: &mut Vec<Action>) {
    let wanted = if layout.alarms {
        alarms::wanted(&layout.group, layout.zones.len() as u32)
    } else {
        Vec::new()
    };
    for alarm in &wanted {
        if !inv.alarms.contains(alarm) {
            a.push(Action::PutAlarm {
                alarm: alarm.clone(),
            });
        }
    }
    for have in &inv.alarms {
        if !wanted.iter().any(|w| w.name == have.name) {
            a.push(Action::DeleteAlarm {
                name: have.name.clone(),
            });
        }
    }
}

/// Destroy: first of all, so that tearing the group down pages nobody.
pub(super) fn delete_all(inv: &Inventory, a: &mut Vec<Action>) {
    for have in &inv.alarms {
        a.push(Action::DeleteAlarm {
            name: have.name.clone(),
        });
    }
}
