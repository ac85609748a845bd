//! Issuing for an event split over shards (groundwork: nothing calls it
//! for a live event yet). Each user is decided at their home shard by the
//! issue script, so "one coupon per user" stays one atomic call; a home
//! shard that ran dry gets codes from the fullest other shard through a
//! transfer, and its users are asked again. SOLD_OUT stands only when no
//! shard holds a code, in a queue or an open transfer record, read so that
//! codes moving between shards meanwhile are not missed (`anything_left`).

use std::sync::Arc;

use super::*;
use crate::domain::shard;

/// Refills of a dry home shard for one batch before the batch fails (with
/// an error the caller may retry, never SOLD_OUT: codes are left
/// elsewhere, and concurrent batches keep taking what moves).
const MAX_REFILLS: usize = 16;
/// Codes one transfer of a spread moves at most: a transfer record holds
/// its codes in one hash field, written and read whole.
const SPREAD_CHUNK: usize = 10_000;
/// Codes one refill moves at least (when the donor holds twice as many):
/// enough that a dry shard does not ask again for every batch.
const REFILL_AHEAD: usize = 256;

impl RedisStore {
    /// Gives every shard but shard 0 its share of the codes, moved from
    /// shard 0 by transfers (the preload makes shard 0 live with every
    /// code, then the shards' metas: `shard_metas`). Safe to run again, by
    /// anyone, at any time: a
    /// shard's share counts what it holds and what it issued, so a second
    /// run moves what the first did not. Balancing only: a shard that got
    /// less refills itself when it runs dry. Returns the codes moved.
    pub async fn spread(&self, event: &EventId, shards: u32) -> Result<u64, RedisStoreError> {
        if shards < 2 {
            return Ok(0);
        }
        let base = EventKeys::shard(event, 0, shards);
        self.finish_transfers(&base).await?;
        let mut c = self.conn().await?;
        let total: u64 = redis::cmd("HGET")
            .arg(&base.meta)
            .arg("total")
            .query_async::<Option<u64>>(&mut c)
            .await?
            .unwrap_or(0);
        drop(c);
        let mut moved = 0;
        for s in 1..shards {
            let k = EventKeys::shard(event, s, shards);
            let share =
                total / u64::from(shards) + u64::from(u64::from(s) < total % u64::from(shards));
            let held = self.counts_in(&k).await?;
            let mut missing = share.saturating_sub(held.remaining + held.issued) as usize;
            let target = shard::tag(event, s, shards);
            while missing > 0 {
                let n = self
                    .transfer(&base, &target, missing.min(SPREAD_CHUNK))
                    .await?;
                if n == 0 {
                    return Ok(moved); // shard 0 ran dry (issuing started)
                }
                moved += n as u64;
                missing = missing.saturating_sub(n);
            }
        }
        Ok(moved)
    }

    /// The issue script for `items` of an event of `shards` shards, each
    /// item at its user's home shard; verdicts in the order of `items`, or
    /// the first error (tests and tools; the batcher uses `issue_each`).
    pub async fn issue_sharded(
        &self,
        event: &EventId,
        shards: u32,
        items: &[(&UserId, &RequestId)],
    ) -> Result<Vec<Verdict>, RedisStoreError> {
        self.issue_each(event, shards, items)
            .await
            .into_iter()
            .map(|r| {
                r.map_err(|e| match Arc::try_unwrap(e) {
                    Ok(e) => e,
                    Err(e) => RedisStoreError::Reply(e.to_string()),
                })
            })
            .collect()
    }

