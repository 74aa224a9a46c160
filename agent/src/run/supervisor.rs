//! Every background task of the agent runs under one supervisor: a
//! `JoinSet` with a cancellation token. The tasks are meant to run until
//! the agent stops, so a task that ends or panics is a failure the agent
//! cannot repair by itself: the supervisor names it, the agent turns
//! /readyz to 503 and exits non-zero, and systemd restarts it. Nothing is
//! handed over on the way out (the data plane stays in the kernel and a
//! restarted agent adopts it).
//!
//! Panics unwind (the release profile does not set `panic = "abort"`):
//! that is what lets the supervisor see which task died and report it
//! before the process exits. With abort, a panic would kill the process
//! at once, without the journal line naming the task or the 503.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{AbortHandle, Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// How a supervised task ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskEnded {
    #[error("task {name} ended unexpectedly")]
    Returned { name: &'static str },
    #[error("task {name} panicked: {message}")]
    Panicked { name: &'static str, message: String },
}

impl TaskEnded {
    pub fn name(&self) -> &'static str {
        match self {
            TaskEnded::Returned { name } | TaskEnded::Panicked { name, .. } => name,
        }
    }
}

/// A test switch: the task of this name panics after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedPanic {
    pub task: String,
    pub after: Duration,
}

pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    /// Tasks with nothing to finish, aborted at once on stop.
    abrupt: Vec<AbortHandle>,
    cancel: CancellationToken,
    inject: Option<InjectedPanic>,
}

impl Supervisor {
    pub fn new(inject: Option<InjectedPanic>) -> Supervisor {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            abrupt: Vec::new(),
            cancel: CancellationToken::new(),
            inject,
        }
    }

    /// Cancelled when the agent stops; tasks that must finish cleanly
    /// (the HTTP server) wait on it.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs `task` until it ends (a failure) or the supervisor stops it
    /// (at once: a loop with nothing to finish).
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.start(name, task);
        self.abrupt.push(handle);
    }

    /// Like [`Supervisor::spawn`], for a task that watches the token and
    /// finishes cleanly when it is cancelled (the HTTP server).
    pub fn spawn_graceful(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.start(name, task);
    }

    fn start(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> AbortHandle {
        let inject = self
            .inject
            .as_ref()
            .filter(|i| i.task == name)
            .map(|i| i.after);
        let handle = self.tasks.spawn(async move {
            match inject {
                None => task.await,
                Some(after) => {
                    tokio::select! {
                        () = task => {}
                        () = tokio::time::sleep(after) => panic!("test switch: task {name} made to panic"),
                    }
                }
            }
        });
        self.names.insert(handle.id(), name);
        handle
    }

    /// Waits until a task ends and says which and how. Pending forever
    /// while every task runs (or when there are none).
    pub async fn failure(&mut self) -> TaskEnded {
        loop {
            let Some(joined) = self.tasks.join_next_with_id().await else {
                return std::future::pending().await;
            };
            let (id, panic) = match joined {
                Ok((id, ())) => (id, None),
                Err(e) if e.is_panic() => (e.id(), Some(panic_message(e.into_panic()))),
                // Aborted by us: not a failure.
                Err(_) => continue,
            };
            let name = self.names.remove(&id).unwrap_or("unnamed");
            if self.cancel.is_cancelled() {
                continue;
            }
            return match panic {
                None => TaskEnded::Returned { name },
                Some(message) => TaskEnded::Panicked { name, message },
            };
        }
    }

    /// Stops every task: aborts the loops, cancels the token, gives the
    /// tasks that watch it `grace` to finish, then aborts them too.
    pub async fn stop(mut self, grace: Duration) {
        for h in &self.abrupt {
            h.abort();
        }
        self.cancel.cancel();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forever() -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_named() {
        let mut s = Supervisor::new(None);
        s.spawn("prober", forever());
        s.spawn("peers", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("index out of bounds");
        });
        let ended = s.failure().await;
        assert_eq!(
            ended,
            TaskEnded::Panicked {
                name: "peers",
                message: "index out of bounds".into()
            }
        );
        assert_eq!(
            ended.to_string(),
            "task peers panicked: index out of bounds"
        );
        s.stop(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_is_a_failure_too() {
        let mut s = Supervisor::new(None);
        s.spawn("heartbeat", async {});
        assert_eq!(s.failure().await, TaskEnded::Returned { name: "heartbeat" });
    }

    #[tokio::test(start_paused = true)]
    async fn the_test_switch_makes_the_named_task_panic() {
        let mut s = Supervisor::new(Some(InjectedPanic {
            task: "coordinator".into(),
            after: Duration::from_secs(3),
        }));
        s.spawn("prober", forever());
        s.spawn("coordinator", forever());
        let start = tokio::time::Instant::now();
        let ended = s.failure().await;
        assert_eq!(ended.name(), "coordinator");
        assert!(start.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_lets_watching_tasks_finish_and_aborts_the_rest() {
        let mut s = Supervisor::new(None);
        let token = s.token();
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.spawn_graceful("http", async move {
            token.cancelled().await;
            let _ = tx.send("closed cleanly");
        });
        s.spawn("prober", forever());
        let t0 = tokio::time::Instant::now();
        s.stop(Duration::from_secs(2)).await;
        assert_eq!(rx.await.unwrap(), "closed cleanly");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the loops were not waited for"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_task_running_there_is_no_failure() {
        let mut s = Supervisor::new(None);
        s.spawn("prober", forever());
        assert!(tokio::time::timeout(Duration::from_secs(60), s.failure())
            .await
            .is_err());
    }
}
