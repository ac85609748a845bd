//! The one seam through which the store reaches Redis: a single node (a
//! pool of multiplexed connections for the request path, a connection of
//! its own for bulk work) or a Redis Cluster (one cluster connection for
//! each, which follows MOVED/ASK and failovers and loads a script on the
//! node that answered NOSCRIPT). Callers only need
//! `redis::aio::ConnectionLike`, what scripts and commands run on.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use super::RedisStoreError;
use crate::config::RedisTls;

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

/// A connection: pooled or of its own to a single node, or a handle on the
/// cluster connection.
pub enum Conn {
    Pooled(deadpool_redis::Connection),
    Own(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Pooled(c) => c.req_packed_command(cmd),
            Self::Own(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Pooled(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Own(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Pooled(c) => c.get_db(),
            Self::Own(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the store's connections come from.
#[derive(Clone)]
pub(super) enum Link {
    Single {
        pool: Pool,
        /// Where bulk connections go (boxed: with its TLS settings it is
        /// much larger than the cluster variant).
        client: Arc<redis::Client>,
        connect_timeout: Duration,
    },
    Cluster {
        request: Arc<Lazy>,
        bulk: Arc<Lazy>,
    },
}

/// The CA and client certificate for `rediss://` nodes; `None`: the
/// system's trust store and no client certificate.
fn certificates(tls: &RedisTls) -> anyhow::Result<Option<redis::TlsCertificates>> {
    if tls == &RedisTls::default() {
        return Ok(None);
    }
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
    };
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("--redis-tls-cert", cert)?,
            client_key: read("--redis-tls-key", key)?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("--redis-tls-cert and --redis-tls-key go together"),
    };
    let root_cert = tls
        .ca
        .as_deref()
        .map(|ca| read("--redis-tls-ca", ca))
        .transpose()?;
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A cluster connection made on first use (a failed attempt is made again
/// by the next call); it reconnects to nodes by itself after that.
pub(super) struct Lazy {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl Lazy {
    fn new(
        nodes: &[String],
        tls: &RedisTls,
        response: Duration,
        connect: Duration,
    ) -> anyhow::Result<Self> {
        let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(connect)
            .response_timeout(response);
        if let Some(certs) = certificates(tls)? {
            builder = builder.certs(certs);
        }
        let client = builder.build()?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
        })
    }

    async fn get(&self) -> Result<Conn, RedisStoreError> {
        let c = self
            .conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await?;
        Ok(Conn::Cluster(c.clone()))
    }
}

impl Link {
    /// A single node at `url`, or the cluster that `cluster` (seed node
    /// URLs) belongs to when it names any.
    pub(super) fn open(
        url: &str,
        cluster: &[String],
        tls: &RedisTls,
        pool_size: usize,
        timeouts: RedisTimeouts,
    ) -> anyhow::Result<Self> {
        if tls != &RedisTls::default() {
            let nodes = if cluster.is_empty() {
                std::slice::from_ref(&url.to_owned()).to_vec()
            } else {
                cluster.to_vec()
            };
            if let Some(plain) = nodes.iter().find(|n| !n.starts_with("rediss://")) {
                anyhow::bail!(
                    "--redis-tls-ca/-cert/-key apply to rediss:// URLs, and {} is not one",
                    crate::config::redacted_url(plain)
                );
            }
        }
        if !cluster.is_empty() {
            let lazy = |response| Lazy::new(cluster, tls, response, timeouts.connect);
            return Ok(Self::Cluster {
                request: Arc::new(lazy(timeouts.response)?),
                bulk: Arc::new(lazy(BULK_RESPONSE_TIMEOUT)?),
            });
        }
        let client = match certificates(tls)? {
            Some(certs) => redis::Client::build_with_tls(url, certs)?,
            None => redis::Client::open(url)?,
        };
        let conn = AsyncConnectionConfig::new()
            .set_response_timeout(Some(timeouts.response))
            .set_connection_timeout(Some(timeouts.connect));
        let info = client.get_connection_info().clone();
        let pool = Pool::builder(Manager::new_with_config(info, conn)?)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self::Single {
            pool,
            client: Arc::new(client),
            connect_timeout: timeouts.connect,
        })
    }

    pub(super) async fn get(&self) -> Result<Conn, RedisStoreError> {
        match self {
            Self::Single { pool, .. } => Ok(Conn::Pooled(pool.get().await?)),
            Self::Cluster { request, .. } => request.get().await,
        }
    }

    /// A connection with a long response timeout, for bulk work.
    pub(super) async fn bulk(&self) -> Result<Conn, RedisStoreError> {
        match self {
            Self::Single {
                client,
                connect_timeout,
                ..
            } => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(BULK_RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(*connect_timeout));
                Ok(Conn::Own(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Self::Cluster { bulk, .. } => bulk.get().await,
        }
    }
}
