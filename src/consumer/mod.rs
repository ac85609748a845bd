//! The finalizer: consumes `coupon-issued` and records each issuance as
//! ISSUED in PostgreSQL, then marks it finalized in Redis. Offsets are
//! committed only after both, so a crash anywhere replays the batch, and
//! replaying changes nothing (the UPDATE only touches AVAILABLE rows).
//!
//! Batches are pipelined: while up to `in_flight` batches are applied to
//! the stores concurrently, the next one gathers. Offsets are still
//! committed in consumption order, each batch's only after it and every
//! batch before it were applied.

mod batch;
mod sink;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumerSettings, KafkaSettings};
use crate::kafka::Publisher;
use crate::store::postgres::finalization::IssuanceWriter;
use crate::store::RedisStore;

pub use batch::next_batch;
use sink::BACKOFF_START;
pub use sink::{BatchStats, Sink};

/// A batch being applied, and what applying it did (`None`: interrupted).
type Applying = Pin<Box<dyn Future<Output = (Vec<OwnedMessage>, Option<BatchStats>)> + Send>>;

/// After broker trouble, a consumer that then receives nothing for this
/// long is replaced: its fetch position may point past the end of a log
/// the broker lost, and a new instance starts from the committed offsets
/// (or the earliest, when the group's offsets were lost too).
const STALL_RESET: Duration = Duration::from_secs(10);

/// How long a finalizer told to stop goes on consuming, to record what was
/// in its partitions at that moment (what the server's last calls published).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Next offset per (topic, partition).
type Offsets = HashMap<(String, i32), i64>;

/// Where a running finalizer is.
#[derive(Default)]
struct Progress {
    /// Batches being applied, in consumption order.
    applying: FuturesOrdered<Applying>,
    /// The next offset applied, per partition.
    applied: Offsets,
    /// Set once told to stop.
    draining: Option<Draining>,
    /// Set while the broker has failed since the last message arrived.
    troubled_since: Option<tokio::time::Instant>,
}

impl Progress {
    /// Told to stop, and what was to be recorded is (or the time is up).
    fn drained(&self) -> bool {
        self.draining.as_ref().is_some_and(|d| {
            caught_up(&d.targets, &self.applied) || tokio::time::Instant::now() >= d.until
        })
    }
}

/// A finalizer that was told to stop: what it must still record, and until when.
struct Draining {
    targets: Offsets,
    until: tokio::time::Instant,
}

/// Everything the finalizer needs.
pub struct Finalizer {
    consumer: StreamConsumer,
    config: ClientConfig,
    topic: String,
    sink: Sink,
    settings: ConsumerSettings,
}

