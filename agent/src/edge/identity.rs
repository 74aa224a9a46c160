//! Who this instance is, read from the instance metadata service (IMDSv2):
//! [`read_identity`] reads the handful of paths natron needs through
//! [`Metadata`]; [`parse`] turns them into an [`Identity`] and is pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::imds::{Metadata, MetadataError};
pub use natron_contract::status::Identity;

/// The IMDS paths natron reads, relative to `/latest/`.
pub mod paths {
    use natron_contract::tags;

    pub const INSTANCE_ID: &str = "meta-data/instance-id";
    pub const AZ: &str = "meta-data/placement/availability-zone";
    pub const REGION: &str = "meta-data/placement/region";
    pub const MAC: &str = "meta-data/mac";
    pub const LOCAL_IPV4: &str = "meta-data/local-ipv4";
    pub const PUBLIC_IPV4: &str = "meta-data/public-ipv4";

    pub fn mac_path(mac: &str, leaf: &str) -> String {
        format!("meta-data/network/interfaces/macs/{mac}/{leaf}")
    }

    pub fn group_tag_path() -> String {
        format!("meta-data/tags/instance/{}", tags::GROUP)
    }
}

use paths::*;

/// Reads every path once. Missing optional paths (public-ipv4, tags) are
/// fine; any other miss or error fails the whole read.
pub async fn read_identity(md: &dyn Metadata) -> Result<Identity, MetadataError> {
    let mut raw = BTreeMap::new();
    for path in [INSTANCE_ID, AZ, REGION, MAC, LOCAL_IPV4, PUBLIC_IPV4] {
        if let Some(v) = md.get(path).await? {
            raw.insert(path.to_string(), v);
        }
    }
    if let Some(mac) = raw.get(MAC).cloned() {
        for leaf in [
            "interface-id",
            "vpc-id",
            "subnet-id",
            "vpc-ipv4-cidr-blocks",
            "vpc-ipv6-cidr-blocks",
        ] {
            let path = mac_path(mac.trim(), leaf);
            if let Some(v) = md.get(&path).await? {
                raw.insert(path, v);
            }
        }
    }
    if let Some(v) = md.get(&group_tag_path()).await? {
        raw.insert(group_tag_path(), v);
    }
    parse(&raw)
}

/// [`read_identity`] with `attempts` tries and doubling backoff from `base`.
pub async fn read_identity_with_retries(
    md: &dyn Metadata,
    attempts: u32,
    base: Duration,
) -> Result<Identity, MetadataError> {
    let mut delay = base;
    let mut attempt = 1;
    loop {
        match read_identity(md).await {
            Ok(id) => return Ok(id),
            // Malformed data will not fix itself by asking again.
            Err(e @ MetadataError::Invalid { .. }) => return Err(e),
            Err(e) if attempt >= attempts => return Err(e),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "instance metadata not available yet; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

/// The CIDR blocks at `path`, one a line, each an `family` block.
fn cidr_blocks<N: std::str::FromStr>(
    path: &str,
    text: &str,
    family: &str,
) -> Result<Vec<N>, MetadataError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<N>().map_err(|_| MetadataError::Invalid {
                path: format!("/latest/{path}"),
                message: format!("{l:?} is not an {family} CIDR block"),
            })
        })
        .collect()
}

