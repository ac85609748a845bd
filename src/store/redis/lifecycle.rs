//! An event's life in Redis: presence and counts, controls, settling, and
//! the sweeper's claims.

use super::*;

/// What Redis holds of an event's meta hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Live,
    /// Parked by a forced rebuild that has not installed its state yet.
    Offline,
    /// Never live, expired after retention, or lost.
    Absent,
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
/// Live counts of an event in Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisCounts {
    pub remaining: u64,
    pub issued: u64,
    pub pending: u64,
    /// Issuances PostgreSQL refused (see `mark_conflicted`).
    pub conflicted: u64,
}

impl RedisStore {
    /// Whether the event's meta hash exists (the event is live).
    /// (Shard 0's: it is live first and goes last.)
    pub async fn event_exists(
        &self,
        event: &EventId,
        shards: u32,
    ) -> Result<bool, RedisStoreError> {
        let k = EventKeys::shard(event, 0, shards.max(1));
        let mut c = self.conn().await?;
        Ok(redis::cmd("EXISTS")
            .arg(&k.meta)
            .query_async(&mut c)
            .await?)
    }
    /// Whether Redis holds the event's meta hash, live or parked offline by
    /// a forced rebuild.
    pub async fn presence(
        &self,
        event: &EventId,
        shards: u32,
    ) -> Result<Presence, RedisStoreError> {
        self.presence_in(&EventKeys::shard(event, 0, shards.max(1)))
            .await
    }

    /// The generation (`gen`, see `transfer_out.lua`) of the shard `k`'s
    /// meta, live or parked: "" until a rebuild installs one; None when
    /// the shard holds no meta.
    pub async fn gen_in(&self, k: &EventKeys) -> Result<Option<String>, RedisStoreError> {
        let mut c = self.conn().await?;
        let (live, parked, live_gen, parked_gen): (bool, bool, Option<String>, Option<String>) =
            redis::pipe()
                .exists(&k.meta)
                .exists(&k.meta_offline)
                .hget(&k.meta, "gen")
                .hget(&k.meta_offline, "gen")
                .query_async(&mut c)
                .await?;
        Ok(match (live, parked) {
            (true, _) => Some(live_gen.unwrap_or_default()),
            (false, true) => Some(parked_gen.unwrap_or_default()),
            (false, false) => None,
        })
    }

