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
    c: &mut Conn,
    cmd: &redis::Cmd,
) -> Result<T, RedisStoreError> {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    for attempt in 1.. {
        match cmd.query_async(c).await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < BULK_ATTEMPTS && e.code().is_none() => {
                tracing::warn!(error = %e, attempt, "bulk read failed; asking again");
                tokio::time::sleep(backoff.next_pause()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}

/// Reads a list or sorted set by index range, `BULK_CHUNK` at a time.
async fn read_range<T: redis::FromRedisValue>(
    c: &mut Conn,
    command: &str,
    key: &str,
    with_scores: bool,
) -> Result<Vec<T>, RedisStoreError> {
    let mut all = Vec::new();
    for start in (0..).step_by(BULK_CHUNK) {
        let mut cmd = redis::cmd(command);
        cmd.arg(key).arg(start).arg(start + BULK_CHUNK - 1);
        if with_scores {
            cmd.arg("WITHSCORES");
        }
        let part: Vec<T> = read(c, &cmd).await?;
        let n = part.len();
        all.extend(part);
        if n < BULK_CHUNK {
            return Ok(all);
        }
    }
    unreachable!("the loop returns")
}

/// Reads a hash with HSCAN, `BULK_CHUNK` at a time.
async fn read_hash(c: &mut Conn, key: &str) -> Result<Vec<(String, String)>, RedisStoreError> {
    let mut all = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, kv): (u64, Vec<(String, String)>) = read(
            c,
            redis::cmd("HSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(BULK_CHUNK),
        )
        .await?;
        all.extend(kv);
        if next == 0 {
            return Ok(all);
        }
        cursor = next;
    }
}

/// Writes one chunk of a staging key and renews its expiry in the same
/// round trip.
async fn stage(
    c: &mut Conn,
    key: &str,
    command: &str,
    args: impl IntoIterator<Item = String>,
) -> Result<(), RedisStoreError> {
    let mut pipe = redis::pipe();
    let cmd = pipe.cmd(command).arg(key);
    for a in args {
        cmd.arg(a);
    }
    pipe.ignore()
        .cmd("PEXPIRE")
        .arg(key)
        .arg(STAGING_TTL_MS)
        .ignore();
    let _: () = pipe.query_async(c).await?;
    Ok(())
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
    /// The rebuild's generation, the same on every shard (see
    /// `transfer_in.lua`).
    pub gen: &'a str,
    /// Shard 0 of a sharded event: every shard is made (`shards_made`).
    pub shards_made: bool,
    /// Installed offline (`bring_online` makes it live).
    pub parked: bool,
    /// The rebuild's id (its lock's holder), for the fence.
    pub holder: &'a str,
}

impl RedisStore {
    /// Reads the event's queue, issued hash and pending set in chunks of
    /// `BULK_CHUNK`, each asked again a few times when it fails (reads
    /// change nothing), on a bulk connection. Not atomic: compare with care
    /// while the event is live.
    ///
    /// An event of several shards: every shard's, merged, with the codes in
    /// open transfer records counted as queued (a user lives at one home
    /// shard, so no user is in two shards' hashes; a code moving between
    /// shards while they are read may be seen twice or not at all, which a
    /// second look tells apart).
    pub async fn snapshot(
        &self,
        event: &EventId,
        shards: u32,
    ) -> Result<LiveState, RedisStoreError> {
        let shards = shards.max(1);
        let mut all = self
            .snapshot_in(&EventKeys::shard(event, 0, shards))
            .await?;
        for s in 1..shards {
            let k = EventKeys::shard(event, s, shards);
            let part = self.snapshot_in(&k).await?;
            all.queue.extend(part.queue);
            all.issued.extend(part.issued);
            all.pending.extend(part.pending);
            all.superseded.extend(part.superseded);
        }
        if shards > 1 {
            for s in 0..shards {
                for t in self
                    .unspent_transfers(&EventKeys::shard(event, s, shards))
                    .await?
                {
                    let codes = t
                        .entries
                        .iter()
                        .map(|e| e.split('\t').next().unwrap_or_default());
                    all.queue.extend(codes.map(str::to_owned));
                }
            }
        }
        Ok(all)
    }

    async fn snapshot_in(&self, k: &EventKeys) -> Result<LiveState, RedisStoreError> {
        let mut c = self.link.bulk().await?;
        let mut snap = LiveState {
            live: read(&mut c, redis::cmd("EXISTS").arg(&k.meta)).await?,
            ..Default::default()
        };
        let queue: Vec<String> = read_range(&mut c, "LRANGE", &k.queue, false).await?;
        snap.queue = queue
            .into_iter()
            .map(|e| e.split('\t').next().unwrap_or_default().to_owned())
            .collect();
        for (user, record) in read_hash(&mut c, &k.issued).await? {
            let parsed = record::parse_issued(&record)?;
            snap.issued.insert(user, parsed);
        }
        let pending: Vec<(String, i64)> = read_range(&mut c, "ZRANGE", &k.pending, true).await?;
        snap.pending = pending.into_iter().collect();
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
    /// Moves the meta hash of a shard (an event's one shard: `EventKeys::new`)
    /// aside so Issue stops changing it, naming the rebuild `holder` in it
    /// (see `take_offline.lua`).
    pub async fn take_offline(&self, k: &EventKeys, holder: &str) -> Result<bool, RedisStoreError> {
        let mut c = self.conn().await?;
        let moved: i64 = self
            .scripts
            .take_offline
            .key(&k.meta)
            .key(&k.meta_offline)
            .arg(holder)
            .invoke_async(&mut c)
            .await?;
        Ok(moved == 1)
    }
    /// Puts back the meta the rebuild `holder` parked (see
    /// `bring_online.lua`; `gen`: the generation it must hold, "" for any):
    /// `Some(true)` back online, `Some(false)` live already, `None` nothing
    /// was parked; an error when another rebuild's, or another generation,
    /// is parked.
    pub async fn bring_online(
        &self,
        k: &EventKeys,
        holder: &str,
        gen: &str,
    ) -> Result<Option<bool>, RedisStoreError> {
        let mut c = self.conn().await?;
        let r: i64 = self
            .scripts
            .bring_online
            .key(&k.meta)
            .key(&k.meta_offline)
            .key(&k.staging)
            .key(&k.issued_staging)
            .key(&k.pending_staging)
            .arg(holder)
            .arg(gen)
            .invoke_async(&mut c)
            .await?;
        match r {
            1 => Ok(Some(true)),
            0 => Ok(Some(false)),
            -1 => Ok(None),
            _ => Err(RedisStoreError::Reply(format!(
                "{} is parked by another rebuild, or holds another generation than {gen:?}: left as it is",
                k.meta_offline
            ))),
        }
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
    /// Stages `state` in the shard `k` and installs it atomically (see
    /// `rebuild.lua`).
    pub async fn install_rebuilt(
        &self,
        k: &EventKeys,
        state: RebuiltState<'_>,
    ) -> Result<(), RedisStoreError> {
        let mut c = self.link.bulk().await?;
        let _: () = redis::cmd("DEL")
            .arg(&k.staging)
            .arg(&k.issued_staging)
            .arg(&k.pending_staging)
            .query_async(&mut c)
            .await?;
        for chunk in state.queue.chunks(BULK_CHUNK) {
            stage(&mut c, &k.staging, "RPUSH", chunk.iter().cloned()).await?;
        }
        for chunk in state.issued.chunks(BULK_CHUNK) {
            let args = chunk.iter().flat_map(|(u, r)| [u.clone(), r.clone()]);
            stage(&mut c, &k.issued_staging, "HSET", args).await?;
        }
        for chunk in state.pending.chunks(BULK_CHUNK) {
            let args = chunk.iter().flat_map(|(u, at)| [at.to_string(), u.clone()]);
            stage(&mut c, &k.pending_staging, "ZADD", args).await?;
        }
        let keys = [
            &k.staging,
            &k.issued_staging,
            &k.pending_staging,
            &k.queue,
            &k.issued,
            &k.pending,
            &k.meta,
            &k.meta_offline,
            &k.conflicts,
            &k.transfers,
            &k.sent,
            &k.received,
        ];
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(self.scripts.rebuild.get_hash())
            .arg(keys.len())
            .arg(&keys[..])
            .arg(state.starts_ms)
            .arg(state.controls.ends_at.timestamp_millis())
            .arg(state.total)
            .arg(state.queue.len())
            .arg(state.issued.len())
            .arg(state.preload_id.as_str())
            .arg(u8::from(state.controls.paused))
            .arg(state.controls.seq)
            .arg(state.gen)
            .arg(u8::from(state.shards_made))
            .arg(u8::from(state.parked))
            .arg(state.holder)
            .arg(state.conflicted);
        // With the failover guard on, a replica holds the install before
        // it counts: a failover must not bring back the state before it
        // beside other shards' rebuilt state.
        let _: i64 = self
            .run_guarded(&mut c, &self.scripts.rebuild, &eval, &k.meta)
            .await?;
        Ok(())
    }
}
