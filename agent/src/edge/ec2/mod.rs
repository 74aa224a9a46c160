//! The EC2 API as the agent needs it: the narrow [`Ec2`] trait over plain
//! data, one real implementation ([`aws::AwsEc2`], aws-sdk-ec2) and one
//! fake for tests. Errors are the contract's [`AwsError`], naming the call
//! and the resource; the retry policy is the contract's too.

use async_trait::async_trait;
pub use natron_contract::aws::AwsError;

use std::net::Ipv4Addr;

use crate::model::address::{Address, InterfaceAddresses};
use crate::model::instance::GroupInstance;
use crate::model::{Destination, RouteTable};

pub mod aws;
#[cfg(test)]
pub mod fake;

#[async_trait]
pub trait Ec2: Send + Sync {
    /// The instance's SourceDestCheck attribute.
    async fn source_dest_check(&self, instance_id: &str) -> Result<bool, AwsError>;
    async fn disable_source_dest_check(&self, instance_id: &str) -> Result<(), AwsError>;
    /// Route tables of `vpc_id` carrying every tag in `tags`.
    async fn route_tables(
        &self,
        vpc_id: &str,
        tags: &[(&str, &str)],
    ) -> Result<Vec<RouteTable>, AwsError>;
    /// One route table, read again (read-verify-write).
    async fn route_table(&self, table_id: &str) -> Result<RouteTable, AwsError>;
    /// Instances of `vpc_id` tagged `natron:group=<group>`, not terminated.
    async fn group_instances(
        &self,
        vpc_id: &str,
        group: &str,
    ) -> Result<Vec<GroupInstance>, AwsError>;
    /// Writes this instance's heartbeat tag.
    async fn put_heartbeat(&self, instance_id: &str, unix_ms: u64) -> Result<(), AwsError>;
    /// Writes this instance's `natron:source-ports` tag (its value made by
    /// `tags::source_ports_value`).
    async fn put_source_ports(&self, instance_id: &str, value: &str) -> Result<(), AwsError>;
    /// Creates the table's route to `destination` through the interface.
    async fn create_route(
        &self,
        table_id: &str,
        destination: Destination,
        interface_id: &str,
    ) -> Result<(), AwsError>;
    /// Points the table's route to `destination` at the interface.
    async fn replace_route(
        &self,
        table_id: &str,
        destination: Destination,
        interface_id: &str,
    ) -> Result<(), AwsError>;
    /// Elastic IPs tagged `natron:group=<group>` and `natron:az=<az>`.
    async fn az_addresses(&self, group: &str, az: &str) -> Result<Vec<Address>, AwsError>;
    /// Associates the address with the instance, taking it from any holder.
    async fn associate_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
    ) -> Result<(), AwsError>;
    /// Associates the address with a (secondary) private address of an
    /// interface, taking it from any holder.
    async fn associate_address_with(
        &self,
        allocation_id: &str,
        interface_id: &str,
        private_ip: Ipv4Addr,
    ) -> Result<(), AwsError>;
    async fn disassociate_address(&self, address: &Address) -> Result<(), AwsError>;
    /// The interface's private IPv4 addresses.
    async fn interface_addresses(&self, interface_id: &str)
        -> Result<InterfaceAddresses, AwsError>;
    /// Adds `count` secondary private addresses, EC2 choosing them.
    async fn assign_private_addresses(
        &self,
        interface_id: &str,
        count: u32,
    ) -> Result<(), AwsError>;
}
