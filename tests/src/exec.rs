//! The lab's one place that spawns processes: `ip`, `nft`, the emulator and
//! agents. Every failure names the command and carries its stderr.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::LabError;

/// Runs a command to completion; Ok(stdout) on exit 0.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    run_with_input(program, args, None)
}

pub fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, LabError> {
    use std::io::Write;
    let describe = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Command(format!("{}: cannot start: {e}", describe())))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| LabError::Command(format!("{}: writing stdin: {e}", describe())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::Command(format!("{}: {e}", describe())))?;
    if !out.status.success() {
        let mut shown = describe();
        if let Some(text) = input {
            shown.push_str(&format!(" <<'EOF'\n{text}EOF"));
        }
        return Err(LabError::Command(format!(
            "{shown}: exit {}: {}",
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ...`
pub fn ip(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip -n NS -batch -` with one command per line (stops at the first error).
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<(), LabError> {
    batch(&["-n", ns], lines)
}

/// `ip -6 -n NS -batch -`: the same for IPv6 routes and rules.
pub fn ip6_batch(ns: &str, lines: &[String]) -> Result<(), LabError> {
    batch(&["-6", "-n", ns], lines)
}

fn batch(options: &[&str], lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    let text = lines.join("\n") + "\n";
    let args: Vec<&str> = options.iter().copied().chain(["-batch", "-"]).collect();
    run_with_input("ip", &args, Some(&text)).map(|_| ())
}

/// Runs `program args` inside namespace `ns` and returns its stdout.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Loads an nft script inside `ns` as one transaction.
pub fn nft_script(ns: &str, script: &str) -> Result<(), LabError> {
    run_with_input("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)).map(|_| ())
}

/// Starts a long-running process inside `ns`, its output appended to `log`.
pub fn spawn_in_ns(
    ns: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Child, LabError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    spawn_logged(cmd, env, log)
        .map_err(|e| LabError::Command(format!("{} in {ns}: {e}", program.display())))
}

/// Starts a long-running process on the host (it must only listen on
/// 127.0.0.1), its output appended to `log`.
pub fn spawn_on_host(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Child, LabError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    spawn_logged(cmd, env, log)
        .map_err(|e| LabError::Command(format!("{}: {e}", program.display())))
}

fn spawn_logged(mut cmd: Command, env: &[(String, String)], log: &Path) -> Result<Child, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    // A clean environment: nothing of the host's AWS settings leaks in.
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    cmd.spawn().map_err(|e| format!("cannot start: {e}"))
}

/// Sends `signal` to a process.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Runs `program args...` in namespace `ns` with `vars` set and waits:
/// its exit code (None: killed by a signal) and its stdout and stderr.
pub fn output_in_ns(
    ns: &str,
    program: &Path,
    args: &[&str],
    vars: &[(String, String)],
) -> (Option<i32>, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output();
    match out {
        Ok(o) => (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (
            None,
            format!("ip netns exec {ns} {}: {e}", program.display()),
        ),
    }
}
