//! EC2 in memory, for unit tests.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use async_trait::async_trait;
use natron_contract::aws::{AwsError, ErrorKind};

use super::Ec2;
use crate::model::address::{Address, InterfaceAddresses};
use crate::model::instance::GroupInstance;
use crate::model::{Destination, RouteTable, RouteTarget};

/// EC2 in memory: route tables by id, SourceDestCheck by instance,
/// and a queue of errors to return before the next calls succeed.
#[derive(Default)]
pub struct FakeEc2 {
    pub source_dest_check: Mutex<BTreeMap<String, bool>>,
    pub tables: Mutex<BTreeMap<String, Option<RouteTarget>>>,
    /// NAT64 routes by table id (only tables that have one).
    pub nat64: Mutex<BTreeMap<String, RouteTarget>>,
    /// Tables tagged `natron:nat64`.
    pub nat64_tagged: Mutex<std::collections::BTreeSet<String>>,
    pub instances: Mutex<Vec<GroupInstance>>,
    /// `natron:az` tag per table id.
    pub table_az: Mutex<BTreeMap<String, String>>,
    pub addresses: Mutex<Vec<Address>>,
    /// The private addresses of every interface.
    pub interfaces: Mutex<BTreeMap<String, InterfaceAddresses>>,
    pub fail_next: Mutex<Vec<AwsError>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeEc2 {
    fn call(&self, what: String) -> Result<(), AwsError> {
        self.calls.lock().unwrap().push(what);
        match self.fail_next.lock().unwrap().pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records `<action> <table> <eni>` for the default route, `<action>
    /// <table> 64:ff9b::/96 <eni>` for the NAT64 one, and writes it.
    fn write_route(
        &self,
        action: &str,
        table_id: &str,
        destination: Destination,
        eni: &str,
    ) -> Result<(), AwsError> {
        let target = RouteTarget::interface(eni);
        match destination {
            Destination::Default => {
                self.call(format!("{action} {table_id} {eni}"))?;
                self.tables
                    .lock()
                    .unwrap()
                    .insert(table_id.into(), Some(target));
            }
            Destination::Nat64 => {
                self.call(format!("{action} {table_id} {} {eni}", destination.cidr()))?;
                self.nat64.lock().unwrap().insert(table_id.into(), target);
            }
        }
        Ok(())
    }
}

pub fn throttled(op: &'static str) -> AwsError {
    AwsError {
        code: Some("RequestLimitExceeded".into()),
        ..AwsError::new("EC2", op, "x", ErrorKind::Throttled, "slow down")
    }
}

#[async_trait]
impl Ec2 for FakeEc2 {
    async fn source_dest_check(&self, instance_id: &str) -> Result<bool, AwsError> {
        self.call(format!("DescribeInstances {instance_id}"))?;
        Ok(*self
            .source_dest_check
            .lock()
            .unwrap()
            .get(instance_id)
            .unwrap_or(&true))
    }
    async fn disable_source_dest_check(&self, instance_id: &str) -> Result<(), AwsError> {
        self.call(format!("ModifyInstanceAttribute {instance_id}"))?;
        self.source_dest_check
            .lock()
            .unwrap()
            .insert(instance_id.into(), false);
        Ok(())
    }
    async fn route_tables(
        &self,
        _vpc: &str,
        _tags: &[(&str, &str)],
    ) -> Result<Vec<RouteTable>, AwsError> {
        self.call("DescribeRouteTables".into())?;
        Ok(self
            .tables
            .lock()
            .unwrap()
            .iter()
            .map(|(id, t)| RouteTable {
                id: id.clone(),
                az: self.table_az.lock().unwrap().get(id).cloned(),
                default_route: t.clone(),
                nat64_route: self.nat64.lock().unwrap().get(id).cloned(),
                nat64: self.nat64_tagged.lock().unwrap().contains(id),
            })
            .collect())
    }
    async fn route_table(&self, table_id: &str) -> Result<RouteTable, AwsError> {
        self.call(format!("DescribeRouteTables {table_id}"))?;
        Ok(RouteTable {
            id: table_id.into(),
            az: self.table_az.lock().unwrap().get(table_id).cloned(),
            default_route: self.tables.lock().unwrap().get(table_id).cloned().flatten(),
            nat64_route: self.nat64.lock().unwrap().get(table_id).cloned(),
            nat64: self.nat64_tagged.lock().unwrap().contains(table_id),
        })
    }
    async fn group_instances(
        &self,
        _vpc: &str,
        _group: &str,
    ) -> Result<Vec<GroupInstance>, AwsError> {
        self.call("DescribeInstances".into())?;
        Ok(self.instances.lock().unwrap().clone())
    }
    async fn put_heartbeat(&self, instance_id: &str, unix_ms: u64) -> Result<(), AwsError> {
        self.call(format!("CreateTags {instance_id} {unix_ms}"))
    }
    async fn put_source_ports(&self, instance_id: &str, value: &str) -> Result<(), AwsError> {
        self.call(format!(
            "CreateTags {instance_id} natron:source-ports={value}"
        ))
    }
    async fn create_route(
        &self,
        table_id: &str,
        destination: Destination,
        eni: &str,
    ) -> Result<(), AwsError> {
        self.write_route("CreateRoute", table_id, destination, eni)
    }
    async fn replace_route(
        &self,
        table_id: &str,
        destination: Destination,
        eni: &str,
    ) -> Result<(), AwsError> {
        self.write_route("ReplaceRoute", table_id, destination, eni)
    }
    async fn az_addresses(&self, _group: &str, _az: &str) -> Result<Vec<Address>, AwsError> {
        self.call("DescribeAddresses".into())?;
        Ok(self.addresses.lock().unwrap().clone())
    }
    async fn associate_address(&self, allocation: &str, instance: &str) -> Result<(), AwsError> {
        self.call(format!("AssociateAddress {allocation} {instance}"))?;
        for a in self.addresses.lock().unwrap().iter_mut() {
            if a.allocation_id == allocation {
                a.instance_id = Some(instance.into());
                a.association_id = Some(format!("eipassoc-{instance}"));
            }
        }
        Ok(())
    }
    async fn associate_address_with(
        &self,
        allocation: &str,
        interface: &str,
        private_ip: Ipv4Addr,
    ) -> Result<(), AwsError> {
        self.call(format!(
            "AssociateAddress {allocation} {interface} {private_ip}"
        ))?;
        let owner = self
            .instances
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.interface_ids.iter().any(|e| e == interface))
            .map(|i| i.instance_id.clone());
        for a in self.addresses.lock().unwrap().iter_mut() {
            if a.allocation_id == allocation {
                a.instance_id = owner.clone();
                a.private_ip = Some(private_ip);
                a.association_id = Some(format!("eipassoc-{interface}-{private_ip}"));
            }
        }
        Ok(())
    }
    async fn interface_addresses(&self, interface: &str) -> Result<InterfaceAddresses, AwsError> {
        self.call(format!("DescribeNetworkInterfaces {interface}"))?;
        Ok(self
            .interfaces
            .lock()
            .unwrap()
            .get(interface)
            .cloned()
            .unwrap_or_default())
    }
    async fn assign_private_addresses(&self, interface: &str, count: u32) -> Result<(), AwsError> {
        self.call(format!("AssignPrivateIpAddresses {interface} {count}"))?;
        let mut interfaces = self.interfaces.lock().unwrap();
        let nic = interfaces.entry(interface.into()).or_default();
        for _ in 0..count {
            let last = 50 + nic.secondary.len() as u8;
            nic.secondary.push(Ipv4Addr::new(10, 0, 1, last));
        }
        Ok(())
    }
    async fn disassociate_address(&self, address: &Address) -> Result<(), AwsError> {
        self.call(format!("DisassociateAddress {}", address.allocation_id))?;
        for a in self.addresses.lock().unwrap().iter_mut() {
            if a.allocation_id == address.allocation_id {
                a.instance_id = None;
                a.association_id = None;
                a.private_ip = None;
            }
        }
        Ok(())
    }
}
