//! The AZ's Elastic IP follows its NAT: [`reconcile`] carries out
//! `core::address::decide` (associate, then read back), [`release`] frees
//! the address on a planned termination for the replacement NAT. Not a
//! readiness gate: without it the NAT still egresses, from its own public
//! IP.

use std::time::Duration;

use natron_contract::aws::ErrorKind;
use natron_contract::status::{ElasticIp, ElasticIpState};
use tracing::{info, warn};

use super::boot::Resolved;
use crate::core::address::{self, Step};
use crate::core::schedule::Repeats;
use crate::edge::ec2::{AwsError, Ec2};
use crate::model::address::Address;
use crate::report::status::Shared;

/// How often the AZ's Elastic IP is looked at once settled (on this
/// instance, or none tagged), and while it is not.
const RECHECK: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(10);

fn view(a: &Address, state: ElasticIpState, detail: Option<String>) -> ElasticIp {
    ElasticIp {
        allocation_id: Some(a.allocation_id.clone()),
        public_ip: Some(a.public_ip.clone()),
        state,
        detail,
    }
}

/// Puts this AZ's Elastic IP on this instance; returns when to look again
/// and, when a call failed, how (the caller backs off by its kind).
pub async fn reconcile(
    ec2: &dyn Ec2,
    shared: &Shared,
    r: &Resolved,
    failing: &mut Repeats,
) -> (Duration, Option<ErrorKind>) {
    let me = r.identity.instance_id.as_str();
    let az = r.identity.availability_zone.as_str();
    let result = async {
        let tagged = ec2.az_addresses(&r.group, az).await?;
        // The group is only needed to tell a live sibling from a leftover.
        let group = if address::held_by_other(&tagged, me) {
            ec2.group_instances(&r.identity.vpc_id, &r.group).await?
        } else {
            Vec::new()
        };
        let step = address::decide(&tagged, me, &group);
        if let Step::Associate(a) = &step {
            info!(
                allocation = %a.allocation_id,
                public_ip = %a.public_ip,
                previous_holder = a.instance_id.as_deref().unwrap_or("none"),
                "associating this AZ's Elastic IP with this instance"
            );
            ec2.associate_address(&a.allocation_id, me).await?;
            // Read back, as for every write.
            let again = ec2.az_addresses(&r.group, az).await?;
            if let held @ Step::Held(_) = address::decide(&again, me, &[]) {
                return Ok(held);
            }
        }
        Ok::<Step, AwsError>(step)
    }
    .await;
    let failed = result.as_ref().err().map(|e| e.kind);
    shared.update(|s| s.note_ec2(result.as_ref().err()));
    if failed.is_none() && failing.over() {
        info!("this AZ's Elastic IP step succeeds again");
    }
    let (elastic_ip, next) = match result {
        Ok(Step::NoAddress) => (None, RECHECK),
        Ok(Step::Held(a)) => (Some(view(&a, ElasticIpState::Associated, None)), RECHECK),
        // Not on this instance when read back: look again soon.
        Ok(Step::Associate(a)) => (Some(view(&a, ElasticIpState::Associating, None)), RETRY),
        Ok(Step::Wait { address, holder }) => (
            Some(view(&address, ElasticIpState::Held, Some(holder))),
            RETRY,
        ),
        Err(e) => {
            shared.metrics.ec2_errors.inc();
            if failing.due(&e.to_string(), std::time::Instant::now()) {
                warn!(error = %e, "cannot reconcile this AZ's Elastic IP (said once a minute while it lasts)");
            }
            let previous = shared.read(|s| s.dataplane.elastic_ip.clone());
            let kept = ElasticIp {
                state: ElasticIpState::Error,
                detail: Some(e.to_string()),
                ..previous.unwrap_or(ElasticIp {
                    allocation_id: None,
                    public_ip: None,
                    state: ElasticIpState::Error,
                    detail: None,
                })
            };
            (Some(kept), RETRY)
        }
    };
    let held = elastic_ip
        .as_ref()
        .is_some_and(|e| e.state == ElasticIpState::Associated);
    shared.metrics.elastic_ip_held.set(i64::from(held));
    shared.update(|s| {
        if s.dataplane.elastic_ip != elastic_ip {
            if let Some(e) = &elastic_ip {
                info!(state = ?e.state, allocation = ?e.allocation_id, detail = ?e.detail, "Elastic IP");
            }
        }
        s.dataplane.elastic_ip = elastic_ip;
    });
    (next, failed)
}

