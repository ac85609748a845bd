//! The command line's settings: every setting a flag (given after the
//! subcommand that uses it) and a `COUPOND_*` environment variable, with
//! its default; `cli::file` adds a TOML config file between the
//! environment and the defaults. Each group turns into its plain value in
//! `config` once, durations parsed here (`500ms`, `15s`, `1d`; a bare
//! number is milliseconds, as the old `_MS` settings were).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::config::{
    AuthSettings, ConsumerSettings, DatabaseSettings, Durability, IssueSettings, KafkaProperty,
    KafkaSettings, LimitSettings, MetricsSettings, PreloadSettings, RedisSettings, ServeSettings,
    Settings, SweepSettings, TelemetrySettings, TlsSettings,
};

/// A duration: `500ms`, `15s`, `2m`, `1h`, `1d` (humantime), or a bare
/// number of milliseconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms or 15s: {e}"))
}

fn durability(s: &str) -> Result<Durability, String> {
    match s {
        "ack" => Ok(Durability::Ack),
        "async" => Ok(Durability::Async),
        _ => Err(format!("{s:?}: ack or async")),
    }
}

/// Redis connection settings.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisArgs {
    /// Redis URL.
    #[arg(
        id = "redis-url",
        long = "redis-url",
        env = "COUPOND_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
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
    /// Longest wait for a Redis reply. A call that times out may still have
    /// run: every caller treats it so.
    #[arg(id = "redis-response-timeout", long = "redis-response-timeout", alias = "redis-response-timeout-ms", env = "COUPOND_REDIS_RESPONSE_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub response_timeout: Duration,
    /// Longest wait for a new Redis connection.
    #[arg(id = "redis-connect-timeout", long = "redis-connect-timeout", alias = "redis-connect-timeout-ms", env = "COUPOND_REDIS_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Seed nodes of a Redis Cluster, separated by commas (redis://host:port
    /// or host:port): every Redis access then goes through a cluster
    /// client, and --redis-url is not used.
    #[arg(
        id = "redis-cluster",
        long = "redis-cluster",
        env = "COUPOND_REDIS_CLUSTER",
        hide_env_values = true
    )]
    pub cluster: Option<String>,
    /// Replicas that must confirm an issue batch's writes (WAIT) before its
    /// users are told ISSUED, so a failover cannot hand their codes out
    /// again [default: 1 with --redis-cluster, else 0].
    #[arg(
        id = "redis-replica-acks",
        long = "redis-replica-acks",
        env = "COUPOND_REDIS_REPLICA_ACKS"
    )]
    pub replica_acks: Option<u32>,
    /// Longest wait for those confirmations; past it the batch is asked
    /// again, and its users hear DEADLINE_EXCEEDED (outcome unknown) if the
    /// replicas stay behind.
    #[arg(id = "redis-replica-timeout", long = "redis-replica-timeout", env = "COUPOND_REDIS_REPLICA_TIMEOUT", default_value = "250ms", value_parser = duration)]
    pub replica_timeout: Duration,
    /// CA certificate (PEM) to trust for rediss:// nodes instead of the
    /// system's.
    #[arg(
        id = "redis-tls-ca",
        long = "redis-tls-ca",
        env = "COUPOND_REDIS_TLS_CA"
    )]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM) for a Redis that requires one, with
    /// --redis-tls-key.
    #[arg(
        id = "redis-tls-cert",
        long = "redis-tls-cert",
        env = "COUPOND_REDIS_TLS_CERT",
        requires = "redis-tls-key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        id = "redis-tls-key",
        long = "redis-tls-key",
        env = "COUPOND_REDIS_TLS_KEY",
        requires = "redis-tls-cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

/// Seed nodes as URLs: separated by commas, semicolons (a file's list) or
/// spaces; a bare host:port gets `redis://`.
fn cluster_nodes(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default()
        .split([',', ';', ' '])
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| match n.contains("://") {
            true => n.to_owned(),
            false => format!("redis://{n}"),
        })
        .collect()
}

impl From<RedisArgs> for RedisSettings {
    fn from(a: RedisArgs) -> Self {
        Self {
            cluster: cluster_nodes(a.cluster.as_deref()),
            url: a.url,
            pool_size: a.pool_size,
            response_timeout: a.response_timeout,
            connect_timeout: a.connect_timeout,
            replica_acks: a.replica_acks,
            replica_timeout: a.replica_timeout,
            tls: crate::config::RedisTls {
                ca: a.tls_ca,
                cert: a.tls_cert,
                key: a.tls_key,
            },
        }
    }
}

