//! The one module that spawns processes. Everything the agent runs outside
//! itself (`nft`, `conntrack`) goes through [`run`] or, for a watcher that
//! runs until it ends, [`each_line`], so timeouts, error text and logging
//! are uniform and easy to audit.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{program}: cannot start: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args}: timed out after {timeout:?}")]
    Timeout {
        program: String,
        args: String,
        timeout: Duration,
    },
    #[error("{program} {args}: exit {code}: {stderr}")]
    Failed {
        program: String,
        args: String,
        code: i32,
        stderr: String,
    },
    #[error("{program}: i/o: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `program args...`, feeding `stdin`, and returns its stdout. A non-zero
/// exit is an error carrying stderr. The child is killed on timeout.
pub async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<String, ExecError> {
    let joined = args.join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            program: program.into(),
            source,
        })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).await.map_err(|source| ExecError::Io {
            program: program.into(),
            source,
        })?;
        drop(pipe);
    }
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(result) => result.map_err(|source| ExecError::Io {
            program: program.into(),
            source,
        })?,
        Err(_) => {
            return Err(ExecError::Timeout {
                program: program.into(),
                args: joined,
                timeout,
            })
        }
    };
    if !output.status.success() {
        return Err(ExecError::Failed {
            program: program.into(),
            args: joined,
            code: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What a watcher hands each line of its output to.
pub type OnLine<'a> = dyn FnMut(&str) + Send + 'a;

/// Runs `program args...` until it ends, handing each line of its stdout
/// to `on_line` as it comes; returns how it ended (a watcher that ends is
/// an error whatever its exit code). The child is killed if this future is
/// dropped.
pub async fn each_line(program: &str, args: &[&str], on_line: &mut OnLine<'_>) -> ExecError {
    let joined = args.join(" ");
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(source) => {
            return ExecError::Spawn {
                program: program.into(),
                source,
            }
        }
    };
    let io = |source| ExecError::Io {
        program: program.into(),
        source,
    };
    let Some(stdout) = child.stdout.take() else {
        return io(std::io::Error::other("no stdout"));
    };
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => on_line(&line),
            Ok(None) => break,
            Err(e) => return io(e),
        }
    }
    match child.wait_with_output().await {
        Ok(output) => ExecError::Failed {
            program: program.into(),
            args: joined,
            code: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        },
        Err(e) => io(e),
    }
}
