//! Preload as a job the server owns.
//!
//! A call records the event in PostgreSQL (PREPARING, with a fresh preload
//! id) before any code exists, then a server task drives the job to LIVE or
//! FAILED whatever the caller does. The preload id fences the job in both
//! stores: every PostgreSQL write of the job checks the event row still
//! names it, and Redis lets only the id in `couponPreload:{E}` stage or make
//! the event live. The job renews a lease on the row; a job whose lease ran
//! out (its server died) is taken over by any server, which draws a new id,
//! takes the Redis fence from the old one and starts over, or adopts the
//! event when the old job had already made it live.
//!
//! Codes are generated, written (COPY, one transaction per chunk) and staged
//! (an idempotent script per chunk) a chunk at a time through bounded
//! channels, so a job holds a few chunks, never the whole event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::PreloadSettings;
use crate::domain::{
    CodeGenerator, CouponError, EventId, EventState, NewEvent, PolicyDeck, PreloadId,
    PreloadTimings, StoredEvent, DEFAULT_CODE_LENGTH,
};
use crate::store::keys::ShardZero;
use crate::store::postgres::coupon_writer::{CouponWriter, WriteError};
use crate::store::postgres::{Begun, PgStoreError};
use crate::store::record::queue_entry;
use crate::store::redis::{FenceReply, PreloadStepError};
use crate::store::{PgStore, RedisStore};
use crate::supervisor::{Kind, Spawner};

/// Attempts at the whole fill (generate, write, stage) before a job fails.
const FILL_ATTEMPTS: u32 = 3;
/// Longest pause between two retries of a step.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs and watches the preload jobs of this server.
#[derive(Clone)]
pub struct PreloadJobs {
    inner: Arc<Inner>,
}

struct Inner {
    pg: PgStore,
    redis: RedisStore,
    database_url: String,
    settings: PreloadSettings,
    /// Starts the job tasks, which the drain waits for.
    spawner: Spawner,
    /// Cancelled at shutdown: jobs stop at the next chunk and let their
    /// lease go, so another server (or this one, restarted) resumes them.
    shutdown: CancellationToken,
    /// Woken when a job of this server ends, so waiters answer at once.
    ended: Notify,
}

/// How a job's drive ended short of LIVE.
#[derive(Debug)]
enum JobEnd {
    /// Another job holds the event now; it carries on.
    Fenced,
    /// The server is shutting down; the lease is let go.
    Stopped,
    /// Worth another fill from scratch.
    Retry(String),
    /// The staging list is not what this fill wrote: another fill from
    /// scratch, at once (asking the step again cannot change that).
    Refill(String),
    /// The job fails, and cleans up.
    Failed(String),
}

impl From<WriteError> for JobEnd {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Fenced => JobEnd::Fenced,
            WriteError::Store(e) => JobEnd::Retry(format!("writing coupons to postgres: {e}")),
        }
    }
}

impl From<PreloadStepError> for JobEnd {
    fn from(e: PreloadStepError) -> Self {
        match e {
            PreloadStepError::Fenced => JobEnd::Fenced,
            PreloadStepError::Exists => {
                JobEnd::Failed("the event is live in Redis with another preload's codes".into())
            }
            PreloadStepError::Staging(m) => JobEnd::Refill(format!("redis staging: {m}")),
            PreloadStepError::Store(e) => JobEnd::Retry(format!("redis: {e}")),
        }
    }
}

fn unavailable(context: &'static str) -> impl FnOnce(PgStoreError) -> CouponError {
    move |e| CouponError::unavailable(context, e)
}

