//! Metrics to CloudWatch through the narrow [`Publish`] trait: one
//! PutMetricData call per publication (aws-sdk-cloudwatch), and its fake.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use natron_contract::aws::AwsError;

use crate::core::cloudwatch::Datum;

#[async_trait]
pub trait Publish: Send + Sync {
    /// Publishes `data`, stamped now, under `dimensions`, in one call.
    async fn put(
        &self,
        namespace: &str,
        dimensions: &[(String, String)],
        data: &[Datum],
    ) -> Result<(), AwsError>;
}

/// aws-sdk-cloudwatch behind [`Publish`]; no SDK retries (the publishing
/// loop backs off and the next publication carries what this one lost).
pub struct AwsCloudWatch {
    client: aws_sdk_cloudwatch::Client,
}

impl AwsCloudWatch {
    pub async fn new(region: &str) -> AwsCloudWatch {
        let config = super::sdk::config(region, None).await;
        AwsCloudWatch {
            client: aws_sdk_cloudwatch::Client::new(&config),
        }
    }
}

#[async_trait]
impl Publish for AwsCloudWatch {
    async fn put(
        &self,
        namespace: &str,
        dimensions: &[(String, String)],
        data: &[Datum],
    ) -> Result<(), AwsError> {
        let now = DateTime::from(SystemTime::now());
        let dimensions: Vec<Dimension> = dimensions
            .iter()
            .map(|(name, value)| Dimension::builder().name(name).value(value).build())
            .collect();
        let data: Vec<MetricDatum> = data
            .iter()
            .map(|d| {
                MetricDatum::builder()
                    .metric_name(d.name)
                    .value(d.value)
                    .unit(StandardUnit::from(d.unit.name()))
                    .timestamp(now)
                    .set_dimensions(Some(dimensions.clone()))
                    .build()
            })
            .collect();
        self.client
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(data))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("CloudWatch", "PutMetricData", namespace, e))
    }
}

#[cfg(test)]
pub mod fake {
    use std::sync::Mutex;

    use super::*;

    /// Records every publication; fails the next ones as told.
    #[derive(Default)]
    pub struct FakeCloudWatch {
        pub published: Mutex<Vec<Vec<Datum>>>,
        pub fail_next: Mutex<Vec<AwsError>>,
    }

    #[async_trait]
    impl Publish for FakeCloudWatch {
        async fn put(
            &self,
            _namespace: &str,
            _dimensions: &[(String, String)],
            data: &[Datum],
        ) -> Result<(), AwsError> {
            if let Some(e) = self.fail_next.lock().unwrap().pop() {
                return Err(e);
            }
            self.published.lock().unwrap().push(data.to_vec());
            Ok(())
        }
    }
}
