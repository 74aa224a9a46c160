//! natron-agent processes in the lab's NAT namespaces: their configuration,
//! start, signals, logs and endpoints.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::imds;
use crate::internet;
use crate::{exec, LabError};

use natron_agent::core::config::Config;
use natron_contract::client;
use natron_contract::readyz::ReadyzBody;
use natron_contract::status::{Health, Status};

use super::spec::*;
use super::{Lab, AGENT_PORT};

/// A running agent started by [`Lab::start_agent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentId(usize);

pub(super) struct AgentProcess {
    pub(super) child: Child,
    pub(super) log: PathBuf,
    pub(super) az: usize,
    /// How it was started, to start it again as systemd would.
    args: Vec<String>,
    vars: Vec<(String, String)>,
    config_path: PathBuf,
}

/// The configuration file an agent is started with: a [`Config`]
/// serialised as an operator would write it, or raw text (to test bad
/// files).
pub struct AgentConfig(pub String);

impl From<&Config> for AgentConfig {
    fn from(c: &Config) -> Self {
        AgentConfig(c.to_toml())
    }
}

impl From<Config> for AgentConfig {
    fn from(c: Config) -> Self {
        AgentConfig(c.to_toml())
    }
}

impl From<&str> for AgentConfig {
    fn from(t: &str) -> Self {
        AgentConfig(t.to_string())
    }
}

impl From<String> for AgentConfig {
    fn from(t: String) -> Self {
        AgentConfig(t)
    }
}

/// The agent's environment without the lab's static credentials: it
/// must find them through IMDS, as on EC2 (pass to `start_agent_with_env`).
pub const NO_ENV_CREDENTIALS: &[(&str, &str)] =
    &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")];

/// The production defaults, with the egress probes aimed at the lab's
/// internet server (the defaults' public targets do not exist here).
pub fn default_config() -> Config {
    let s = internet::SERVER;
    let mut c = Config::default();
    c.health.targets = vec![
        format!("tcp://{s}:{}", internet::HTTP_PORT),
        format!("http://{s}/"),
    ];
    c
}

/// [`default_config`] with the lab's short intervals: probes every 200 ms
/// (rise 2, fall 2), reconcile every second, route tables every 2 s.
pub fn fast_config() -> Config {
    let mut c = default_config();
    c.health.interval = Duration::from_millis(200);
    c.health.timeout = Duration::from_millis(300);
    c.health.rise = 2;
    c.health.fall = 2;
    c.nat.reconcile_interval = Duration::from_secs(1);
    c.ec2.route_interval = Duration::from_secs(2);
    c.ec2.max_attempts = 3;
    c
}

/// [`fast_config`] plus failover timings for the lab: peers asked every
/// 200 ms; while alerted a heartbeat every second, a second's proof window,
/// gone after 3 s without beats; an agent down 5 s is taken over; NATs
/// recovering together settle 3 s; `hold_down`.
pub fn failover_config(hold_down: Duration) -> Config {
    let mut c = fast_config();
    let f = &mut c.failover;
    f.peer_interval = Duration::from_millis(200);
    f.peer_timeout = Duration::from_millis(200);
    f.peer_rise = 2;
    f.peer_fall = 3;
    f.heartbeat_interval = Duration::from_secs(1);
    f.heartbeat_timeout = Duration::from_secs(3);
    f.proof_window = Duration::from_secs(1);
    f.agent_down_grace = Duration::from_secs(5);
    f.settle = Duration::from_secs(3);
    f.hold_down = hold_down;
    f.peer_refresh = Duration::from_secs(5);
    f.handoff_timeout = Duration::from_secs(5);
    f.lifecycle_interval = Duration::from_millis(500);
    c
}

impl Lab {
    /// [`fast_config`]: what the lab's agents run with unless a test says
    /// otherwise.
    pub fn agent_config(&self) -> Config {
        fast_config()
    }

    /// [`failover_config`].
    pub fn failover_config(&self, hold_down: Duration) -> Config {
        failover_config(hold_down)
    }

    /// Starts natron-agent in NAT `az`'s namespace with `config` (TOML).
    pub fn start_agent(
        &self,
        az: usize,
        config: impl Into<AgentConfig>,
        extra_args: &[&str],
    ) -> Result<AgentId, LabError> {
        self.start_agent_with_env(az, config, extra_args, &[])
    }

