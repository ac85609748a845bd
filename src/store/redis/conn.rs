//! The one seam through which the store reaches Redis. Today a pool of
//! multiplexed connections to one node for the request path, and a
//! connection of its own for bulk work; a cluster client takes their place
//! here and nothing else changes, since every caller only needs
//! `redis::aio::ConnectionLike` (what scripts and commands run on).

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;

use super::RedisStoreError;

/// A connection of the request path.
pub type Conn = deadpool_redis::Connection;

/// A bulk connection's response timeout: bulk reads and writes (reconcile,
/// rebuild) must not depend on the request path's, which a busy machine
/// can exceed with a chunk of 10,000.
const BULK_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection settings of the Redis client.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    /// Longest wait for a reply before the call fails (and may have run).
    pub response: Duration,
    /// Longest wait for a new connection.
    pub connect: Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        Self {
            response: Duration::from_millis(500),
            connect: Duration::from_millis(1000),
        }
    }
}

/// Where the store's connections come from.
#[derive(Clone)]
pub(super) struct Link {
    pool: Pool,
    /// Where bulk connections go.
    client: redis::Client,
    connect_timeout: Duration,
}

impl Link {
    pub(super) fn open(
        url: &str,
        pool_size: usize,
        timeouts: RedisTimeouts,
    ) -> anyhow::Result<Self> {
        let conn = AsyncConnectionConfig::new()
            .set_response_timeout(Some(timeouts.response))
            .set_connection_timeout(Some(timeouts.connect));
        let pool = Pool::builder(Manager::new_with_config(url, conn)?)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self {
            pool,
            client: redis::Client::open(url)?,
            connect_timeout: timeouts.connect,
        })
    }

    pub(super) async fn get(&self) -> Result<Conn, RedisStoreError> {
        Ok(self.pool.get().await?)
    }

    /// A connection of its own with a long response timeout, for bulk work.
    pub(super) async fn bulk(&self) -> Result<redis::aio::MultiplexedConnection, RedisStoreError> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(BULK_RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(self.connect_timeout));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }
}