impl PreloadJobs {
    pub fn new(
        pg: PgStore,
        redis: RedisStore,
        database_url: String,
        settings: PreloadSettings,
        shutdown: CancellationToken,
        spawner: Spawner,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pg,
                redis,
                database_url,
                settings,
                spawner,
                shutdown,
                ended: Notify::new(),
            }),
        }
    }

    /// Starts the event's job, or attaches to the running or finished job
    /// of the same content; a FAILED event starts over. Returns once the
    /// event is recorded, long before the job ends.
    pub async fn submit(&self, event: &NewEvent) -> Result<(), CouponError> {
        let lease = self.inner.settings.lease;
        // Twice at most: a FAILED event restarted by a concurrent call is
        // read again, since that call may have brought other content.
        for _ in 0..2 {
            let job = PreloadId::random(&mut rand::rng());
            let pg = &self.inner.pg;
            let stored = match pg
                .begin_preload(event, &job, lease)
                .await
                .map_err(unavailable("recording the event"))?
            {
                Begun::Started => {
                    self.spawn(event.clone(), job, None);
                    return Ok(());
                }
                Begun::Existing(stored) => stored,
            };
            if stored.preload.state != EventState::Failed {
                return match event.difference(&stored) {
                    Some(difference) => Err(CouponError::EventExists {
                        id: event.id.clone(),
                        difference,
                    }),
                    None => Ok(()),
                };
            }
            if pg
                .restart_failed(event, &stored.preload.preload_id, &job, lease)
                .await
                .map_err(unavailable("restarting the failed event"))?
            {
                self.spawn(event.clone(), job, None);
                return Ok(());
            }
        }
        Err(CouponError::unavailable(
            "recording the event",
            anyhow::anyhow!("event {} changed under concurrent preloads", event.id),
        ))
    }

    /// Waits until the event's job ended or `deadline` passed.
    pub async fn wait(&self, id: &EventId, deadline: Instant) -> Result<StoredEvent, CouponError> {
        let mut poll = Backoff::new(Duration::from_millis(20), Duration::from_millis(250));
        loop {
            // Registered before the read, so an end in between still wakes us.
            let ended = self.inner.ended.notified();
            let e = self
                .inner
                .pg
                .event(id)
                .await
                .map_err(unavailable("reading the event"))?
                .ok_or_else(|| CouponError::EventNotFound(id.clone()))?;
            match e.preload.state {
                EventState::Live => return Ok(e),
                EventState::Failed => {
                    return Err(CouponError::PreloadFailed {
                        id: id.clone(),
                        reason: e.preload.failure.unwrap_or_default(),
                    })
                }
                EventState::Preparing => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CouponError::PreloadRunning {
                    id: id.clone(),
                    written: e.preload.written,
                    total: e.total_count,
                });
            }
            // Jobs of other servers end without waking us: poll, gently.
            let _ = tokio::time::timeout(poll.next_pause().min(deadline - now), ended).await;
        }
    }

    /// Takes over the jobs whose server died, until `stop`.
    pub async fn run_resumer(&self, stop: CancellationToken) -> anyhow::Result<()> {
        let every = self.inner.settings.lease / 3;
        loop {
            if let Err(e) = self.resume_expired().await {
                tracing::warn!(error = %e, "looking for preload jobs to resume failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn resume_expired(&self) -> Result<(), PgStoreError> {
        let pg = &self.inner.pg;
        for (id, expired) in pg.expired_preloads().await? {
            let job = PreloadId::random(&mut rand::rng());
            if !pg
                .take_over(&id, &expired, &job, self.inner.settings.lease)
                .await?
            {
                continue;
            }
            let Some(stored) = pg.event(&id).await? else {
                continue;
            };
            tracing::warn!(event_id = %id, from = %expired, to = %job, "taking over a preload job whose lease ran out");
            self.spawn(stored.as_new_event(), job, Some(expired));
        }
        Ok(())
    }

    fn spawn(&self, event: NewEvent, id: PreloadId, replaced: Option<PreloadId>) {
        let job = Job {
            inner: self.inner.clone(),
            event,
            id,
            replaced,
        };
        self.inner.spawner.spawn(Kind::PreloadJob, job.run());
    }
}

/// One job: drives one event, under one preload id, to its end.
struct Job {
    inner: Arc<Inner>,
    event: NewEvent,
    id: PreloadId,
    /// The job this one took over (its Redis fence and staging list).
    replaced: Option<PreloadId>,
}

/// Time spent per part of a fill, summed over chunks.
#[derive(Default)]
struct Spent {
    generate: Duration,
    database: Duration,
    redis: Duration,
}

impl Job {
    async fn run(self) {
        let started = Instant::now();
        let stop = self.inner.shutdown.child_token();
        tracing::info!(event_id = %self.event.id, preload_id = %self.id, total = self.event.total_count, "preload job started");
        // The lease is renewed for as long as the job drives (and no longer).
        let end = tokio::select! {
            end = self.drive(&stop, started) => end,
            _ = self.keep_lease() => unreachable!("renews until the job ends"),
        };
        match end {
            Ok(t) => tracing::info!(
                event_id = %self.event.id,
                generate_ms = t.generate.as_millis() as u64,
                database_ms = t.database.as_millis() as u64,
                redis_ms = t.redis.as_millis() as u64,
                total_ms = t.total.as_millis() as u64,
                "preload job: event is live"
            ),
            Err(JobEnd::Fenced) => {
                tracing::warn!(event_id = %self.event.id, preload_id = %self.id, "preload job lost its event to another job")
            }
            Err(JobEnd::Stopped) => self.let_go().await,
            Err(JobEnd::Failed(reason) | JobEnd::Retry(reason) | JobEnd::Refill(reason)) => {
                self.fail(&reason).await
            }
        }
        self.inner.ended.notify_waiters();
    }

    /// Renews the job's lease every third of it, for ever (the caller
    /// stops it); once the lease is lost it stops renewing: the job's next
    /// write then fails its fence.
    async fn keep_lease(&self) {
        let (pg, lease) = (&self.inner.pg, self.inner.settings.lease);
        loop {
            tokio::time::sleep(lease / 3).await;
            match pg.renew_lease(&self.event.id, &self.id, lease).await {
                Ok(true) => {}
                Ok(false) => return std::future::pending().await,
                Err(e) => {
                    tracing::warn!(event_id = %self.event.id, error = %e, "renewing the preload lease failed")
                }
            }
        }
    }

    async fn drive(
        &self,
        stop: &CancellationToken,
        started: Instant,
    ) -> Result<PreloadTimings, JobEnd> {
        if let Some(live) = self.claim(stop).await? {
            return self.adopt(live, started).await;
        }
        if self.replaced.is_some() && !self.reset_database().await? {
            return Err(JobEnd::Fenced);
        }
        let mut attempt = 1;
        let spent = loop {
            match self.fill(stop).await {
                Ok(spent) => break spent,
                Err(JobEnd::Retry(why) | JobEnd::Refill(why)) if attempt < FILL_ATTEMPTS => {
                    tracing::warn!(event_id = %self.event.id, attempt, error = %why, "preload fill failed; starting it over");
                    attempt += 1;
                    self.reset_both(stop).await?;
                }
                Err(e) => return Err(e),
            }
        };
        let t = Instant::now();
        self.make_live(stop).await?;
        self.shard_metas(stop).await?;
        let timings = PreloadTimings {
            generate: spent.generate,
            database: spent.database,
            redis: spent.redis + t.elapsed(),
            total: started.elapsed(),
        };
        self.record_live(&timings, stop).await?;
        self.spread(stop).await;
        Ok(timings)
    }

    /// Takes the Redis fence; `Some(id)` when the event turned out live
    /// already, made so by this job or the one it replaced. A fence held by
    /// an id PostgreSQL does not name while it names this job belongs to a
    /// dead predecessor (PostgreSQL grants one job at a time): it is taken
    /// from exactly that id, so no chain of failed takeovers can leave an
    /// event that nobody can preload again.
    async fn claim(&self, stop: &CancellationToken) -> Result<Option<PreloadId>, JobEnd> {
        let mut replaced = self.replaced.clone();
        let budget = self.inner.settings.step_budget;
        loop {
            let reply = retry_step(stop, budget, "claiming the event in redis", || {
                self.inner
                    .redis
                    .claim_preload(self.shard_zero(), &self.id, replaced.as_ref())
            })
            .await?;
            match reply {
                FenceReply::Done => return Ok(None),
                // Made live by this job, the one it replaced, or the dead
                // predecessor it was taking the fence from (which finished
                // in between: its rows are whole, nobody reset them yet).
                FenceReply::Live(p)
                    if p == self.id
                        || Some(&p) == self.replaced.as_ref()
                        || Some(&p) == replaced.as_ref() =>
                {
                    return Ok(Some(p))
                }
                FenceReply::Live(p) => {
                    return Err(JobEnd::Failed(format!(
                    "the event is live in Redis with preload {p}, which PostgreSQL does not know"
                )))
                }
                FenceReply::Fenced(p) if replaced.as_ref() != Some(&p) && self.holds().await? => {
                    tracing::warn!(event_id = %self.event.id, stale = %p, "taking the redis fence from a preload postgres no longer names");
                    replaced = Some(p);
                }
                FenceReply::Fenced(_) => return Err(JobEnd::Fenced),
            }
        }
    }

    /// Whether PostgreSQL still names this job as the event's (PREPARING).
    async fn holds(&self) -> Result<bool, JobEnd> {
        let stored = self
            .inner
            .pg
            .event(&self.event.id)
            .await
            .map_err(|e| JobEnd::Retry(format!("postgres: {e}")))?;
        Ok(stored.is_some_and(|e| {
            e.preload.state == EventState::Preparing && e.preload.preload_id == self.id
        }))
    }

    /// The replaced job made the event live before it died: its rows are
    /// complete (staging finished only after every chunk committed).
    async fn adopt(&self, live: PreloadId, started: Instant) -> Result<PreloadTimings, JobEnd> {
        tracing::warn!(event_id = %self.event.id, live_preload = %live, "event was live already; recording it");
        let stop = self.inner.shutdown.child_token();
        self.shard_metas(&stop).await?;
        let timings = PreloadTimings {
            total: started.elapsed(),
            ..Default::default()
        };
        self.record_live(&timings, &CancellationToken::new())
            .await?;
        self.spread(&stop).await;
        Ok(timings)
    }

    async fn reset_database(&self) -> Result<bool, JobEnd> {
        self.inner
            .pg
            .reset_preload(&self.event.id, &self.id, self.inner.settings.lease)
            .await
            .map_err(|e| JobEnd::Retry(format!("postgres: {e}")))
    }

    /// Empties both stores of this job's rows and entries before a new fill.
    async fn reset_both(&self, stop: &CancellationToken) -> Result<(), JobEnd> {
        if !self.reset_database().await? {
            return Err(JobEnd::Fenced);
        }
        // Claiming from itself drops the job's own staging list.
        let budget = self.inner.settings.step_budget;
        let reply = retry_step(stop, budget, "resetting the staging list", || {
            self.inner
                .redis
                .claim_preload(self.shard_zero(), &self.id, Some(&self.id))
        })
        .await?;
        match reply {
            FenceReply::Done => Ok(()),
            _ => Err(JobEnd::Fenced),
        }
    }

    /// Generates, writes and stages every coupon, a chunk at a time.
    async fn fill(&self, stop: &CancellationToken) -> Result<Spent, JobEnd> {
        let chunk = self.inner.settings.chunk as usize;
        let (to_db, from_gen) = mpsc::channel(2);
        let generator = tokio::task::spawn_blocking({
            let counts = self.event.counts.clone();
            let prefix = self.event.prefix.clone();
            move || generate(&counts, &prefix, chunk, to_db)
        });
        let (to_redis, from_db) = mpsc::channel(2);
        let written = self.write(from_gen, to_redis, stop);
        let staged = self.stage(from_db);
        let result = tokio::try_join!(written, staged);
        // The generator ends once its channel is closed (done or dropped).
        let generate = generator.await.unwrap_or_default();
        let (database, (staged, redis)) = result?;
        if staged != u64::from(self.event.total_count) {
            return Err(JobEnd::Retry(format!(
                "staged {staged} of {} coupons",
                self.event.total_count
            )));
        }
        Ok(Spent {
            generate,
            database,
            redis,
        })
    }

    async fn write(
        &self,
        mut chunks: mpsc::Receiver<Vec<(String, i16)>>,
        to_redis: mpsc::Sender<Vec<String>>,
        stop: &CancellationToken,
    ) -> Result<Duration, JobEnd> {
        let mut writer = CouponWriter::connect(&self.inner.database_url)
            .await
            .map_err(|e| JobEnd::Retry(format!("connecting to postgres: {e}")))?;
        let mut redraws = CodeGenerator::new(StdRng::from_os_rng(), DEFAULT_CODE_LENGTH);
        let prefix = self.event.prefix.clone();
        let mut redraw = move || redraws.code(&prefix);
        let policies = &self.event.policies;
        let mut spent = Duration::ZERO;
        let mut written = 0u64;
        while let Some(mut chunk) = chunks.recv().await {
            if stop.is_cancelled() {
                return Err(JobEnd::Stopped);
            }
            let t = Instant::now();
            writer
                .write_chunk(
                    &self.event.id,
                    &self.id,
                    self.inner.settings.lease,
                    policies,
                    &mut chunk,
                    &mut redraw,
                )
                .await?;
            spent += t.elapsed();
            written += chunk.len() as u64;
            crate::metrics::preload_written(self.event.id.as_str(), written);
            let entries = chunk
                .iter()
                .map(|(code, pos)| queue_entry(code, &policies[*pos as usize].discount))
                .collect();
            if to_redis.send(entries).await.is_err() {
                break; // the stager failed; its error wins
            }
        }
        Ok(spent)
    }

    async fn stage(
        &self,
        mut chunks: mpsc::Receiver<Vec<String>>,
    ) -> Result<(u64, Duration), JobEnd> {
        let never = CancellationToken::new();
        let budget = self.inner.settings.step_budget;
        let mut len = 0u64;
        let mut spent = Duration::ZERO;
        while let Some(entries) = chunks.recv().await {
            let t = Instant::now();
            let before = len;
            len = retry_step(&never, budget, "staging coupons in redis", || {
                self.inner
                    .redis
                    .stage_chunk(self.shard_zero(), &self.id, before, &entries)
            })
            .await?;
            spent += t.elapsed();
        }
        Ok((len, spent))
    }

    /// Makes the event live, asking again after a lost reply (the script
    /// says "already live" to its own job) for as long as it takes.
    async fn make_live(&self, stop: &CancellationToken) -> Result<(), JobEnd> {
        let window = (
            self.event.window.starts_at().timestamp_millis(),
            self.event.window.ends_at().timestamp_millis(),
        );
        let mut backoff = job_backoff();
        loop {
            let r = self
                .inner
                .redis
                .make_live(self.shard_zero(), &self.id, window, self.event.total_count)
                .await;
            match r {
                Ok(()) => return Ok(()),
                Err(PreloadStepError::Store(e)) => {
                    tracing::warn!(event_id = %self.event.id, error = %e, "make-live got no answer; asking again");
                }
                Err(e) => return Err(e.into()),
            }
            pause(stop, &mut backoff).await?;
        }
    }

    /// Where the job stages and makes the event live: its shard 0.
    fn shard_zero(&self) -> ShardZero {
        ShardZero::of(&self.event.id, self.event.shards)
    }

    /// Gives every shard of a sharded event its meta once shard 0 is live,
    /// before PostgreSQL records the event LIVE: from then on a shard
    /// without meta is a lost one (see `RedisStore::shard_metas`). Asked
    /// again until done or the server stops (then whoever takes the job
    /// over adopts the live event and does it).
    async fn shard_metas(&self, stop: &CancellationToken) -> Result<(), JobEnd> {
        if self.event.shards < 2 {
            return Ok(());
        }
        let mut backoff = job_backoff();
        loop {
            let made = self
                .inner
                .redis
                .shard_metas(&self.event.id, self.event.shards, false, true)
                .await;
            match made {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(JobEnd::Retry("shard 0 is not live in redis".into())),
                Err(e) => {
                    tracing::warn!(event_id = %self.event.id, error = %e, "making the shards' metas failed; retrying")
                }
            }
            pause(stop, &mut backoff).await?;
        }
    }

    /// Spreads a sharded event's codes from shard 0 over its shards once
    /// the event is LIVE, asking again until done or the server stops. A
    /// spread cut short costs only balance: a shard short of codes gets
    /// them by a transfer when it runs dry.
    async fn spread(&self, stop: &CancellationToken) {
        if self.event.shards < 2 {
            return;
        }
        let mut backoff = job_backoff();
        loop {
            match self
                .inner
                .redis
                .spread(&self.event.id, self.event.shards)
                .await
            {
                Ok(moved) => {
                    tracing::info!(event_id = %self.event.id, shards = self.event.shards, moved, "codes spread over the event's shards");
                    return;
                }
                Err(e) => {
                    tracing::warn!(event_id = %self.event.id, error = %e, "spreading codes over the shards failed; retrying")
                }
            }
            if pause(stop, &mut backoff).await.is_err() {
                return;
            }
        }
    }

    /// Marks the event LIVE in PostgreSQL; retried until PostgreSQL answers
    /// (the event is live in Redis already).
    async fn record_live(
        &self,
        t: &PreloadTimings,
        stop: &CancellationToken,
    ) -> Result<(), JobEnd> {
        let mut backoff = job_backoff();
        loop {
            match self.inner.pg.mark_live(&self.event.id, &self.id, t).await {
                Ok(true) => {
                    if let Err(e) = self.inner.pg.refresh_statistics().await {
                        // The planner is slower until autovacuum runs, nothing worse.
                        tracing::warn!(event_id = %self.event.id, error = %e, "ANALYZE after the preload failed");
                    }
                    return Ok(());
                }
                // A server that took over finds the event live and records it.
                Ok(false) => return Err(JobEnd::Fenced),
                Err(e) => {
                    tracing::warn!(event_id = %self.event.id, error = %e, "recording LIVE failed; retrying")
                }
            }
            pause(stop, &mut backoff).await?;
        }
    }

    /// Ends the job FAILED with nothing left: first Redis is made unable to
    /// go live with this job's codes (or found live with them: then the
    /// job succeeded after all), only then are its rows deleted.
    async fn fail(&self, reason: &str) {
        tracing::error!(event_id = %self.event.id, preload_id = %self.id, reason, "preload job failed; removing what it wrote");
        let stop = self.inner.shutdown.child_token();
        let mut backoff = job_backoff();
        // A fence a dead predecessor still holds goes too, while PostgreSQL
        // names this job: a later Preload of the id must be able to start.
        let mut stale = None;
        loop {
            match self
                .inner
                .redis
                .abandon_preload(self.shard_zero(), &self.id, stale.as_ref())
                .await
            {
                Ok(FenceReply::Live(p)) if p == self.id => {
                    let _ = self.record_live(&PreloadTimings::default(), &stop).await;
                    return;
                }
                Ok(FenceReply::Fenced(p)) if stale.is_none() => match self.holds().await {
                    Ok(true) => {
                        tracing::warn!(event_id = %self.event.id, stale = %p, "dropping the redis fence of a preload postgres no longer names");
                        stale = Some(p);
                        continue;
                    }
                    Ok(false) => break,
                    // Not knowing, neither drop the fence nor go on to
                    // delete rows: ask again.
                    Err(_) => tracing::warn!("reading the event failed; retrying"),
                },
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "abandoning the preload in redis failed; retrying")
                }
            }
            if pause(&stop, &mut backoff).await.is_err() {
                return self.let_go().await;
            }
        }
        loop {
            match self
                .inner
                .pg
                .mark_failed(&self.event.id, &self.id, reason)
                .await
            {
                Ok(_) => return,
                Err(e) => tracing::warn!(error = %e, "recording FAILED failed; retrying"),
            }
            if pause(&stop, &mut backoff).await.is_err() {
                return self.let_go().await;
            }
        }
    }

    /// Shutdown: the job stays PREPARING and its lease ends now, so the
    /// next server to look resumes it.
    async fn let_go(&self) {
        tracing::info!(event_id = %self.event.id, preload_id = %self.id, "preload job stopped by shutdown; it resumes elsewhere");
        if let Err(e) = self.inner.pg.release_lease(&self.event.id, &self.id).await {
            tracing::warn!(error = %e, "releasing the preload lease failed; it runs out by itself");
        }
    }
}

