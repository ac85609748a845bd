//! Bulk work for reconcile and rebuild: the snapshot, taking an event
//! offline and back, the rebuild's lock, and installing a rebuilt state.

use super::*;

/// A rebuild's staging keys expire after this unless installed (a
/// rebuild that died leaves nothing for good).
const STAGING_TTL_MS: u64 = 3_600_000;
/// Entries per command of a bulk read or write (snapshot, rebuild).
const BULK_CHUNK: usize = 10_000;
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
/// What `rebuild_lock` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAction {
    Take,
    Renew,
    Release,
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

impl RedisStore {
    /// Reads the event's queue, issued hash and pending set in chunks of
    /// `BULK_CHUNK`, each asked again a few times when it fails (reads
    /// change nothing), on a bulk connection. Not atomic: compare with care
    /// while the event is live.
    pub async fn snapshot(&self, event: &EventId) -> Result<LiveState, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.link.bulk().await?;
        let mut snap = LiveState {
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
        let mut c = self.link.bulk().await?;
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
