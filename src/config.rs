//! Typed settings: flags, environment variables (`COUPOND_*`) and localhost
//! defaults, in that order of precedence.

use std::net::SocketAddr;

use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// When an ISSUED answer is sent relative to Kafka's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Answer ISSUED after Kafka acknowledged the CouponIssued message
    /// (acks=all; `durable` true: a Redis crash right after cannot lose it),
    /// or, when it did not within the delivery timeout, ISSUED with
    /// `durable` false (pending in Redis, republished until finalized).
    Ack,
    /// Answer as soon as the Lua script returns; publishing continues in the
    /// background and the pending set guarantees delivery while Redis keeps
    /// its data.
    Async,
}

/// Redis connection settings.
#[derive(Clone, clap::Args)]
pub struct RedisSettings {
    /// Redis URL.
    #[arg(
        id = "redis-url",
        long = "redis-url",
        env = "COUPOND_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,
    /// Maximum pooled Redis connections.
    #[arg(
        id = "redis-pool-size",
        long = "redis-pool-size",
        env = "COUPOND_REDIS_POOL_SIZE",
        default_value_t = 32
    )]
    pub pool_size: usize,
    /// Longest wait for a Redis reply (ms). A call that times out may still
    /// have run: every caller treats it so.
    #[arg(
        id = "redis-response-timeout-ms",
        long = "redis-response-timeout-ms",
        env = "COUPOND_REDIS_RESPONSE_TIMEOUT_MS",
        default_value_t = 500
    )]
    pub response_timeout_ms: u64,
    /// Longest wait for a new Redis connection (ms).
    #[arg(
        id = "redis-connect-timeout-ms",
        long = "redis-connect-timeout-ms",
        env = "COUPOND_REDIS_CONNECT_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub connect_timeout_ms: u64,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

/// The URL with its password (if any) replaced by `***`: what logs and
/// error messages show of a connection URL.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// How preload jobs run.
#[derive(Debug, Clone, clap::Args)]
pub struct PreloadSettings {
    /// How long a server holds a preload job without renewing it (ms); a job
    /// whose server died is taken over (by any server) once this passed.
    #[arg(
        id = "preload-lease-ms",
        long = "preload-lease-ms",
        env = "COUPOND_PRELOAD_LEASE_MS",
        default_value_t = 15_000
    )]
    pub lease_ms: u64,
    /// Coupons generated, written and staged per step of a job: what bounds
    /// the memory a job holds (a few chunks at a time).
    #[arg(
        id = "preload-chunk",
        long = "preload-chunk",
        env = "COUPOND_PRELOAD_CHUNK",
        default_value_t = 50_000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub chunk: u32,
    /// How long one idempotent Redis step of a job (claim, stage a chunk) is
    /// retried before the job counts as failed (ms): long enough to ride out
    /// a stalled or restarting Redis.
    #[arg(
        id = "preload-step-budget-ms",
        long = "preload-step-budget-ms",
        env = "COUPOND_PRELOAD_STEP_BUDGET_MS",
        default_value_t = 60_000
    )]
    pub step_budget_ms: u64,
}

impl PreloadSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn step_budget(&self) -> Duration {
        Duration::from_millis(self.step_budget_ms)
    }
}