    /// Whether the shard `k` holds its meta hash, live or parked offline.
    pub async fn presence_in(&self, k: &EventKeys) -> Result<Presence, RedisStoreError> {
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
    /// Queue length, issued count and pending count of an event: the sums
    /// over its `shards` shards, with the codes in open transfer records
    /// counted as remaining (read one shard after another, so a sum taken
    /// while codes move may be off by a transfer; the totals add up once
    /// nothing moves).
    pub async fn counts(
        &self,
        event: &EventId,
        shards: u32,
    ) -> Result<RedisCounts, RedisStoreError> {
        let mut sum = RedisCounts::default();
        for s in 0..shards.max(1) {
            let k = EventKeys::shard(event, s, shards.max(1));
            let c = self.counts_in(&k).await?;
            sum.remaining += c.remaining;
            sum.issued += c.issued;
            sum.pending += c.pending;
            sum.conflicted += c.conflicted;
            if shards > 1 {
                for t in self.unspent_transfers(&k).await? {
                    sum.remaining += t.entries.len() as u64;
                }
            }
        }
        Ok(sum)
    }

    pub(super) async fn counts_in(&self, k: &EventKeys) -> Result<RedisCounts, RedisStoreError> {
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
    /// Brings the event's meta up to the controls PostgreSQL recorded (see
    /// `control.lua`): `Applied` or `Current` (it held them already, or
    /// newer ones), `NotLive` when Redis holds no meta of the event.
    /// An event of several shards: shard 0 first, then every other shard
    /// gets shard 0's meta (see `shard_metas`).
    pub async fn sync_controls(
        &self,
        event: &EventId,
        shards: u32,
        state: &ControlState,
    ) -> Result<Synced, RedisStoreError> {
        let base = EventKeys::shard(event, 0, shards.max(1));
        let synced = self.sync_controls_in(&base, state).await?;
        if shards > 1 && synced != Synced::NotLive {
            self.shard_metas(event, shards, state.settled, false)
                .await?;
        }
        Ok(synced)
    }

    /// Brings each of the shards `keys` (live or parked) up to the
    /// controls PostgreSQL recorded, one by one (see `control.lua`): a
    /// sharded rebuild's parked shards, before they go live.
    pub async fn sync_controls_each(
        &self,
        keys: &[EventKeys],
        state: &ControlState,
    ) -> Result<(), RedisStoreError> {
        for k in keys {
            self.sync_controls_in(k, state).await?;
        }
        Ok(())
    }

    /// Gives shards 1 and up shard 0's meta (see `shard_meta.lua`), their
    /// controls brought up to shard 0's. Read after shard 0 was written, so
    /// whichever of two callers writes a shard last, the newest controls
    /// stand. A missing meta is made only until every shard has had one
    /// (shard 0's `shards_made`): later, a shard without meta was lost, and
    /// making it again, empty, would tell its holders they hold nothing.
    /// Returns false when shard 0 holds no meta; shards found lost are
    /// logged.
    ///
    /// Only the preload makes metas (`make`); a control or the sweeper's
    /// repair brings existing ones up to date. Each call waits for the
    /// failover guard's replicas, so a failover does not lose a meta (the
    /// shard would count as lost) nor shard 0's `shards_made`.
    pub async fn shard_metas(
        &self,
        event: &EventId,
        shards: u32,
        settled: bool,
        make: bool,
    ) -> Result<bool, RedisStoreError> {
        let base = EventKeys::shard(event, 0, shards);
        let mut c = self.conn().await?;
        let m: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&base.meta)
            .arg(&[
                "starts_at",
                "ends_at",
                "total",
                "paused",
                "control_seq",
                "shards_made",
            ])
            .query_async(&mut c)
            .await?;
        drop(c);
        let [Some(starts), Some(ends), Some(total), paused, seq, made] = &m[..] else {
            return Ok(false);
        };
        for s in 1..shards {
            let k = EventKeys::shard(event, s, shards);
            let mut keys = vec![k.meta.as_str()];
            keys.extend(k.data());
            let mut eval = redis::cmd("EVALSHA");
            eval.arg(self.scripts.shard_meta.get_hash())
                .arg(keys.len())
                .arg(&keys[..])
                .arg(starts)
                .arg(ends)
                .arg(total)
                .arg(u8::from(paused.as_deref() == Some("1")))
                .arg(seq.as_deref().unwrap_or("0"))
                .arg(u8::from(settled))
                .arg(u8::from(make && made.is_none()));
            let mut c = self.conn().await?;
            let found: i64 = self
                .run_guarded(&mut c, &self.scripts.shard_meta, &eval, &k.meta)
                .await?;
            if found < 0 {
                tracing::error!(event_id = %event, shard = s, "a shard of the event has no meta in redis: its data was lost (reconcile the event)");
            }
        }
        if make && made.is_none() {
            let mut c = self.conn().await?;
            let mut mark = redis::cmd("HSET");
            mark.arg(&base.meta).arg("shards_made").arg(1);
            self.write_guarded(&mut c, &mark).await?;
        }
        Ok(true)
    }

    async fn sync_controls_in(
        &self,
        k: &EventKeys,
        state: &ControlState,
    ) -> Result<Synced, RedisStoreError> {
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
    /// An event of several shards is checked on every shard first, then
    /// settled shard by shard (see `settle.lua`).
    pub async fn settle(
        &self,
        event: &EventId,
        shards: u32,
        ttl: Duration,
    ) -> Result<Option<i64>, RedisStoreError> {
        let shards = shards.max(1);
        let keys: Vec<EventKeys> = (0..shards)
            .map(|s| EventKeys::shard(event, s, shards))
            .collect();
        if shards > 1 {
            for k in &keys {
                if self.settle_in(k, ttl, true).await?.is_none() {
                    return Ok(None);
                }
            }
        }
        let mut settled = None;
        for k in &keys {
            settled = self.settle_in(k, ttl, false).await?;
            if settled.is_none() {
                return Ok(None);
            }
        }
        Ok(settled)
    }

    async fn settle_in(
        &self,
        k: &EventKeys,
        ttl: Duration,
        check: bool,
    ) -> Result<Option<i64>, RedisStoreError> {
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(&k.meta).key(&k.pending).key(&k.transfers);
        for key in k.data() {
            inv.key(key);
        }
        inv.arg(ttl.as_millis() as u64)
            .arg(if check { "check" } else { "" });
        let mut c = self.conn().await?;
        let ends: i64 = inv.invoke_async(&mut c).await?;
        Ok((ends > 0).then_some(ends))
    }

    /// Claims up to `max` issuances of `event` pending for longer than
    /// `age`, or than `max_age` while the finalizer is progressing
    /// (see `scripts/lua/claim_stale.lua`).
    /// An event of several shards: up to `max` from each shard.
    pub async fn claim_stale(
        &self,
        event: &EventId,
        shards: u32,
        age: Duration,
        max_age: Duration,
        max: usize,
    ) -> Result<Vec<(UserId, HeldCoupon)>, RedisStoreError> {
        let mut claimed = Vec::new();
        for s in 0..shards.max(1) {
            let k = EventKeys::shard(event, s, shards.max(1));
            claimed.extend(self.claim_stale_in(&k, age, max_age, max).await?);
        }
        Ok(claimed)
    }

    async fn claim_stale_in(
        &self,
        k: &EventKeys,
        age: Duration,
        max_age: Duration,
        max: usize,
    ) -> Result<Vec<(UserId, HeldCoupon)>, RedisStoreError> {
        let mut c = self.conn().await?;
        let flat: Vec<String> = self
            .scripts
            .claim_stale
            .key(&k.pending)
            .key(&k.issued)
            .key(&k.progress)
            .arg(age.as_millis() as u64)
            .arg(max)
            .arg(max_age.as_millis() as u64)
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
}
