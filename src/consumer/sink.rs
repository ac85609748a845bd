//! Applying one batch to the stores: PostgreSQL first, then Redis, with
//! messages that cannot be recorded dead-lettered. Owned handles, so
//! several batches can be applied at once while the consumer gathers more.
//!
//! PostgreSQL's verdict on each issuance decides what follows: recorded
//! (finalized in Redis); its user holds another coupon there (that one wins
//! in Redis, the refused code goes back to the queue); its code is someone
//! else's (marked conflicted in Redis, then dead-lettered); the row itself
//! refused (dead-lettered with PostgreSQL's reason). A message that does
//! not decode, or whose fields break the API's rules, is dead-lettered
//! without touching a store. Nothing is retried forever but store outages.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::domain::{EventId, IssuanceRecord, IssuedCoupon, UserId};
use crate::kafka::{message, Publisher};
use crate::store::postgres::finalization::{IssuanceWriter, Recorded};
use crate::store::redis::Restored;
use crate::store::RedisStore;

/// Backoff between retries of a failing store, doubling up to the cap.
pub(super) const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What one batch did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub messages: usize,
    pub finalized: usize,
    /// Recorded by PostgreSQL, unknown to Redis (it lost them): PostgreSQL's
    /// record restored in Redis.
    pub restored: usize,
    /// Refused by PostgreSQL (the code is someone else's): marked
    /// conflicted in Redis, and dead-lettered.
    pub conflicted: usize,
    /// Refused because PostgreSQL holds another coupon for the user, which
    /// Redis now holds too.
    pub superseded: usize,
    /// Not a valid CouponIssued: dead-lettered.
    pub undecodable: usize,
    /// Rows PostgreSQL refused for themselves: dead-lettered.
    pub refused: usize,
    /// Conflicted, undecodable and refused messages.
    pub dead_lettered: usize,
}

/// An issuance PostgreSQL refused for its user, with the coupon it holds,
/// its request id, and whether the refused code is free.
type Superseded<'a> = (&'a IssuanceRecord, &'a IssuedCoupon, &'a str, bool);

/// The batch's decoded issuances sorted by PostgreSQL's verdict.
#[derive(Default)]
struct Verdicts<'a> {
    finalized: HashMap<&'a EventId, Vec<&'a IssuanceRecord>>,
    superseded: HashMap<&'a EventId, Vec<Superseded<'a>>>,
    refused: HashMap<&'a EventId, Vec<&'a IssuanceRecord>>,
    /// Index into the batch's records, and why PostgreSQL refused the row.
    invalid: Vec<(usize, String)>,
}

/// The stores a batch is applied to.
#[derive(Clone)]
pub struct Sink {
    pub(super) writer: IssuanceWriter,
    pub(super) redis: RedisStore,
    /// Takes the messages that cannot be recorded.
    pub(super) dlq: Publisher,
    /// What Redis keys written for an event it no longer holds live for.
    pub(super) retention: Duration,
}

