//! The instance metadata service (IMDSv2) through the narrow [`Metadata`]
//! trait: one real implementation over aws-config's client, which honours
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (the lab points it at its stub), and
//! one fake.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::imds::client::error::ImdsError;

use natron_contract::error_chain;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MetadataError {
    #[error("instance metadata {path}: {message}")]
    Unavailable { path: String, message: String },
    #[error("instance metadata {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Reads one metadata path (relative to `/latest/`); Ok(None) means 404.
#[async_trait]
pub trait Metadata: Send + Sync {
    async fn get(&self, path: &str) -> Result<Option<String>, MetadataError>;
}

pub struct Imds {
    client: aws_config::imds::Client,
}

impl Imds {
    pub fn new() -> Imds {
        let client = aws_config::imds::Client::builder()
            // Each read is cheap and local; fail fast and let the caller's
            // backoff decide when to try again.
            .max_attempts(2)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .build();
        Imds { client }
    }
}

impl Default for Imds {
    fn default() -> Self {
        Imds::new()
    }
}

#[async_trait]
impl Metadata for Imds {
    async fn get(&self, path: &str) -> Result<Option<String>, MetadataError> {
        let full = format!("/latest/{path}");
        match self.client.get(full.clone()).await {
            Ok(value) => Ok(Some(value.as_ref().to_string())),
            Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(MetadataError::Unavailable {
                path: full,
                message: error_chain(&e),
            }),
        }
    }
}
