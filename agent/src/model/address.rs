//! Elastic IPs, as DescribeAddresses reports them, and the private
//! addresses of an interface, as DescribeNetworkInterfaces does.

use std::net::Ipv4Addr;

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Address {
    pub allocation_id: String,
    pub public_ip: String,
    /// Empty strings from the API are normalised to None.
    pub association_id: Option<String>,
    pub instance_id: Option<String>,
    /// The private address it is associated with.
    pub private_ip: Option<Ipv4Addr>,
    /// Its `natron:slot` tag: an address of a NAT's pool. None: the AZ's
    /// address, on the primary private address.
    pub slot: Option<u32>,
}

/// The private IPv4 addresses of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InterfaceAddresses {
    pub primary: Option<Ipv4Addr>,
    /// In the order EC2 lists them.
    pub secondary: Vec<Ipv4Addr>,
}