/// Runs an idempotent step until it answers, a few times with back-off.
async fn retry_step<T, E, F, Fut>(
    stop: &CancellationToken,
    budget: Duration,
    what: &str,
    mut step: F,
) -> Result<T, JobEnd>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<JobEnd> + std::fmt::Display,
{
    let started = Instant::now();
    let mut backoff = job_backoff();
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) => match e.into() {
                JobEnd::Retry(why) if started.elapsed() < budget => {
                    tracing::warn!(attempt, error = %why, "{what} failed; retrying");
                }
                other => return Err(other),
            },
        }
        attempt += 1;
        pause(stop, &mut backoff).await?;
    }
}

impl From<crate::store::redis::RedisStoreError> for JobEnd {
    fn from(e: crate::store::redis::RedisStoreError) -> Self {
        JobEnd::Retry(format!("redis: {e}"))
    }
}

/// A job's pauses between attempts at a step: 50 ms, doubling to 2 s.
fn job_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), MAX_BACKOFF)
}

/// Sleeps the next pause, unless the job is stopped meanwhile.
async fn pause(stop: &CancellationToken, backoff: &mut Backoff) -> Result<(), JobEnd> {
    match backoff.wait(stop).await {
        true => Ok(()),
        false => Err(JobEnd::Stopped),
    }
}

/// The job's generator (a blocking thread): deals policies and draws codes
/// a chunk at a time into `out`, until done or the receiver is gone.
/// Returns the time it spent drawing.
fn generate(
    counts: &[u32],
    prefix: &crate::domain::CodePrefix,
    chunk: usize,
    out: mpsc::Sender<Vec<(String, i16)>>,
) -> Duration {
    // StdRng is ChaCha12 seeded by the OS: a CSPRNG.
    let mut codes = CodeGenerator::new(StdRng::from_os_rng(), DEFAULT_CODE_LENGTH);
    let mut order = StdRng::from_os_rng();
    let mut deck = PolicyDeck::new(counts);
    let mut spent = Duration::ZERO;
    while deck.remaining() > 0 {
        let t = Instant::now();
        let rows: Vec<(String, i16)> = deck
            .deal(&mut order, chunk)
            .into_iter()
            .map(|pos| (codes.code(prefix), pos))
            .collect();
        spent += t.elapsed();
        if out.blocking_send(rows).is_err() {
            break;
        }
    }
    spent
}
