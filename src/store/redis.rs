//! Redis: the live state of every event, changed only by the Lua scripts in
//! `scripts/lua/` (compiled into the binary, run with EVALSHA and reloaded
//! on NOSCRIPT by `redis::Script`).

use std::collections::HashMap;

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, Script};
use tracing::instrument;

use crate::domain::{
    ControlState, EventId, IssuanceRecord, IssuanceState, IssueOutcome, IssuedCoupon, PreloadId,
    RequestId, UserId,
};
use crate::store::keys::EventKeys;
use crate::store::record::{self, IssuedRecord};

/// Entries per `stage_chunk.lua` call: small enough that one call holds
/// Redis for a few milliseconds, not the whole chunk's time.
const STAGE_SCRIPT_ENTRIES: usize = 10_000;

/// A rebuild's staging keys expire after this unless installed (a
/// rebuild that died leaves nothing for good).
const STAGING_TTL_MS: u64 = 3_600_000;

/// Entries per command of a bulk read or write (snapshot, rebuild).
const BULK_CHUNK: usize = 10_000;
/// A bulk connection's response timeout.
const BULK_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at one chunk of a bulk read.
const BULK_ATTEMPTS: u32 = 4;

/// Runs a read-only command, asking again (with back-off) when it failed:
/// a read changes nothing, so a lost reply only costs a repeat.
async fn read<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
) -> Result<T, RedisStoreError> {
    let mut backoff = Duration::from_millis(200);
    for attempt in 1.. {
        match cmd.query_async(c).await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < BULK_ATTEMPTS && e.code().is_none() => {
                tracing::warn!(error = %e, attempt, "bulk read failed; asking again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}

/// Errors of the Redis store.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Malformed(#[from] record::MalformedRecord),
    #[error("redis reply: {0}")]
    Parse(#[from] redis::ParsingError),
    #[error("unexpected script reply: {0}")]
    Reply(String),
}

impl RedisStoreError {
    /// Whether the command may have run although the call failed: the
    /// request may have reached Redis and only the reply was lost or late
    /// (a timeout, a dropped connection, an unreadable reply). Not when no
    /// connection could be had, nor when Redis answered with an error.
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::Pool(_) => false,
            Self::Redis(e) => e.code().is_none(),
            Self::Malformed(_) | Self::Parse(_) | Self::Reply(_) => true,
        }
    }
}

/// Why a preload job's Redis step refused.
#[derive(Debug, thiserror::Error)]
pub enum PreloadStepError {
    /// The event is live with another preload job's codes.
    #[error("event is already live in Redis with another preload")]
    Exists,
    /// Another job holds the event's preload fence.
    #[error("another preload job holds the event")]
    Fenced,
    /// The staging list is not what the job wrote (it was lost or changed).
    #[error("staging list differs from what the job wrote: {0}")]
    Staging(String),
    #[error(transparent)]
    Store(#[from] RedisStoreError),
}

impl From<redis::RedisError> for PreloadStepError {
    fn from(e: redis::RedisError) -> Self {
        match e.code() {
            Some("EVENT_EXISTS") => Self::Exists,
            Some("FENCED") => Self::Fenced,
            Some("STAGING_MISMATCH" | "STAGING_INCOMPLETE") => Self::Staging(e.to_string()),
            _ => Self::Store(e.into()),
        }
    }
}

impl From<deadpool_redis::PoolError> for PreloadStepError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Self::Store(e.into())
    }
}

/// What Redis says of an event when a preload job claims or abandons it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReply {
    /// The job holds the fence (claim) or has let go of it (abandon).
    Done,
    /// The event is live, made so by this preload id.
    Live(PreloadId),
    /// Another job holds the fence (claim only).
    Fenced(PreloadId),
}

/// What the issue script decided for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The outcome, decided by Redis.
    Decided(IssueOutcome),
    /// The user holds nothing in Redis and the event has no meta there: it
    /// expired after retention, was lost, or never existed. PostgreSQL
    /// decides.
    NotInRedis,
    /// The user holds nothing in Redis and a forced rebuild has the event
    /// offline: try again shortly (or PostgreSQL knows the user's coupon).
    Offline,
}