impl Sink {
    /// Applies one batch. `None` when shutdown interrupted retries: the
    /// batch must then stay uncommitted, and so must every later one.
    pub async fn apply(
        &self,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> Option<BatchStats> {
        let mut stats = BatchStats {
            messages: batch.len(),
            ..Default::default()
        };
        let mut records: Vec<IssuanceRecord> = Vec::with_capacity(batch.len());
        let mut sources: Vec<&OwnedMessage> = Vec::with_capacity(batch.len());
        for m in batch {
            match message::decode(m.payload().unwrap_or_default()) {
                Ok(r) => {
                    records.push(r);
                    sources.push(m);
                }
                Err(e) => {
                    self.dead_letter(m, &e.to_string(), "undecodable", shutdown)
                        .await?;
                    stats.undecodable += 1;
                    stats.dead_lettered += 1;
                }
            }
        }
        if !records.is_empty() {
            self.record(&records, &sources, shutdown, &mut stats)
                .await?;
        }
        crate::metrics::finalizer_batch(&[
            ("finalized", stats.finalized),
            ("restored", stats.restored),
            ("superseded", stats.superseded),
            ("conflicted", stats.conflicted),
            ("undecodable", stats.undecodable),
            ("refused", stats.refused),
        ]);
        Some(stats)
    }

    /// Records decoded issuances: PostgreSQL first, then Redis as its
    /// verdicts say; what it refused is dead-lettered.
    async fn record(
        &self,
        records: &[IssuanceRecord],
        sources: &[&OwnedMessage],
        shutdown: &CancellationToken,
        stats: &mut BatchStats,
    ) -> Option<()> {
        let recorded = retry(shutdown, "finalizing in postgres", || {
            self.writer.record(records)
        })
        .await?;
        let v = sort(records, &recorded);
        for (event, items) in &v.finalized {
            stats.restored += self.finalize(event, items, shutdown).await?;
            stats.finalized += items.len();
        }
        observe_delays(records, &recorded);
        for (event, items) in &v.superseded {
            let shards = self.shards(event, shutdown).await?;
            let queued = retry(shutdown, "resolving superseded issuances in redis", || {
                self.redis.supersede(event, shards, items, self.retention)
            })
            .await?;
            // The coupon PostgreSQL holds was lost by Redis: a lost pop may
            // have left its code in the queue.
            let held: Vec<IssuanceRecord> = items
                .iter()
                .map(|(r, coupon, request_id, _)| IssuanceRecord {
                    coupon: (*coupon).clone(),
                    request_id: request_id.to_string(),
                    ..(*r).clone()
                })
                .collect();
            let held: Vec<&IssuanceRecord> = held.iter().collect();
            let dequeued = self.restore(event, shards, &held, shutdown).await?.dequeued;
            tracing::warn!(event_id = %event, users = items.len(), queued_again = queued, held_codes_dequeued = dequeued, "postgres holds another coupon for these users; theirs wins in redis");
            stats.superseded += items.len();
        }
        self.conflicts(&v.refused, records, sources, shutdown, stats)
            .await?;
        for (i, why) in &v.invalid {
            let reason = format!("postgres refused the row: {why}");
            tracing::error!(event_id = %records[*i].event_id, user_id = %records[*i].user_id, "{reason}; dead-lettered");
            self.dead_letter(sources[*i], &reason, "refused", shutdown)
                .await?;
            stats.refused += 1;
            stats.dead_lettered += 1;
        }
        Some(())
    }

    /// Marks issuances PostgreSQL recorded finalized in Redis, and gives
    /// back PostgreSQL's record to the users Redis lost: a user told ISSUED
    /// must hear the same coupon when they ask again, never get a second
    /// one. Returns how many were restored.
    async fn finalize(
        &self,
        event: &EventId,
        records: &[&IssuanceRecord],
        shutdown: &CancellationToken,
    ) -> Option<usize> {
        let items: Vec<(&UserId, &str)> = records
            .iter()
            .map(|r| (&r.user_id, r.coupon.code.as_str()))
            .collect();
        let shards = self.shards(event, shutdown).await?;
        let found = retry(shutdown, "finalizing in redis", || {
            self.redis.finalize(event, shards, &items)
        })
        .await?;
        if found.unknown.is_empty() {
            return Some(0);
        }
        let lost: Vec<&IssuanceRecord> = found.unknown.iter().map(|i| records[*i]).collect();
        let done = self.restore(event, shards, &lost, shutdown).await?;
        if done.users > 0 || done.not_queued > 0 {
            tracing::warn!(event_id = %event, users = done.users, codes_dequeued = done.dequeued, codes_not_queued = done.not_queued, "redis had lost these issuances; postgres's records restored (a code not found in the queue may have gone to another user: reconcile reports it)");
        }
        Some(done.users as usize)
    }

    async fn restore(
        &self,
        event: &EventId,
        shards: u32,
        items: &[&IssuanceRecord],
        shutdown: &CancellationToken,
    ) -> Option<Restored> {
        retry(shutdown, "restoring lost issuances in redis", || {
            self.redis.restore(event, shards, items)
        })
        .await
    }

    /// The event's shard count: which of its shards holds a user's record.
    async fn shards(&self, event: &EventId, shutdown: &CancellationToken) -> Option<u32> {
        retry(shutdown, "reading the event's shard count", || {
            self.writer.shards(event)
        })
        .await
    }

    /// Marks issuances whose code PostgreSQL holds for someone else
    /// conflicted, then dead-letters them. Marked first: a crash in between
    /// redelivers the message, which is refused and marked (idempotently)
    /// again, so no conflict stays pending and republished forever.
    async fn conflicts(
        &self,
        refused: &HashMap<&EventId, Vec<&IssuanceRecord>>,
        records: &[IssuanceRecord],
        sources: &[&OwnedMessage],
        shutdown: &CancellationToken,
        stats: &mut BatchStats,
    ) -> Option<()> {
        for (event, items) in refused {
            let shards = self.shards(event, shutdown).await?;
            retry(shutdown, "marking conflicts in redis", || {
                self.redis
                    .mark_conflicted(event, shards, items, self.retention)
            })
            .await?;
            stats.conflicted += items.len();
        }
        let reason = "conflicts with postgres: the code is another user's, or not the event's";
        for (r, m) in records.iter().zip(sources) {
            if !refused.get(&r.event_id).is_some_and(|v| v.contains(&r)) {
                continue;
            }
            tracing::error!(event_id = %r.event_id, user_id = %r.user_id, code = %r.coupon.code, "{reason}; marked conflicted and dead-lettered");
            self.dead_letter(m, reason, "conflict", shutdown).await?;
            stats.dead_lettered += 1;
        }
        Some(())
    }

    /// Sends `m` to the dead-letter topic with `reason`. A dead letter the
    /// broker can never take (too large, malformed) is logged and counted,
    /// and the message left behind: retrying it would stop the finalizer
    /// for good. `None` only when shutdown interrupted the retries.
    async fn dead_letter(
        &self,
        m: &OwnedMessage,
        reason: &str,
        kind: &'static str,
        shutdown: &CancellationToken,
    ) -> Option<()> {
        let payload = m.payload().unwrap_or_default();
        let sent = retry(shutdown, "publishing to the dead-letter topic", || async {
            match self.dlq.dead_letter(m.key(), payload, reason).await {
                Err(e) if e.is_permanent() => Ok(Err(e)),
                other => other.map(Ok),
            }
        })
        .await?;
        match sent {
            Ok(()) => crate::metrics::dead_lettered(kind),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    partition = m.partition(),
                    offset = m.offset(),
                    reason,
                    "the dead letter cannot be written; the message is skipped (see its partition and offset)"
                );
                crate::metrics::dead_letter_failed();
            }
        }
        Some(())
    }
}

