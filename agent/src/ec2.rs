//! The EC2 API as the agent needs it: a narrow trait over plain data, one
//! real implementation (aws-sdk-ec2), one fake for tests, and the retry
//! policy for throttling, 5xx and network errors. Every error names the call
//! and the resource.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::address::Address;
use crate::error_chain;
use crate::state::Labels;

pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";
/// The tag an agent refreshes on its own instance to show it is alive.
pub const HEARTBEAT_TAG: &str = "natron:heartbeat";

#[derive(Debug, Clone, thiserror::Error)]
#[error("EC2 {operation} {resource}: {}{message}", code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct Ec2Error {
    pub operation: &'static str,
    pub resource: String,
    pub code: Option<String>,
    pub message: String,
    /// Throttling, server-side (5xx) and transport errors are worth retrying.
    pub retryable: bool,
}

/// Where a route table's default route points, as EC2 reports it. AWS fills
/// both the instance and the ENI for an instance route; the emulator only
/// the one that was set, so both are kept and either may match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteTarget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_id: Option<String>,
    /// Any other target (internet or NAT gateway, peering...), by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl RouteTarget {
    pub fn describe(&self) -> String {
        self.interface_id
            .clone()
            .or_else(|| self.instance_id.clone())
            .or_else(|| self.other.clone())
            .unwrap_or_else(|| "nothing".into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteTable {
    pub id: String,
    /// The table's `natron:az` tag: the AZ whose NAT is its home.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub az: Option<String>,
    pub default_route: Option<RouteTarget>,
}

/// An instance of the group, as DescribeInstances reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupInstance {
    pub instance_id: String,
    pub availability_zone: String,
    pub private_ip: Option<std::net::Ipv4Addr>,
    pub interface_ids: Vec<String>,
    /// pending, running, stopping, stopped, shutting-down...
    pub state: String,
    /// The `natron:heartbeat` tag: unix milliseconds of its last beat.
    pub heartbeat_ms: Option<u64>,
}

impl GroupInstance {
    /// Whether a route with this target points at this instance (by its
    /// instance id or one of its ENIs: the emulator reports only one).
    pub fn is_target_of(&self, target: &RouteTarget) -> bool {
        target.instance_id.as_deref() == Some(self.instance_id.as_str())
            || target
                .interface_id
                .as_ref()
                .is_some_and(|e| self.interface_ids.contains(e))
    }
}

#[async_trait]
pub trait Ec2: Send + Sync {
    /// The instance's SourceDestCheck attribute.
    async fn source_dest_check(&self, instance_id: &str) -> Result<bool, Ec2Error>;
    async fn disable_source_dest_check(&self, instance_id: &str) -> Result<(), Ec2Error>;
    /// Route tables of `vpc_id` carrying every tag in `tags`.
    async fn route_tables(
        &self,
        vpc_id: &str,
        tags: &[(&str, &str)],
    ) -> Result<Vec<RouteTable>, Ec2Error>;
    /// One route table, read again (read-verify-write).
    async fn route_table(&self, table_id: &str) -> Result<RouteTable, Ec2Error>;
    /// Instances of `vpc_id` tagged `natron:group=<group>`, not terminated.
    async fn group_instances(
        &self,
        vpc_id: &str,
        group: &str,
    ) -> Result<Vec<GroupInstance>, Ec2Error>;
    /// Writes this instance's heartbeat tag.
    async fn put_heartbeat(&self, instance_id: &str, unix_ms: u64) -> Result<(), Ec2Error>;
    async fn create_default_route(
        &self,
        table_id: &str,
        interface_id: &str,
    ) -> Result<(), Ec2Error>;
    async fn replace_default_route(
        &self,
        table_id: &str,
        interface_id: &str,
    ) -> Result<(), Ec2Error>;
    /// Elastic IPs tagged `natron:group=<group>` and `natron:az=<az>`.
    async fn az_addresses(&self, group: &str, az: &str) -> Result<Vec<Address>, Ec2Error>;
    /// Associates the address with the instance, taking it from any holder.
    async fn associate_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
    ) -> Result<(), Ec2Error>;
    async fn disassociate_address(&self, address: &Address) -> Result<(), Ec2Error>;
}

