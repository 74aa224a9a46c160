//! [`Ec2`] over aws-sdk-ec2: requests, answers parsed into plain data,
//! every request counted.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter};
use natron_contract::aws::{with_retries, AwsError, ErrorKind, RetryPolicy};
use natron_contract::status::ApiError;
use natron_contract::tags;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::Ec2;
use crate::model::address::{Address, InterfaceAddresses};
use crate::model::instance::GroupInstance;
use crate::model::{
    Destination, InstanceState, Labels, RouteState, RouteTable, RouteTarget, DEFAULT_ROUTE,
    NAT64_ROUTE,
};
use addresses::Holder;

mod addresses;

const SERVICE: &str = "EC2";

fn classify<'a, E, R>(
    operation: &'static str,
    resource: &'a str,
) -> impl FnOnce(aws_sdk_ec2::error::SdkError<E, R>) -> AwsError + 'a
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    move |e| AwsError::from_sdk(SERVICE, operation, resource, e)
}

fn missing(operation: &'static str, resource: &str, message: &str) -> AwsError {
    AwsError::new(SERVICE, operation, resource, ErrorKind::NotFound, message)
}

fn parse_route_table(rt: &aws_sdk_ec2::types::RouteTable) -> RouteTable {
    let target = |r: &aws_sdk_ec2::types::Route| RouteTarget {
        instance_id: r.instance_id().map(str::to_string),
        interface_id: r.network_interface_id().map(str::to_string),
        other: r
            .gateway_id()
            .or(r.nat_gateway_id())
            .or(r.vpc_peering_connection_id())
            .or(r.transit_gateway_id())
            .or(r.egress_only_internet_gateway_id())
            .map(str::to_string),
        state: r.state().map(|s| RouteState::parse(s.as_str())),
    };
    let routes = rt.routes();
    RouteTable {
        id: rt.route_table_id().unwrap_or_default().to_string(),
        az: rt
            .tags()
            .iter()
            .find(|t| t.key() == Some(tags::AZ))
            .and_then(|t| t.value())
            .map(str::to_string),
        nat64: rt
            .tags()
            .iter()
            .any(|t| t.key() == Some(tags::NAT64) && t.value() != Some("false")),
        default_route: routes
            .iter()
            .find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE))
            .map(target),
        nat64_route: routes
            .iter()
            .find(|r| r.destination_ipv6_cidr_block() == Some(NAT64_ROUTE))
            .map(target),
    }
}

fn parse_instance(i: &aws_sdk_ec2::types::Instance) -> GroupInstance {
    GroupInstance {
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string(),
        private_ip: i.private_ip_address().and_then(|p| p.parse().ok()),
        interface_ids: i
            .network_interfaces()
            .iter()
            .filter_map(|n| n.network_interface_id().map(str::to_string))
            .collect(),
        state: InstanceState::parse(
            i.state()
                .and_then(|s| s.name())
                .map(|n| n.as_str())
                .unwrap_or_default(),
        ),
        heartbeat_ms: i
            .tags()
            .iter()
            .find(|t| t.key() == Some(tags::HEARTBEAT))
            .and_then(|t| t.value()?.parse().ok()),
    }
}

/// What the agent counts of its EC2 calls (families of /metrics, by
/// operation, and for retries and failures by error code too).
#[derive(Clone, Default)]
pub struct Counters {
    /// Requests sent, every attempt.
    pub requests: Family<Labels, Counter>,
    /// Attempts that failed and were retried.
    pub retries: Family<Labels, Counter>,
    /// Calls that failed after their last attempt.
    pub failures: Family<Labels, Counter>,
    /// The latest failed attempt, retried or not.
    pub last_error: Arc<Mutex<Option<ApiError>>>,
}

/// aws-sdk-ec2 behind [`Ec2`]. The SDK's own retries are off: the
/// contract's [`with_retries`] is the one policy, so it is visible,
/// counted and tested.
pub struct AwsEc2 {
    client: aws_sdk_ec2::Client,
    retry: RetryPolicy,
    counters: Counters,
}