impl Finalizer {
    /// `retention`: how long Redis keeps what the finalizer writes for an
    /// event it no longer holds (see `conflict.lua`, `supersede.lua`).
    pub fn new(
        kafka: &KafkaSettings,
        settings: &ConsumerSettings,
        writer: IssuanceWriter,
        redis: RedisStore,
        dlq: Publisher,
        retention: Duration,
    ) -> anyhow::Result<Self> {
        let mut config = crate::kafka::client_config(kafka)?;
        config
            .set("group.id", &kafka.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            // Also the group's rebalance timeout: a member that died without
            // leaving holds up a replacement for at most this long.
            .set("max.poll.interval.ms", "20000")
            .set(
                "fetch.wait.max.ms",
                settings.fetch_wait.as_millis().to_string(),
            )
            .set("fetch.min.bytes", settings.fetch_min_bytes.to_string())
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
            sink: Sink {
                writer,
                redis,
                dlq,
                retention,
            },
            settings: settings.clone(),
        })
    }

    /// Consumes until `shutdown` fires; the batches in progress are
    /// finished and committed first.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            in_flight = self.settings.in_flight.max(1),
            "finalizer started"
        );
        let mut p = Progress::default();
        while self.turn(&mut p, &shutdown).await? {}
        self.drain(p.applying).await;
        tracing::info!("finalizer stopped");
        Ok(())
    }

    /// One turn of the loop: a batch committed, or one gathered and set to
    /// apply. False when the finalizer is done.
    async fn turn(
        &mut self,
        p: &mut Progress,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        if p.drained() {
            return Ok(false);
        }
        if p.applying.is_empty() && p.troubled_since.is_some_and(|t| t.elapsed() > STALL_RESET) {
            self.replace_consumer()?;
            p.troubled_since = None;
        }
        if p.applying.len() >= self.settings.in_flight.max(1) {
            return Ok(self.await_a_batch(p, shutdown).await);
        }
        let Some(gathered) = self.gather(p, shutdown).await else {
            return Ok(false);
        };
        match gathered {
            Ok(b) if b.is_empty() => {}
            Ok(batch) => {
                p.troubled_since = None;
                p.applying.push_back(self.apply(batch, shutdown));
            }
            Err(e) => {
                // librdkafka reconnects by itself; don't spin meanwhile.
                tracing::warn!(error = %e, "consuming failed; retrying");
                p.troubled_since
                    .get_or_insert_with(tokio::time::Instant::now);
                tokio::time::sleep(BACKOFF_START).await;
            }
        }
        Ok(true)
    }

    /// With every slot busy: the next batch to end is committed (or the
    /// drain starts). False when one was interrupted.
    async fn await_a_batch(&self, p: &mut Progress, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if p.draining.is_none() => {
                p.draining = Some(self.start_draining());
                true
            }
            Some(done) = p.applying.next() => self.applied(done, &mut p.applied),
        }
    }

    /// Gathers the next batch while committing the batches that end
    /// meanwhile. The gathering future is polled to its end, never dropped
    /// half-way (but on shutdown): messages it took and lost would be
    /// skipped by the commits of later batches. `None`: stop now.
    async fn gather(
        &self,
        p: &mut Progress,
        shutdown: &CancellationToken,
    ) -> Option<anyhow::Result<Vec<OwnedMessage>>> {
        let s = &self.settings;
        let gather = next_batch(&self.consumer, s.batch_size, s.batch_wait, STALL_RESET);
        tokio::pin!(gather);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if p.draining.is_none() => {
                    let d = self.start_draining();
                    // Nothing left to record: stop now (a batch being
                    // gathered is not applied, nor committed past).
                    if p.applying.is_empty() && caught_up(&d.targets, &p.applied) {
                        return None;
                    }
                    p.draining = Some(d);
                }
                Some(done) = p.applying.next(), if !p.applying.is_empty() => {
                    if !self.applied(done, &mut p.applied) {
                        return None;
                    }
                }
                b = &mut gather => return Some(b),
            }
        }
    }

    /// Applying `batch` to the stores, as a future of its own.
    fn apply(&self, batch: Vec<OwnedMessage>, shutdown: &CancellationToken) -> Applying {
        let sink = self.sink.clone();
        let shutdown = shutdown.clone();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let stats = sink.apply(&batch, &shutdown).await;
            tracing::debug!(
                messages = batch.len(),
                apply_ms = started.elapsed().as_millis() as u64,
                "batch applied"
            );
            (batch, stats)
        })
    }

    /// Commits a batch that was applied; false if applying it was
    /// interrupted by shutdown (nothing from it on may be committed).
    fn applied(
        &self,
        (batch, stats): (Vec<OwnedMessage>, Option<BatchStats>),
        applied: &mut Offsets,
    ) -> bool {
        let Some(stats) = stats else {
            return false;
        };
        for m in &batch {
            let e = applied
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        tracing::debug!(?stats, "batch finalized");
        // Asynchronous: the next batches need not wait for the broker. A
        // commit that is lost only means a redelivery, which changes nothing.
        if let Err(e) = self.commit(&batch, CommitMode::Async) {
            tracing::warn!(error = %e, "committing offsets failed; the batch will be redelivered");
        }
        true
    }

    /// On shutdown: lets the batches in progress finish and commits, once
    /// and synchronously, every one up to the first that was interrupted
    /// (a store still failing); the rest is redelivered to the next consumer.
    async fn drain(&self, mut applying: FuturesOrdered<Applying>) {
        let mut finished: Vec<OwnedMessage> = Vec::new();
        let mut intact = true;
        while let Some((batch, stats)) = applying.next().await {
            intact &= stats.is_some();
            if intact {
                finished.extend(batch);
            }
        }
        if finished.is_empty() {
            return;
        }
        if let Err(e) = self.commit(&finished, CommitMode::Sync) {
            // E.g. the group rebalanced meanwhile: the batches are redelivered
            // to whoever owns the partitions now, and change nothing there.
            tracing::warn!(error = %e, "committing offsets failed; the batches will be redelivered");
        }
    }

    /// What the partitions assigned to this finalizer hold now (their high
    /// watermarks), less what was committed already: what a stopping
    /// finalizer still records, for at most `DRAIN_LIMIT`.
    fn start_draining(&self) -> Draining {
        let until = tokio::time::Instant::now() + DRAIN_LIMIT;
        let mut targets = HashMap::new();
        let timeout = Duration::from_secs(2);
        let committed = self.consumer.committed(timeout).unwrap_or_default();
        if let Ok(assigned) = self.consumer.assignment() {
            for e in assigned.elements() {
                let Ok((_, high)) =
                    self.consumer
                        .fetch_watermarks(e.topic(), e.partition(), timeout)
                else {
                    continue;
                };
                let done = match committed
                    .find_partition(e.topic(), e.partition())
                    .map(|c| c.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                if high > done {
                    targets.insert((e.topic().to_owned(), e.partition()), high);
                }
            }
        }
        tracing::info!(
            partitions = targets.len(),
            "finalizer stopping: recording what its partitions hold first"
        );
        Draining { targets, until }
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

    /// Commits the next offset of every partition in the messages.
    fn commit(&self, batch: &[OwnedMessage], mode: CommitMode) -> anyhow::Result<()> {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for m in batch {
            let e = next.entry((m.topic(), m.partition())).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in next {
            tpl.add_partition_offset(t, p, Offset::Offset(o))?;
        }
        self.consumer.commit(&tpl, mode)?;
        Ok(())
    }
}

/// Whether every target offset has been applied.
fn caught_up(targets: &Offsets, applied: &Offsets) -> bool {
    targets
        .iter()
        .all(|(k, high)| applied.get(k).is_some_and(|a| a >= high))
}
