//! Many TCP connections held open at once, for the data-plane bench's
//! "concurrent connections to one destination". This sandbox allows a
//! process 20,000 open files (raising the limit fails with EPERM), so the
//! connections are spread over several `natron-lab hold` processes on each
//! side: listeners sharing one port (SO_REUSEPORT) in the internet
//! namespace, connectors in the client namespace.
//!
//! A connector opens its connections, prints `held <ok> failed <failed>`
//! and keeps them until it is killed; a listener prints `listening`, then
//! accepts and keeps every connection. Client sockets linger 0, so killing
//! them resets the connections instead of leaving ports in TIME_WAIT for
//! the next variant.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::{exec, LabError};

/// Connections one process may hold, under the 20,000 open files.
pub const PER_PROCESS: usize = 18_000;
/// Connection attempts in flight per connector.
const IN_FLIGHT: usize = 256;

/// Raises this process's open-file limit to its hard limit.
fn raise_file_limit() -> std::io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

/// `natron-lab hold --listen ADDR`: accepts and keeps every connection.
pub async fn listen(addr: SocketAddr) -> std::io::Result<()> {
    raise_file_limit()?;
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    println!("listening");
    let mut held = Vec::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => held.push(stream),
            // Out of files: keep what is held; the connector times out.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `natron-lab hold --connect ADDR --from IP --count N`: opens `count`
/// connections from `from` (ephemeral ports), each given `timeout`.
pub async fn connect(
    to: SocketAddr,
    from: Ipv4Addr,
    count: usize,
    timeout: Duration,
) -> std::io::Result<()> {
    raise_file_limit()?;
    let attempt = move || async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_zero_linger()?;
        socket.bind(SocketAddr::from((from, 0)))?;
        tokio::time::timeout(timeout, socket.connect(to))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    };
    let mut held: Vec<TcpStream> = Vec::with_capacity(count);
    let mut failed = 0usize;
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while started < count || !tasks.is_empty() {
        while started < count && tasks.len() < IN_FLIGHT {
            tasks.spawn(attempt());
            started += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(stream))) => held.push(stream),
            Some(_) => failed += 1,
            None => {}
        }
    }
    println!("held {} failed {failed}", held.len());
    std::future::pending::<()>().await;
    Ok(())
}

/// Kills the helpers when dropped, whatever happened.
struct Helpers(Vec<std::process::Child>);

impl Drop for Helpers {
    /// Connectors (started last) go first: their resets close the
    /// listeners' side without TIME_WAIT.
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `log` has a line starting with `prefix`; returns it.
fn line_in(log: &Path, prefix: &str, deadline: Instant) -> Result<String, LabError> {
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
            return Ok(line.to_string());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Setup(format!(
                "{}: no `{prefix}` line in time: {text}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the helpers run and what they connect.
pub struct Plan<'a> {
    /// The `natron-lab` binary (it has the `hold` subcommand).
    pub helper: &'a Path,
    pub client_ns: &'a str,
    pub server_ns: &'a str,
    pub server: SocketAddr,
    /// Client addresses, used in turn by the connectors.
    pub from: &'a [Ipv4Addr],
    /// Connections to try in all.
    pub total: usize,
    /// Where the helpers' output goes.
    pub dir: &'a Path,
}

/// Opens up to `plan.total` connections to one destination at once and
/// returns how many were established (and held together).
pub fn concurrent_connections(plan: &Plan) -> Result<usize, LabError> {
    hold_connections(plan).map(|h| h.established)
}

/// Connections held open by helper processes until this is dropped.
pub struct HeldConnections {
    /// How many were established (and are held together).
    pub established: usize,
    _helpers: Helpers,
}

/// Opens up to `plan.total` connections to one destination at once and
/// keeps those established open until the result is dropped.
pub fn hold_connections(plan: &Plan) -> Result<HeldConnections, LabError> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let processes = plan.total.div_ceil(PER_PROCESS);
    let mut helpers = Helpers(Vec::new());
    let mut logs = Vec::new();
    // One listener more than connectors: SO_REUSEPORT spreads connections
    // by hash, so some listener gets more than its share.
    for i in 0..=processes {
        let log = plan.dir.join(format!("hold-listen-{i}.log"));
        let _ = std::fs::remove_file(&log);
        let args = vec!["hold".into(), "--listen".into(), plan.server.to_string()];
        helpers.0.push(exec::spawn_in_ns(
            plan.server_ns,
            plan.helper,
            &args,
            &[],
            &log,
        )?);
        line_in(&log, "listening", deadline)?;
    }
    for i in 0..processes {
        let log = plan.dir.join(format!("hold-connect-{i}.log"));
        let _ = std::fs::remove_file(&log);
        let count = PER_PROCESS.min(plan.total - i * PER_PROCESS);
        let args = vec![
            "hold".into(),
            "--connect".into(),
            plan.server.to_string(),
            "--from".into(),
            plan.from[i % plan.from.len()].to_string(),
            "--count".into(),
            count.to_string(),
        ];
        helpers.0.push(exec::spawn_in_ns(
            plan.client_ns,
            plan.helper,
            &args,
            &[],
            &log,
        )?);
        logs.push(log);
    }
    let mut held = 0;
    for log in &logs {
        let line = line_in(log, "held ", deadline)?;
        held += line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| LabError::Setup(format!("{}: {line}", log.display())))?;
    }
    Ok(HeldConnections {
        established: held,
        _helpers: helpers,
    })
}