/// PostgreSQL connection settings.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "PostgreSQL")]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(
        id = "database-url",
        long = "database-url",
        env = "COUPOND_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/coupond",
        hide_env_values = true
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

impl From<DatabaseArgs> for DatabaseSettings {
    fn from(a: DatabaseArgs) -> Self {
        Self {
            url: a.url,
            pool_size: a.pool_size,
        }
    }
}

/// Kafka settings shared by the producer and the consumer.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Bootstrap servers, comma separated.
    #[arg(
        id = "kafka-brokers",
        long = "kafka-brokers",
        env = "COUPOND_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,
    /// Topic carrying CouponIssued messages. Its dead-letter topic is this name plus ".dlq".
    #[arg(
        id = "kafka-topic",
        long = "kafka-topic",
        env = "COUPOND_KAFKA_TOPIC",
        default_value = "coupon-issued",
        global = true
    )]
    pub topic: String,
    /// Consumer group of the finalizer.
    #[arg(
        id = "kafka-group",
        long = "kafka-group",
        env = "COUPOND_KAFKA_GROUP",
        default_value = "coupond-finalizer",
        global = true
    )]
    pub group: String,
    /// Static group membership id of this process's finalizer (KIP-345), e.g.
    /// a pod name: a restarted instance takes over its partitions at once
    /// instead of waiting for the group to evict the dead one. Unique per process.
    #[arg(
        id = "kafka-instance-id",
        long = "kafka-instance-id",
        env = "COUPOND_KAFKA_INSTANCE_ID",
        global = true
    )]
    pub instance_id: Option<String>,
    /// Create the topics at startup when missing, with this many partitions (0: don't).
    #[arg(
        id = "kafka-create-partitions",
        long = "kafka-create-partitions",
        env = "COUPOND_KAFKA_CREATE_PARTITIONS",
        default_value_t = 6,
        global = true
    )]
    pub create_partitions: i32,
    /// Replication factor of topics created at startup (3 on a production cluster).
    #[arg(
        id = "kafka-create-replication",
        long = "kafka-create-replication",
        env = "COUPOND_KAFKA_CREATE_REPLICATION",
        default_value_t = 1,
        global = true
    )]
    pub create_replication: i32,
    /// How long a message may take to be acknowledged before its publish fails.
    #[arg(id = "kafka-delivery-timeout", long = "kafka-delivery-timeout", alias = "kafka-delivery-timeout-ms", env = "COUPOND_KAFKA_DELIVERY_TIMEOUT", default_value = "5s", value_parser = duration, global = true)]
    pub delivery_timeout: Duration,
    /// Producer linger: how long the producer waits to fill a batch.
    /// [default: 2ms with --durability ack, whose answers wait for it;
    /// 10ms with async, where nothing waits and bigger batches spare the
    /// broker]
    #[arg(id = "kafka-linger", long = "kafka-linger", alias = "kafka-linger-ms", env = "COUPOND_KAFKA_LINGER", value_parser = duration, global = true)]
    pub linger: Option<Duration>,
    /// Producer compression codec (none, lz4, snappy).
    #[arg(
        id = "kafka-compression",
        long = "kafka-compression",
        env = "COUPOND_KAFKA_COMPRESSION",
        default_value = "lz4",
        global = true
    )]
    pub compression: String,
    /// Any librdkafka property for every Kafka client coupond makes
    /// (producer, finalizer, admin), as KEY=VALUE; repeatable, and
    /// COUPOND_KAFKA_PROPERTIES takes several separated by ';'. For example
    /// security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512,
    /// sasl.username=..., sasl.password=..., ssl.ca.location=/etc/ca.pem.
    /// Values of secret properties never reach a log.
    #[arg(id = "kafka-property", long = "kafka-property", env = "COUPOND_KAFKA_PROPERTIES", value_delimiter = ';', value_parser = KafkaProperty::parse_listed, hide_env_values = true, global = true)]
    pub properties: Vec<Option<KafkaProperty>>,
    /// A file of librdkafka properties, KEY=VALUE a line ('#' starts a
    /// comment), read at start; --kafka-property entries come after it.
    #[arg(
        id = "kafka-properties-file",
        long = "kafka-properties-file",
        env = "COUPOND_KAFKA_PROPERTIES_FILE",
        global = true
    )]
    pub properties_file: Option<PathBuf>,
}