    /// Like `issue_sharded`, with a result per item: the home shards are
    /// asked at once, and one shard's failure (its master failing over) is
    /// the answer of its own users only; the others' verdicts stand.
    pub async fn issue_each(
        &self,
        event: &EventId,
        shards: u32,
        items: &[(&UserId, &RequestId)],
    ) -> Vec<Result<Verdict, Arc<RedisStoreError>>> {
        let keys: Vec<EventKeys> = (0..shards)
            .map(|s| EventKeys::shard(event, s, shards))
            .collect();
        let homes = by_home(shards, items.iter().map(|(u, _)| *u));
        let decided = futures::future::join_all(
            homes
                .into_iter()
                .enumerate()
                .filter(|(_, waiting)| !waiting.is_empty())
                .map(|(home, waiting)| {
                    let keys = &keys;
                    async move {
                        let at = waiting.clone();
                        let result = self.issue_at_home(event, keys, home, waiting, items);
                        (at, result.await)
                    }
                }),
        )
        .await;
        let mut out: Vec<Option<Result<Verdict, Arc<RedisStoreError>>>> = vec![None; items.len()];
        for (at, result) in decided {
            match result {
                Ok(verdicts) => {
                    for (i, v) in verdicts {
                        out[i] = Some(Ok(v));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for i in at {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|v| v.expect("every item decided"))
            .collect()
    }

    /// Decides the `waiting` items (positions in `items`) at shard `home`,
    /// refilling it while they hear SOLD_OUT and another shard holds codes;
    /// returns each position with its verdict.
    async fn issue_at_home(
        &self,
        event: &EventId,
        keys: &[EventKeys],
        home: usize,
        mut waiting: Vec<usize>,
        items: &[(&UserId, &RequestId)],
    ) -> Result<Vec<(usize, Verdict)>, RedisStoreError> {
        let sold_out = Verdict::Decided(IssueOutcome::SoldOut);
        let mut out = Vec::with_capacity(waiting.len());
        for refills in 0.. {
            let part: Vec<(&UserId, &RequestId)> = waiting.iter().map(|&i| items[i]).collect();
            let verdicts = self.issue_in(&keys[home], &part).await?;
            let mut dry = Vec::new();
            for (&i, v) in waiting.iter().zip(verdicts) {
                match v == sold_out {
                    true => dry.push(i),
                    false => out.push((i, v)),
                }
            }
            if dry.is_empty() {
                return Ok(out);
            }
            if refills == MAX_REFILLS {
                break;
            }
            if refills > 0 {
                // Codes this batch moved here went elsewhere before it
                // asked again: another dry shard took them back. A random
                // pause, longer each time, lets one of the two win.
                let ceiling = 1u64 << refills.min(6);
                let pause = rand::random_range(0..ceiling * 1000);
                tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
            }
            if self.refill(event, keys, home, dry.len()).await? == 0 {
                out.extend(dry.into_iter().map(|i| (i, sold_out.clone())));
                return Ok(out);
            }
            waiting = dry;
        }
        Err(RedisStoreError::Reply(format!(
            "shard {home} of {event} ran dry {MAX_REFILLS} times while other shards held codes; ask again"
        )))
    }

    /// Moves codes to shard `home` from the fullest other shard, after
    /// finishing the transfers left open on every other shard. Returns how
    /// many moved (0: no other shard holds a code).
    async fn refill(
        &self,
        event: &EventId,
        keys: &[EventKeys],
        home: usize,
        wanted: usize,
    ) -> Result<usize, RedisStoreError> {
        let mut fullest = (0, 0);
        for (d, k) in keys.iter().enumerate().filter(|(d, _)| *d != home) {
            self.finish_transfers(k).await?;
            let mut c = self.conn().await?;
            let len: usize = redis::cmd("LLEN").arg(&k.queue).query_async(&mut c).await?;
            if len > fullest.1 {
                fullest = (d, len);
            }
        }
        let (donor, len) = fullest;
        if len == 0 {
            return self.left_or_sold_out(event, keys).await;
        }
        // What the waiting users need (or a few more), never more than half
        // of what the donor holds (rounded up, so a last code can move).
        let n = wanted.max(REFILL_AHEAD).min(len - len / 2);
        let target = shard::tag(event, home as u32, keys.len() as u32);
        match self.transfer(&keys[donor], &target, n).await? {
            // Another batch emptied the donor since it was read.
            0 => self.left_or_sold_out(event, keys).await,
            moved => Ok(moved),
        }
    }

    /// Nothing could be moved: 1 (ask again) if a code is left anywhere;
    /// 0 (SOLD_OUT) only if none is and no shard is lost.
    async fn left_or_sold_out(
        &self,
        event: &EventId,
        keys: &[EventKeys],
    ) -> Result<usize, RedisStoreError> {
        if self.anything_left(keys).await? {
            return Ok(1);
        }
        self.none_lost(event, keys).await?;
        Ok(0)
    }

    /// Whether any shard holds a code, in its queue or in an open transfer
    /// record. Codes move while the shards are read one by one (other
    /// servers' transfers), so "nothing" stands only for a pass that read
    /// every queue empty between two reads of every shard's transfer
    /// count (records open plus done, `started`) that found no record open
    /// and no count changed. A code the pass missed was moved out of a
    /// queue after that queue's first count was read and before its second
    /// (a new record: the count changed), or sat in a record at the first
    /// count (open). Open records are finished, and the pass starts over.
    async fn anything_left(&self, keys: &[EventKeys]) -> Result<bool, RedisStoreError> {
        for _ in 0..=MAX_REFILLS {
            let before = self.transfers_started(keys).await?;
            if before.iter().any(|&(_, open)| open > 0) {
                for k in keys {
                    self.finish_transfers(k).await?;
                }
                continue;
            }
            let mut c = self.conn().await?;
            for k in keys {
                let len: usize = redis::cmd("LLEN").arg(&k.queue).query_async(&mut c).await?;
                if len > 0 {
                    return Ok(true);
                }
            }
            // Given back before asking for more: a pool shared by many
            // batches must never wait on connections their holders wait on.
            drop(c);
            if self.transfers_started(keys).await? == before {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Each shard's transfers started (records open plus ids done: step 1
    /// adds a record, step 3 trades it for an id at once) and records open.
    async fn transfers_started(
        &self,
        keys: &[EventKeys],
    ) -> Result<Vec<(u64, u64)>, RedisStoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let mut c = self.conn().await?;
            let (done, open): (u64, u64) = redis::pipe()
                .cmd("SCARD")
                .arg(&k.sent)
                .cmd("HLEN")
                .arg(&k.transfers)
                .query_async(&mut c)
                .await?;
            out.push((done + open, open));
        }
        Ok(out)
    }

    /// SOLD_OUT stands only if every shard is there: a lost shard's codes
    /// are still AVAILABLE in PostgreSQL (the users hear UNAVAILABLE, and
    /// reconcile reports the event).
    async fn none_lost(&self, event: &EventId, keys: &[EventKeys]) -> Result<(), RedisStoreError> {
        let mut c = self.conn().await?;
        for (s, k) in keys.iter().enumerate() {
            let live: bool = redis::cmd("EXISTS")
                .arg(&k.meta)
                .query_async(&mut c)
                .await?;
            if !live {
                return Err(RedisStoreError::ShardLost(format!(
                    "shard {s} of {event} has no meta in redis (lost): reconcile the event"
                )));
            }
        }
        Ok(())
    }
}
