//! Checks that the brokers answer (and accept coupond's credentials), and
//! creates the coupond topics when they are missing.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;

/// How long the brokers get to answer at startup.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps librdkafka's last error: an authentication or TLS failure is only
/// logged by librdkafka, while the request itself fails as a bare
/// "transport failure".
#[derive(Default)]
struct LastError(Mutex<Vec<String>>);

impl LastError {
    fn record(&self, reason: &str) {
        let mut seen = self.0.lock().expect("error lock");
        if !seen.iter().any(|r| r == reason) {
            seen.push(reason.to_owned());
        }
    }
}

impl ClientContext for LastError {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) {
            tracing::warn!(facility = fac, message, "kafka client");
            self.record(message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        self.record(reason);
    }
}

impl ProducerContext for LastError {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

impl LastError {
    /// `e` with every distinct reason librdkafka gave (the first one,
    /// e.g. "SASL authentication error: ...", is usually the cause).
    fn explain(&self, e: impl std::fmt::Display) -> anyhow::Error {
        let seen = self.0.lock().expect("error lock");
        if seen.is_empty() {
            anyhow::anyhow!("{e}")
        } else {
            anyhow::anyhow!("{e}: {}", seen.join("; "))
        }
    }
}

/// Asks the brokers for metadata with a producer of its own: polling it
/// serves librdkafka's error events, which carry the cause.
fn probe(config: &ClientConfig) -> anyhow::Result<()> {
    let producer: BaseProducer<LastError> = config.create_with_context(LastError::default())?;
    match producer.client().fetch_metadata(None, PROBE_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(e) => {
            producer.poll(Duration::from_millis(200));
            Err(producer.context().explain(e))
        }
    }
}

/// Asks the brokers for metadata (failing with librdkafka's reason, e.g.
/// "SASL authentication error", when they refuse us), then ensures `topic`
/// and `topic.dlq` exist with `create_partitions` partitions when created
/// here. An existing topic is left as it is.
pub async fn ensure(s: &KafkaSettings) -> anyhow::Result<()> {
    let config = super::client_config(s)?;
    tokio::task::spawn_blocking({
        let config = config.clone();
        move || probe(&config)
    })
    .await??;
    if s.create_partitions <= 0 {
        return Ok(());
    }
    let dlq = s.dlq_topic();
    let replication = || TopicReplication::Fixed(s.create_replication);
    let topics = [
        NewTopic::new(&s.topic, s.create_partitions, replication()),
        NewTopic::new(&dlq, s.create_partitions, replication()),
    ];
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let opts = AdminOptions::new().operation_timeout(Some(PROBE_TIMEOUT));
    let created = admin.create_topics(&topics, &opts).await?;
    for r in created {
        match r {
            Ok(t) => tracing::info!(topic = %t, partitions = s.create_partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}
