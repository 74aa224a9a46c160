//! The regions of each AWS partition, so a mistyped `--region` is bad
//! input named as such before any call (the SDK would otherwise resolve an
//! endpoint for any name and fail on DNS). Copied from the partitions file
//! of the AWS SDK this workspace builds with (aws-sdk-ec2 1.274); a region
//! launched later needs an entry here.

/// (partition, its regions).
const PARTITIONS: &[(&str, &[&str])] = &[
    (
        "aws",
        &[
            "af-south-1",
            "ap-east-1",
            "ap-east-2",
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-northeast-3",
            "ap-south-1",
            "ap-south-2",
            "ap-southeast-1",
            "ap-southeast-2",
            "ap-southeast-3",
            "ap-southeast-4",
            "ap-southeast-5",
            "ap-southeast-6",
            "ap-southeast-7",
            "ca-central-1",
            "ca-west-1",
            "eu-central-1",
            "eu-central-2",
            "eu-north-1",
            "eu-south-1",
            "eu-south-2",
            "eu-west-1",
            "eu-west-2",
            "eu-west-3",
            "il-central-1",
            "me-central-1",
            "me-south-1",
            "mx-central-1",
            "sa-east-1",
            "us-east-1",
            "us-east-2",
            "us-west-1",
            "us-west-2",
        ],
    ),
    ("aws-cn", &["cn-north-1", "cn-northwest-1"]),
    ("aws-eusc", &["eusc-de-east-1"]),
    ("aws-iso", &["us-iso-east-1", "us-iso-west-1"]),
    ("aws-iso-b", &["us-isob-east-1", "us-isob-west-1"]),
    ("aws-iso-e", &["eu-isoe-west-1"]),
    ("aws-iso-f", &["us-isof-east-1", "us-isof-south-1"]),
    ("aws-us-gov", &["us-gov-east-1", "us-gov-west-1"]),
];

/// The partition a region belongs to (ARNs differ between partitions), or
/// an error naming the region and the closest known ones.
pub fn partition(region: &str) -> Result<&'static str, String> {
    if let Some((p, _)) = PARTITIONS.iter().find(|(_, rs)| rs.contains(&region)) {
        return Ok(p);
    }
    // Suggest regions sharing the prefix ("eu-west-" for "eu-west-9").
    let stem = region.trim_end_matches(|c: char| c.is_ascii_digit());
    let near: Vec<&str> = PARTITIONS
        .iter()
        .flat_map(|(_, rs)| rs.iter().copied())
        .filter(|r| !stem.is_empty() && r.starts_with(stem))
        .collect();
    let hint = if near.is_empty() {
        "for example us-east-1 or eu-west-1".to_string()
    } else {
        format!("did you mean {}?", near.join(" or "))
    };
    Err(format!("region {region:?}: not an AWS region ({hint})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_map_to_their_partition() {
        assert_eq!(partition("us-east-1"), Ok("aws"));
        assert_eq!(partition("cn-north-1"), Ok("aws-cn"));
        assert_eq!(partition("us-gov-west-1"), Ok("aws-us-gov"));
        let e = partition("xx-nowhere-9").unwrap_err();
        assert!(e.contains("\"xx-nowhere-9\": not an AWS region"), "{e}");
        let e = partition("eu-west-9").unwrap_err();
        assert!(e.contains("eu-west-1 or eu-west-2 or eu-west-3"), "{e}");
    }
}