/// On a planned termination: frees this AZ's Elastic IP for the
/// replacement NAT, which may be booting already.
pub async fn release(ec2: &dyn Ec2, shared: &Shared, r: &Resolved) {
    let me = r.identity.instance_id.as_str();
    let released = async {
        let tagged = ec2
            .az_addresses(&r.group, &r.identity.availability_zone)
            .await?;
        for a in tagged.iter().filter(|a| a.instance_id.as_deref() == Some(me)) {
            ec2.disassociate_address(a).await?;
            info!(allocation = %a.allocation_id, public_ip = %a.public_ip, "released this AZ's Elastic IP for the replacement NAT");
        }
        Ok::<(), AwsError>(())
    }
    .await;
    if let Err(e) = released {
        shared.metrics.ec2_errors.inc();
        warn!(error = %e, "cannot release this AZ's Elastic IP; the replacement takes it once this instance stops");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::ec2::fake::FakeEc2;
    use crate::model::instance::GroupInstance;
    use crate::model::InstanceState;
    use crate::run::tests::resolved;

    fn address(holder: Option<&str>) -> Address {
        Address {
            allocation_id: "eipalloc-1".into(),
            public_ip: "203.0.113.10".into(),
            association_id: holder.map(|h| format!("eipassoc-{h}")),
            instance_id: holder.map(str::to_string),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_free_address_is_associated_and_read_back() {
        let ec2 = FakeEc2::default();
        ec2.addresses.lock().unwrap().push(address(None));
        let shared = Shared::new();
        let next = reconcile(&ec2, &shared, &resolved(), &mut Repeats::default()).await;
        assert_eq!(next, (RECHECK, None));
        let eip = shared.read(|s| s.dataplane.elastic_ip.clone()).unwrap();
        assert_eq!(eip.state, ElasticIpState::Associated);
        assert_eq!(shared.metrics.elastic_ip_held.get(), 1);
        assert!(ec2
            .calls
            .lock()
            .unwrap()
            .contains(&"AssociateAddress eipalloc-1 i-0abc".to_string()));
    }

    #[tokio::test]
    async fn an_address_on_a_running_sibling_is_waited_for() {
        let ec2 = FakeEc2::default();
        ec2.addresses.lock().unwrap().push(address(Some("i-old")));
        ec2.instances.lock().unwrap().push(GroupInstance {
            instance_id: "i-old".into(),
            availability_zone: "us-east-1a".into(),
            private_ip: None,
            interface_ids: vec![],
            state: InstanceState::Running,
            heartbeat_ms: None,
        });
        let shared = Shared::new();
        assert_eq!(
            reconcile(&ec2, &shared, &resolved(), &mut Repeats::default()).await,
            (RETRY, None)
        );
        let eip = shared.read(|s| s.dataplane.elastic_ip.clone()).unwrap();
        assert_eq!(eip.state, ElasticIpState::Held);
        assert_eq!(eip.detail.as_deref(), Some("i-old"));
        assert!(!ec2
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("AssociateAddress")));
    }

    #[tokio::test]
    async fn release_frees_only_this_instances_address() {
        let ec2 = FakeEc2::default();
        ec2.addresses.lock().unwrap().push(address(Some("i-0abc")));
        release(&ec2, &Shared::new(), &resolved()).await;
        assert_eq!(ec2.addresses.lock().unwrap()[0].instance_id, None);
    }
}