/// Builds an identity from metadata values keyed by path. Pure.
pub fn parse(raw: &BTreeMap<String, String>) -> Result<Identity, MetadataError> {
    let get = |path: &str| -> Result<String, MetadataError> {
        raw.get(path)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| MetadataError::Invalid {
                path: format!("/latest/{path}"),
                message: "missing".into(),
            })
    };
    let ip = |path: &str, text: &str| -> Result<Ipv4Addr, MetadataError> {
        text.parse().map_err(|_| MetadataError::Invalid {
            path: format!("/latest/{path}"),
            message: format!("{text:?} is not an IPv4 address"),
        })
    };
    let mac = get(MAC)?;
    let cidr_path = mac_path(&mac, "vpc-ipv4-cidr-blocks");
    let vpc_cidrs = cidr_blocks(&cidr_path, &get(&cidr_path)?, "IPv4")?;
    // Optional: a VPC without IPv6 has no such key.
    let v6_path = mac_path(&mac, "vpc-ipv6-cidr-blocks");
    let v6_text = raw.get(&v6_path).map(String::as_str).unwrap_or_default();
    let vpc_ipv6_cidrs = cidr_blocks(&v6_path, v6_text, "IPv6")?;
    let local = get(LOCAL_IPV4)?;
    let public_ipv4 = match raw
        .get(PUBLIC_IPV4)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        Some(p) => Some(ip(PUBLIC_IPV4, p)?),
        None => None,
    };
    let availability_zone = get(AZ)?;
    // Older IMDS versions lack placement/region; the AZ name is REGION + letter.
    let region = get(REGION).or_else(|e| {
        availability_zone
            .strip_suffix(|c: char| c.is_ascii_lowercase())
            .map(str::to_string)
            .ok_or(e)
    })?;
    Ok(Identity {
        instance_id: get(INSTANCE_ID)?,
        region,
        availability_zone,
        interface_id: get(&mac_path(&mac, "interface-id"))?,
        vpc_id: get(&mac_path(&mac, "vpc-id"))?,
        subnet_id: get(&mac_path(&mac, "subnet-id"))?,
        local_ipv4: ip(LOCAL_IPV4, &local)?,
        public_ipv4,
        vpc_cidrs,
        vpc_ipv6_cidrs,
        group_tag: raw
            .get(&group_tag_path())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
        mac,
    })
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use async_trait::async_trait;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Metadata from a map; `down` makes every read fail as unreachable.
    #[derive(Default)]
    pub struct FakeMetadata {
        pub values: BTreeMap<String, String>,
        pub down: Mutex<u32>,
    }

    impl FakeMetadata {
        pub fn typical() -> FakeMetadata {
            let mac = "0e:11:22:33:44:55";
            let mut values = BTreeMap::new();
            for (k, v) in [
                (INSTANCE_ID.to_string(), "i-0abc"),
                (AZ.to_string(), "us-east-1a"),
                (REGION.to_string(), "us-east-1"),
                (MAC.to_string(), mac),
                (LOCAL_IPV4.to_string(), "10.0.0.10"),
                (PUBLIC_IPV4.to_string(), "203.0.113.10"),
                (mac_path(mac, "interface-id"), "eni-0abc"),
                (mac_path(mac, "vpc-id"), "vpc-0abc"),
                (mac_path(mac, "subnet-id"), "subnet-0abc"),
                (
                    mac_path(mac, "vpc-ipv4-cidr-blocks"),
                    "10.0.0.0/16\n100.64.0.0/16",
                ),
                (group_tag_path(), "prod"),
            ] {
                values.insert(k, v.to_string());
            }
            FakeMetadata {
                values,
                down: Mutex::new(0),
            }
        }
    }

    #[async_trait]
    impl Metadata for FakeMetadata {
        async fn get(&self, path: &str) -> Result<Option<String>, MetadataError> {
            let mut down = self.down.lock().unwrap();
            if *down > 0 {
                *down -= 1;
                return Err(MetadataError::Unavailable {
                    path: format!("/latest/{path}"),
                    message: "connection refused".into(),
                });
            }
            Ok(self.values.get(path).cloned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMetadata;
    use super::*;

    #[tokio::test]
    async fn typical_identity() {
        let id = read_identity(&FakeMetadata::typical()).await.unwrap();
        assert_eq!(id.instance_id, "i-0abc");
        assert_eq!(id.interface_id, "eni-0abc");
        assert_eq!(id.public_ipv4, Some("203.0.113.10".parse().unwrap()));
        assert_eq!(id.vpc_cidrs.len(), 2);
        assert_eq!(id.group_tag.as_deref(), Some("prod"));
        assert!(id.vpc_ipv6_cidrs.is_empty(), "a VPC without IPv6");
    }

    #[tokio::test]
    async fn the_vpcs_ipv6_blocks_are_read_and_checked() {
        let mut md = FakeMetadata::typical();
        let path = mac_path("0e:11:22:33:44:55", "vpc-ipv6-cidr-blocks");
        md.values.insert(
            path.clone(),
            "2600:1f18:aa00::/56
2600:1f18:bb00::/56"
                .into(),
        );
        let id = read_identity(&md).await.unwrap();
        assert_eq!(id.vpc_ipv6_cidrs.len(), 2);
        md.values.insert(path, "10.0.0.0/16".into());
        let err = read_identity(&md).await.unwrap_err().to_string();
        assert!(
            err.contains("vpc-ipv6-cidr-blocks") && err.contains("IPv6"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn optional_paths_may_be_absent() {
        let mut md = FakeMetadata::typical();
        md.values.remove(PUBLIC_IPV4);
        md.values.remove(&group_tag_path());
        md.values.remove(REGION);
        let id = read_identity(&md).await.unwrap();
        assert_eq!(id.public_ipv4, None);
        assert_eq!(id.group_tag, None);
        assert_eq!(id.region, "us-east-1");
    }

    #[tokio::test]
    async fn missing_and_malformed_values_name_the_path() {
        let mut md = FakeMetadata::typical();
        md.values.remove(INSTANCE_ID);
        let err = read_identity(&md).await.unwrap_err().to_string();
        assert!(
            err.contains("/latest/meta-data/instance-id") && err.contains("missing"),
            "{err}"
        );

        let mut md = FakeMetadata::typical();
        md.values.insert(LOCAL_IPV4.into(), "ten".into());
        let err = read_identity(&md).await.unwrap_err().to_string();
        assert!(
            err.contains("local-ipv4") && err.contains("\"ten\""),
            "{err}"
        );

        let mut md = FakeMetadata::typical();
        md.values.insert(
            mac_path("0e:11:22:33:44:55", "vpc-ipv4-cidr-blocks"),
            "10.0.0.0/99".into(),
        );
        let err = read_identity(&md).await.unwrap_err().to_string();
        assert!(err.contains("vpc-ipv4-cidr-blocks"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let md = FakeMetadata::typical();
        *md.down.lock().unwrap() = 2;
        // Two failed reads, then success on the third attempt.
        let id = read_identity_with_retries(&md, 3, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(id.instance_id, "i-0abc");

        *md.down.lock().unwrap() = 100;
        let err = read_identity_with_retries(&md, 3, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, MetadataError::Unavailable { .. }));
        assert_eq!(*md.down.lock().unwrap(), 97, "exactly three attempts");
    }
}