/// Calls `op` up to `attempts` times while it fails with a retryable error,
/// sleeping with capped exponential backoff (and jitter) in between.
pub async fn with_retries<T, F, Fut>(
    attempts: u32,
    base: Duration,
    mut op: F,
) -> Result<T, Ec2Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Ec2Error>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.retryable && attempt < attempts => {
                let backoff = (base * 2u32.saturating_pow(attempt - 1)).min(Duration::from_secs(5));
                let delay = backoff / 2 + jitter(backoff / 2);
                tracing::warn!(attempt, error = %e, "retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    max.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalError",
    "Unavailable",
];

fn classify<E, R>(operation: &'static str, resource: &str, err: SdkError<E, R>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
    SdkError<E, R>: ProvideErrorMetadata,
{
    let code = err.code().map(str::to_string);
    let message = err
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| error_chain(&err));
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => {
            code.as_deref().is_some_and(|c| THROTTLING.contains(&c)) || code.is_none()
        }
        _ => false,
    };
    Ec2Error {
        operation,
        resource: resource.to_string(),
        code,
        message,
        retryable,
    }
}

fn parse_route_table(rt: &aws_sdk_ec2::types::RouteTable) -> RouteTable {
    let default_route = rt
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE))
        .map(|r| RouteTarget {
            instance_id: r.instance_id().map(str::to_string),
            interface_id: r.network_interface_id().map(str::to_string),
            other: r
                .gateway_id()
                .or(r.nat_gateway_id())
                .or(r.vpc_peering_connection_id())
                .or(r.transit_gateway_id())
                .map(str::to_string),
            state: r.state().map(|s| s.as_str().to_string()),
        });
    RouteTable {
        id: rt.route_table_id().unwrap_or_default().to_string(),
        az: rt
            .tags()
            .iter()
            .find(|t| t.key() == Some(crate::identity::AZ_TAG))
            .and_then(|t| t.value())
            .map(str::to_string),
        default_route,
    }
}

fn parse_address(a: &aws_sdk_ec2::types::Address) -> Address {
    // The emulator reports an unassociated address with empty strings.
    let some = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
    Address {
        allocation_id: a.allocation_id().unwrap_or_default().to_string(),
        public_ip: a.public_ip().unwrap_or_default().to_string(),
        association_id: some(a.association_id()),
        instance_id: some(a.instance_id()),
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
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
        heartbeat_ms: i
            .tags()
            .iter()
            .find(|t| t.key() == Some(HEARTBEAT_TAG))
            .and_then(|t| t.value()?.parse().ok()),
    }
}

/// aws-sdk-ec2 behind [`Ec2`]. The SDK's own retries are off: [`with_retries`]
/// is the one policy, so it is visible, logged and tested.
pub struct AwsEc2 {
    client: aws_sdk_ec2::Client,
    attempts: u32,
    /// Requests sent, by operation (every attempt counts).
    requests: Family<Labels, Counter>,
}

impl AwsEc2 {
    /// Uses the standard credential chain and `AWS_ENDPOINT_URL` when set.
    pub async fn new(
        region: &str,
        attempts: u32,
        endpoint_url: Option<&str>,
        requests: Family<Labels, Counter>,
    ) -> AwsEc2 {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader
            .region(aws_config::Region::new(region.to_string()))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .build(),
            )
            .load()
            .await;
        AwsEc2 {
            client: aws_sdk_ec2::Client::new(&config),
            attempts,
            requests,
        }
    }

    /// The client, counting one request of `operation`: every call site
    /// builds its request from here right before sending it.
    fn request(&self, operation: &'static str) -> &aws_sdk_ec2::Client {
        self.requests
            .get_or_create(&vec![("operation".to_string(), operation.to_string())])
            .inc();
        &self.client
    }

    async fn retry<T, F, Fut>(&self, op: F) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Ec2Error>>,
    {
        with_retries(self.attempts, Duration::from_millis(200), op).await
    }
}

