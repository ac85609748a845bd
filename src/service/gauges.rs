//! The gauges no request path updates: the finalizer group's lag per
//! partition of `coupon-issued`, and the pending issuances of each live
//! event, read every few seconds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::kafka::backlog::Backlog;
use crate::store::{PgStore, RedisStore};

const EVERY: Duration = Duration::from_secs(5);

pub struct Gauges {
    pub pg: PgStore,
    pub redis: RedisStore,
    pub kafka: KafkaSettings,
}

impl Gauges {
    /// Reads until `stop` fires; a failed read is skipped, never fatal.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            self.read_once().await;
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    async fn read_once(&self) {
        let kafka = self.kafka.clone();
        match tokio::task::spawn_blocking(move || Backlog::read(&kafka)).await {
            Ok(Ok(b)) => {
                for (partition, lag) in b.per_partition() {
                    crate::metrics::consumer_lag(partition, lag);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "reading the consumer lag failed"),
            Err(e) => tracing::debug!(error = %e, "reading the consumer lag panicked"),
        }
        let Ok(events) = self.pg.events_to_sweep().await else {
            return;
        };
        for (event, _) in events {
            if let (Ok(true), Ok(c)) = (
                self.redis.event_exists(&event).await,
                self.redis.counts(&event).await,
            ) {
                crate::metrics::pending(event.as_str(), c.pending);
            }
        }
    }
}
