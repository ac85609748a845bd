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
    /// `age`, or than `max_age` while the finalizer is progressing
    /// (see `scripts/lua/claim_stale.lua`).
    pub async fn claim_stale(
        &self,
        event: &EventId,
        age: Duration,
        max_age: Duration,
        max: usize,
    ) -> Result<Vec<(UserId, HeldCoupon)>, RedisStoreError> {
        let k = EventKeys::new(event);
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