fn sort<'a>(records: &'a [IssuanceRecord], recorded: &'a [Recorded]) -> Verdicts<'a> {
    let mut v = Verdicts::default();
    for (i, (r, verdict)) in records.iter().zip(recorded).enumerate() {
        match verdict {
            Recorded::Done => v.finalized.entry(&r.event_id).or_default().push(r),
            Recorded::UserHolds {
                coupon,
                request_id,
                free,
            } => v.superseded.entry(&r.event_id).or_default().push((
                r,
                coupon,
                request_id.as_str(),
                *free,
            )),
            Recorded::Refused => v.refused.entry(&r.event_id).or_default().push(r),
            Recorded::Invalid(why) => v.invalid.push((i, why.clone())),
        }
    }
    v
}

fn observe_delays(records: &[IssuanceRecord], recorded: &[Recorded]) {
    let now = chrono::Utc::now();
    for (r, _) in records
        .iter()
        .zip(recorded)
        .filter(|(_, v)| **v == Recorded::Done)
    {
        let delay = (now - r.coupon.issued_at).to_std().unwrap_or_default();
        crate::metrics::finalize_delay(delay);
    }
}

/// Retries `op` with exponential backoff until it succeeds (`Some`) or
/// shutdown is requested (`None`). Store outages are waited out, not
/// skipped: skipping would commit offsets past unrecorded issuances.
async fn retry<T, E, F, Fut>(shutdown: &CancellationToken, what: &str, mut op: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                if !backoff.wait(shutdown).await {
                    return None;
                }
            }
        }
    }
}
