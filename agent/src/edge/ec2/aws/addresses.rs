//! Elastic IPs and an interface's private addresses over aws-sdk-ec2: the
//! AZ's address and the address pool (`core::address`, `core::pool`).

use std::net::Ipv4Addr;

use aws_sdk_ec2::types::Filter;
use natron_contract::aws::AwsError;
use natron_contract::tags;

use super::{classify, missing, AwsEc2};
use crate::model::address::{Address, InterfaceAddresses};

/// What an address is associated with.
pub enum Holder<'a> {
    /// The instance's primary private address.
    Instance(&'a str),
    /// A (secondary) private address of an interface.
    PrivateAddress(&'a str, Ipv4Addr),
}

fn parse_address(a: &aws_sdk_ec2::types::Address) -> Address {
    // The emulator reports an unassociated address with empty strings.
    let some = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
    let tag = |key: &str| {
        a.tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
    };
    Address {
        allocation_id: a.allocation_id().unwrap_or_default().to_string(),
        public_ip: a.public_ip().unwrap_or_default().to_string(),
        association_id: some(a.association_id()),
        instance_id: some(a.instance_id()),
        private_ip: a.private_ip_address().and_then(|p| p.parse().ok()),
        slot: tag(tags::SLOT).and_then(|v| v.parse().ok()),
    }
}

impl AwsEc2 {
    /// Elastic IPs tagged with the group and the AZ (with a slot or not).
    pub(super) async fn describe_az_addresses(
        &self,
        group: &str,
        az: &str,
    ) -> Result<Vec<Address>, AwsError> {
        let (group_tag, az_tag) = (tags::GROUP, tags::AZ);
        let resource = format!("tagged {group_tag}={group},{az_tag}={az}");
        self.read(|| async {
            let out = self
                .request("DescribeAddresses")
                .describe_addresses()
                .filters(
                    Filter::builder()
                        .name(format!("tag:{group_tag}"))
                        .values(group)
                        .build(),
                )
                .filters(
                    Filter::builder()
                        .name(format!("tag:{az_tag}"))
                        .values(az)
                        .build(),
                )
                .send()
                .await
                .map_err(classify("DescribeAddresses", &resource))?;
            Ok(out.addresses().iter().map(parse_address).collect())
        })
        .await
    }

    /// Associates the address, taking it from any holder.
    pub(super) async fn associate(
        &self,
        allocation_id: &str,
        holder: Holder<'_>,
    ) -> Result<(), AwsError> {
        let resource = match holder {
            Holder::Instance(i) => format!("{allocation_id} with {i}"),
            Holder::PrivateAddress(eni, ip) => format!("{allocation_id} with {ip} of {eni}"),
        };
        self.write(|| async {
            let request = self
                .request("AssociateAddress")
                .associate_address()
                .allocation_id(allocation_id)
                .allow_reassociation(true);
            let request = match holder {
                Holder::Instance(i) => request.instance_id(i),
                Holder::PrivateAddress(eni, ip) => request
                    .network_interface_id(eni)
                    .private_ip_address(ip.to_string()),
            };
            request
                .send()
                .await
                .map_err(classify("AssociateAddress", &resource))?;
            Ok(())
        })
        .await
    }

    pub(super) async fn disassociate(&self, address: &Address) -> Result<(), AwsError> {
        let Some(association) = address.association_id.as_deref() else {
            return Ok(());
        };
        let resource = format!("{} ({association})", address.allocation_id);
        self.write(|| async {
            self.request("DisassociateAddress")
                .disassociate_address()
                .association_id(association)
                .send()
                .await
                .map_err(classify("DisassociateAddress", &resource))?;
            Ok(())
        })
        .await
    }

    pub(super) async fn describe_interface_addresses(
        &self,
        interface_id: &str,
    ) -> Result<InterfaceAddresses, AwsError> {
        self.read(|| async {
            let out = self
                .request("DescribeNetworkInterfaces")
                .describe_network_interfaces()
                .network_interface_ids(interface_id)
                .send()
                .await
                .map_err(classify("DescribeNetworkInterfaces", interface_id))?;
            let nic = out.network_interfaces().first().ok_or_else(|| {
                missing(
                    "DescribeNetworkInterfaces",
                    interface_id,
                    "no such network interface",
                )
            })?;
            let mut addresses = InterfaceAddresses::default();
            for p in nic.private_ip_addresses() {
                let Some(ip) = p.private_ip_address().and_then(|p| p.parse().ok()) else {
                    continue;
                };
                if p.primary() == Some(true) {
                    addresses.primary = Some(ip);
                } else {
                    addresses.secondary.push(ip);
                }
            }
            Ok(addresses)
        })
        .await
    }

    pub(super) async fn assign(&self, interface_id: &str, count: u32) -> Result<(), AwsError> {
        let resource = format!("{count} secondary private address(es) on {interface_id}");
        self.write(|| async {
            self.request("AssignPrivateIpAddresses")
                .assign_private_ip_addresses()
                .network_interface_id(interface_id)
                .secondary_private_ip_address_count(count as i32)
                .send()
                .await
                .map_err(classify("AssignPrivateIpAddresses", &resource))?;
            Ok(())
        })
        .await
    }
}
