//! Jool, NAT64's translator, through the narrow [`Jool`] trait: read
//! natron's instance, replace it, count its sessions. One real
//! implementation over the `jool` command (through `exec`), one fake.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::exec;
use crate::core::jool::{self, DisplayError, JoolConfig, Protocol, INSTANCE};

const JOOL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JoolError {
    #[error("Jool instance {INSTANCE}: {0}")]
    Exec(#[from] exec::ExecError),
    #[error("Jool instance {INSTANCE}: {0}")]
    Display(#[from] DisplayError),
    #[error("Jool instance {INSTANCE}: cannot write {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[async_trait]
pub trait Jool: Send + Sync {
    /// natron's instance as it is, or None when there is none.
    async fn read(&self) -> Result<Option<JoolConfig>, JoolError>;
    /// Creates or replaces natron's instance in one step (sessions kept).
    async fn apply(&self, config: &JoolConfig) -> Result<(), JoolError>;
    /// Removes natron's instance (NAT64 turned off).
    async fn remove(&self) -> Result<(), JoolError>;
    /// The instance's sessions, by protocol.
    async fn sessions(&self) -> Result<Vec<(Protocol, u64)>, JoolError>;
}

/// The `jool` command; its configuration file is written under `dir` (the
/// agent's runtime directory), since `jool file handle` needs a file it
/// can seek.
pub struct JoolCli {
    pub program: String,
    pub dir: PathBuf,
}

impl JoolCli {
    async fn run(&self, args: &[&str]) -> Result<String, JoolError> {
        Ok(exec::run(&self.program, args, None, JOOL_TIMEOUT).await?)
    }

    /// `jool -i natron <what> display --csv --no-headers [extra]`.
    async fn display(&self, what: &str, extra: &[&str]) -> Result<String, JoolError> {
        let mut args = vec!["-i", INSTANCE, what, "display", "--csv", "--no-headers"];
        args.extend_from_slice(extra);
        self.run(&args).await
    }

    /// [`JoolCli::display`] of each protocol's table (pool4, sessions).
    async fn per_protocol(
        &self,
        what: &str,
        extra: &[&str],
    ) -> Result<Vec<(Protocol, String)>, JoolError> {
        let mut out = Vec::new();
        for p in Protocol::ALL {
            let mut args = extra.to_vec();
            args.push(p.flag());
            out.push((p, self.display(what, &args).await?));
        }
        Ok(out)
    }
}

#[async_trait]
impl Jool for JoolCli {
    async fn read(&self) -> Result<Option<JoolConfig>, JoolError> {
        let list = ["instance", "display", "--csv", "--no-headers"];
        if !jool::has_instance(&self.run(&list).await?) {
            return Ok(None);
        }
        let global = self.display("global", &[]).await?;
        let pool4: Vec<String> = self
            .per_protocol("pool4", &[])
            .await?
            .into_iter()
            .map(|(_, text)| text)
            .collect();
        Ok(Some(jool::parse(&global, &pool4)?))
    }

    async fn apply(&self, config: &JoolConfig) -> Result<(), JoolError> {
        let path = self.dir.join("jool.json");
        let failed = |source| JoolError::File {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(failed)?;
        std::fs::write(&path, jool::file(config)).map_err(failed)?;
        let file = path.to_string_lossy();
        self.run(&["file", "handle", &file]).await?;
        Ok(())
    }

    async fn remove(&self) -> Result<(), JoolError> {
        self.run(&["instance", "remove", INSTANCE]).await?;
        Ok(())
    }

    async fn sessions(&self) -> Result<Vec<(Protocol, u64)>, JoolError> {
        Ok(self
            .per_protocol("session", &["--numeric"])
            .await?
            .into_iter()
            .map(|(p, text)| (p, jool::count_sessions(&text)))
            .collect())
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// An in-memory Jool: the instance as last applied.
    #[derive(Default)]
    pub struct FakeJool {
        pub instance: Mutex<Option<JoolConfig>>,
        pub applies: Mutex<usize>,
        pub sessions: Mutex<u64>,
    }

    #[async_trait]
    impl Jool for FakeJool {
        async fn read(&self) -> Result<Option<JoolConfig>, JoolError> {
            Ok(self.instance.lock().unwrap().clone())
        }
        async fn apply(&self, config: &JoolConfig) -> Result<(), JoolError> {
            *self.instance.lock().unwrap() = Some(config.clone());
            *self.applies.lock().unwrap() += 1;
            Ok(())
        }
        async fn remove(&self) -> Result<(), JoolError> {
            *self.instance.lock().unwrap() = None;
            Ok(())
        }
        async fn sessions(&self) -> Result<Vec<(Protocol, u64)>, JoolError> {
            let n = *self.sessions.lock().unwrap();
            Ok(vec![
                (Protocol::Tcp, n),
                (Protocol::Udp, 0),
                (Protocol::Icmp, 0),
            ])
        }
    }
}
