//! `natron image publish`: a raw disk image into an EBS snapshot through the
//! EBS direct API (only the blocks that are not all zero, in parallel, each
//! with its SHA-256), then an AMI registered on it, optionally copied to
//! other regions and made public. The request is built by a pure function
//! ([`register_spec`]) so it can be checked as data: the emulator keeps only
//! an image's name and description.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types as ec2t;
use base64::Engine;
use futures_util::{StreamExt, TryStreamExt};
use natron_contract::aws::{AwsError, ErrorKind};
use serde::Serialize;
use sha2::Digest;

/// The EBS direct API's block size.
pub const BLOCK: usize = 512 * 1024;
const GIB: u64 = 1 << 30;
const PARALLEL: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Api(#[from] AwsError),
}

fn api<'a, E, R>(
    operation: &'static str,
    resource: &'a str,
) -> impl FnOnce(aws_smithy_runtime_api::client::result::SdkError<E, R>) -> PublishError + 'a
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    // The snapshot calls are EBS direct API calls; the rest are EC2's.
    let service = if operation.ends_with("Snapshot") || operation == "PutSnapshotBlock" {
        "EBS"
    } else {
        "EC2"
    };
    move |e| PublishError::Api(AwsError::from_sdk(service, operation, resource, e))
}

pub use natron_contract::arch::Arch;

/// What RegisterImage is asked, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegisterSpec {
    pub name: String,
    pub description: String,
    pub architecture: &'static str,
    /// x86_64 images boot both ways (UEFI preferred); Graviton only UEFI.
    pub boot_mode: &'static str,
    pub virtualization: &'static str,
    pub ena_support: bool,
    /// IMDSv2 only, as the agent uses.
    pub imds_support: &'static str,
    pub root_device: &'static str,
    pub snapshot_id: String,
    pub volume_gib: i32,
    pub volume_type: &'static str,
}

pub fn register_spec(arch: Arch, name: &str, snapshot_id: &str, image_bytes: u64) -> RegisterSpec {
    RegisterSpec {
        name: name.to_string(),
        description: format!("natron NAT instance ({})", name),
        architecture: arch.name(),
        boot_mode: match arch {
            Arch::X86_64 => "uefi-preferred",
            Arch::Arm64 => "uefi",
        },
        virtualization: "hvm",
        ena_support: true,
        imds_support: "v2.0",
        root_device: "/dev/xvda",
        snapshot_id: snapshot_id.to_string(),
        volume_gib: volume_gib(image_bytes) as i32,
        volume_type: "gp3",
    }
}

/// The smallest whole GiB that holds the image (EBS sizes are whole GiB).
pub fn volume_gib(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

/// Reads `path` block by block, yielding (index, block) for every block
/// with a non-zero byte; the last block is padded with zeros.
pub fn nonzero_blocks(
    path: &Path,
) -> Result<impl Iterator<Item = Result<(i32, Vec<u8>), PublishError>>, PublishError> {
    let shown = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|source| PublishError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut index = 0i32;
    Ok(std::iter::from_fn(move || loop {
        let mut block = vec![0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match file.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(source) => {
                    return Some(Err(PublishError::Io {
                        path: shown.clone(),
                        source,
                    }))
                }
            }
        }
        if filled == 0 {
            return None;
        }
        let i = index;
        index += 1;
        if block.iter().any(|b| *b != 0) {
            return Some(Ok((i, block)));
        }
    }))
}

fn checksum(block: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(block))
}

pub struct Options<'a> {
    pub raw: &'a Path,
    pub name: &'a str,
    pub arch: Arch,
    pub regions: Vec<String>,
    pub public: bool,
}

#[derive(Debug, Serialize)]
pub struct Published {
    pub snapshot_id: String,
    pub blocks_uploaded: usize,
    pub blocks_total: u64,
    pub image_id: String,
    /// (region, image id) of each copy.
    pub copies: Vec<(String, String)>,
    pub register: RegisterSpec,
}