#[async_trait]
impl Ec2 for AwsEc2 {
    async fn source_dest_check(&self, instance_id: &str) -> Result<bool, Ec2Error> {
        self.retry(|| async {
            let out = self
                .request("DescribeInstances")
                .describe_instances()
                .instance_ids(instance_id)
                .send()
                .await
                .map_err(|e| classify("DescribeInstances", instance_id, e))?;
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find(|i| i.instance_id() == Some(instance_id))
                .and_then(|i| i.source_dest_check())
                .ok_or_else(|| Ec2Error {
                    operation: "DescribeInstances",
                    resource: instance_id.into(),
                    code: None,
                    message: "instance or its SourceDestCheck attribute not in the answer".into(),
                    retryable: false,
                })
        })
        .await
    }

    async fn disable_source_dest_check(&self, instance_id: &str) -> Result<(), Ec2Error> {
        self.retry(|| async {
            self.request("ModifyInstanceAttribute")
                .modify_instance_attribute()
                .instance_id(instance_id)
                .source_dest_check(AttributeBooleanValue::builder().value(false).build())
                .send()
                .await
                .map_err(|e| classify("ModifyInstanceAttribute", instance_id, e))?;
            Ok(())
        })
        .await
    }

    async fn route_tables(
        &self,
        vpc_id: &str,
        tags: &[(&str, &str)],
    ) -> Result<Vec<RouteTable>, Ec2Error> {
        let resource = format!(
            "in {vpc_id} tagged {}",
            tags.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        self.retry(|| async {
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
                    .map_err(|e| classify("DescribeRouteTables", &resource, e))?;
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

    async fn route_table(&self, table_id: &str) -> Result<RouteTable, Ec2Error> {
        self.retry(|| async {
            let out = self
                .request("DescribeRouteTables")
                .describe_route_tables()
                .route_table_ids(table_id)
                .send()
                .await
                .map_err(|e| classify("DescribeRouteTables", table_id, e))?;
            out.route_tables()
                .first()
                .map(parse_route_table)
                .ok_or_else(|| Ec2Error {
                    operation: "DescribeRouteTables",
                    resource: table_id.into(),
                    code: None,
                    message: "route table not in the answer".into(),
                    retryable: false,
                })
        })
        .await
    }

    async fn group_instances(
        &self,
        vpc_id: &str,
        group: &str,
    ) -> Result<Vec<GroupInstance>, Ec2Error> {
        let resource = format!("in {vpc_id} tagged {}={group}", crate::identity::GROUP_TAG);
        self.retry(|| async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .request("DescribeInstances")
                    .describe_instances()
                    .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
                    .filters(
                        Filter::builder()
                            .name(format!("tag:{}", crate::identity::GROUP_TAG))
                            .values(group)
                            .build(),
                    )
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| classify("DescribeInstances", &resource, e))?;
                out.extend(
                    page.reservations()
                        .iter()
                        .flat_map(|r| r.instances())
                        .map(parse_instance)
                        .filter(|i| i.state != "terminated"),
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

    async fn put_heartbeat(&self, instance_id: &str, unix_ms: u64) -> Result<(), Ec2Error> {
        // One attempt: the next beat is the retry.
        self.request("CreateTags")
            .create_tags()
            .resources(instance_id)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(HEARTBEAT_TAG)
                    .value(unix_ms.to_string())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CreateTags", instance_id, e))?;
        Ok(())
    }

    async fn create_default_route(
        &self,
        table_id: &str,
        interface_id: &str,
    ) -> Result<(), Ec2Error> {
        self.retry(|| async {
            self.request("CreateRoute")
                .create_route()
                .route_table_id(table_id)
                .destination_cidr_block(DEFAULT_ROUTE)
                .network_interface_id(interface_id)
                .send()
                .await
                .map_err(|e| classify("CreateRoute", table_id, e))?;
            Ok(())
        })
        .await
    }

    async fn replace_default_route(
        &self,
        table_id: &str,
        interface_id: &str,
    ) -> Result<(), Ec2Error> {
        self.retry(|| async {
            self.request("ReplaceRoute")
                .replace_route()
                .route_table_id(table_id)
                .destination_cidr_block(DEFAULT_ROUTE)
                .network_interface_id(interface_id)
                .send()
                .await
                .map_err(|e| classify("ReplaceRoute", table_id, e))?;
            Ok(())
        })
        .await
    }

    async fn az_addresses(&self, group: &str, az: &str) -> Result<Vec<Address>, Ec2Error> {
        let (group_tag, az_tag) = (crate::identity::GROUP_TAG, crate::identity::AZ_TAG);
        let resource = format!("tagged {group_tag}={group},{az_tag}={az}");
        self.retry(|| async {
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
                .map_err(|e| classify("DescribeAddresses", &resource, e))?;
            Ok(out.addresses().iter().map(parse_address).collect())
        })
        .await
    }

    async fn associate_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
    ) -> Result<(), Ec2Error> {
        let resource = format!("{allocation_id} with {instance_id}");
        self.retry(|| async {
            self.request("AssociateAddress")
                .associate_address()
                .allocation_id(allocation_id)
                .instance_id(instance_id)
                .allow_reassociation(true)
                .send()
                .await
                .map_err(|e| classify("AssociateAddress", &resource, e))?;
            Ok(())
        })
        .await
    }

    async fn disassociate_address(&self, address: &Address) -> Result<(), Ec2Error> {
        let Some(association) = address.association_id.as_deref() else {
            return Ok(());
        };
        let resource = format!("{} ({association})", address.allocation_id);
        self.retry(|| async {
            self.request("DisassociateAddress")
                .disassociate_address()
                .association_id(association)
                .send()
                .await
                .map_err(|e| classify("DisassociateAddress", &resource, e))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// EC2 in memory: route tables by id, SourceDestCheck by instance,
    /// and a queue of errors to return before the next calls succeed.
    #[derive(Default)]
    pub struct FakeEc2 {
        pub source_dest_check: Mutex<BTreeMap<String, bool>>,
        pub tables: Mutex<BTreeMap<String, Option<RouteTarget>>>,
        pub instances: Mutex<Vec<GroupInstance>>,
        /// `natron:az` tag per table id.
        pub table_az: Mutex<BTreeMap<String, String>>,
        pub addresses: Mutex<Vec<Address>>,
        pub fail_next: Mutex<Vec<Ec2Error>>,
        pub calls: Mutex<Vec<String>>,
    }

    impl FakeEc2 {
        fn call(&self, what: String) -> Result<(), Ec2Error> {
            self.calls.lock().unwrap().push(what);
            match self.fail_next.lock().unwrap().pop() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }

    pub fn throttled(op: &'static str) -> Ec2Error {
        Ec2Error {
            operation: op,
            resource: "x".into(),
            code: Some("RequestLimitExceeded".into()),
            message: "slow down".into(),
            retryable: true,
        }
    }

    #[async_trait]
    impl Ec2 for FakeEc2 {
        async fn source_dest_check(&self, instance_id: &str) -> Result<bool, Ec2Error> {
            self.call(format!("DescribeInstances {instance_id}"))?;
            Ok(*self
                .source_dest_check
                .lock()
                .unwrap()
                .get(instance_id)
                .unwrap_or(&true))
        }
        async fn disable_source_dest_check(&self, instance_id: &str) -> Result<(), Ec2Error> {
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
        ) -> Result<Vec<RouteTable>, Ec2Error> {
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
                })
                .collect())
        }
        async fn route_table(&self, table_id: &str) -> Result<RouteTable, Ec2Error> {
            self.call(format!("DescribeRouteTables {table_id}"))?;
            Ok(RouteTable {
                id: table_id.into(),
                az: self.table_az.lock().unwrap().get(table_id).cloned(),
                default_route: self.tables.lock().unwrap().get(table_id).cloned().flatten(),
            })
        }
        async fn group_instances(
            &self,
            _vpc: &str,
            _group: &str,
        ) -> Result<Vec<GroupInstance>, Ec2Error> {
            self.call("DescribeInstances".into())?;
            Ok(self.instances.lock().unwrap().clone())
        }
        async fn put_heartbeat(&self, instance_id: &str, unix_ms: u64) -> Result<(), Ec2Error> {
            self.call(format!("CreateTags {instance_id} {unix_ms}"))
        }
        async fn create_default_route(&self, table_id: &str, eni: &str) -> Result<(), Ec2Error> {
            self.call(format!("CreateRoute {table_id} {eni}"))?;
            let target = RouteTarget {
                interface_id: Some(eni.into()),
                ..Default::default()
            };
            self.tables
                .lock()
                .unwrap()
                .insert(table_id.into(), Some(target));
            Ok(())
        }
        async fn replace_default_route(&self, table_id: &str, eni: &str) -> Result<(), Ec2Error> {
            self.create_default_route(table_id, eni).await?;
            let mut calls = self.calls.lock().unwrap();
            let last = calls.len() - 1;
            calls[last] = format!("ReplaceRoute {table_id} {eni}");
            Ok(())
        }
        async fn az_addresses(&self, _group: &str, _az: &str) -> Result<Vec<Address>, Ec2Error> {
            self.call("DescribeAddresses".into())?;
            Ok(self.addresses.lock().unwrap().clone())
        }
        async fn associate_address(
            &self,
            allocation: &str,
            instance: &str,
        ) -> Result<(), Ec2Error> {
            self.call(format!("AssociateAddress {allocation} {instance}"))?;
            for a in self.addresses.lock().unwrap().iter_mut() {
                if a.allocation_id == allocation {
                    a.instance_id = Some(instance.into());
                    a.association_id = Some(format!("eipassoc-{instance}"));
                }
            }
            Ok(())
        }
        async fn disassociate_address(&self, address: &Address) -> Result<(), Ec2Error> {
            self.call(format!("DisassociateAddress {}", address.allocation_id))?;
            for a in self.addresses.lock().unwrap().iter_mut() {
                if a.allocation_id == address.allocation_id {
                    a.instance_id = None;
                    a.association_id = None;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_then_succeeds() {
        let ec2 = FakeEc2::default();
        ec2.fail_next.lock().unwrap().extend([
            throttled("DescribeInstances"),
            throttled("DescribeInstances"),
        ]);
        let v = with_retries(5, Duration::from_millis(100), || {
            ec2.source_dest_check("i-1")
        })
        .await;
        assert!(v.unwrap());
        assert_eq!(ec2.calls.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_attempt_budget() {
        let ec2 = FakeEc2::default();
        ec2.fail_next
            .lock()
            .unwrap()
            .extend((0..10).map(|_| throttled("DescribeInstances")));
        let err = with_retries(3, Duration::from_millis(100), || {
            ec2.source_dest_check("i-1")
        })
        .await
        .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("RequestLimitExceeded"));
        assert_eq!(ec2.calls.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_client_errors() {
        let ec2 = FakeEc2::default();
        ec2.fail_next.lock().unwrap().push(Ec2Error {
            operation: "CreateRoute",
            resource: "rtb-1".into(),
            code: Some("InvalidRouteTableID.NotFound".into()),
            message: "no such table".into(),
            retryable: false,
        });
        let err = with_retries(5, Duration::from_millis(100), || {
            ec2.create_default_route("rtb-1", "eni-1")
        })
        .await
        .unwrap_err();
        assert_eq!(ec2.calls.lock().unwrap().len(), 1);
        assert_eq!(
            err.to_string(),
            "EC2 CreateRoute rtb-1: InvalidRouteTableID.NotFound: no such table"
        );
    }
}
