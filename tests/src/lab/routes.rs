//! A route table's NAT64 route (`64:ff9b::/96`) in the emulator, as tests
//! set and read it. The lab's router forwards IPv4 only and ignores it; the
//! tests check where EC2 says it points.

use natron_agent::model::NAT64_ROUTE as NAT64;

use super::provision::emu;
use super::Lab;
use crate::LabError;

impl Lab {
    /// Adds `table`'s NAT64 route through `interface`, as `natron apply
    /// --nat64` would.
    pub fn add_nat64_route(&self, table: &str, interface: &str) -> Result<(), LabError> {
        let (table, interface) = (table.to_string(), interface.to_string());
        self.ec2(|ec2| async move {
            ec2.create_route()
                .route_table_id(&table)
                .destination_ipv6_cidr_block(NAT64)
                .network_interface_id(&interface)
                .send()
                .await
                .map_err(emu("CreateRoute 64:ff9b::/96"))?;
            Ok(())
        })
    }

    /// Tags `table` `natron:nat64=true`: it serves NAT64, so the NAT its
    /// default route names gives it a NAT64 route.
    pub fn serve_nat64(&self, table: &str) -> Result<(), LabError> {
        self.tag(table, natron_contract::tags::NAT64, "true")
    }

    /// The interface `table`'s NAT64 route points at, as EC2 says (None:
    /// no such route, or not through an interface).
    pub fn nat64_target(&self, table: &str) -> Result<Option<String>, LabError> {
        let table = table.to_string();
        self.ec2(|ec2| async move {
            let out = ec2
                .describe_route_tables()
                .route_table_ids(&table)
                .send()
                .await
                .map_err(emu("DescribeRouteTables"))?;
            Ok(out
                .route_tables()
                .iter()
                .flat_map(|t| t.routes())
                .find(|r| r.destination_ipv6_cidr_block() == Some(NAT64))
                .and_then(|r| r.network_interface_id())
                .map(str::to_string))
        })
    }
}