impl From<KafkaArgs> for KafkaSettings {
    fn from(a: KafkaArgs) -> Self {
        Self {
            brokers: a.brokers,
            topic: a.topic,
            group: a.group,
            instance_id: a.instance_id,
            create_partitions: a.create_partitions,
            create_replication: a.create_replication,
            delivery_timeout: a.delivery_timeout,
            linger: a.linger,
            compression: a.compression,
            properties: a.properties.into_iter().flatten().collect(),
            properties_file: a.properties_file,
        }
    }
}

/// Finalizer (Kafka consumer) settings.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Finalizer")]
pub struct ConsumerArgs {
    /// Most messages finalized in one PostgreSQL transaction.
    #[arg(
        id = "consumer-batch-size",
        long = "consumer-batch-size",
        env = "COUPOND_CONSUMER_BATCH_SIZE",
        default_value_t = 2000
    )]
    pub batch_size: usize,
    /// Longest wait to fill a batch once its first message arrived.
    #[arg(id = "consumer-batch-wait", long = "consumer-batch-wait", alias = "consumer-batch-ms", env = "COUPOND_CONSUMER_BATCH_WAIT", default_value = "20ms", value_parser = duration)]
    pub batch_wait: Duration,
    /// Batches applied to PostgreSQL at once (each on its own connection)
    /// while the next one gathers; offsets are still committed in order.
    #[arg(
        id = "consumer-in-flight",
        long = "consumer-in-flight",
        env = "COUPOND_CONSUMER_IN_FLIGHT",
        default_value_t = 3
    )]
    pub in_flight: usize,
    /// Longest time the broker may hold a fetch open waiting for data.
    #[arg(id = "consumer-fetch-wait", long = "consumer-fetch-wait", alias = "consumer-fetch-wait-ms", env = "COUPOND_CONSUMER_FETCH_WAIT", default_value = "10ms", value_parser = duration)]
    pub fetch_wait: Duration,
    /// Bytes the broker gathers before it answers a fetch (or the fetch
    /// wait passes): one fetch per few hundred messages rather than one per
    /// produce request, which the broker pays for at low load.
    #[arg(
        id = "consumer-fetch-min-bytes",
        long = "consumer-fetch-min-bytes",
        env = "COUPOND_CONSUMER_FETCH_MIN_BYTES",
        default_value_t = 65536,
        value_parser = clap::value_parser!(u32).range(1..=100_000_000)
    )]
    pub fetch_min_bytes: u32,
}

impl From<ConsumerArgs> for ConsumerSettings {
    fn from(a: ConsumerArgs) -> Self {
        Self {
            batch_size: a.batch_size,
            batch_wait: a.batch_wait,
            in_flight: a.in_flight,
            fetch_wait: a.fetch_wait,
            fetch_min_bytes: a.fetch_min_bytes,
        }
    }
}

/// Issuance settings.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Issuance")]
pub struct IssueArgs {
    /// When ISSUED is answered: after Kafka's acknowledgement (ack) or right
    /// after Redis (async).
    #[arg(id = "durability", long = "durability", env = "COUPOND_DURABILITY", default_value = "ack", value_parser = durability)]
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
    /// again before its callers are told the outcome is unknown
    /// (DEADLINE_EXCEEDED). The script is idempotent per user, so asking
    /// again is safe.
    #[arg(id = "issue-retry", long = "issue-retry", alias = "issue-retry-ms", env = "COUPOND_ISSUE_RETRY", default_value = "3s", value_parser = duration)]
    pub retry: Duration,
}

impl From<IssueArgs> for IssueSettings {
    fn from(a: IssueArgs) -> Self {
        Self {
            durability: a.durability,
            batch_size: a.batch_size,
            workers: a.workers,
            stream_in_flight: a.stream_in_flight,
            retry: a.retry,
        }
    }
}