pub async fn publish(
    config: &aws_config::SdkConfig,
    opts: &Options<'_>,
    progress: &mut dyn FnMut(String),
) -> Result<Published, PublishError> {
    let raw = opts.raw.display().to_string();
    let bytes = std::fs::metadata(opts.raw)
        .map_err(|source| PublishError::Io {
            path: raw.clone(),
            source,
        })?
        .len();
    let ebs = aws_sdk_ebs::Client::new(config);
    let ec2 = aws_sdk_ec2::Client::new(config);
    let started = ebs
        .start_snapshot()
        .volume_size(volume_gib(bytes) as i64)
        .description(format!("natron image {}", opts.name))
        .tags(
            aws_sdk_ebs::types::Tag::builder()
                .key("Name")
                .value(opts.name)
                .build(),
        )
        .timeout(60)
        .send()
        .await
        .map_err(api("StartSnapshot", opts.name))?;
    let snapshot = started.snapshot_id().unwrap_or_default().to_string();
    progress(format!(
        "snapshot {snapshot}: uploading the non-zero 512 KiB blocks of {raw} ({} MiB)",
        bytes >> 20
    ));
    let total_blocks = bytes.div_ceil(BLOCK as u64);
    let t0 = Instant::now();
    let uploads = futures_util::stream::iter(nonzero_blocks(opts.raw)?).map(|block| {
        let ebs = ebs.clone();
        let snapshot = snapshot.clone();
        async move {
            let (index, data) = block?;
            ebs.put_snapshot_block()
                .snapshot_id(&snapshot)
                .block_index(index)
                .data_length(BLOCK as i32)
                .checksum(checksum(&data))
                .checksum_algorithm(aws_sdk_ebs::types::ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .block_data(aws_sdk_ebs::primitives::ByteStream::from(data))
                .send()
                .await
                .map_err(api(
                    "PutSnapshotBlock",
                    &format!("{snapshot} block {index}"),
                ))?;
            Ok::<i32, PublishError>(index)
        }
    });
    let mut done = 0usize;
    let mut stream = uploads.buffer_unordered(PARALLEL);
    while let Some(index) = stream.try_next().await? {
        done += 1;
        if done % 256 == 0 {
            progress(format!("  {done} blocks sent (last {index})"));
        }
    }
    drop(stream);
    ebs.complete_snapshot()
        .snapshot_id(&snapshot)
        .changed_blocks_count(done as i32)
        .send()
        .await
        .map_err(api("CompleteSnapshot", &snapshot))?;
    progress(format!(
        "  {done} of {total_blocks} blocks sent in {:.1} s; waiting for the snapshot",
        t0.elapsed().as_secs_f64()
    ));
    wait_snapshot(&ec2, &snapshot).await?;

    let spec = register_spec(opts.arch, opts.name, &snapshot, bytes);
    let image_id = register(&ec2, &spec).await?;
    progress(format!("image {image_id} registered as {}", spec.name));
    if opts.public {
        make_public(&ec2, &image_id).await?;
        progress(format!("image {image_id} is public"));
    }
    let mut copies = Vec::new();
    for region in &opts.regions {
        let regional = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(config)
                .region(aws_sdk_ec2::config::Region::new(region.clone()))
                .build(),
        );
        let source_region = config.region().map(|r| r.to_string()).unwrap_or_default();
        let copy = regional
            .copy_image()
            .source_image_id(&image_id)
            .source_region(&source_region)
            .name(&spec.name)
            .description(&spec.description)
            .send()
            .await
            .map_err(api("CopyImage", &format!("{image_id} to {region}")))?;
        let id = copy.image_id().unwrap_or_default().to_string();
        if opts.public {
            make_public(&regional, &id).await?;
        }
        progress(format!("copied to {region}: {id}"));
        copies.push((region.clone(), id));
    }
    Ok(Published {
        snapshot_id: snapshot,
        blocks_uploaded: done,
        blocks_total: total_blocks,
        image_id,
        copies,
        register: spec,
    })
}

