//! A preload job's Redis half: the fence, staging, make-live, abandon.

use super::*;

/// Entries per `stage_chunk.lua` call: small enough that one call holds
/// Redis for a few milliseconds, not the whole chunk's time.
const STAGE_SCRIPT_ENTRIES: usize = 10_000;
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
fn fence_reply((verdict, id): (String, String)) -> Result<FenceReply, RedisStoreError> {
    match verdict.as_str() {
        "CLAIMED" | "ABANDONED" => Ok(FenceReply::Done),
        "LIVE" => Ok(FenceReply::Live(PreloadId::from_stored(id))),
        "FENCED" => Ok(FenceReply::Fenced(PreloadId::from_stored(id))),
        other => Err(RedisStoreError::Reply(format!("fence verdict {other}"))),
    }
}

impl RedisStore {
    /// Gives the event's Redis preload fence to `job`, replacing `replaced`
    /// (see `claim_preload.lua`).
    #[instrument(skip_all, fields(preload_id = %job), err)]
    pub async fn claim_preload(
        &self,
        event: impl Into<ShardZero>,
        job: &PreloadId,
        replaced: Option<&PreloadId>,
    ) -> Result<FenceReply, RedisStoreError> {
        let event = event.into();
        let k = event.keys();
        let replaced_staging = match replaced {
            Some(r) => EventKeys::preload_staging(event.clone(), r),
            None => EventKeys::preload_staging(event.clone(), job),
        };
        let mut c = self.conn().await?;
        let reply: (String, String) = self
            .scripts
            .claim_preload
            .key(&k.meta)
            .key(&k.preload_owner)
            .key(replaced_staging)
            .key(EventKeys::preload_staging(event.clone(), job))
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
        event: impl Into<ShardZero>,
        job: &PreloadId,
        before: u64,
        entries: &[String],
    ) -> Result<u64, PreloadStepError> {
        let event = event.into();
        let k = event.keys();
        let staging = EventKeys::preload_staging(event.clone(), job);
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
    #[instrument(skip_all, fields(preload_id = %job), err)]
    pub async fn make_live(
        &self,
        event: impl Into<ShardZero>,
        job: &PreloadId,
        window_ms: (i64, i64),
        total: u32,
    ) -> Result<(), PreloadStepError> {
        let event = event.into();
        let k = event.keys();
        let mut c = self.conn().await?;
        let _: i64 = self
            .scripts
            .make_live
            .key(EventKeys::preload_staging(event.clone(), job))
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
    #[instrument(skip_all, fields(preload_id = %job), err)]
    pub async fn abandon_preload(
        &self,
        event: impl Into<ShardZero>,
        job: &PreloadId,
        stale: Option<&PreloadId>,
    ) -> Result<FenceReply, RedisStoreError> {
        let event = event.into();
        let k = event.keys();
        let mut c = self.conn().await?;
        let reply: (String, String) = self
            .scripts
            .abandon_preload
            .key(&k.meta)
            .key(&k.preload_owner)
            .key(EventKeys::preload_staging(event.clone(), job))
            .key(EventKeys::preload_staging(
                event.clone(),
                stale.unwrap_or(job),
            ))
            .arg(job.as_str())
            .arg(stale.map(PreloadId::as_str).unwrap_or(""))
            .invoke_async(&mut c)
            .await?;
        fence_reply(reply)
    }
}