/// PostgreSQL connection settings.
#[derive(Clone, clap::Args)]
pub struct DatabaseSettings {
    /// PostgreSQL URL.
    #[arg(
        id = "database-url",
        long = "database-url",
        env = "COUPOND_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/coupond"
    )]
    pub url: String,
    /// Maximum pooled PostgreSQL connections.
    #[arg(
        id = "database-pool-size",
        long = "database-pool-size",
        env = "COUPOND_DATABASE_POOL_SIZE",
        default_value_t = 8
    )]
    pub pool_size: usize,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redacted_url(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Kafka settings shared by the producer and the consumer.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated.
    #[arg(
        id = "kafka-brokers",
        long = "kafka-brokers",
        env = "COUPOND_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Topic carrying CouponIssued messages. Its dead-letter topic is this name plus ".dlq".
    #[arg(
        id = "kafka-topic",
        long = "kafka-topic",
        env = "COUPOND_KAFKA_TOPIC",
        default_value = "coupon-issued"
    )]
    pub topic: String,
    /// Consumer group of the finalizer.
    #[arg(
        id = "kafka-group",
        long = "kafka-group",
        env = "COUPOND_KAFKA_GROUP",
        default_value = "coupond-finalizer"
    )]
    pub group: String,
    /// Static group membership id of this process's finalizer (KIP-345), e.g.
    /// a pod name: a restarted instance takes over its partitions at once
    /// instead of waiting for the group to evict the dead one. Unique per process.
    #[arg(
        id = "kafka-instance-id",
        long = "kafka-instance-id",
        env = "COUPOND_KAFKA_INSTANCE_ID"
    )]
    pub instance_id: Option<String>,
    /// Create the topics at startup when missing, with this many partitions (0: don't).
    #[arg(
        id = "kafka-create-partitions",
        long = "kafka-create-partitions",
        env = "COUPOND_KAFKA_CREATE_PARTITIONS",
        default_value_t = 6
    )]
    pub create_partitions: i32,
    /// Replication factor of topics created at startup (3 on a production cluster).
    #[arg(
        id = "kafka-create-replication",
        long = "kafka-create-replication",
        env = "COUPOND_KAFKA_CREATE_REPLICATION",
        default_value_t = 1
    )]
    pub create_replication: i32,
    /// How long a message may take to be acknowledged before its publish fails (ms).
    #[arg(
        id = "kafka-delivery-timeout-ms",
        long = "kafka-delivery-timeout-ms",
        env = "COUPOND_KAFKA_DELIVERY_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub delivery_timeout_ms: u64,
    /// Producer linger (ms): how long the producer waits to fill a batch.
    #[arg(
        id = "kafka-linger-ms",
        long = "kafka-linger-ms",
        env = "COUPOND_KAFKA_LINGER_MS",
        default_value_t = 2
    )]
    pub linger_ms: u64,
    /// Producer compression codec (none, lz4, snappy).
    #[arg(
        id = "kafka-compression",
        long = "kafka-compression",
        env = "COUPOND_KAFKA_COMPRESSION",
        default_value = "lz4"
    )]
    pub compression: String,
    /// Any librdkafka property for every Kafka client coupond makes
    /// (producer, finalizer, admin), as KEY=VALUE; repeatable, and
    /// COUPOND_KAFKA_PROPERTIES takes several separated by ';'. For example
    /// security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512,
    /// sasl.username=..., sasl.password=..., ssl.ca.location=/etc/ca.pem.
    /// Values of secret properties never reach a log.
    #[arg(
        id = "kafka-property",
        long = "kafka-property",
        env = "COUPOND_KAFKA_PROPERTIES",
        value_delimiter = ';',
        value_parser = KafkaProperty::parse,
        hide_env_values = true
    )]
    pub properties: Vec<KafkaProperty>,
    /// A file of librdkafka properties, KEY=VALUE a line ('#' starts a
    /// comment), read at start; --kafka-property entries come after it.
    #[arg(
        id = "kafka-properties-file",
        long = "kafka-properties-file",
        env = "COUPOND_KAFKA_PROPERTIES_FILE"
    )]
    pub properties_file: Option<std::path::PathBuf>,
}

/// A librdkafka property passed through by the operator. Its Debug form
/// hides the value of anything secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    pub key: String,
    pub value: String,
}

/// Properties coupond sets itself because its guarantees rest on them (or
/// because a flag of its own says it): passing one is an error.
const RESERVED_KAFKA_PROPERTIES: [(&str, &str); 7] = [
    (
        "bootstrap.servers",
        "use --kafka-brokers (COUPOND_KAFKA_BROKERS)",
    ),
    ("group.id", "use --kafka-group (COUPOND_KAFKA_GROUP)"),
    ("enable.idempotence", "the producer is always idempotent"),
    (
        "acks",
        "every message waits for all in-sync replicas (acks=all)",
    ),
    (
        "enable.auto.commit",
        "offsets are committed only after PostgreSQL and Redis",
    ),
    (
        "isolation.level",
        "the finalizer reads uncommitted (no transactions are used)",
    ),
    (
        "transactional.id",
        "coupond's producers are not transactional",
    ),
];

impl KafkaProperty {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("kafka property {s:?} is not KEY=VALUE"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("kafka property {s:?} has no key"));
        }
        if let Some((_, why)) = RESERVED_KAFKA_PROPERTIES.iter().find(|(k, _)| *k == key) {
            return Err(format!("kafka property {key} is set by coupond: {why}"));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.trim().to_owned(),
        })
    }

    /// Passwords, secrets, private keys, JAAS and OAuth configurations.
    pub fn is_secret(&self) -> bool {
        let k = self.key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "jaas",
            "key.pem",
            "oauthbearer.config",
            "token",
        ]
        .iter()
        .any(|s| k.contains(s))
    }
}

impl std::fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.is_secret() {
            "[redacted]"
        } else {
            &self.value
        };
        write!(f, "{}={value}", self.key)
    }
}

