//! The finalizer: consumes `coupon-issued` and records each issuance as
//! ISSUED in PostgreSQL, then marks it finalized in Redis. Offsets are
//! committed only after both, so a crash anywhere replays the batch, and
//! replaying changes nothing (the UPDATE only touches AVAILABLE rows).

mod batch;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerSettings, KafkaSettings};
use crate::domain::{EventId, IssuanceRecord, UserId};
use crate::kafka::{message, Publisher};
use crate::store::{PgStore, RedisStore};

pub use batch::next_batch;

/// Backoff between retries of a failing store, doubling up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// After broker trouble, a consumer that then receives nothing for this
/// long is replaced: its fetch position may point past the end of a log
/// the broker lost, and a new instance starts from the committed offsets
/// (or the earliest, when the group's offsets were lost too).
const STALL_RESET: Duration = Duration::from_secs(10);

/// Everything the finalizer needs.
pub struct Finalizer {
    consumer: StreamConsumer,
    config: ClientConfig,
    topic: String,
    pg: PgStore,
    redis: RedisStore,
    /// Sends undecodable and conflicting messages to the DLQ.
    dlq: Publisher,
    settings: ConsumerSettings,
}

/// What one batch did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub messages: usize,
    pub finalized: usize,
    pub dead_lettered: usize,
}

impl Finalizer {
    pub fn new(
        kafka: &KafkaSettings,
        settings: &ConsumerSettings,
        pg: PgStore,
        redis: RedisStore,
        dlq: Publisher,
    ) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", &kafka.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            // Also the group's rebalance timeout: a member that died without
            // leaving holds up a replacement for at most this long.
            .set("max.poll.interval.ms", "20000")
            .set("fetch.wait.max.ms", "10")
            // The group leader reassigns when it sees a subscribed topic
            // appear or grow; librdkafka's default look every 5 minutes
            // would leave a topic re-created after a broker lost its data
            // unconsumed that long.
            .set("topic.metadata.refresh.interval.ms", "5000")
            // coupond's producers are idempotent, never transactional, so
            // there is nothing uncommitted to hide; and a broker that lost
            // track of a producer after a crash cannot then stall the
            // finalizer behind a last-stable-offset that never moves.
            .set("isolation.level", "read_uncommitted");
        if let Some(id) = &kafka.instance_id {
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer = config.create()?;
        consumer.subscribe(&[&kafka.topic])?;
        Ok(Self {
            consumer,
            config,
            topic: kafka.topic.clone(),
            pg,
            redis,
            dlq,
            settings: settings.clone(),
        })
    }

    /// Consumes until `shutdown` fires; the batch in progress is finished
    /// and committed first.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!("finalizer started");
        let max_wait = Duration::from_millis(self.settings.batch_ms);
        // Set while the broker has failed since the last message arrived.
        let mut troubled_since: Option<tokio::time::Instant> = None;
        loop {
            if troubled_since.is_some_and(|t| t.elapsed() > STALL_RESET) {
                self.replace_consumer()?;
                troubled_since = None;
            }
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = next_batch(&self.consumer, self.settings.batch_size, max_wait, STALL_RESET) => match b {
                    Ok(b) if b.is_empty() => continue,
                    Ok(b) => {
                        troubled_since = None;
                        b
                    }
                    Err(e) => {
                        // librdkafka reconnects by itself; don't spin meanwhile.
                        tracing::warn!(error = %e, "consuming failed; retrying");
                        troubled_since.get_or_insert_with(tokio::time::Instant::now);
                        tokio::time::sleep(BACKOFF_START).await;
                        continue;
                    }
                },
            };
            if let Some(stats) = self.process(&batch, &shutdown).await? {
                tracing::debug!(?stats, "batch finalized");
            } else {
                // Shut down while a store was failing: nothing committed, the
                // batch is redelivered to whoever consumes next.
                break;
            }
        }
        tracing::info!("finalizer stopped");
        Ok(())
    }

    /// Swaps in a new consumer instance (see `STALL_RESET`). The old one
    /// leaves the group from a blocking thread, since closing can wait.
    fn replace_consumer(&mut self) -> anyhow::Result<()> {
        let fresh: StreamConsumer = self.config.create()?;
        fresh.subscribe(&[&self.topic])?;
        let old = std::mem::replace(&mut self.consumer, fresh);
        std::thread::spawn(move || drop(old));
        tracing::warn!("finalizer received nothing since the broker failed; replaced its consumer");
        Ok(())
    }

    /// Finalizes one batch and commits its offsets. `None` when shutdown
    /// interrupted retries (the batch is left uncommitted).
    pub async fn process(
        &self,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<BatchStats>> {
        if batch.is_empty() {
            return Ok(Some(BatchStats::default()));
        }
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
                        return Ok(None);
                    }
                    stats.dead_lettered += 1;
                }
            }
        }
        if !records.is_empty() {
            let Some(held) = retry(shutdown, "finalizing in postgres", || {
                self.pg.finalize(&records)
            })
            .await
            else {
                return Ok(None);
            };
            let mut by_event: HashMap<&EventId, Vec<(&UserId, &str)>> = HashMap::new();
            for (i, ok) in held.iter().enumerate() {
                if *ok {
                    let r = &records[i];
                    by_event
                        .entry(&r.event_id)
                        .or_default()
                        .push((&r.user_id, r.coupon.code.as_str()));
                    stats.finalized += 1;
                } else {
                    let reason =
                        "conflicts with postgres: unknown code, or code or user already taken";
                    tracing::error!(
                        event_id = %records[i].event_id,
                        user_id = %records[i].user_id,
                        code = %records[i].coupon.code,
                        "{reason}; dead-lettered"
                    );
                    if !self.dead_letter(sources[i], reason, shutdown).await {
                        return Ok(None);
                    }
                    stats.dead_lettered += 1;
                }
            }
            for (event, items) in &by_event {
                if retry(shutdown, "finalizing in redis", || {
                    self.redis.finalize(event, items)
                })
                .await
                .is_none()
                {
                    return Ok(None);
                }
            }
        }
        if let Err(e) = self.commit(batch) {
            // E.g. the group rebalanced meanwhile. The batch is redelivered
            // to whoever owns the partitions now, and changes nothing there.
            tracing::warn!(error = %e, "committing offsets failed; the batch will be redelivered");
        }
        Ok(Some(stats))
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

    /// Commits the next offset of every partition in the batch.
    fn commit(&self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for m in batch {
            let e = next.entry((m.topic(), m.partition())).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in next {
            tpl.add_partition_offset(t, p, Offset::Offset(o))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync)?;
        Ok(())
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
