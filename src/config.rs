//! Settings as values: what the services, Kafka and the stores are given.
//! `cli::args` parses them once from flags, environment variables
//! (`COUPOND_*`) and a config file, in that order of precedence over the
//! defaults; durations arrive as `Duration`s. Nothing here knows the
//! command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// When an ISSUED answer is sent relative to Kafka's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Seed nodes of a Redis Cluster (URLs); empty: the single node at `url`.
    pub cluster: Vec<String>,
    pub pool_size: usize,
    /// Replicas that must confirm an issue batch's writes before its users
    /// are told ISSUED; `None`: 1 on a cluster, 0 on a single node.
    pub replica_acks: Option<u32>,
    /// Longest wait for those confirmations.
    pub replica_timeout: Duration,
    /// Longest wait for a reply before a call fails (and may have run).
    pub response_timeout: Duration,
    /// Longest wait for a new connection.
    pub connect_timeout: Duration,
    /// For `rediss://` nodes: whom to trust and what to present.
    pub tls: RedisTls,
}

/// TLS to Redis (with `rediss://` URLs): a CA to trust instead of the
/// system's, and a client certificate for a Redis that requires one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field("cluster", &self.redacted_nodes())
            .field("pool_size", &self.pool_size)
            .field("replica_acks", &self.replica_acks())
            .field("replica_timeout", &self.replica_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisSettings {
    /// Where Redis is, for messages: the URL, or the cluster's seed nodes
    /// (passwords redacted).
    pub fn location(&self) -> String {
        match self.cluster.is_empty() {
            true => redacted_url(&self.url),
            false => format!("cluster {}", self.redacted_nodes().join(",")),
        }
    }

    fn redacted_nodes(&self) -> Vec<String> {
        self.cluster.iter().map(|u| redacted_url(u)).collect()
    }

    /// Replicas an issue batch waits for: a cluster's masters have replicas
    /// (a failover must not lose an answered issuance), a single node
    /// usually none.
    pub fn replica_acks(&self) -> u32 {
        self.replica_acks
            .unwrap_or(if self.cluster.is_empty() { 0 } else { 1 })
    }
}

/// The URL with its password (if any, as `user:password@` or as a
/// `password=` query parameter) replaced by `***`: what logs and error
/// messages show of a connection URL.
pub fn redacted_url(url: &str) -> String {
    if !url.contains("://") {
        return redacted_key_values(url);
    }
    // The query starts after the credentials, which may hold a '?'.
    let from = url.rfind('@').unwrap_or(0);
    let (base, query) = match url[from..].find('?').map(|i| from + i) {
        Some(at) => (&url[..at], Some(&url[at + 1..])),
        None => (url, None),
    };
    let mut out = redacted_userinfo(base);
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

/// A libpq key=value string (`host=db password=x`) with its password hidden.
fn redacted_key_values(s: &str) -> String {
    s.split_whitespace()
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn redacted_userinfo(url: &str) -> String {
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
#[derive(Debug, Clone)]
pub struct PreloadSettings {
    /// How long a server holds a job without renewing it.
    pub lease: Duration,
    /// Coupons generated, written and staged per step of a job.
    pub chunk: u32,
    /// How long one Redis step of a job is retried before the job fails.
    pub step_budget: Duration,
}

/// PostgreSQL connection settings.
#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: String,
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
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Topic carrying CouponIssued messages; the DLQ is this plus ".dlq".
    pub topic: String,
    /// Consumer group of the finalizer.
    pub group: String,
    /// Static group membership id of this process's finalizer (KIP-345).
    pub instance_id: Option<String>,
    /// Partitions of topics created at startup (0: create none).
    pub create_partitions: i32,
    pub create_replication: i32,
    /// How long a message may take to be acknowledged before its publish fails.
    pub delivery_timeout: Duration,
    /// How long the producer waits to fill a batch; None: the durability
    /// mode's default (`producer_linger`).
    pub linger: Option<Duration>,
    /// Producer compression codec (none, lz4, snappy).
    pub compression: String,
    /// librdkafka properties for every Kafka client coupond makes.
    pub properties: Vec<KafkaProperty>,
    /// A file of librdkafka properties, applied before `properties`.
    pub properties_file: Option<PathBuf>,
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

    /// One entry of a ';'-separated list (`COUPOND_KAFKA_PROPERTIES`): a
    /// blank one is none, so an empty variable or a trailing ';' sets
    /// nothing rather than refusing to start.
    pub fn parse_listed(s: &str) -> Result<Option<Self>, String> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        Self::parse(s).map(Some)
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
    /// The producer's linger: the one set, or the mode's default. In ack
    /// mode every ISSUED answer waits for its batch, so the linger adds to
    /// each answer's latency; in async mode nothing waits, and a longer
    /// linger makes fewer, bigger batches for the broker (BENCHMARKS.md,
    /// "Producer linger": at 10 ms the broker spent 15.8 µs per coupon
    /// against 19.7 at 2 ms).
    pub fn producer_linger(&self, durability: Durability) -> Duration {
        self.linger.unwrap_or(match durability {
            Durability::Ack => Duration::from_millis(2),
            Durability::Async => Duration::from_millis(10),
        })
    }

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
}

/// Finalizer (Kafka consumer) settings.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Most messages finalized in one PostgreSQL transaction.
    pub batch_size: usize,
    /// Longest wait to fill a batch once its first message arrived.
    pub batch_wait: Duration,
    /// Batches applied to PostgreSQL at once.
    pub in_flight: usize,
    /// Longest time the broker may hold a fetch open waiting for data.
    pub fetch_wait: Duration,
    /// Bytes the broker gathers before it answers a fetch early.
    pub fetch_min_bytes: u32,
}

/// Issuance settings.
#[derive(Debug, Clone)]
pub struct IssueSettings {
    pub durability: Durability,
    /// Most users issued in one Redis script call.
    pub batch_size: usize,
    /// Script calls in flight at once.
    pub workers: usize,
    /// Items of one IssueStream being processed at once.
    pub stream_in_flight: usize,
    /// How long an issue batch whose Redis reply was lost is asked again.
    pub retry: Duration,
}

/// Sweeper settings.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Republish issuances pending for longer than this.
    pub age: Duration,
    /// The age instead while the finalizer records the event; the longest
    /// back-off between two republishes of one issuance.
    pub max_age: Duration,
    /// Pause between sweeps.
    pub interval: Duration,
    /// How long a settled event's Redis keys live.
    pub retention: Duration,
}

/// Where Prometheus scrapes a `serve` or `consume` process.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// An address, or "off".
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

/// Logs and traces.
#[derive(Clone, Default)]
pub struct TelemetrySettings {
    /// One JSON object per log line instead of text.
    pub json: bool,
    /// OTLP/gRPC collector for the spans (none: no export).
    pub otlp_endpoint: Option<String>,
    /// Which spans are exported (an EnvFilter).
    pub otlp_filter: String,
}

impl std::fmt::Debug for TelemetrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetrySettings")
            .field("json", &self.json)
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_deref().map(redacted_url),
            )
            .field("otlp_filter", &self.otlp_filter)
            .finish()
    }
}