impl KafkaSettings {
    /// The operator's properties: the file's, then the flags'.
    pub fn all_properties(&self) -> anyhow::Result<Vec<KafkaProperty>> {
        let mut out = Vec::new();
        if let Some(path) = &self.properties_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("kafka properties file {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                out.push(KafkaProperty::parse(line).map_err(|e| {
                    anyhow::anyhow!(
                        "kafka properties file {} line {}: {e}",
                        path.display(),
                        n + 1
                    )
                })?);
            }
        }
        out.extend(self.properties.iter().cloned());
        Ok(out)
    }

    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }
}

/// Finalizer (Kafka consumer) settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerSettings {
    /// Most messages finalized in one PostgreSQL transaction.
    #[arg(
        id = "consumer-batch-size",
        long = "consumer-batch-size",
        env = "COUPOND_CONSUMER_BATCH_SIZE",
        default_value_t = 2000
    )]
    pub batch_size: usize,
    /// Longest wait to fill a batch once its first message arrived (ms).
    #[arg(
        id = "consumer-batch-ms",
        long = "consumer-batch-ms",
        env = "COUPOND_CONSUMER_BATCH_MS",
        default_value_t = 20
    )]
    pub batch_ms: u64,
    /// Batches applied to PostgreSQL at once (each on its own connection)
    /// while the next one gathers; offsets are still committed in order.
    #[arg(
        id = "consumer-in-flight",
        long = "consumer-in-flight",
        env = "COUPOND_CONSUMER_IN_FLIGHT",
        default_value_t = 3
    )]
    pub in_flight: usize,
    /// Longest time the broker may hold a fetch open waiting for data (ms).
    #[arg(
        id = "consumer-fetch-wait-ms",
        long = "consumer-fetch-wait-ms",
        env = "COUPOND_CONSUMER_FETCH_WAIT_MS",
        default_value_t = 10
    )]
    pub fetch_wait_ms: u64,
}

/// Issuance settings.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueSettings {
    /// When ISSUED is answered: after Kafka's acknowledgement (ack) or right
    /// after Redis (async).
    #[arg(long, env = "COUPOND_DURABILITY", value_enum, default_value_t = Durability::Ack)]
    pub durability: Durability,
    /// Most users issued in one Redis script call.
    #[arg(
        id = "issue-batch-size",
        long = "issue-batch-size",
        env = "COUPOND_ISSUE_BATCH_SIZE",
        default_value_t = 256
    )]
    pub batch_size: usize,
    /// Script calls in flight at once (one batch gathers while others run).
    #[arg(
        id = "issue-workers",
        long = "issue-workers",
        env = "COUPOND_ISSUE_WORKERS",
        default_value_t = 4
    )]
    pub workers: usize,
    /// Items of one IssueStream being processed at once; beyond it the
    /// stream stops reading and HTTP/2 flow control pushes back.
    #[arg(
        id = "stream-in-flight",
        long = "stream-in-flight",
        env = "COUPOND_STREAM_IN_FLIGHT",
        default_value_t = 512
    )]
    pub stream_in_flight: usize,
    /// How long an issue batch whose Redis reply was lost or late is asked
    /// again (ms) before its callers are told the outcome is unknown
    /// (DEADLINE_EXCEEDED). The script is idempotent per user, so asking
    /// again is safe.
    #[arg(
        id = "issue-retry-ms",
        long = "issue-retry-ms",
        env = "COUPOND_ISSUE_RETRY_MS",
        default_value_t = 3000
    )]
    pub retry_ms: u64,
}

/// Sweeper settings.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepSettings {
    /// Republish issuances pending for longer than this (ms).
    #[arg(
        id = "sweep-age-ms",
        long = "sweep-age-ms",
        env = "COUPOND_SWEEP_AGE_MS",
        default_value_t = 5000
    )]
    pub age_ms: u64,
    /// While the finalizer is recording issuances of an event, wait this
    /// long (ms) instead: those still pending are most likely queued in
    /// Kafka, and republishing them would only lengthen the queue. Also the
    /// longest back-off between two republishes of one issuance.
    #[arg(
        id = "sweep-max-age-ms",
        long = "sweep-max-age-ms",
        env = "COUPOND_SWEEP_MAX_AGE_MS",
        default_value_t = 60_000
    )]
    pub max_age_ms: u64,
    /// Pause between sweeps (ms).
    #[arg(
        id = "sweep-interval-ms",
        long = "sweep-interval-ms",
        env = "COUPOND_SWEEP_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub interval_ms: u64,
    /// How long an event's Redis keys live after it has ended and nothing
    /// of it is pending (seconds). PostgreSQL keeps the record, and
    /// GetIssuance and GetEvent answer from it afterwards.
    #[arg(
        id = "retention-secs",
        long = "retention-secs",
        env = "COUPOND_RETENTION_SECS",
        default_value_t = 86_400
    )]
    pub retention_secs: u64,
}

