//! The real [`Metadata`] source: aws-config's IMDSv2 client, which honours
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (the lab points it at its stub).

use std::time::Duration;

use async_trait::async_trait;
use aws_config::imds::client::error::ImdsError;

use crate::error_chain;
use crate::identity::{Metadata, MetadataError};

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
