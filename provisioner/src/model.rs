//! What the provisioner knows about a VPC: plain data read by
//! [`crate::cloud::Cloud::inventory`], the input of every pure function
//! (plan, destroy, check, status).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

pub use natron_contract::ec2::{
    InstanceState, RouteState, DEFAULT_ROUTE, IPV6_DEFAULT_ROUTE, NAT64_ROUTE,
};
pub use natron_contract::tags::NAT64 as NAT64_TAG;
pub use natron_contract::tags::{AZ as AZ_TAG, GROUP as GROUP_TAG};
/// On a route table natron made: the private subnet it was made for.
pub const SUBNET_TAG: &str = "natron:subnet";
/// On a route table natron made: the table the subnet used before (its
/// explicit association), restored by `destroy`.
pub const PREVIOUS_TAG: &str = "natron:previous-route-table";
/// On a route table natron made: natron turned DNS64 on for its subnet
/// (`apply --nat64`), so releasing the subnet turns it off again. Written
/// before the change, so a crash in between leaves it on the safe side.
pub const DNS64_TAG: &str = "natron:dns64";

pub type Tags = BTreeMap<String, String>;

/// Everything in one VPC that natron's commands look at. Resources of the
/// group are the ones tagged `natron:group=<group>`; the rest is read only
/// to validate input and to analyse the configuration.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub vpc_id: String,
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// The VPC's associated IPv6 blocks (NAT64 serves these).
    pub vpc_ipv6_cidrs: Vec<Ipv6Net>,
    /// Availability zones of the region that are available.
    pub zones: Vec<String>,
    pub subnets: Vec<Subnet>,
    pub route_tables: Vec<RouteTable>,
    /// Internet gateways attached to the VPC.
    pub internet_gateways: Vec<String>,
    /// Egress-only internet gateways attached to the VPC (IPv6 out).
    pub egress_only_gateways: Vec<EgressOnlyGateway>,
    pub security_groups: Vec<SecurityGroup>,
    pub network_acls: Vec<NetworkAcl>,
    /// Instances in the VPC tagged with the group (terminated ones left out).
    pub instances: Vec<Instance>,
    /// Elastic IPs tagged with the group.
    pub addresses: Vec<Address>,
    /// The launch template named for the group, whatever its tags.
    pub launch_template: Option<LaunchTemplate>,
    /// Auto Scaling groups tagged with the group or named for it.
    pub auto_scaling_groups: Vec<AutoScalingGroup>,
    /// The IAM role named for the group, whatever its tags.
    pub role: Option<Role>,
    /// The instance profile named for the group, whatever its tags.
    pub instance_profile: Option<InstanceProfile>,
    /// CloudWatch alarms named for the group (`natron-<group>-…`), as read
    /// back.
    pub alarms: Vec<crate::alarms::AlarmSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subnet {
    pub id: String,
    pub az: String,
    pub cidr: Ipv4Net,
    /// Its associated IPv6 block, if any.
    pub ipv6_cidr: Option<Ipv6Net>,
    /// Route 53 Resolver synthesizes `64:ff9b::` addresses for it (DNS64).
    pub dns64: bool,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressOnlyGateway {
    pub id: String,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RouteTable {
    pub id: String,
    pub main: bool,
    pub associations: Vec<Association>,
    pub routes: Vec<Route>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Association {
    pub id: String,
    /// None for the main association.
    pub subnet_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Route {
    pub destination: String,
    pub gateway_id: Option<String>,
    pub instance_id: Option<String>,
    pub interface_id: Option<String>,
    pub nat_gateway_id: Option<String>,
    /// Peering, transit gateway and the like, as their id.
    pub other: Option<String>,
    pub state: Option<RouteState>,
}

impl Route {
    pub fn target(&self) -> String {
        [
            &self.instance_id,
            &self.interface_id,
            &self.nat_gateway_id,
            &self.gateway_id,
            &self.other,
        ]
        .iter()
        .find_map(|t| t.as_ref().cloned())
        .unwrap_or_else(|| "nothing".into())
    }

    pub fn is_internet_gateway(&self) -> bool {
        self.gateway_id
            .as_deref()
            .is_some_and(|g| g.starts_with("igw-"))
    }

    /// The egress-only internet gateway it goes to, if it does.
    pub fn egress_only_gateway(&self) -> Option<&str> {
        self.other.as_deref().filter(|g| g.starts_with("eigw-"))
    }
}

impl RouteTable {
    pub fn default_route(&self) -> Option<&Route> {
        self.route(DEFAULT_ROUTE)
    }

    pub fn route(&self, destination: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.destination == destination)
    }

    /// Tagged to serve NAT64 (any value but `false`, as the agents read it).
    pub fn serves_nat64(&self) -> bool {
        self.tag(NAT64_TAG).is_some_and(|v| v != "false")
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// One ingress or egress permission, flattened to a single source or
/// destination so that sets of them compare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Permission {
    /// "-1" (all), "tcp", "udp", "icmp" or a number.
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub peer: Peer,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Cidr(Ipv4Net),
    Cidr6(Ipv6Net),
    /// A security group: known, or the one an earlier action creates.
    Group(Ref),
}

/// An id known now, or the key of a resource an earlier action creates
/// (the runner puts in its id once it exists). In JSON: the id as a
/// string, or `{"new": key}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ref {
    Id(String),
    New(String),
}

impl Serialize for Ref {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Ref::Id(id) => s.serialize_str(id),
            Ref::New(key) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("new", key)?;
                m.end()
            }
        }
    }
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ref::Id(id) => f.write_str(id),
            Ref::New(key) => write!(f, "<new {key}>"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub tags: Tags,
    pub ingress: Vec<Permission>,
    pub egress: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkAcl {
    pub id: String,
    pub default: bool,
    pub subnet_ids: Vec<String>,
    pub entries: Vec<AclEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AclEntry {
    pub number: i32,
    pub egress: bool,
    /// "-1" for all, else a protocol number ("6" tcp, "17" udp).
    pub protocol: String,
    pub allow: bool,
    pub cidr: Ipv4Net,
    pub ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub id: String,
    pub az: String,
    pub subnet_id: Option<String>,
    pub state: InstanceState,
    pub private_ip: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub interface_ids: Vec<String>,
    pub source_dest_check: Option<bool>,
    pub security_groups: Vec<String>,
    pub tags: Tags,
}

impl Instance {
    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }

    /// Whether a route points at this instance (by id or one of its ENIs).
    pub fn is_target_of(&self, route: &Route) -> bool {
        natron_contract::ec2::route_names(
            route.instance_id.as_deref(),
            route.interface_id.as_deref(),
            &self.id,
            &self.interface_ids,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub allocation_id: String,
    pub public_ip: Option<Ipv4Addr>,
    pub instance_id: Option<String>,
    pub association_id: Option<String>,
    pub tags: Tags,
}

impl Address {
    /// Its `natron:slot` tag: an address of a NAT's pool (None: the AZ's).
    pub fn slot(&self) -> Option<u32> {
        self.tags.get(natron_contract::tags::SLOT)?.parse().ok()
    }
}

/// The launch template settings natron manages, as it reads and writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchSpec {
    pub image_id: String,
    pub instance_type: String,
    pub instance_profile: String,
    pub security_group_id: String,
    /// The agent's configuration (TOML), as plain text.
    pub user_data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchTemplate {
    pub id: String,
    pub name: String,
    pub latest_version: i64,
    /// The latest version's settings; None when they cannot be read.
    pub latest: Option<LaunchSpec>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutoScalingGroup {
    pub name: String,
    pub subnet_ids: Vec<String>,
    pub launch_template_id: Option<String>,
    pub launch_template_version: Option<String>,
    pub min_size: i32,
    pub max_size: i32,
    pub desired: i32,
    pub instance_ids: Vec<String>,
    pub termination_hooks: Vec<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    pub name: String,
    pub tags: Tags,
    /// The inline policies by name, parsed.
    pub policies: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceProfile {
    pub name: String,
    pub roles: Vec<String>,
    pub tags: Tags,
}

/// An AMI as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: String,
    pub name: String,
    /// None when the API does not say (the emulator keeps no architecture).
    pub architecture: Option<String>,
}

/// What natron needs to know of an instance type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceTypeInfo {
    /// Empty: the type is unknown in the region.
    pub architectures: Vec<String>,
    /// Private IPv4 addresses one interface may have (the address pool's
    /// limit); None when the API does not say.
    pub addresses_per_interface: Option<u32>,
}

impl InstanceTypeInfo {
    /// A type that runs `architectures`, with no known address limit.
    pub fn running(architectures: &[&str]) -> InstanceTypeInfo {
        InstanceTypeInfo {
            architectures: architectures.iter().map(|a| a.to_string()).collect(),
            addresses_per_interface: None,
        }
    }
}

impl Inventory {
    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.id == id)
    }

    pub fn route_table(&self, id: &str) -> Option<&RouteTable> {
        self.route_tables.iter().find(|t| t.id == id)
    }

    /// The table a subnet uses: its explicit association, else the main one.
    pub fn route_table_of(&self, subnet_id: &str) -> Option<&RouteTable> {
        self.explicit_route_table_of(subnet_id)
            .or_else(|| self.route_tables.iter().find(|t| t.main))
    }

    pub fn explicit_route_table_of(&self, subnet_id: &str) -> Option<&RouteTable> {
        self.route_tables.iter().find(|t| {
            t.associations
                .iter()
                .any(|a| a.subnet_id.as_deref() == Some(subnet_id))
        })
    }

    /// Whether a subnet's route table sends 0.0.0.0/0 to an internet gateway.
    pub fn is_public(&self, subnet_id: &str) -> bool {
        self.route_table_of(subnet_id)
            .and_then(RouteTable::default_route)
            .is_some_and(Route::is_internet_gateway)
    }

    /// The group's route tables (tagged with it).
    pub fn group_route_tables<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = &'a RouteTable> + 'a {
        self.route_tables
            .iter()
            .filter(move |t| t.tag(GROUP_TAG) == Some(group))
    }

    pub fn instance_for(&self, route: &Route) -> Option<&Instance> {
        self.instances.iter().find(|i| i.is_target_of(route))
    }

    pub fn network_acl_of(&self, subnet_id: &str) -> Option<&NetworkAcl> {
        self.network_acls
            .iter()
            .find(|a| a.subnet_ids.iter().any(|s| s == subnet_id))
            .or_else(|| self.network_acls.iter().find(|a| a.default))
    }

    pub fn security_group(&self, id: &str) -> Option<&SecurityGroup> {
        self.security_groups.iter().find(|g| g.id == id)
    }
}

pub fn has_tag(tags: &Tags, key: &str, value: &str) -> bool {
    tags.get(key).map(String::as_str) == Some(value)
}
