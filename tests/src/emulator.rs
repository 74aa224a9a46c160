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

/// moto_server with the EC2 behaviour the lab needs and moto lacks (an
/// Elastic IP on a secondary private address); run with the venv's python3.
pub const MOTO_NATRON_PY: &str = include_str!("moto_natron.py");

/// The program and leading arguments that start the emulator: the python3
/// next to moto_server (its venv's) running [`MOTO_NATRON_PY`], written
/// next to `log`. Every test gets the same emulator, `cargo xtask test`'s
/// (which sets `$NATRON_MOTO_SERVER`) as much as a bare `cargo test`.
fn server_command(log: &std::path::Path) -> Result<(PathBuf, Vec<String>), LabError> {
    let script = log.with_file_name("moto_natron.py");
    std::fs::write(&script, MOTO_NATRON_PY)
        .map_err(|e| LabError::Setup(format!("{}: {e}", script.display())))?;
    Ok((
        venv_tool("python3")?,
        vec![script.to_string_lossy().into_owned()],
    ))
}

/// Deploys a CloudFormation template on the emulator and fills the
/// emulator's measured CloudFormation gaps; run with the venv's python3
/// (`venv_tool("python3")`): `deploy_stack.py NAME TEMPLATE.json
/// [--without-instances]`. Its last line is `OUTPUTS {json}`.
pub const DEPLOY_STACK_PY: &str = include_str!("deploy_stack.py");

/// Another tool of the emulator's venv (`cfn-lint`, `parliament`), next
/// to moto_server.
pub fn venv_tool(name: &str) -> Result<PathBuf, LabError> {
    let path = moto_server_path()?.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(LabError::Setup(format!(
            "{}: not found; run `cargo xtask setup` (tests/moto-requirements.txt pins it)",
            path.display()
        )))
    }
}

/// Starts moto in `ns`, listening on all of that namespace's addresses.
pub fn start(ns: &str, log: &std::path::Path) -> Result<Child, LabError> {
    let (program, mut args) = server_command(log)?;
    args.extend(["-H".into(), "0.0.0.0".into(), "-p".into(), PORT.to_string()]);
    let env = vec![
        (
            "MOTO_EC2_LOAD_DEFAULT_AMIS".to_string(),
            "false".to_string(),
        ),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
    ];
    exec::spawn_in_ns(ns, &program, &args, &env, log)
}

/// moto on the host's 127.0.0.1 at a free port, for tests that need only
/// the EC2 API (no lab network). Stopped when dropped.
pub struct Loopback {
    pub endpoint: String,
    child: Child,
    _dir: TempDir,
}

impl Loopback {
    pub async fn start() -> Result<Loopback, LabError> {
        let port = free_port()?;
        let dir = TempDir::new("moto")?;
        let log = dir.path.join("moto.log");
        let env = vec![(
            "MOTO_EC2_LOAD_DEFAULT_AMIS".to_string(),
            "false".to_string(),
        )];
        let (program, mut args) = server_command(&log)?;
        args.extend([
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]);
        let child = exec::spawn_on_host(&program, &args, &env, &log)?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let emulator = Loopback {
            endpoint,
            child,
            _dir: dir,
        };
        wait_ready(&client(&emulator.endpoint).await, Duration::from_secs(20)).await?;
        Ok(emulator)
    }

    /// The end of the emulator's log (for a test's failure message).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path.join("moto.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The environment that points an AWS SDK program at this emulator.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
            ("AWS_MAX_ATTEMPTS", "1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// An SDK configuration for this emulator (test credentials, no retries).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config(&self.endpoint).await
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on at 127.0.0.1 right now.
pub fn free_port() -> Result<u16, LabError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LabError::Setup(format!("no free port on 127.0.0.1: {e}")))
}

/// A temporary directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(what: &str) -> Result<TempDir, LabError> {
        let path = std::env::temp_dir().join(format!(
            "natron-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| LabError::Setup(format!("{}: {e}", path.display())))?;
        Ok(TempDir { path })
    }
}

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// SDK configuration for `endpoint` with test credentials and no SDK
/// retries (the emulator answers unimplemented calls with 500s).
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "lab",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await
}

/// An EC2 client for `endpoint` with test credentials and no SDK retries
/// (the emulator answers unimplemented calls with 500s).
pub async fn client(endpoint: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(endpoint).await)
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
