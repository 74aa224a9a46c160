//! The EC2 emulator (moto, pinned, from the venv `cargo xtask` prepares),
//! run inside the lab's control namespace.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::{exec, LabError};

pub const MOTO_VERSION: &str = "5.2.5";
pub const PORT: u16 = 5000;
pub const REGION: &str = "us-east-1";

/// The moto_server executable: `$NATRON_MOTO_SERVER`, else the venv that
/// `cargo xtask setup` creates under ~/.cache/natron.
pub fn moto_server_path() -> Result<PathBuf, LabError> {
    if let Some(p) = std::env::var_os("NATRON_MOTO_SERVER") {
        return Ok(p.into());
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let path = PathBuf::from(home).join(format!(
        ".cache/natron/venv-moto-{MOTO_VERSION}/bin/moto_server"
    ));
    if path.exists() {
        Ok(path)
    } else {
        Err(LabError::Setup(format!(
            "{}: not found; run `cargo xtask setup` (or set NATRON_MOTO_SERVER)",
            path.display()
        )))
    }
}

/// Starts moto in `ns`, listening on all of that namespace's addresses.
pub fn start(ns: &str, log: &std::path::Path) -> Result<Child, LabError> {
    let program = moto_server_path()?;
    let env = vec![
        (
            "MOTO_EC2_LOAD_DEFAULT_AMIS".to_string(),
            "false".to_string(),
        ),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
    ];
    exec::spawn_in_ns(
        ns,
        &program,
        &["-H".into(), "0.0.0.0".into(), "-p".into(), PORT.to_string()],
        &env,
        log,
    )
}

/// An EC2 client for `endpoint` with test credentials and no SDK retries
/// (the emulator answers unimplemented calls with 500s).
pub async fn client(endpoint: &str) -> aws_sdk_ec2::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "lab",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

/// Waits until the emulator answers an API call.
pub async fn wait_ready(client: &aws_sdk_ec2::Client, timeout: Duration) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        match client.describe_availability_zones().send().await {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > timeout => {
                return Err(LabError::Emulator(format!(
                    "moto did not answer within {timeout:?}: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
