//! Network namespaces the lab creates (and always deletes), and tokio
//! runtimes whose threads live inside one, so the harness can open sockets
//! "from" a lab host without touching the host's own network.

use std::fs::File;
use std::future::Future;
use std::sync::Arc;

use nix::sched::CloneFlags;

use crate::exec;
use crate::LabError;

/// Prefix of every namespace this process creates: `nt-<pid>-`.
pub fn prefix() -> String {
    format!("nt-{}-", std::process::id())
}

/// Deletes namespaces left by lab processes that no longer exist (a test
/// killed before its cleanup ran).
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("nt-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete(&name);
        }
    }
}

pub fn create(name: &str) -> Result<(), LabError> {
    exec::run("ip", &["netns", "add", name])?;
    exec::ip(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Kills whatever still runs inside `name`, then deletes it. Never fails.
pub fn delete(name: &str) {
    if let Ok(pids) = exec::run("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            exec::signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = exec::run("ip", &["netns", "del", name]);
}

/// A multi-thread tokio runtime whose every thread has entered namespace
/// `ns`: sockets created by tasks spawned on it belong to that namespace.
pub struct NsRuntime {
    pub ns: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl NsRuntime {
    pub fn new(ns: &str) -> Result<NsRuntime, LabError> {
        let path = format!("/run/netns/{ns}");
        let file =
            Arc::new(File::open(&path).map_err(|e| LabError::Setup(format!("{path}: {e}")))?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .thread_name(format!("ns-{ns}"))
            .enable_all()
            .on_thread_start(move || {
                nix::sched::setns(&*file, CloneFlags::CLONE_NEWNET)
                    .expect("setns into the lab namespace");
            })
            .build()
            .map_err(|e| LabError::Setup(format!("runtime for {ns}: {e}")))?;
        Ok(NsRuntime {
            ns: ns.to_string(),
            rt: Some(rt),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime alive")
    }

    /// Runs `f` on a thread inside the namespace and waits for its result.
    /// (`block_on` would poll `f` on the caller's thread, outside it.)
    pub fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.rt().spawn(f);
        match self.rt().block_on(handle) {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task in {} cancelled: {e}", self.ns),
        }
    }

    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt().spawn(f)
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt().handle().clone()
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
