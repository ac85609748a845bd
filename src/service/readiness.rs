//! Whether the stores each service needs answer: what health reports.

use std::time::Duration;

use crate::config::KafkaSettings;
use crate::kafka::backlog::Backlog;
use crate::store::{PgStore, RedisStore};

/// Longest a probe waits for a store.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The stores that answered one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reachable {
    pub redis: bool,
    pub postgres: bool,
    pub kafka: bool,
}

impl Reachable {
    /// Issue needs Redis (Kafka down only makes answers not yet durable).
    pub fn issuer(&self) -> bool {
        self.redis
    }

    /// Preload and GetEvent need PostgreSQL and Redis.
    pub fn admin(&self) -> bool {
        self.redis && self.postgres
    }

    /// The finalizer needs all three.
    pub fn finalizer(&self) -> bool {
        self.redis && self.postgres && self.kafka
    }
}

#[derive(Clone)]
pub struct Readiness {
    pub pg: PgStore,
    pub redis: RedisStore,
    pub kafka: KafkaSettings,
}

impl Readiness {
    /// Probes the stores at once, each within the probe timeout; Kafka only
    /// when `kafka` (only the finalizer needs it: a server would open a
    /// Kafka client every second for nothing).
    pub async fn probe(&self, kafka: bool) -> Reachable {
        let redis = tokio::time::timeout(PROBE_TIMEOUT, self.redis.ping());
        let postgres = tokio::time::timeout(PROBE_TIMEOUT, self.pg.ping());
        let broker = async {
            if !kafka {
                return true;
            }
            let k = self.kafka.clone();
            let read = tokio::task::spawn_blocking(move || Backlog::read(&k));
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, read).await,
                Ok(Ok(Ok(_)))
            )
        };
        let (r, p, kafka) = tokio::join!(redis, postgres, broker);
        Reachable {
            redis: matches!(r, Ok(Ok(()))),
            postgres: matches!(p, Ok(Ok(()))),
            kafka,
        }
    }
}
