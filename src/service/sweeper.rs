//! The sweeper: republishes issuances that have stayed pending too long, so
//! a lost Kafka message, a broker that lost its data, or a crash between the
//! Lua script and the publish cannot lose an issuance. Issuances leave the
//! pending set only when the finalizer has committed them to PostgreSQL.

use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaSettings, SweepSettings};
use crate::domain::{ControlState, EventId, IssuanceRecord};
use crate::kafka::{topics, Publisher};
use crate::store::redis::Synced;
use crate::store::{PgStore, RedisStore};

/// Most issuances claimed per script call.
const CLAIM_BATCH: usize = 500;

pub struct Sweeper {
    /// Lists this deployment's events: a Redis shared by several
    /// deployments holds events that are not ours to republish.
    pg: PgStore,
    /// The last event list read (unsettled LIVE events and their controls),
    /// used while PostgreSQL is unreachable.
    events: tokio::sync::Mutex<Vec<(EventId, ControlState)>>,
    redis: RedisStore,
    publisher: Publisher,
    kafka: KafkaSettings,
    settings: SweepSettings,
}

impl Sweeper {
    pub fn new(
        pg: PgStore,
        redis: RedisStore,
        publisher: Publisher,
        kafka: KafkaSettings,
        settings: SweepSettings,
    ) -> Self {
        Self {
            kafka,
            pg,
            events: tokio::sync::Mutex::new(Vec::new()),
            redis,
            publisher,
            settings,
        }
    }

    /// Sweeps every `interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let interval = self.settings.interval.max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
            match self.sweep_all(&shutdown).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    republished = n,
                    "sweeper republished stale pending issuances"
                ),
                Err(e) => tracing::warn!(error = %e, "sweep failed; retrying next interval"),
            }
        }
    }

    /// One pass over every event; returns how many issuances were republished.
    /// A pass ends early on shutdown, and gives each event at most one age:
    /// with a big backlog, the first claims of a long pass would otherwise
    /// come due again before it ends, and it would never return.
    pub async fn sweep_all(&self, shutdown: &CancellationToken) -> anyhow::Result<usize> {
        let events = {
            let mut cached = self.events.lock().await;
            match self.pg.events_to_sweep().await {
                Ok(ids) => *cached = ids,
                Err(e) => tracing::debug!(error = %e, "listing events failed; using the last list"),
            }
            cached.clone()
        };
        let mut total = 0;
        for (event, controls) in events {
            if shutdown.is_cancelled() {
                break;
            }
            let shards = match self.pg.shards(&event).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(event_id = %event, error = %e, "reading the shard count failed; next sweep");
                    continue;
                }
            };
            self.repair_controls(&event, shards, &controls).await;
            self.finish_transfers(&event, shards).await;
            total += self.sweep(&event, shards, shutdown).await?;
            self.settle_if_done(&event, shards).await;
        }
        Ok(total)
    }

    /// A control PostgreSQL recorded but Redis missed (its call failed half
    /// way, or a rebuild installed an older copy) is applied here; one that
    /// Redis holds already changes nothing.
    async fn repair_controls(&self, event: &EventId, shards: u32, controls: &ControlState) {
        match self.redis.sync_controls(event, shards, controls).await {
            Ok(Synced::Applied) => {
                tracing::info!(event_id = %event, seq = controls.seq, "applied a control redis had missed")
            }
            Ok(Synced::Current | Synced::NotLive) => {}
            Err(e) => {
                tracing::debug!(event_id = %event, error = %e, "syncing controls failed; next sweep")
            }
        }
    }

    /// Transfers between a sharded event's shards whose starter died are
    /// finished here, so their codes do not wait for the next refill.
    async fn finish_transfers(&self, event: &EventId, shards: u32) {
        if shards < 2 {
            return;
        }
        match self.redis.finish_all_transfers(event, shards).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(event_id = %event, transfers = n, "finished transfers between shards")
            }
            Err(e) => {
                tracing::debug!(event_id = %event, error = %e, "finishing transfers failed; next sweep")
            }
        }
    }

    /// An ended event with nothing pending is done: Redis decides it and
    /// gives its keys the retention expiry (first, so a crash before the
    /// record only means doing it again), then PostgreSQL records it
    /// settled, if it records the same end, and the sweeper stops visiting.
    async fn settle_if_done(&self, event: &EventId, shards: u32) {
        let retention = self.settings.retention;
        let done = async {
            let Some(ends_ms) = self.redis.settle(event, shards, retention).await? else {
                return anyhow::Ok(false);
            };
            Ok(self.pg.settle(event, ends_ms).await?)
        };
        match done.await {
            Ok(true) => {
                crate::metrics::pending(event.as_str(), 0);
                tracing::info!(
                    event_id = %event,
                    retention_secs = retention.as_secs(),
                    "event ended and fully finalized: its redis keys expire"
                )
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(event_id = %event, error = %e, "settling failed; next sweep"),
        }
    }

    async fn sweep(
        &self,
        event: &EventId,
        shards: u32,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<usize> {
        let mut republished = 0;
        let until = tokio::time::Instant::now() + self.settings.age;
        loop {
            let claimed = self
                .redis
                .claim_stale(
                    event,
                    shards,
                    self.settings.age,
                    self.settings.max_age,
                    CLAIM_BATCH,
                )
                .await?;
            let n = claimed.len();
            let records: Vec<IssuanceRecord> = claimed
                .into_iter()
                .map(|(user_id, r)| IssuanceRecord {
                    event_id: event.clone(),
                    user_id,
                    coupon: r.coupon,
                    request_id: r.request_id,
                })
                .collect();
            let results = join_all(records.iter().map(|r| self.publisher.publish(r))).await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                // Claimed items come back one age later.
                tracing::warn!(error = %e, failed, "republishing failed");
                // A broker that lost its data lost our topics too.
                if let Err(e) = topics::ensure(&self.kafka).await {
                    tracing::warn!(error = %e, "re-creating topics failed");
                }
            }
            republished += n - failed;
            crate::metrics::republished(n - failed);
            if n < CLAIM_BATCH
                || failed > 0
                || shutdown.is_cancelled()
                || tokio::time::Instant::now() >= until
            {
                return Ok(republished);
            }
        }
    }
}