impl AwsEc2 {
    /// Uses the standard credential chain and `AWS_ENDPOINT_URL` when set.
    pub async fn new(
        region: &str,
        retry: RetryPolicy,
        endpoint_url: Option<&str>,
        counters: Counters,
    ) -> AwsEc2 {
        let config = crate::edge::sdk::config(region, endpoint_url).await;
        AwsEc2 {
            client: aws_sdk_ec2::Client::new(&config),
            retry,
            counters,
        }
    }

    /// The client, counting one request of `operation`: every call site
    /// builds its request from here right before sending it.
    fn request(&self, operation: &'static str) -> &aws_sdk_ec2::Client {
        self.counters
            .requests
            .get_or_create(&vec![("operation".to_string(), operation.to_string())])
            .inc();
        &self.client
    }

    /// A read made on a schedule: throttling is not retried in place (the
    /// schedule backs off), other transient errors are.
    async fn read<T, F, Fut>(&self, op: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        self.call(self.retry.periodic(), op).await
    }

    /// A write the agent needs done now (a route move, the source/dest
    /// check, an address): every transient error is retried.
    async fn write<T, F, Fut>(&self, op: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        self.call(self.retry, op).await
    }

    async fn call<T, F, Fut>(&self, policy: RetryPolicy, op: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AwsError>>,
    {
        self.observe(with_retries(policy, |e| self.count(&self.counters.retries, e), op).await)
    }

    /// One CreateTags attempt of `key` on `instance_id`.
    async fn tag_once(&self, instance_id: &str, key: &str, value: &str) -> Result<(), AwsError> {
        let result = self
            .request("CreateTags")
            .create_tags()
            .resources(instance_id)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(key)
                    .value(value)
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(classify("CreateTags", instance_id));
        self.observe(result)
    }

    /// Counts a call's final failure.
    fn observe<T>(&self, result: Result<T, AwsError>) -> Result<T, AwsError> {
        if let Err(e) = &result {
            self.count(&self.counters.failures, e);
        }
        result
    }

    fn count(&self, family: &Family<Labels, Counter>, e: &AwsError) {
        *self
            .counters
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ApiError {
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            operation: e.operation.to_string(),
            code: e.code_or_kind().to_string(),
            message: e.message.to_string(),
        });
        family
            .get_or_create(&vec![
                ("operation".to_string(), e.operation.to_string()),
                ("code".to_string(), e.code_or_kind().to_string()),
            ])
            .inc();
    }
}

