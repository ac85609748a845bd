//! Group commit for issue requests: concurrent requests (unary calls and
//! stream items alike) are gathered into one Lua script call per event.
//!
//! A fixed set of workers share one queue. A worker takes the first waiting
//! request at once and whatever else is already queued (up to `max_batch`),
//! so a lone request never waits for a timer, and while one batch is in
//! Redis the next worker is already gathering the following one.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::domain::{CouponError, EventId, IssueCommand, IssueOutcome};
use crate::store::RedisStore;

type Reply = oneshot::Sender<Result<IssueOutcome, CouponError>>;

struct Job {
    cmd: IssueCommand,
    reply: Reply,
}

/// Handle to the batching workers; cheap to clone. The workers stop when
/// every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    pub fn start(redis: RedisStore, max_batch: usize, workers: usize) -> Self {
        let max_batch = max_batch.max(1);
        // Bounded: past this many queued requests, callers wait (backpressure).
        let (tx, rx) = mpsc::channel(max_batch * workers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            tokio::spawn(worker(redis.clone(), rx.clone(), max_batch));
        }
        Self { tx }
    }

    /// Issues through the next batch and waits for this request's outcome.
    pub async fn issue(&self, cmd: IssueCommand) -> Result<IssueOutcome, CouponError> {
        let (reply, rx) = oneshot::channel();
        let closed =
            || CouponError::unavailable("issuer shutting down", anyhow::anyhow!("batcher closed"));
        self.tx
            .send(Job { cmd, reply })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

async fn worker(redis: RedisStore, rx: Arc<Mutex<mpsc::Receiver<Job>>>, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        {
            let mut q = rx.lock().await;
            match q.recv().await {
                Some(j) => jobs.push(j),
                None => return,
            }
            while jobs.len() < max_batch {
                match q.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        }
        run_batch(&redis, &mut jobs).await;
    }
}

/// One script call per event present in `jobs`, each in arrival order.
async fn run_batch(redis: &RedisStore, jobs: &mut Vec<Job>) {
    let mut by_event: HashMap<EventId, Vec<Job>> = HashMap::new();
    for j in jobs.drain(..) {
        by_event.entry(j.cmd.event_id.clone()).or_default().push(j);
    }
    for (event, group) in by_event {
        let items: Vec<_> = group
            .iter()
            .map(|j| (&j.cmd.user_id, &j.cmd.request_id))
            .collect();
        match redis.issue_batch(&event, &items).await {
            Ok(outcomes) => {
                for (j, o) in group.into_iter().zip(outcomes) {
                    // The caller may have gone (deadline, disconnect); the
                    // coupon stands and a retry returns ALREADY_ISSUED.
                    let _ = j.reply.send(Ok(o));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for j in group {
                    let _ = j.reply.send(Err(CouponError::unavailable(
                        "redis issue script failed",
                        anyhow::anyhow!(e.clone()),
                    )));
                }
            }
        }
    }
}
