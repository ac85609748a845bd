//! Group commit for issue requests: concurrent requests (unary calls and
//! stream items alike) are gathered into one Lua script call per event.
//!
//! A fixed set of workers share one queue. A worker takes the first waiting
//! request at once and whatever else is already queued (up to `max_batch`),
//! so a lone request never waits for a timer, and while one batch is in
//! Redis the next worker is already gathering the following one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::backoff::Backoff;
use crate::domain::{CouponError, EventId, IssueCommand};
use crate::store::redis::{RedisStoreError, Verdict};
use crate::store::{PgStore, RedisStore};
use crate::supervisor::Supervisor;

/// First and longest pause between two attempts at a batch.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The command comes back with its verdict: the caller needs it for the
/// publish, and handing it back spares a copy of every request's ids.
type Reply = oneshot::Sender<Result<(IssueCommand, Verdict), CouponError>>;

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
    /// `retry`: how long a batch whose reply was lost is asked again. The
    /// workers run under `tasks`.
    pub fn start(
        redis: RedisStore,
        pg: PgStore,
        max_batch: usize,
        workers: usize,
        retry: Duration,
        tasks: &mut Supervisor,
    ) -> Self {
        let max_batch = max_batch.max(1);
        // Bounded: past this many queued requests, callers wait (backpressure).
        let (tx, rx) = mpsc::channel(max_batch * workers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            let w = worker(redis.clone(), pg.clone(), rx.clone(), max_batch, retry);
            tasks.spawn("issue batch worker", async move {
                w.await;
                Ok(())
            });
        }
        Self { tx }
    }

    /// Issues through the next batch and waits for the script's verdict on
    /// this request.
    pub async fn issue(&self, cmd: IssueCommand) -> Result<(IssueCommand, Verdict), CouponError> {
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

async fn worker(
    redis: RedisStore,
    pg: PgStore,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    max_batch: usize,
    retry: Duration,
) {
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
        run_batch(&redis, &pg, &mut jobs, retry).await;
    }
}

/// One script call per event present in `jobs`, each in arrival order.
async fn run_batch(redis: &RedisStore, pg: &PgStore, jobs: &mut Vec<Job>, retry: Duration) {
    let mut by_event: HashMap<EventId, Vec<Job>> = HashMap::new();
    for j in jobs.drain(..) {
        // The event id is copied once per event, not once per request.
        match by_event.get_mut(&j.cmd.event_id) {
            Some(group) => group.push(j),
            None => {
                by_event.insert(j.cmd.event_id.clone(), vec![j]);
            }
        }
    }
    for (event, group) in by_event {
        let items: Vec<_> = group
            .iter()
            .map(|j| (&j.cmd.user_id, &j.cmd.request_id))
            .collect();
        let shards = match pg.shards(&event).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(event_id = %event, error = %e, "reading the event's shard count failed; nothing was issued");
                let e = Arc::new(e);
                for j in group {
                    let source = anyhow::anyhow!(e.clone());
                    let context = "reading the event's shard count failed; nothing was issued";
                    let _ = j
                        .reply
                        .send(Err(CouponError::Unavailable { context, source }));
                }
                continue;
            }
        };
        let started = Instant::now();
        let answered = issue_asking_again(redis, &event, shards, &items, retry).await;
        crate::metrics::script_called(items.len(), started.elapsed());
        let mut logged = false;
        for (j, answer) in group.into_iter().zip(answered) {
            let reply = match answer {
                // The caller may have gone (deadline, disconnect); the
                // coupon stands and a retry returns it.
                Ok(o) => Ok((j.cmd, o)),
                Err((e, ran)) => {
                    let context = match ran {
                        true => "redis did not answer the issue script in time",
                        false => "redis issue script failed; nothing was issued",
                    };
                    // The cause, once for the batch; each caller hears the context.
                    if !std::mem::replace(&mut logged, true) {
                        tracing::warn!(event_id = %event, error = %e, "{context}");
                    }
                    let source = anyhow::anyhow!(e);
                    Err(match ran {
                        true => CouponError::OutcomeUnknown { context, source },
                        false => CouponError::Unavailable { context, source },
                    })
                }
            };
            let _ = j.reply.send(reply);
        }
    }
}

/// An item's verdict, or the error its last attempt failed with and
/// whether any attempt may have run (then its outcome is unknown).
type Answer = Result<Verdict, (Arc<RedisStoreError>, bool)>;

/// Runs the batch's script, asking again for up to `retry` for the items
/// whose call failed: the script is idempotent per user and recognises each
/// item's own request id, so a repeat answers what the lost reply would
/// have. An event of several shards fails per shard, so only the failed
/// shard's users are asked again.
async fn issue_asking_again(
    redis: &RedisStore,
    event: &EventId,
    shards: u32,
    items: &[(&crate::domain::UserId, &crate::domain::RequestId)],
    retry: Duration,
) -> Vec<Answer> {
    let give_up = Instant::now() + retry;
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut out: Vec<Option<Answer>> = vec![None; items.len()];
    // Once a call may have run, an item's outcome stays unknown whatever
    // later attempts fail with.
    let mut ran = vec![false; items.len()];
    let mut todo: Vec<usize> = (0..items.len()).collect();
    loop {
        let part: Vec<_> = todo.iter().map(|&i| items[i]).collect();
        let answers = attempt(redis, event, shards, &part).await;
        let mut failed = Vec::new();
        for (&i, a) in todo.iter().zip(answers) {
            match a {
                Ok(v) => out[i] = Some(Ok(v)),
                Err(e) => {
                    ran[i] |= e.may_have_run();
                    failed.push((i, e));
                }
            }
        }
        let Some((_, e)) = failed.first() else { break };
        let pause = backoff.next_pause();
        if Instant::now() + pause >= give_up {
            for (i, e) in failed {
                out[i] = Some(Err((e, ran[i])));
            }
            break;
        }
        tracing::warn!(event_id = %event, error = %e, users = failed.len(), "issue batch failed; asking again");
        tokio::time::sleep(pause).await;
        todo = failed.into_iter().map(|(i, _)| i).collect();
    }
    out.into_iter()
        .map(|a| a.expect("every item answered"))
        .collect()
}

/// One attempt at `items`: the event's one script call, or one per home
/// shard.
async fn attempt(
    redis: &RedisStore,
    event: &EventId,
    shards: u32,
    items: &[(&crate::domain::UserId, &crate::domain::RequestId)],
) -> Vec<Result<Verdict, Arc<RedisStoreError>>> {
    if shards > 1 {
        return redis.issue_each(event, shards, items).await;
    }
    match redis.issue_batch(event, items).await {
        Ok(verdicts) => verdicts.into_iter().map(Ok).collect(),
        Err(e) => {
            let e = Arc::new(e);
            items.iter().map(|_| Err(e.clone())).collect()
        }
    }
}