#[async_trait]
impl Ec2 for AwsEc2 {
    async fn source_dest_check(&self, instance_id: &str) -> Result<bool, AwsError> {
        self.read(|| async {
            let out = self
                .request("DescribeInstances")
                .describe_instances()
                .instance_ids(instance_id)
                .send()
                .await
                .map_err(classify("DescribeInstances", instance_id))?;
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(instance_id))
                .and_then(|i| i.source_dest_check())
                .ok_or_else(|| {
                    missing(
                        "DescribeInstances",
                        instance_id,
                        "instance or its SourceDestCheck attribute not in the answer",
                    )
                })
        })
        .await
    }

    async fn disable_source_dest_check(&self, instance_id: &str) -> Result<(), AwsError> {
        self.write(|| async {
            self.request("ModifyInstanceAttribute")
                .modify_instance_attribute()
                .instance_id(instance_id)
                .source_dest_check(AttributeBooleanValue::builder().value(false).build())
                .send()
                .await
                .map_err(classify("ModifyInstanceAttribute", instance_id))?;
            Ok(())
        })
        .await
    }

    async fn route_tables(
        &self,
        vpc_id: &str,
        tags: &[(&str, &str)],
    ) -> Result<Vec<RouteTable>, AwsError> {
        let resource = format!(
            "in {vpc_id} tagged {}",
            tags.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        self.read(|| async {
            let mut filters = vec![Filter::builder().name("vpc-id").values(vpc_id).build()];
            for (k, v) in tags {
                filters.push(
                    Filter::builder()
                        .name(format!("tag:{k}"))
                        .values(*v)
                        .build(),
                );
            }
            let mut tables = Vec::new();
            let mut token = None;
            loop {
                let out = self
                    .request("DescribeRouteTables")
                    .describe_route_tables()
                    .set_filters(Some(filters.clone()))
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(classify("DescribeRouteTables", &resource))?;
                tables.extend(out.route_tables().iter().map(parse_route_table));
                token = out.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            tables.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(tables)
        })
        .await
    }

    async fn route_table(&self, table_id: &str) -> Result<RouteTable, AwsError> {
        self.read(|| async {
            let out = self
                .request("DescribeRouteTables")
                .describe_route_tables()
                .route_table_ids(table_id)
                .send()
                .await
                .map_err(classify("DescribeRouteTables", table_id))?;
            out.route_tables()
                .first()
                .map(parse_route_table)
                .ok_or_else(|| {
                    missing(
                        "DescribeRouteTables",
                        table_id,
                        "route table not in the answer",
                    )
                })
        })
        .await
    }

    async fn group_instances(
        &self,
        vpc_id: &str,
        group: &str,
    ) -> Result<Vec<GroupInstance>, AwsError> {
        let resource = format!("in {vpc_id} tagged {}={group}", tags::GROUP);
        self.read(|| async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .request("DescribeInstances")
                    .describe_instances()
                    .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
                    .filters(
                        Filter::builder()
                            .name(format!("tag:{}", tags::GROUP))
                            .values(group)
                            .build(),
                    )
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(classify("DescribeInstances", &resource))?;
                out.extend(
                    page.reservations()
                        .iter()
                        .flat_map(|r| r.instances())
                        .map(parse_instance)
                        .filter(|i| i.state != InstanceState::Terminated),
                );
                token = page.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            Ok(out)
        })
        .await
    }

    async fn put_heartbeat(&self, instance_id: &str, unix_ms: u64) -> Result<(), AwsError> {
        // One attempt: the next beat is the retry.
        self.tag_once(instance_id, tags::HEARTBEAT, &unix_ms.to_string())
            .await
    }

    async fn put_source_ports(&self, instance_id: &str, value: &str) -> Result<(), AwsError> {
        // One attempt: the next minute's is the retry.
        self.tag_once(instance_id, tags::SOURCE_PORTS, value).await
    }

    async fn create_route(
        &self,
        table_id: &str,
        destination: Destination,
        interface_id: &str,
    ) -> Result<(), AwsError> {
        self.write(|| async {
            let request = self
                .request("CreateRoute")
                .create_route()
                .route_table_id(table_id)
                .network_interface_id(interface_id);
            match destination {
                Destination::Default => request.destination_cidr_block(destination.cidr()),
                Destination::Nat64 => request.destination_ipv6_cidr_block(destination.cidr()),
            }
            .send()
            .await
            .map_err(classify("CreateRoute", table_id))?;
            Ok(())
        })
        .await
    }

    async fn replace_route(
        &self,
        table_id: &str,
        destination: Destination,
        interface_id: &str,
    ) -> Result<(), AwsError> {
        self.write(|| async {
            let request = self
                .request("ReplaceRoute")
                .replace_route()
                .route_table_id(table_id)
                .network_interface_id(interface_id);
            match destination {
                Destination::Default => request.destination_cidr_block(destination.cidr()),
                Destination::Nat64 => request.destination_ipv6_cidr_block(destination.cidr()),
            }
            .send()
            .await
            .map_err(classify("ReplaceRoute", table_id))?;
            Ok(())
        })
        .await
    }

    async fn az_addresses(&self, group: &str, az: &str) -> Result<Vec<Address>, AwsError> {
        self.describe_az_addresses(group, az).await
    }

    async fn associate_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
    ) -> Result<(), AwsError> {
        self.associate(allocation_id, Holder::Instance(instance_id))
            .await
    }

    async fn associate_address_with(
        &self,
        allocation_id: &str,
        interface_id: &str,
        private_ip: Ipv4Addr,
    ) -> Result<(), AwsError> {
        self.associate(
            allocation_id,
            Holder::PrivateAddress(interface_id, private_ip),
        )
        .await
    }

    async fn disassociate_address(&self, address: &Address) -> Result<(), AwsError> {
        self.disassociate(address).await
    }

    async fn interface_addresses(
        &self,
        interface_id: &str,
    ) -> Result<InterfaceAddresses, AwsError> {
        self.describe_interface_addresses(interface_id).await
    }

    async fn assign_private_addresses(
        &self,
        interface_id: &str,
        count: u32,
    ) -> Result<(), AwsError> {
        self.assign(interface_id, count).await
    }
}