/// Where Prometheus scrapes a `serve` or `consume` process.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsSettings {
    /// HTTP listener serving `GET /metrics` (Prometheus text format), or
    /// "off". Give `serve` and `consume` on one host different ports.
    #[arg(
        id = "metrics-listen",
        long = "metrics-listen",
        env = "COUPOND_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub listen: String,
}

impl MetricsSettings {
    /// The listener's address; `None` when off.
    pub fn addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.listen.trim() {
            "off" | "" => Ok(None),
            a => a.parse().map(Some).map_err(|e| {
                anyhow::anyhow!("COUPOND_METRICS_LISTEN / --metrics-listen {a:?}: {e} (an address like 127.0.0.1:9464, or off)")
            }),
        }
    }
}

/// Everything a coupond process needs to reach its backing services.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub kafka: KafkaSettings,
    #[command(flatten)]
    pub consumer: ConsumerSettings,
    #[command(flatten)]
    pub issue: IssueSettings,
    #[command(flatten)]
    pub sweep: SweepSettings,
    #[command(flatten)]
    pub preload: PreloadSettings,
    #[command(flatten)]
    pub metrics: MetricsSettings,
}

#[derive(clap::Parser)]
struct SettingsOnly {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// Defaults overridden by `COUPOND_*` environment variables (no flags):
    /// what tests and tools start from.
    pub fn from_env() -> anyhow::Result<Self> {
        use clap::Parser;
        Ok(SettingsOnly::try_parse_from(["coupond"])?.settings)
    }
}

/// Who may call which service.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthSettings {
    /// Bearer token CouponAdmin callers must present.
    #[arg(
        id = "admin-token",
        long = "admin-token",
        env = "COUPOND_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<SecretString>,
    /// File holding the admin token (first line).
    #[arg(
        id = "admin-token-file",
        long = "admin-token-file",
        env = "COUPOND_ADMIN_TOKEN_FILE"
    )]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Bearer token CouponIssuer callers must present. Unset: CouponIssuer
    /// is open, for deployments on a trusted internal network.
    #[arg(
        id = "issuer-token",
        long = "issuer-token",
        env = "COUPOND_ISSUER_TOKEN",
        hide_env_values = true
    )]
    pub issuer_token: Option<SecretString>,
    /// File holding the issuer token (first line).
    #[arg(
        id = "issuer-token-file",
        long = "issuer-token-file",
        env = "COUPOND_ISSUER_TOKEN_FILE"
    )]
    pub issuer_token_file: Option<std::path::PathBuf>,
    /// Development only: serve CouponAdmin without a token when none is configured.
    #[arg(
        id = "insecure-dev",
        long = "insecure-dev",
        env = "COUPOND_INSECURE_DEV"
    )]
    pub insecure_dev: bool,
}

fn read_token(
    inline: &Option<SecretString>,
    file: &Option<std::path::PathBuf>,
    what: &str,
) -> anyhow::Result<Option<SecretString>> {
    let token = match (inline, file) {
        (Some(_), Some(_)) => anyhow::bail!("give the {what} token inline or as a file, not both"),
        (Some(t), None) => Some(t.expose_secret().trim().to_owned()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading the {what} token file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    match token {
        Some(t) if t.len() < 16 => anyhow::bail!("the {what} token must be at least 16 characters"),
        t => Ok(t.map(SecretString::from)),
    }
}

impl AuthSettings {
    pub fn admin_token(&self) -> anyhow::Result<Option<SecretString>> {
        read_token(&self.admin_token, &self.admin_token_file, "admin")
    }

    pub fn issuer_token(&self) -> anyhow::Result<Option<SecretString>> {
        read_token(&self.issuer_token, &self.issuer_token_file, "issuer")
    }
}

/// `coupond serve` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeSettings {
    /// Address the gRPC server listens on.
    #[arg(long, env = "COUPOND_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Don't run the finalizer in this process (run `coupond consume` instead).
    #[arg(long, env = "COUPOND_NO_CONSUMER", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_consumer: bool,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub tls: TlsSettings,
}

/// Transport security. Without a certificate the server speaks plaintext
/// HTTP/2 (for a trusted network or behind a TLS-terminating proxy).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsSettings {
    /// PEM certificate chain; with --tls-key, the server speaks TLS only.
    #[arg(
        id = "tls-cert",
        long = "tls-cert",
        env = "COUPOND_TLS_CERT",
        requires = "tls-key"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of the certificate.
    #[arg(
        id = "tls-key",
        long = "tls-key",
        env = "COUPOND_TLS_KEY",
        requires = "tls-cert"
    )]
    pub key: Option<std::path::PathBuf>,
    /// PEM CA bundle: every client must present a certificate it signed (mTLS).
    #[arg(
        id = "tls-client-ca",
        long = "tls-client-ca",
        env = "COUPOND_TLS_CLIENT_CA",
        requires = "tls-cert"
    )]
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsSettings {
    /// The server's TLS configuration, if TLS is on.
    pub fn server_config(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |p: &std::path::PathBuf, what: &str| {
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("reading the TLS {what} {}: {e}", p.display()))
        };
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(
            read(cert, "certificate")?,
            read(key, "key")?,
        ));
        if let Some(ca) = &self.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(Some(cfg))
    }
}

