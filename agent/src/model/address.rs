//! An Elastic IP, as DescribeAddresses reports it.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub allocation_id: String,
    pub public_ip: String,
    /// Empty strings from the API are normalised to None.
    pub association_id: Option<String>,
    pub instance_id: Option<String>,
}