    pub fn start_agent_with_env(
        &self,
        az: usize,
        config: impl Into<AgentConfig>,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<AgentId, LabError> {
        let nat = &self.nats[az];
        let mut agents = self.agents.lock().expect("agents");
        let n = agents.len();
        let config_path = self.dir.join(format!("{}-{n}.toml", nat.role));
        std::fs::write(&config_path, config.into().0)
            .map_err(|e| LabError::Setup(format!("{}: {e}", config_path.display())))?;
        // One runtime directory per NAT, kept across its agent's restarts
        // as systemd's RuntimeDirectoryPreserve keeps /run/natron.
        let state_dir = self.dir.join(format!("{}-run", nat.role));
        let mut args = vec![
            "--config".to_string(),
            config_path.display().to_string(),
            "--state-dir".to_string(),
            state_dir.display().to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut vars: Vec<(String, String)> = vec![
            ("AWS_ENDPOINT_URL".into(), ec2_endpoint_url()),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                format!("http://{}/", imds::ADDR),
            ),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            // An empty value unsets the variable.
            if !v.is_empty() {
                vars.push((k.to_string(), v.to_string()));
            }
        }
        self.launch(&mut agents, az, args, vars, config_path)
    }

    /// Starts the agent of NAT `az` with this command line, as agent
    /// number `agents.len()`, its output in its own log.
    fn launch(
        &self,
        agents: &mut Vec<AgentProcess>,
        az: usize,
        args: Vec<String>,
        vars: Vec<(String, String)>,
        config_path: PathBuf,
    ) -> Result<AgentId, LabError> {
        let n = agents.len();
        let nat = &self.nats[az];
        let log = self.dir.join(format!("{}-{n}.log", nat.role));
        let child = exec::spawn_in_ns(&nat.ns, &agent_binary()?, &args, &vars, &log)?;
        agents.push(AgentProcess {
            child,
            log,
            az,
            args,
            vars,
            config_path,
        });
        Ok(AgentId(n))
    }

    /// What systemd does on `systemctl restart` (SIGTERM) or after a crash
    /// (`Restart=always`, `RestartSec`): the agent gets `signal`, exits, and
    /// `after` later the same command line runs again, with `config` when
    /// given (a configuration change) or its old file. Returns the new
    /// agent.
    pub fn restart_agent(
        &self,
        id: AgentId,
        signal: nix::sys::signal::Signal,
        after: Duration,
        config: Option<&Config>,
    ) -> Result<AgentId, LabError> {
        self.signal_agent(id, signal);
        if self.wait_agent_exit(id, Duration::from_secs(10)).is_none() {
            return Err(LabError::Setup(format!(
                "agent {id:?} did not exit on {signal}:\n{}",
                self.agent_log(id)
            )));
        }
        std::thread::sleep(after);
        let mut agents = self.agents.lock().expect("agents");
        let (az, args, vars, config_path) = {
            let old = &agents[id.0];
            (
                old.az,
                old.args.clone(),
                old.vars.clone(),
                old.config_path.clone(),
            )
        };
        if let Some(c) = config {
            std::fs::write(&config_path, c.to_toml())
                .map_err(|e| LabError::Setup(format!("{}: {e}", config_path.display())))?;
        }
        self.launch(&mut agents, az, args, vars, config_path)
    }

    /// `natron-agent handoff` on NAT `az`, as the image runs it at
    /// shutdown: (exit code, output).
    pub fn handoff(&self, id: AgentId) -> (Option<i32>, String) {
        let (az, config_path, vars) = {
            let agents = self.agents.lock().expect("agents");
            let a = &agents[id.0];
            (a.az, a.config_path.clone(), a.vars.clone())
        };
        let config = config_path.display().to_string();
        let bin = match agent_binary() {
            Ok(b) => b,
            Err(e) => return (None, e.to_string()),
        };
        exec::output_in_ns(
            &self.nats[az].ns,
            &bin,
            &["--config", &config, "handoff"],
            &vars,
        )
    }

    pub fn agent_pid(&self, id: AgentId) -> u32 {
        self.agents.lock().expect("agents")[id.0].child.id()
    }

    pub fn signal_agent(&self, id: AgentId, signal: nix::sys::signal::Signal) {
        exec::signal(self.agent_pid(id), signal);
    }

    /// Waits up to `timeout` for the agent to exit; its exit code if it did.
    pub fn wait_agent_exit(&self, id: AgentId, timeout: Duration) -> Option<Option<i32>> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.agents.lock().expect("agents")[id.0].child.try_wait() {
                return Some(status.code());
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn agent_log(&self, id: AgentId) -> String {
        let path = self.agents.lock().expect("agents")[id.0].log.clone();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// GET `path` from the agent of NAT `az`: (status code, body). Asked
    /// on loopback inside its namespace, or for a VM NAT over the VPC from
    /// the control namespace (as a peer asks).
    pub fn agent_get(&self, az: usize, path: &str) -> Result<(u16, String), String> {
        let (path, nat) = (path.to_string(), &self.nats[az]);
        let (ns, host) = if nat.vm {
            (self.ctl_ns.clone(), nat.ip.to_string())
        } else {
            (nat.ns.clone(), "127.0.0.1".to_string())
        };
        self.run_in(&ns, async move {
            client::get(&host, AGENT_PORT, &path, Duration::from_secs(3))
                .await
                .map_err(|e| format!("agent: {e}"))
        })
    }

    /// The agent's /status document.
    pub fn agent_status(&self, az: usize) -> Result<Status, String> {
        let (_, body) = self.agent_get(az, "/status")?;
        serde_json::from_str(&body).map_err(|e| format!("/status: {e}: {body}"))
    }

    /// Waits until AZ `az`'s agent sees its (first) peer ready.
    pub fn wait_peer_ready(&self, az: usize, timeout: Duration) -> Result<(), String> {
        self.wait_for("each sees its peer ready", timeout, || {
            let st = self.agent_status(az).ok()?;
            (st.failover.peers.first()?.health == Health::Ready).then_some(())
        })
    }

    /// The agent's /readyz: its status code and document.
    pub fn agent_readyz(&self, az: usize) -> Result<(u16, ReadyzBody), String> {
        let (code, body) = self.agent_get(az, "/readyz")?;
        let doc = serde_json::from_str(&body).map_err(|e| format!("/readyz: {e}: {body}"))?;
        Ok((code, doc))
    }
}

/// The natron-agent binary: `$NATRON_AGENT_BIN`, else next to this
/// executable (target/<profile>/ or its deps/ directory).
pub fn agent_binary() -> Result<PathBuf, LabError> {
    if let Some(p) = std::env::var_os("NATRON_AGENT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(|e| LabError::Setup(e.to_string()))?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join("natron-agent");
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    Err(LabError::Setup(format!(
        "natron-agent binary not found near {}; build it first (cargo build -p natron-agent) or set NATRON_AGENT_BIN",
        exe.display()
    )))
}