/// Bounds on what one client can make the server hold.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitSettings {
    /// Largest request message accepted (bytes); larger ones get OUT_OF_RANGE.
    #[arg(id = "max-message-bytes", long = "max-message-bytes", env = "COUPOND_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams (calls) per connection.
    #[arg(
        id = "max-concurrent-streams",
        long = "max-concurrent-streams",
        env = "COUPOND_MAX_CONCURRENT_STREAMS",
        default_value_t = 4096
    )]
    pub max_concurrent_streams: u32,
    /// Longest a unary call may run when the client set no shorter deadline (ms).
    #[arg(
        id = "request-timeout-ms",
        long = "request-timeout-ms",
        env = "COUPOND_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub request_timeout_ms: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_concurrent_streams: 4096,
            request_timeout_ms: 30_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_properties_parse_refuse_reserved_keys_and_hide_secrets() {
        let p = KafkaProperty::parse(" security.protocol = SASL_SSL ").unwrap();
        assert_eq!(
            (p.key.as_str(), p.value.as_str()),
            ("security.protocol", "SASL_SSL")
        );
        assert!(KafkaProperty::parse("no-equals")
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!(KafkaProperty::parse("=x").is_err());
        let e = KafkaProperty::parse("acks=1").unwrap_err();
        assert!(e.contains("acks is set by coupond"), "{e}");
        for secret in [
            "sasl.password=hunter2",
            "ssl.key.password=hunter2",
            "sasl.jaas.config=hunter2",
        ] {
            let p = KafkaProperty::parse(secret).unwrap();
            assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
        }
        let plain = KafkaProperty::parse("sasl.username=coupond").unwrap();
        assert_eq!(format!("{plain:?}"), "sasl.username=coupond");
    }

    #[test]
    fn a_properties_file_comes_before_the_flags_and_names_bad_lines() {
        let dir = std::env::temp_dir().join(format!("coupond-kprops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("kafka.properties");
        std::fs::write(
            &f,
            "# cluster\nsecurity.protocol=SSL\n\nssl.ca.location=/ca.pem\n",
        )
        .unwrap();
        let mut s = Settings::from_env().unwrap().kafka;
        s.properties_file = Some(f.clone());
        s.properties = vec![KafkaProperty::parse("security.protocol=SASL_SSL").unwrap()];
        let all: Vec<String> = s
            .all_properties()
            .unwrap()
            .iter()
            .map(|p| format!("{p:?}"))
            .collect();
        assert_eq!(
            all,
            [
                "security.protocol=SSL",
                "ssl.ca.location=/ca.pem",
                "security.protocol=SASL_SSL"
            ]
        );
        std::fs::write(&f, "ok=1\nacks=0\n").unwrap();
        let e = s.all_properties().unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("acks"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_never_print() {
        assert_eq!(
            redacted_url("postgres://app:hunter2@db:5432/coupond"),
            "postgres://app:***@db:5432/coupond"
        );
        assert_eq!(redacted_url("redis://:pw@r:6379"), "redis://:***@r:6379");
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        let mut s = Settings::from_env().unwrap();
        s.database.url = "postgres://app:hunter2@db/coupond".into();
        s.redis.url = "redis://user:hunter3@r:6379".into();
        let auth = AuthSettings {
            admin_token: Some(SecretString::from("admin-secret-0123456789")),
            ..Default::default()
        };
        let printed = format!("{s:?} {auth:?}");
        for secret in ["hunter2", "hunter3", "admin-secret"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
    }
}
