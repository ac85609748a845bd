//! One supervisor for every task a process starts. Long-running tasks
//! (finalizer, sweeper, gauges, health, preload resumer, issue batch
//! workers) are tracked by name: the first that ends before shutdown (with
//! an error, a panic, or at all) stops the process with a log line naming
//! it; at shutdown every task is awaited within a deadline. Tasks that come
//! and go (a stream's responder, a background publish, a preload job) are
//! started through a `Spawner`, the supervisor's handle, into a group of
//! their kind, which the drain waits for in its turn.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Ended = (&'static str, Result<anyhow::Result<()>, JoinError>);

#[derive(Default)]
pub struct Supervisor {
    tasks: FuturesUnordered<Pin<Box<dyn Future<Output = Ended> + Send>>>,
    spawner: Spawner,
}

/// The kinds of tasks that come and go; the drain waits for each kind in
/// its turn (see `startup::drain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An IssueStream's responder.
    Stream,
    /// A background publish (async durability).
    Publish,
    /// A preload job.
    PreloadJob,
}

/// The supervisor's handle for tasks that come and go; cheap to clone.
#[derive(Clone, Default)]
pub struct Spawner {
    groups: std::sync::Arc<[TaskTracker; 3]>,
}

impl Spawner {
    fn group(&self, kind: Kind) -> &TaskTracker {
        &self.groups[kind as usize]
    }

    /// Starts `task` in the group of `kind`.
    pub fn spawn<F>(&self, kind: Kind, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.group(kind).spawn(task);
    }

    /// Waits (up to `within`) for the tasks of `kind`, taking no new ones;
    /// returns how many were still running at the deadline.
    pub async fn drain(&self, kind: Kind, within: Duration) -> usize {
        let group = self.group(kind);
        group.close();
        match tokio::time::timeout(within, group.wait()).await {
            Ok(()) => 0,
            Err(_) => group.len(),
        }
    }
}

/// Why a supervised process stopped early.
#[derive(Debug, thiserror::Error)]
#[error("task {task} ended while the process was running: {why}")]
pub struct TaskEnded {
    pub task: &'static str,
    pub why: String,
}

impl Supervisor {
    /// The handle for tasks that come and go.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Spawns `task` under `name`.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.watch(name, tokio::spawn(task));
    }

    /// Tracks an already spawned task.
    pub fn watch(&mut self, name: &'static str, handle: JoinHandle<anyhow::Result<()>>) {
        self.tasks
            .push(Box::pin(async move { (name, handle.await) }));
    }

    /// Runs `main` (the server) until it ends, or until a task ends before
    /// `stop` fired: then `stop` is cancelled (to begin the drain) and
    /// `main` is still awaited. Tasks ending after `stop` are the drain.
    /// Returns `main`'s result and the task that ended early, if one did.
    pub async fn run<T>(
        &mut self,
        main: impl Future<Output = T>,
        stop: &CancellationToken,
    ) -> (T, Option<TaskEnded>) {
        tokio::pin!(main);
        let ended = loop {
            tokio::select! {
                out = &mut main => return (out, None),
                Some((task, r)) = self.tasks.next() => {
                    if stop.is_cancelled() {
                        log_end(task, r);
                        continue;
                    }
                    break TaskEnded { task, why: why(r) };
                }
            }
        };
        tracing::error!(task = ended.task, why = %ended.why, "a task ended while the process was running; stopping");
        stop.cancel();
        (main.await, Some(ended))
    }

    /// Awaits every task, each within `deadline` of now; logs how each ended.
    pub async fn wait_all(mut self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(until, self.tasks.next()).await {
                Ok(Some((task, r))) => log_end(task, r),
                Ok(None) => return,
                Err(_) => {
                    tracing::error!(
                        left = self.tasks.len(),
                        "tasks still running at the shutdown deadline; leaving them"
                    );
                    return;
                }
            }
        }
    }
}

fn log_end(task: &'static str, r: Result<anyhow::Result<()>, JoinError>) {
    match r {
        Ok(Ok(())) => tracing::info!(task, "stopped"),
        r => tracing::error!(task, why = %why(r), "ended with an error"),
    }
}

fn why(r: Result<anyhow::Result<()>, JoinError>) -> String {
    match r {
        Ok(Ok(())) => "returned".into(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) if e.is_panic() => format!("panicked: {e}"),
        Err(e) => format!("cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_stops_the_main_future_and_is_named() {
        let mut s = Supervisor::default();
        s.spawn("forever", std::future::pending());
        s.spawn("fails", async { anyhow::bail!("broken") });
        let stop = CancellationToken::new();
        let main = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                7
            }
        };
        let (out, ended) = s.run(main, &stop).await;
        let ended = ended.expect("a task ended");
        assert_eq!((out, ended.task), (7, "fails"));
        assert!(ended.why.contains("broken"), "{}", ended.why);
    }

    #[tokio::test]
    async fn tasks_ending_after_the_stop_are_the_drain_not_a_failure() {
        let mut s = Supervisor::default();
        let stop = CancellationToken::new();
        let watching = stop.clone();
        s.spawn("stops with the process", async move {
            watching.cancelled().await;
            Ok(())
        });
        let main = {
            let stop = stop.clone();
            async move {
                stop.cancel();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (_, ended) = s.run(main, &stop).await;
        assert!(ended.is_none());
    }

    #[tokio::test]
    async fn a_group_is_drained_in_its_turn_within_its_deadline() {
        let s = Supervisor::default();
        let spawner = s.spawner();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        spawner.spawn(Kind::Publish, async move {
            let _ = rx.await;
        });
        spawner.spawn(Kind::Stream, std::future::pending());
        assert_eq!(
            spawner
                .drain(Kind::Publish, Duration::from_millis(50))
                .await,
            1
        );
        tx.send(()).unwrap();
        assert_eq!(
            spawner.drain(Kind::Publish, Duration::from_secs(5)).await,
            0
        );
        assert_eq!(
            spawner.drain(Kind::Stream, Duration::from_millis(50)).await,
            1
        );
    }

    #[tokio::test]
    async fn a_panic_is_a_task_end_and_a_hung_task_does_not_hang_the_shutdown() {
        let mut s = Supervisor::default();
        s.spawn("panics", async { panic!("boom") });
        let stop = CancellationToken::new();
        let main = stop.clone().cancelled_owned();
        let (_, ended) = s.run(main, &stop).await;
        assert!(ended.unwrap().why.contains("panicked"));
        s.spawn("hangs", std::future::pending());
        let t = std::time::Instant::now();
        s.wait_all(Duration::from_millis(100)).await;
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