/// What Redis holds of an event's meta hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Live,
    /// Parked by a forced rebuild that has not installed its state yet.
    Offline,
    /// Never live, expired after retention, or lost.
    Absent,
}

/// What `rebuild_lock` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAction {
    Take,
    Renew,
    Release,
}

/// What `sync_controls` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    Applied,
    /// Redis held these controls already, or newer ones.
    Current,
    /// Redis holds no meta of the event (expired, lost, never live).
    NotLive,
}

/// Connection settings of the Redis client.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    /// Longest wait for a reply before the call fails (and may have run).
    pub response: Duration,
    /// Longest wait for a new connection.
    pub connect: Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        Self {
            response: Duration::from_millis(500),
            connect: Duration::from_millis(1000),
        }
    }
}

struct Scripts {
    issue: Script,
    claim_preload: Script,
    stage_chunk: Script,
    make_live: Script,
    abandon_preload: Script,
    finalize: Script,
    claim_stale: Script,
    rebuild: Script,
    take_offline: Script,
    bring_online: Script,
    rebuild_lock: Script,
    conflict: Script,
    control: Script,
    settle: Script,
    supersede: Script,
}

/// Everything Redis holds for one event.
#[derive(Debug, Default)]
pub struct RedisSnapshot {
    pub live: bool,
    /// Codes in the queue, in queue order.
    pub queue: Vec<String>,
    /// User -> issuance record.
    pub issued: HashMap<String, IssuedRecord>,
    /// User -> pending score (issued_at ms or last republish).
    pub pending: HashMap<String, i64>,
    /// User -> (the code they were issued and PostgreSQL refused, the code
    /// PostgreSQL holds for them): see `supersede.lua`.
    pub superseded: HashMap<String, (String, String)>,
}

/// A rebuilt Redis state of one event, ready to install.
pub struct RebuiltState<'a> {
    pub queue: &'a [String],
    pub issued: &'a [(String, String)],
    pub pending: &'a [(String, i64)],
    pub starts_ms: i64,
    pub total: u32,
    pub preload_id: &'a PreloadId,
    /// Users whose record in `issued` is conflicted.
    pub conflicted: &'a [String],
    /// The event's controls as PostgreSQL recorded them when the rebuild
    /// started (newer ones the parked meta took since are kept).
    pub controls: ControlState,
}

/// Live counts of an event in Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisCounts {
    pub remaining: u64,
    pub issued: u64,
    pub pending: u64,
    /// Issuances PostgreSQL refused (see `mark_conflicted`).
    pub conflicted: u64,
}

/// Handle to Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    /// Where bulk connections go (see `bulk`).
    client: redis::Client,
    connect_timeout: Duration,
    scripts: std::sync::Arc<Scripts>,
}

impl RedisStore {
    pub fn connect(url: &str, pool_size: usize) -> anyhow::Result<Self> {
        Self::connect_with(url, pool_size, RedisTimeouts::default())
    }

