//! The AWS SDK's shared configuration for every client the agent makes
//! (EC2, CloudWatch): the standard credential chain, the instance's region,
//! short timeouts, and no SDK retries (the contract's `with_retries` and
//! the loops' backoffs are the one policy, visible and counted).

use std::time::Duration;

/// `endpoint_url`: None for the region's (or `AWS_ENDPOINT_URL`,
/// `AWS_ENDPOINT_URL_<SERVICE>` when set).
pub async fn config(region: &str, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader
        .region(aws_config::Region::new(region.to_string()))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}
