//! Redis: the live state of every event, changed only by the Lua scripts in
//! `scripts/lua/` (compiled into the binary, run with EVALSHA and reloaded
//! on NOSCRIPT by `redis::Script`). One file per aggregate, each with its
//! own `impl RedisStore`: issuing (`issue`), a preload job's half
//! (`preload`), the finalizer's records (`finalize`), an event's life:
//! presence, counts, controls, settling, the sweeper's claims
//! (`lifecycle`), and bulk work for reconcile and rebuild (`snapshot`).
//! Every call reaches Redis through one seam, `conn::Link`.

mod conn;
mod finalize;
mod issue;
mod lifecycle;
mod preload;
mod sharded;
mod snapshot;
mod transfer;

use conn::Link;
pub use conn::{Conn, RedisTimeouts};
pub use finalize::{Finalized, Restored};
pub use issue::Verdict;
pub use lifecycle::{Presence, RedisCounts, Synced};
pub use preload::{FenceReply, PreloadStepError};
pub use snapshot::{LockAction, RebuiltState};
pub use transfer::{transfer_id, OpenTransfer, TransferOut};

use std::collections::HashMap;

use std::time::Duration;

use redis::Script;
use tracing::instrument;

use crate::config::{RedisSettings, RedisTls};
use crate::domain::{
    ControlState, EventId, IssuanceRecord, IssuanceState, IssueOutcome, IssuedCoupon, PreloadId,
    RequestId, UserId,
};
use crate::domain::{HeldCoupon, LiveState};
use crate::store::keys::{EventKeys, ShardZero};
use crate::store::record;

/// Positions of `users` grouped by their home shard among `shards` (one
/// group per shard, some maybe empty; one shard: every position).
fn by_home<'a>(shards: u32, users: impl Iterator<Item = &'a UserId>) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); shards.max(1) as usize];
    for (i, u) in users.enumerate() {
        groups[crate::domain::shard::home(u, shards.max(1)) as usize].push(i);
    }
    groups
}

/// Each non-empty group of `by_home` with its shard's keys.
fn home_groups<'a>(
    event: &EventId,
    shards: u32,
    users: impl Iterator<Item = &'a UserId>,
) -> Vec<(EventKeys, Vec<usize>)> {
    let shards = shards.max(1);
    by_home(shards, users)
        .into_iter()
        .enumerate()
        .filter(|(_, at)| !at.is_empty())
        .map(|(s, at)| (EventKeys::shard(event, s as u32, shards), at))
        .collect()
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
    #[error("{acked} of {replicas} replicas confirmed the issue batch in time")]
    Unconfirmed { acked: i64, replicas: u32 },
    /// A shard of a sharded event has no meta: its data was lost.
    #[error("{0}")]
    ShardLost(String),
}

impl RedisStoreError {
    /// Whether the command may have run although the call failed: the
    /// request may have reached Redis and only the reply was lost or late
    /// (a timeout, a dropped connection, an unreadable reply). Not when no
    /// connection could be had, nor when Redis answered with an error.
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::Pool(_) | Self::ShardLost(_) => false,
            Self::Redis(e) => e.code().is_none(),
            Self::Malformed(_) | Self::Parse(_) | Self::Reply(_) | Self::Unconfirmed { .. } => true,
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
    restore: Script,
    transfer_out: Script,
    transfer_in: Script,
    transfer_done: Script,
    shard_meta: Script,
}

/// Handle to Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    link: Link,
    guard: ReplicaGuard,
    scripts: std::sync::Arc<Scripts>,
}

/// How many replicas must confirm an issue batch's writes before its
/// users are answered (0: none asked; see `run_guarded`).
#[derive(Debug, Clone, Copy, Default)]
struct ReplicaGuard {
    replicas: u32,
    timeout: Duration,
}

impl RedisStore {
    /// A single node at `url` with the default timeouts (tests, tools).
    pub fn connect(url: &str, pool_size: usize) -> anyhow::Result<Self> {
        Self::connect_with(url, pool_size, RedisTimeouts::default())
    }

    pub fn connect_with(
        url: &str,
        pool_size: usize,
        timeouts: RedisTimeouts,
    ) -> anyhow::Result<Self> {
        Self::with_link(
            Link::open(url, &[], &RedisTls::default(), pool_size, timeouts)?,
            ReplicaGuard::default(),
        )
    }

    /// The store the settings describe: a single node, or a Redis Cluster
    /// when seed nodes are given; with the failover guard they ask for.
    pub fn open(s: &RedisSettings) -> anyhow::Result<Self> {
        let timeouts = RedisTimeouts {
            response: s.response_timeout,
            connect: s.connect_timeout,
        };
        let guard = ReplicaGuard {
            replicas: s.replica_acks(),
            timeout: s.replica_timeout,
        };
        Self::with_link(
            Link::open(&s.url, &s.cluster, &s.tls, s.pool_size, timeouts)?,
            guard,
        )
    }

    fn with_link(link: Link, guard: ReplicaGuard) -> anyhow::Result<Self> {
        Ok(Self {
            link,
            guard,
            scripts: std::sync::Arc::new(Scripts::load()),
        })
    }

    /// A connection of the issue path (short timeouts).
    pub async fn conn(&self) -> Result<Conn, RedisStoreError> {
        self.link.get().await
    }

    /// Round trip to check Redis answers (startup, health).
    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }
}

impl Scripts {
    fn load() -> Self {
        Self {
            issue: Script::new(include_str!("../../../scripts/lua/issue.lua")),
            claim_preload: Script::new(include_str!("../../../scripts/lua/claim_preload.lua")),
            stage_chunk: Script::new(include_str!("../../../scripts/lua/stage_chunk.lua")),
            make_live: Script::new(include_str!("../../../scripts/lua/make_live.lua")),
            abandon_preload: Script::new(include_str!("../../../scripts/lua/abandon_preload.lua")),
            finalize: Script::new(include_str!("../../../scripts/lua/finalize.lua")),
            claim_stale: Script::new(include_str!("../../../scripts/lua/claim_stale.lua")),
            rebuild: Script::new(include_str!("../../../scripts/lua/rebuild.lua")),
            conflict: Script::new(include_str!("../../../scripts/lua/conflict.lua")),
            control: Script::new(include_str!("../../../scripts/lua/control.lua")),
            settle: Script::new(include_str!("../../../scripts/lua/settle.lua")),
            supersede: Script::new(include_str!("../../../scripts/lua/supersede.lua")),
            restore: Script::new(include_str!("../../../scripts/lua/restore.lua")),
            transfer_out: Script::new(include_str!("../../../scripts/lua/transfer_out.lua")),
            transfer_in: Script::new(include_str!("../../../scripts/lua/transfer_in.lua")),
            transfer_done: Script::new(include_str!("../../../scripts/lua/transfer_done.lua")),
            shard_meta: Script::new(include_str!("../../../scripts/lua/shard_meta.lua")),
            take_offline: Script::new(include_str!("../../../scripts/lua/take_offline.lua")),
            bring_online: Script::new(include_str!("../../../scripts/lua/bring_online.lua")),
            rebuild_lock: Script::new(include_str!("../../../scripts/lua/rebuild_lock.lua")),
        }
    }
}
