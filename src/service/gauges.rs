//! The gauges no request path updates: the finalizer group's lag per
//! partition of `coupon-issued`, and the pending issuances of each live
//! event, read every few seconds.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::domain::EventId;
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
        let mut reported = HashSet::new();
        loop {
            self.read_once(&mut reported).await;
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    /// `reported`: the events whose pending gauge was set; one that is no
    /// longer visited (settled, so nothing is pending) is set to 0 once.
    async fn read_once(&self, reported: &mut HashSet<EventId>) {
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
        let visited: HashSet<EventId> = events.into_iter().map(|(e, _)| e).collect();
        for gone in reported.difference(&visited) {
            crate::metrics::pending(gone.as_str(), 0);
        }
        reported.retain(|e| visited.contains(e));
        for event in visited {
            let Ok(shards) = self.pg.shards(&event).await else {
                continue;
            };
            if let (Ok(true), Ok(c)) = (
                self.redis.event_exists(&event, shards).await,
                self.redis.counts(&event, shards).await,
            ) {
                crate::metrics::pending(event.as_str(), c.pending);
                reported.insert(event);
            }
        }
    }
}