/// Everything a coupond process needs to reach its backing services.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: RedisSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub consumer: ConsumerSettings,
    pub issue: IssueSettings,
    pub sweep: SweepSettings,
    pub preload: PreloadSettings,
    pub metrics: MetricsSettings,
}

/// Who may call which service.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub admin_token: Option<SecretString>,
    pub admin_token_file: Option<PathBuf>,
    pub issuer_token: Option<SecretString>,
    pub issuer_token_file: Option<PathBuf>,
    /// Development only: CouponAdmin without a token when none is configured.
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
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    /// The finalizer does not run in this process.
    pub no_consumer: bool,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub tls: TlsSettings,
    /// Browser origins allowed to call the server cross-origin (gRPC-Web
    /// with CORS); empty: none.
    pub cors: CorsOrigins,
}

/// The origins a browser may call the server from (CORS). gRPC-Web itself
/// is always accepted; only cross-origin calls from a browser need this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No cross-origin call (the default): no CORS headers are sent.
    #[default]
    None,
    /// Any origin (`*`).
    Any,
    /// These origins exactly (`scheme://host[:port]`).
    List(Vec<String>),
}

impl std::str::FromStr for CorsOrigins {
    type Err = String;

    /// A comma-separated list of origins, `*` for any, empty for none.
    fn from_str(s: &str) -> Result<Self, String> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        match items[..] {
            [] => Ok(Self::None),
            ["*"] => Ok(Self::Any),
            _ => items
                .iter()
                .map(|o| origin(o).map(str::to_owned))
                .collect::<Result<_, _>>()
                .map(Self::List),
        }
    }
}

/// `o` if it is an origin: http or https, a host, an optional port, no
/// path (what a browser sends in `Origin`).
fn origin(o: &str) -> Result<&str, String> {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("{o:?} is not an origin: expected http(s)://host[:port], or * for any")
        })?;
    let host_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    match host_ok {
        true => Ok(o),
        false => Err(format!(
            "{o:?} is not an origin: expected http(s)://host[:port] with no path, or * for any"
        )),
    }
}

/// Transport security: TLS with a certificate, mTLS with a client CA.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
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
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    /// Longest a unary call may run when the client set no shorter deadline.
    pub request_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_concurrent_streams: 4096,
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_a_list_any_or_none_and_bad_ones_are_named() {
        assert_eq!("".parse(), Ok(CorsOrigins::None));
        assert_eq!(" * ".parse(), Ok(CorsOrigins::Any));
        assert_eq!(
            "https://a.example, http://localhost:3000".parse(),
            Ok(CorsOrigins::List(vec![
                "https://a.example".into(),
                "http://localhost:3000".into()
            ]))
        );
        let bad = "https://a.example/app".parse::<CorsOrigins>().unwrap_err();
        assert!(
            bad.contains("\"https://a.example/app\" is not an origin"),
            "{bad}"
        );
        let bad = "a.example".parse::<CorsOrigins>().unwrap_err();
        assert!(bad.contains("http(s)://host"), "{bad}");
    }

    #[test]
    fn the_linger_is_the_one_set_or_the_durability_modes_own() {
        let s = |linger| KafkaSettings {
            brokers: String::new(),
            topic: String::new(),
            group: String::new(),
            instance_id: None,
            create_partitions: 0,
            create_replication: 0,
            delivery_timeout: Duration::ZERO,
            linger,
            compression: String::new(),
            properties: Vec::new(),
            properties_file: None,
        };
        let ms = Duration::from_millis;
        assert_eq!(s(None).producer_linger(Durability::Ack), ms(2));
        assert_eq!(s(None).producer_linger(Durability::Async), ms(10));
        assert_eq!(s(Some(ms(7))).producer_linger(Durability::Ack), ms(7));
        assert_eq!(s(Some(ms(0))).producer_linger(Durability::Async), ms(0));
    }

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
}