/// Sweeper and retention settings.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Sweeper and retention")]
pub struct SweepArgs {
    /// Republish issuances pending for longer than this.
    #[arg(id = "sweep-age", long = "sweep-age", alias = "sweep-age-ms", env = "COUPOND_SWEEP_AGE", default_value = "5s", value_parser = duration)]
    pub age: Duration,
    /// While the finalizer is recording issuances of an event, wait this
    /// long instead: those still pending are most likely queued in Kafka,
    /// and republishing them would only lengthen the queue. Also the
    /// longest back-off between two republishes of one issuance.
    #[arg(id = "sweep-max-age", long = "sweep-max-age", alias = "sweep-max-age-ms", env = "COUPOND_SWEEP_MAX_AGE", default_value = "60s", value_parser = duration)]
    pub max_age: Duration,
    /// Pause between sweeps.
    #[arg(id = "sweep-interval", long = "sweep-interval", alias = "sweep-interval-ms", env = "COUPOND_SWEEP_INTERVAL", default_value = "1s", value_parser = duration)]
    pub interval: Duration,
    /// How long an event's Redis keys live after it has ended and nothing
    /// of it is pending. PostgreSQL keeps the record, and Issue, GetIssuance
    /// and GetEvent answer from it afterwards.
    #[arg(id = "retention", long = "retention", env = "COUPOND_RETENTION", default_value = "1d", value_parser = duration)]
    pub retention: Duration,
}

impl From<SweepArgs> for SweepSettings {
    fn from(a: SweepArgs) -> Self {
        Self {
            age: a.age,
            max_age: a.max_age,
            interval: a.interval,
            retention: a.retention,
        }
    }
}

/// How preload jobs run.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Preload jobs")]
pub struct PreloadArgs {
    /// How long a server holds a preload job without renewing it; a job
    /// whose server died is taken over (by any server) once this passed.
    #[arg(id = "preload-lease", long = "preload-lease", alias = "preload-lease-ms", env = "COUPOND_PRELOAD_LEASE", default_value = "15s", value_parser = duration)]
    pub lease: Duration,
    /// Coupons generated, written and staged per step of a job: what bounds
    /// the memory a job holds (a few chunks at a time).
    #[arg(id = "preload-chunk", long = "preload-chunk", env = "COUPOND_PRELOAD_CHUNK", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub chunk: u32,
    /// How long one idempotent Redis step of a job (claim, stage a chunk) is
    /// retried before the job counts as failed: long enough to ride out a
    /// stalled or restarting Redis.
    #[arg(id = "preload-step-budget", long = "preload-step-budget", alias = "preload-step-budget-ms", env = "COUPOND_PRELOAD_STEP_BUDGET", default_value = "60s", value_parser = duration)]
    pub step_budget: Duration,
}

impl From<PreloadArgs> for PreloadSettings {
    fn from(a: PreloadArgs) -> Self {
        Self {
            lease: a.lease,
            chunk: a.chunk,
            step_budget: a.step_budget,
        }
    }
}

/// Where Prometheus scrapes a `serve` or `consume` process.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Metrics")]
pub struct MetricsArgs {
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

/// Logs and traces (every command).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logs and traces")]
pub struct TelemetryArgs {
    /// Log format: text, or json (one object per line, with the current
    /// span's fields).
    #[arg(id = "log-format", long = "log-format", env = "COUPOND_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], ignore_case = true, global = true)]
    pub log_format: String,
    /// OTLP/gRPC collector for the spans, e.g. http://127.0.0.1:4317
    /// (unset: no export).
    #[arg(
        id = "otlp-endpoint",
        long = "otlp-endpoint",
        env = "COUPOND_OTLP_ENDPOINT",
        global = true
    )]
    pub otlp_endpoint: Option<String>,
    /// Which spans are exported, apart from the log filter (RUST_LOG).
    #[arg(
        id = "otlp-filter",
        long = "otlp-filter",
        env = "COUPOND_OTLP_FILTER",
        default_value = "coupond=info",
        global = true
    )]
    pub otlp_filter: String,
}

impl From<TelemetryArgs> for TelemetrySettings {
    fn from(a: TelemetryArgs) -> Self {
        Self {
            json: a.log_format.eq_ignore_ascii_case("json"),
            otlp_endpoint: a.otlp_endpoint.filter(|e| !e.trim().is_empty()),
            otlp_filter: a.otlp_filter,
        }
    }
}

/// Everything a process that serves or finalizes needs.
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub issue: IssueArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
    #[command(flatten)]
    pub preload: PreloadArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

impl From<SettingsArgs> for Settings {
    fn from(a: SettingsArgs) -> Self {
        Self {
            redis: a.redis.into(),
            database: a.database.into(),
            kafka: a.kafka.into(),
            consumer: a.consumer.into(),
            issue: a.issue.into(),
            sweep: a.sweep.into(),
            preload: a.preload.into(),
            metrics: MetricsSettings {
                listen: a.metrics.listen,
            },
        }
    }
}

#[derive(clap::Parser)]
struct SettingsOnly {
    #[command(flatten)]
    settings: SettingsArgs,
}