    pub fn connect_with(
        url: &str,
        pool_size: usize,
        timeouts: RedisTimeouts,
    ) -> anyhow::Result<Self> {
        let conn = AsyncConnectionConfig::new()
            .set_response_timeout(Some(timeouts.response))
            .set_connection_timeout(Some(timeouts.connect));
        let pool = Pool::builder(Manager::new_with_config(url, conn)?)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self {
            pool,
            client: redis::Client::open(url)?,
            connect_timeout: timeouts.connect,
            scripts: std::sync::Arc::new(Scripts {
                issue: Script::new(include_str!("../../scripts/lua/issue.lua")),
                claim_preload: Script::new(include_str!("../../scripts/lua/claim_preload.lua")),
                stage_chunk: Script::new(include_str!("../../scripts/lua/stage_chunk.lua")),
                make_live: Script::new(include_str!("../../scripts/lua/make_live.lua")),
                abandon_preload: Script::new(include_str!("../../scripts/lua/abandon_preload.lua")),
                finalize: Script::new(include_str!("../../scripts/lua/finalize.lua")),
                claim_stale: Script::new(include_str!("../../scripts/lua/claim_stale.lua")),
                rebuild: Script::new(include_str!("../../scripts/lua/rebuild.lua")),
                conflict: Script::new(include_str!("../../scripts/lua/conflict.lua")),
                control: Script::new(include_str!("../../scripts/lua/control.lua")),
                settle: Script::new(include_str!("../../scripts/lua/settle.lua")),
                supersede: Script::new(include_str!("../../scripts/lua/supersede.lua")),
                take_offline: Script::new(include_str!("../../scripts/lua/take_offline.lua")),
                bring_online: Script::new(include_str!("../../scripts/lua/bring_online.lua")),
                rebuild_lock: Script::new(include_str!("../../scripts/lua/rebuild_lock.lua")),
            }),
        })
    }

    pub async fn conn(&self) -> Result<deadpool_redis::Connection, RedisStoreError> {
        Ok(self.pool.get().await?)
    }

    /// Round trip to check Redis answers (startup, health).
    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Runs the issue script for `items` (user, request id) of one event in
    /// one call; verdicts come back in the order of `items`. A user's own
    /// record decides first (see `IssueOutcome::for_holder`); the event's
    /// state only for users who hold nothing.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn issue_batch(
        &self,
        event: &EventId,
        items: &[(&UserId, &RequestId)],
    ) -> Result<Vec<Verdict>, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.issue.prepare_invoke();
        inv.key(&k.queue)
            .key(&k.issued)
            .key(&k.meta)
            .key(&k.pending)
            .key(&k.meta_offline);
        inv.arg(items.len());
        for (u, r) in items {
            inv.arg(u.as_str()).arg(r.as_str());
        }
        let mut c = self.conn().await?;
        let reply: Vec<redis::Value> = inv.invoke_async(&mut c).await?;
        if reply.len() != items.len() * 2 {
            return Err(RedisStoreError::Reply(format!(
                "{} values for {} items",
                reply.len(),
                items.len()
            )));
        }
        reply
            .chunks_exact(2)
            .zip(items)
            .map(|(pair, (_, asking))| {
                let status: i64 = redis::from_redis_value_ref(&pair[0])?;
                let rec: String = redis::from_redis_value_ref(&pair[1])?;
                let decided = Verdict::Decided;
                Ok(match status {
                    1 => decided(IssueOutcome::Issued(record::parse_issued(&rec)?.coupon)),
                    2 => {
                        let held = record::parse_issued(&rec)?;
                        decided(IssueOutcome::for_holder(
                            held.coupon,
                            held.state,
                            &held.request_id,
                            asking,
                        ))
                    }
                    3 => decided(IssueOutcome::SoldOut),
                    4 => decided(IssueOutcome::NotStarted),
                    5 => decided(IssueOutcome::Ended),
                    6 => Verdict::NotInRedis,
                    7 => decided(IssueOutcome::Paused),
                    8 => Verdict::Offline,
                    other => return Err(RedisStoreError::Reply(format!("status {other}"))),
                })
            })
            .collect()
    }

    /// Gives the event's Redis preload fence to `job`, replacing `replaced`
    /// (see `claim_preload.lua`).
    #[instrument(skip_all, fields(event_id = %event, preload_id = %job), err)]
    pub async fn claim_preload(
        &self,
        event: &EventId,
        job: &PreloadId,
        replaced: Option<&PreloadId>,
    ) -> Result<FenceReply, RedisStoreError> {
        let k = EventKeys::new(event);
        let replaced_staging = match replaced {
            Some(r) => EventKeys::preload_staging(event, r),
            None => EventKeys::preload_staging(event, job),
        };
        let mut c = self.conn().await?;
        let reply: (String, String) = self
            .scripts
            .claim_preload
            .key(&k.meta)
            .key(&k.preload_owner)
            .key(replaced_staging)
            .key(EventKeys::preload_staging(event, job))
            .arg(job.as_str())
            .arg(replaced.map(PreloadId::as_str).unwrap_or(""))
            .invoke_async(&mut c)
            .await?;
        fence_reply(reply)
    }

    /// Appends `entries` to `job`'s staging list, which held `before`
    /// entries, exactly once however often it is retried; returns the new
    /// length.
    pub async fn stage_chunk(
        &self,
        event: &EventId,
        job: &PreloadId,
        before: u64,
        entries: &[String],
    ) -> Result<u64, PreloadStepError> {
        let k = EventKeys::new(event);
        let staging = EventKeys::preload_staging(event, job);
        let mut c = self.conn().await?;
        let mut len = before;
        for part in entries.chunks(STAGE_SCRIPT_ENTRIES) {
            let mut inv = self.scripts.stage_chunk.prepare_invoke();
            inv.key(&staging)
                .key(&k.preload_owner)
                .arg(job.as_str())
                .arg(len);
            for e in part {
                inv.arg(e);
            }
            len = inv.invoke_async(&mut c).await?;
        }
        Ok(len)
    }

    /// Atomically turns `job`'s staging list into the live queue and writes
    /// the event's meta hash (see `scripts/lua/make_live.lua`). Ok also when
    /// this job made it live before (a retry after a lost reply).
    #[instrument(skip_all, fields(event_id = %event, preload_id = %job), err)]
    pub async fn make_live(
        &self,
        event: &EventId,
        job: &PreloadId,
        window_ms: (i64, i64),
        total: u32,
    ) -> Result<(), PreloadStepError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let _: i64 = self
            .scripts
            .make_live
            .key(EventKeys::preload_staging(event, job))
            .key(&k.queue)
            .key(&k.meta)
            .key(&k.issued)
            .key(&k.pending)
            .key(&k.preload_owner)
            .arg(window_ms.0)
            .arg(window_ms.1)
            .arg(total)
            .arg(job.as_str())
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Makes sure `job` can never make the event live and drops its staging
    /// list; says so instead when the event is live (see
    /// `abandon_preload.lua`). `Fenced(p)`: abandoned, and `p` holds the
    /// fence; `stale` names a holder to drop as well (a dead predecessor).
    #[instrument(skip_all, fields(event_id = %event, preload_id = %job), err)]
    pub async fn abandon_preload(
        &self,
        event: &EventId,
        job: &PreloadId,
        stale: Option<&PreloadId>,
    ) -> Result<FenceReply, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let reply: (String, String) = self
            .scripts
            .abandon_preload
            .key(&k.meta)
            .key(&k.preload_owner)
            .key(EventKeys::preload_staging(event, job))
            .key(EventKeys::preload_staging(event, stale.unwrap_or(job)))
            .arg(job.as_str())
            .arg(stale.map(PreloadId::as_str).unwrap_or(""))
            .invoke_async(&mut c)
            .await?;
        fence_reply(reply)
    }

    /// Whether the event's meta hash exists (the event is live).
    pub async fn event_exists(&self, event: &EventId) -> Result<bool, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        Ok(redis::cmd("EXISTS")
            .arg(&k.meta)
            .query_async(&mut c)
            .await?)
    }

    /// Whether Redis holds the event's meta hash, live or parked offline by
    /// a forced rebuild.
    pub async fn presence(&self, event: &EventId) -> Result<Presence, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let (live, parked): (bool, bool) = redis::pipe()
            .exists(&k.meta)
            .exists(&k.meta_offline)
            .query_async(&mut c)
            .await?;
        Ok(match (live, parked) {
            (true, _) => Presence::Live,
            (false, true) => Presence::Offline,
            (false, false) => Presence::Absent,
        })
    }

    /// Queue length, issued count and pending count of an event.
    pub async fn counts(&self, event: &EventId) -> Result<RedisCounts, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let (remaining, issued, pending, conflicted): (u64, u64, u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(&k.queue)
            .cmd("HLEN")
            .arg(&k.issued)
            .cmd("ZCARD")
            .arg(&k.pending)
            .cmd("SCARD")
            .arg(&k.conflicts)
            .query_async(&mut c)
            .await?;
        Ok(RedisCounts {
            remaining,
            issued,
            pending,
            conflicted,
        })
    }

    /// The user's issuance record, if Redis holds one.
    pub async fn issuance(
        &self,
        event: &EventId,
        user: &UserId,
    ) -> Result<Option<IssuedRecord>, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let rec: Option<String> = redis::cmd("HGET")
            .arg(&k.issued)
            .arg(user.as_str())
            .query_async(&mut c)
            .await?;
        Ok(rec.map(|r| record::parse_issued(&r)).transpose()?)
    }

    /// Marks issuances of one event finalized (record state F, out of the
    /// pending set). Returns how many matched their record.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn finalize(
        &self,
        event: &EventId,
        items: &[(&UserId, &str)],
    ) -> Result<u64, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.finalize.prepare_invoke();
        inv.key(&k.issued)
            .key(&k.pending)
            .key(&k.progress)
            .key(&k.conflicts);
        for (u, code) in items {
            inv.arg(u.as_str()).arg(*code);
        }
        let mut c = self.conn().await?;
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// Marks issuances of one event that PostgreSQL refused as conflicted
    /// (record state C, out of the pending set, into the conflict set; see
    /// `conflict.lua`; a user Redis no longer knows gets the refused record;
    /// keys of an event Redis does not hold expire after `ttl`).
    /// Returns how many are conflicted now.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn mark_conflicted(
        &self,
        event: &EventId,
        items: &[&IssuanceRecord],
        ttl: Duration,
    ) -> Result<u64, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.conflict.prepare_invoke();
        inv.key(&k.issued)
            .key(&k.pending)
            .key(&k.conflicts)
            .key(&k.meta)
            .key(&k.meta_offline)
            .arg(ttl.as_millis() as u64);
        for r in items {
            inv.arg(r.user_id.as_str())
                .arg(&r.coupon.code)
                .arg(record::issued_record(
                    &r.coupon,
                    &r.request_id,
                    IssuanceState::Conflicted,
                ));
        }
        let mut c = self.conn().await?;
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// Resolves issuances PostgreSQL refused because it holds another
    /// coupon for their user (see `supersede.lua`): each item is the
    /// refused issuance, PostgreSQL's coupon of the user with its request
    /// id, and whether the refused code is free in PostgreSQL (only then may
    /// it be queued again). Returns how many refused codes went back to the
    /// queue.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn supersede(
        &self,
        event: &EventId,
        items: &[(&IssuanceRecord, &IssuedCoupon, &str, bool)],
        ttl: Duration,
    ) -> Result<u64, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.supersede.prepare_invoke();
        inv.key(&k.issued)
            .key(&k.pending)
            .key(&k.conflicts)
            .key(&k.queue)
            .key(&k.superseded)
            .key(&k.meta)
            .key(&k.meta_offline)
            .arg(ttl.as_millis() as u64);
        for (refused, held, held_request, free) in items {
            let entry = match free {
                true => record::queue_entry(&refused.coupon.code, &refused.coupon.discount),
                false => String::new(),
            };
            inv.arg(refused.user_id.as_str())
                .arg(&refused.coupon.code)
                .arg(entry)
                .arg(record::issued_record(
                    held,
                    held_request,
                    IssuanceState::Finalized,
                ));
        }
        let mut c = self.conn().await?;
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// Brings the event's meta up to the controls PostgreSQL recorded (see
    /// `control.lua`): `Applied` or `Current` (it held them already, or
    /// newer ones), `NotLive` when Redis holds no meta of the event.
    pub async fn sync_controls(
        &self,
        event: &EventId,
        state: &ControlState,
    ) -> Result<Synced, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.control.prepare_invoke();
        inv.key(&k.meta).key(&k.meta_offline);
        for key in k.data() {
            inv.key(key);
        }
        inv.arg(state.seq)
            .arg(state.ends_at.timestamp_millis())
            .arg(u8::from(state.paused))
            .arg(u8::from(state.settled));
        let mut c = self.conn().await?;
        match inv.invoke_async::<i64>(&mut c).await {
            Ok(1) => Ok(Synced::Applied),
            Ok(_) => Ok(Synced::Current),
            Err(e) if e.code() == Some("NOT_LIVE") => Ok(Synced::NotLive),
            Err(e) => Err(e.into()),
        }
    }

    /// Settles the event if its window has ended (Redis's clock, the meta's
    /// end) and nothing is pending: every key gets the expiry `ttl` (see
    /// `settle.lua`). Returns the window's end (unix ms) when it did.
    pub async fn settle(
        &self,
        event: &EventId,
        ttl: Duration,
    ) -> Result<Option<i64>, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(&k.meta).key(&k.pending);
        for key in k.data() {
            inv.key(key);
        }
        inv.arg(ttl.as_millis() as u64);
        let mut c = self.conn().await?;
        let ends: i64 = inv.invoke_async(&mut c).await?;
        Ok((ends > 0).then_some(ends))
    }

    /// Claims up to `max` issuances of `event` pending for longer than
    /// `age_ms`, or than `max_age_ms` while the finalizer is progressing
    /// (see `scripts/lua/claim_stale.lua`).
    pub async fn claim_stale(
        &self,
        event: &EventId,
        age_ms: u64,
        max_age_ms: u64,
        max: usize,
    ) -> Result<Vec<(UserId, IssuedRecord)>, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let flat: Vec<String> = self
            .scripts
            .claim_stale
            .key(&k.pending)
            .key(&k.issued)
            .key(&k.progress)
            .arg(age_ms)
            .arg(max)
            .arg(max_age_ms)
            .invoke_async(&mut c)
            .await?;
        flat.chunks_exact(2)
            .map(|p| {
                let user = UserId::parse(p[0].clone())
                    .map_err(|_| record::MalformedRecord(format!("user {:?}", p[0])))?;
                Ok((user, record::parse_issued(&p[1])?))
            })
            .collect()
    }

    /// A connection of its own for bulk reads and writes (reconcile,
    /// rebuild): they must not depend on the issue path's short response
    /// timeout, which a busy machine can exceed with a chunk of 10,000.
    async fn bulk(&self) -> Result<redis::aio::MultiplexedConnection, RedisStoreError> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(BULK_RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(self.connect_timeout));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Reads the event's queue, issued hash and pending set in chunks of
    /// `BULK_CHUNK`, each asked again a few times when it fails (reads
    /// change nothing), on a bulk connection. Not atomic: compare with care
    /// while the event is live.
    pub async fn snapshot(&self, event: &EventId) -> Result<RedisSnapshot, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.bulk().await?;
        let mut snap = RedisSnapshot {
            live: read(&mut c, redis::cmd("EXISTS").arg(&k.meta)).await?,
            ..Default::default()
        };
        for start in (0..).step_by(BULK_CHUNK) {
            let part: Vec<String> = read(
                &mut c,
                redis::cmd("LRANGE")
                    .arg(&k.queue)
                    .arg(start)
                    .arg(start + BULK_CHUNK - 1),
            )
            .await?;
            let n = part.len();
            snap.queue.extend(
                part.into_iter()
                    .map(|e| e.split('\t').next().unwrap_or_default().to_owned()),
            );
            if n < BULK_CHUNK {
                break;
            }
        }
        let mut cursor = 0u64;
        loop {
            let (next, kv): (u64, Vec<String>) = read(
                &mut c,
                redis::cmd("HSCAN")
                    .arg(&k.issued)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(BULK_CHUNK),
            )
            .await?;
            for pair in kv.chunks_exact(2) {
                snap.issued
                    .insert(pair[0].clone(), record::parse_issued(&pair[1])?);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for start in (0..).step_by(BULK_CHUNK) {
            let part: Vec<(String, i64)> = read(
                &mut c,
                redis::cmd("ZRANGE")
                    .arg(&k.pending)
                    .arg(start)
                    .arg(start + BULK_CHUNK - 1)
                    .arg("WITHSCORES"),
            )
            .await?;
            let n = part.len();
            snap.pending.extend(part);
            if n < BULK_CHUNK {
                break;
            }
        }
        let superseded: HashMap<String, String> =
            read(&mut c, redis::cmd("HGETALL").arg(&k.superseded)).await?;
        snap.superseded = superseded
            .into_iter()
            .filter_map(|(u, v)| {
                let (told, holds) = v.split_once('\t')?;
                Some((u, (told.to_owned(), holds.to_owned())))
            })
            .collect();
        Ok(snap)
    }

    /// Moves the meta hash aside so Issue stops changing the event.
    pub async fn take_offline(&self, event: &EventId) -> Result<bool, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let moved: i64 = self
            .scripts
            .take_offline
            .key(&k.meta)
            .key(&k.meta_offline)
            .invoke_async(&mut c)
            .await?;
        Ok(moved == 1)
    }

    /// Puts back the meta a failed forced rebuild parked (see
    /// `bring_online.lua`): `Some(true)` back online, `Some(false)` live
    /// already, `None` nothing was parked.
    pub async fn bring_online(&self, event: &EventId) -> Result<Option<bool>, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let r: i64 = self
            .scripts
            .bring_online
            .key(&k.meta)
            .key(&k.meta_offline)
            .key(&k.staging)
            .key(&k.issued_staging)
            .key(&k.pending_staging)
            .invoke_async(&mut c)
            .await?;
        Ok(match r {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        })
    }

    /// Takes, renews or releases the event's rebuild lock for `holder`
    /// (see `rebuild_lock.lua`): `Ok(None)` done, `Ok(Some(left))` another
    /// rebuild holds it for `left` more.
    pub async fn rebuild_lock(
        &self,
        event: &EventId,
        action: LockAction,
        holder: &str,
        lifetime: Duration,
    ) -> Result<Option<Duration>, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let r: i64 = self
            .scripts
            .rebuild_lock
            .key(&k.rebuild_lock)
            .arg(match action {
                LockAction::Take => "take",
                LockAction::Renew => "renew",
                LockAction::Release => "release",
            })
            .arg(holder)
            .arg(lifetime.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok((r <= 0).then(|| Duration::from_millis(r.unsigned_abs())))
    }

    /// Stages `state` and installs it atomically (see `rebuild.lua`).
    pub async fn install_rebuilt(
        &self,
        event: &EventId,
        state: RebuiltState<'_>,
    ) -> Result<(), RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.bulk().await?;
        let _: () = redis::cmd("DEL")
            .arg(&k.staging)
            .arg(&k.issued_staging)
            .arg(&k.pending_staging)
            .query_async(&mut c)
            .await?;
        for chunk in state.queue.chunks(BULK_CHUNK) {
            let _: () = redis::pipe()
                .cmd("RPUSH")
                .arg(&k.staging)
                .arg(chunk)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&k.staging)
                .arg(STAGING_TTL_MS)
                .ignore()
                .query_async(&mut c)
                .await?;
        }
        for chunk in state.issued.chunks(BULK_CHUNK) {
            let mut pipe = redis::pipe();
            let cmd = pipe.cmd("HSET").arg(&k.issued_staging);
            for (u, r) in chunk {
                cmd.arg(u).arg(r);
            }
            pipe.ignore()
                .cmd("PEXPIRE")
                .arg(&k.issued_staging)
                .arg(STAGING_TTL_MS)
                .ignore();
            let _: () = pipe.query_async(&mut c).await?;
        }
        for chunk in state.pending.chunks(BULK_CHUNK) {
            let mut pipe = redis::pipe();
            let cmd = pipe.cmd("ZADD").arg(&k.pending_staging);
            for (u, score) in chunk {
                cmd.arg(*score).arg(u);
            }
            pipe.ignore()
                .cmd("PEXPIRE")
                .arg(&k.pending_staging)
                .arg(STAGING_TTL_MS)
                .ignore();
            let _: () = pipe.query_async(&mut c).await?;
        }
        let _: i64 = self
            .scripts
            .rebuild
            .key(&k.staging)
            .key(&k.issued_staging)
            .key(&k.pending_staging)
            .key(&k.queue)
            .key(&k.issued)
            .key(&k.pending)
            .key(&k.meta)
            .key(&k.meta_offline)
            .key(&k.conflicts)
            .arg(state.starts_ms)
            .arg(state.controls.ends_at.timestamp_millis())
            .arg(state.total)
            .arg(state.queue.len())
            .arg(state.issued.len())
            .arg(state.preload_id.as_str())
            .arg(u8::from(state.controls.paused))
            .arg(state.controls.seq)
            .arg(state.conflicted)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }
}

fn fence_reply((verdict, id): (String, String)) -> Result<FenceReply, RedisStoreError> {
    match verdict.as_str() {
        "CLAIMED" | "ABANDONED" => Ok(FenceReply::Done),
        "LIVE" => Ok(FenceReply::Live(PreloadId::from_stored(id))),
        "FENCED" => Ok(FenceReply::Fenced(PreloadId::from_stored(id))),
        other => Err(RedisStoreError::Reply(format!("fence verdict {other}"))),
    }
}
