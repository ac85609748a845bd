//! The idempotent, acks=all producer for `coupon-issued` and its DLQ.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::KafkaSettings;
use crate::domain::IssuanceRecord;
use crate::kafka::message;

#[derive(Debug, thiserror::Error)]
#[error("kafka publish to {topic}: {source}")]
pub struct PublishError {
    pub topic: String,
    #[source]
    pub source: rdkafka::error::KafkaError,
}

/// Publishes CouponIssued messages; cheap to clone (one librdkafka producer).
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    dlq_topic: String,
}

impl Publisher {
    pub fn new(s: &KafkaSettings) -> anyhow::Result<Self> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &s.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", s.linger_ms.to_string())
            .set("compression.type", &s.compression)
            .set("message.timeout.ms", s.delivery_timeout_ms.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("batch.num.messages", "10000")
            .create()?;
        Ok(Self {
            producer,
            topic: s.topic.clone(),
            dlq_topic: s.dlq_topic(),
        })
    }

    /// Publishes one issuance and waits for the broker's acknowledgement.
    /// Many calls may wait at once; librdkafka batches them.
    pub async fn publish(&self, record: &IssuanceRecord) -> Result<(), PublishError> {
        let key = message::key(record);
        let payload = message::encode(record);
        self.send(&self.topic, &key, &payload, None).await
    }

    /// Sends an undecodable or conflicting message to the dead-letter topic
    /// with the reason in a header.
    pub async fn dead_letter(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
    ) -> Result<(), PublishError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: "coupond-dlq-reason",
            value: Some(reason),
        });
        let key = key.unwrap_or_default();
        let topic = self.dlq_topic.clone();
        self.send(&topic, key, payload, Some(headers)).await
    }

    async fn send<K: rdkafka::message::ToBytes + ?Sized>(
        &self,
        topic: &str,
        key: &K,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), PublishError> {
        let mut rec = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        // Waiting for queue space is bounded by the delivery timeout too.
        self.producer
            .send(rec, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(source, _)| PublishError {
                topic: topic.to_owned(),
                source,
            })
    }

    /// Waits until every queued message is delivered or `timeout` passes.
    /// Blocking: call from a blocking context.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer.flush(Timeout::After(timeout))?;
        Ok(())
    }
}