/// The defaults overridden by `COUPOND_*` environment variables (no flags):
/// what tests and tools start from.
pub fn settings_from_env() -> anyhow::Result<Settings> {
    use clap::Parser;
    super::accept_old_names();
    Ok(SettingsOnly::try_parse_from(["coupond"])?.settings.into())
}

/// Who may call which service.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Access")]
pub struct AuthArgs {
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
    pub admin_token_file: Option<PathBuf>,
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
    pub issuer_token_file: Option<PathBuf>,
    /// Development only: serve CouponAdmin without a token when none is configured.
    #[arg(
        id = "insecure-dev",
        long = "insecure-dev",
        env = "COUPOND_INSECURE_DEV"
    )]
    pub insecure_dev: bool,
}

/// Transport security. Without a certificate the server speaks plaintext
/// HTTP/2 (for a trusted network or behind a TLS-terminating proxy).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// PEM certificate chain; with --tls-key, the server speaks TLS only.
    #[arg(
        id = "tls-cert",
        long = "tls-cert",
        env = "COUPOND_TLS_CERT",
        requires = "tls-key"
    )]
    pub cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(
        id = "tls-key",
        long = "tls-key",
        env = "COUPOND_TLS_KEY",
        requires = "tls-cert"
    )]
    pub key: Option<PathBuf>,
    /// PEM CA bundle: every client must present a certificate it signed (mTLS).
    #[arg(
        id = "tls-client-ca",
        long = "tls-client-ca",
        env = "COUPOND_TLS_CLIENT_CA",
        requires = "tls-cert"
    )]
    pub client_ca: Option<PathBuf>,
}

/// Bounds on what one client can make the server hold.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
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
    /// Longest a unary call may run when the client set no shorter deadline.
    #[arg(id = "request-timeout", long = "request-timeout", alias = "request-timeout-ms", env = "COUPOND_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub request_timeout: Duration,
}

/// `coupond serve`'s own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "COUPOND_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Don't run the finalizer in this process (run `coupond consume` instead).
    #[arg(long, env = "COUPOND_NO_CONSUMER", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_consumer: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Browser origins allowed to call cross-origin through gRPC-Web
    /// (CORS): comma-separated `https://host[:port]`, or `*` for any.
    /// Unset: none (gRPC-Web from the same origin, or from a non-browser
    /// client, needs nothing).
    #[arg(
        long = "grpc-web-origins",
        env = "COUPOND_GRPC_WEB_ORIGINS",
        default_value = ""
    )]
    pub grpc_web_origins: crate::config::CorsOrigins,
}

impl From<ServeArgs> for ServeSettings {
    fn from(a: ServeArgs) -> Self {
        Self {
            listen: a.listen,
            no_consumer: a.no_consumer,
            auth: AuthSettings {
                admin_token: a.auth.admin_token,
                admin_token_file: a.auth.admin_token_file,
                issuer_token: a.auth.issuer_token,
                issuer_token_file: a.auth.issuer_token_file,
                insecure_dev: a.auth.insecure_dev,
            },
            limits: LimitSettings {
                max_message_bytes: a.limits.max_message_bytes,
                max_concurrent_streams: a.limits.max_concurrent_streams,
                request_timeout: a.limits.request_timeout,
            },
            tls: TlsSettings {
                cert: a.tls.cert,
                key: a.tls.key,
                client_ca: a.tls.client_ca,
            },
            cors: a.grpc_web_origins,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them_and_bare_numbers_as_milliseconds() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("250"), Ok(Duration::from_millis(250)));
        assert!(duration("soon").unwrap_err().contains("500ms"));
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
        let mut s = settings_from_env().unwrap().kafka;
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

    #[test]
    fn passwords_and_tokens_never_print() {
        use crate::config::redacted_url;
        assert_eq!(
            redacted_url("postgres://app:hunter2@db:5432/coupond"),
            "postgres://app:***@db:5432/coupond"
        );
        assert_eq!(redacted_url("redis://:pw@r:6379"), "redis://:***@r:6379");
        assert_eq!(
            redacted_url("postgres://app:pa?ss@db/c?sslmode=require&password=x"),
            "postgres://app:***@db/c?sslmode=require&password=***"
        );
        assert_eq!(
            redacted_url("host=db password=hunter2 sslmode=require"),
            "host=db password=*** sslmode=require"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        let mut s = settings_from_env().unwrap();
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
