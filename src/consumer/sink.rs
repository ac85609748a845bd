//! Applying one batch to the stores: PostgreSQL first, then Redis, with
//! undecodable or conflicting messages dead-lettered. Owned handles, so
//! several batches can be applied at once while the consumer gathers more.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use crate::domain::{EventId, IssuanceRecord, UserId};
use crate::kafka::{message, Publisher};
use crate::store::{PgStore, RedisStore};

/// Backoff between retries of a failing store, doubling up to the cap.
pub(super) const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What one batch did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub messages: usize,
    pub finalized: usize,
    /// Refused by PostgreSQL (the code is someone else's): marked
    /// conflicted in Redis, and dead-lettered.
    pub conflicted: usize,
    pub dead_lettered: usize,
}

/// (user, code) pairs grouped by event.
type ByEvent<'a> = HashMap<&'a EventId, Vec<(&'a UserId, &'a str)>>;

/// The stores a batch is applied to.
#[derive(Clone)]
pub struct Sink {
    pub(super) pg: PgStore,
    pub(super) redis: RedisStore,
    /// Takes undecodable and conflicting messages.
    pub(super) dlq: Publisher,
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
                    if !self.dead_letter(m, &e.to_string(), shutdown).await {
                        return None;
                    }
                    crate::metrics::dead_lettered("undecodable");
                    stats.dead_lettered += 1;
                }
            }
        }
        if !records.is_empty() {
            self.record(&records, &sources, shutdown, &mut stats)
                .await?;
        }
        let undecodable = stats.dead_lettered - stats.conflicted;
        crate::metrics::finalizer_batch(stats.finalized, stats.conflicted, undecodable);
        Some(stats)
    }

    /// Records decoded issuances: PostgreSQL first, then Redis (finalized,
    /// or conflicted where PostgreSQL refused), refusals dead-lettered.
    async fn record(
        &self,
        records: &[IssuanceRecord],
        sources: &[&OwnedMessage],
        shutdown: &CancellationToken,
        stats: &mut BatchStats,
    ) -> Option<()> {
        let held = retry(shutdown, "finalizing in postgres", || {
            self.pg.finalize(records)
        })
        .await?;
        let mut finalized: ByEvent<'_> = HashMap::new();
        let mut refused: HashMap<&EventId, Vec<&IssuanceRecord>> = HashMap::new();
        for (r, ok) in records.iter().zip(&held) {
            if *ok {
                finalized
                    .entry(&r.event_id)
                    .or_default()
                    .push((&r.user_id, r.coupon.code.as_str()));
            } else {
                refused.entry(&r.event_id).or_default().push(r);
            }
        }
        for (event, items) in &finalized {
            retry(shutdown, "finalizing in redis", || {
                self.redis.finalize(event, items)
            })
            .await?;
            stats.finalized += items.len();
        }
        let now = chrono::Utc::now();
        for r in records
            .iter()
            .zip(&held)
            .filter(|(_, ok)| **ok)
            .map(|(r, _)| r)
        {
            let delay = (now - r.coupon.issued_at).to_std().unwrap_or_default();
            crate::metrics::finalize_delay(delay);
        }
        // Marked before dead-lettering: a crash in between redelivers the
        // message, which is refused and marked (idempotently) again, so
        // no conflict stays pending and republished forever.
        for (event, items) in &refused {
            retry(shutdown, "marking conflicts in redis", || {
                self.redis.mark_conflicted(event, items)
            })
            .await?;
            stats.conflicted += items.len();
        }
        for (i, _) in held.iter().enumerate().filter(|(_, ok)| !**ok) {
            let reason = "conflicts with postgres: unknown code, or code or user already taken";
            tracing::error!(
                event_id = %records[i].event_id,
                user_id = %records[i].user_id,
                code = %records[i].coupon.code,
                "{reason}; marked conflicted and dead-lettered"
            );
            if !self.dead_letter(sources[i], reason, shutdown).await {
                return None;
            }
            crate::metrics::dead_lettered("conflict");
            stats.dead_lettered += 1;
        }
        Some(())
    }

    async fn dead_letter(
        &self,
        m: &OwnedMessage,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let payload = m.payload().unwrap_or_default();
        retry(shutdown, "publishing to the dead-letter topic", || {
            self.dlq.dead_letter(m.key(), payload, reason)
        })
        .await
        .is_some()
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
    let mut delay = BACKOFF_START;
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    }
}