async fn wait_snapshot(ec2: &aws_sdk_ec2::Client, snapshot: &str) -> Result<(), PublishError> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let out = ec2
            .describe_snapshots()
            .snapshot_ids(snapshot)
            .send()
            .await
            .map_err(api("DescribeSnapshots", snapshot))?;
        let state = out.snapshots().first().and_then(|s| s.state()).cloned();
        match state {
            Some(ec2t::SnapshotState::Completed) => return Ok(()),
            Some(ec2t::SnapshotState::Error) => {
                return Err(PublishError::Api(AwsError::new(
                    "EC2",
                    "DescribeSnapshots",
                    snapshot,
                    ErrorKind::Server,
                    "the snapshot failed",
                )))
            }
            _ if Instant::now() > deadline => {
                return Err(PublishError::Api(AwsError::new(
                    "EC2",
                    "DescribeSnapshots",
                    snapshot,
                    ErrorKind::Server,
                    "not completed after an hour",
                )))
            }
            _ => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    }
}

async fn register(ec2: &aws_sdk_ec2::Client, spec: &RegisterSpec) -> Result<String, PublishError> {
    let out = ec2
        .register_image()
        .name(&spec.name)
        .description(&spec.description)
        .architecture(ec2t::ArchitectureValues::from(spec.architecture))
        .boot_mode(ec2t::BootModeValues::from(spec.boot_mode))
        .virtualization_type(spec.virtualization)
        .ena_support(spec.ena_support)
        .imds_support(ec2t::ImdsSupportValues::from(spec.imds_support))
        .root_device_name(spec.root_device)
        .block_device_mappings(
            ec2t::BlockDeviceMapping::builder()
                .device_name(spec.root_device)
                .ebs(
                    ec2t::EbsBlockDevice::builder()
                        .snapshot_id(&spec.snapshot_id)
                        .volume_size(spec.volume_gib)
                        .volume_type(ec2t::VolumeType::from(spec.volume_type))
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .map_err(api("RegisterImage", &spec.name))?;
    Ok(out.image_id().unwrap_or_default().to_string())
}

async fn make_public(ec2: &aws_sdk_ec2::Client, image: &str) -> Result<(), PublishError> {
    ec2.modify_image_attribute()
        .image_id(image)
        .launch_permission(
            ec2t::LaunchPermissionModifications::builder()
                .add(
                    ec2t::LaunchPermission::builder()
                        .group(ec2t::PermissionGroup::All)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .map_err(api("ModifyImageAttribute", image))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_skipped_and_the_tail_is_padded() {
        let dir = std::env::temp_dir().join(format!("natron-blocks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img.raw");
        let mut data = vec![0u8; 3 * BLOCK + 10];
        data[5] = 1; // block 0
        data[3 * BLOCK + 9] = 7; // the short last block, 3
        std::fs::write(&path, &data).unwrap();
        let blocks: Vec<(i32, Vec<u8>)> =
            nonzero_blocks(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(blocks.iter().map(|b| b.0).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(blocks[1].1.len(), BLOCK);
        assert_eq!(blocks[1].1[9], 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn register_requests_per_architecture() {
        let x = register_spec(Arch::X86_64, "natron-1", "snap-1", 728 << 20);
        assert_eq!(
            (
                x.architecture,
                x.boot_mode,
                x.volume_gib,
                x.ena_support,
                x.imds_support
            ),
            ("x86_64", "uefi-preferred", 1, true, "v2.0")
        );
        let a = register_spec(Arch::Arm64, "natron-1", "snap-1", (1 << 30) + 1);
        assert_eq!(
            (a.architecture, a.boot_mode, a.volume_gib),
            ("arm64", "uefi", 2)
        );
        assert_eq!(
            (a.root_device, a.virtualization, a.volume_type),
            ("/dev/xvda", "hvm", "gp3")
        );
    }
}
