//! The idempotent, acks=all producer for `coupon-issued` and its DLQ.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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

impl PublishError {
    /// Whether the broker (or the client) will never take this message:
    /// too large, or malformed. Retrying it cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.source.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::InvalidRecord
                    | RDKafkaErrorCode::InvalidMessage
            )
        )
    }
}

/// Publishes CouponIssued messages; cheap to clone (one librdkafka producer).
///
/// An idempotent producer can end up unable to deliver for good (a fatal
/// error, or a broker that lost its producer state after a crash); only a
/// new producer instance recovers from that. So when publishing has failed
/// without a single success for `recreate_after`, or librdkafka reports a
/// fatal error, the producer is replaced. Nothing is lost by it: undelivered
/// issuances stay pending and the sweeper republishes them.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// The current producer and its generation.
    producer: RwLock<(u64, FutureProducer)>,
    /// When the current run of failures began (None: last publish succeeded).
    failing_since: Mutex<Option<Instant>>,
    recreate_after: Duration,
    topic: String,
    dlq_topic: String,
}

impl Publisher {
    pub fn new(s: &KafkaSettings, linger: Duration) -> anyhow::Result<Self> {
        let mut config = super::client_config(s)?;
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", linger.as_millis().to_string())
            .set("compression.type", &s.compression)
            .set(
                "message.timeout.ms",
                s.delivery_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", "1000000")
            .set("batch.num.messages", "10000");
        let producer: FutureProducer = config.create()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer: RwLock::new((0, producer)),
                failing_since: Mutex::new(None),
                recreate_after: s.delivery_timeout * 2,
                topic: s.topic.clone(),
                dlq_topic: s.dlq_topic(),
            }),
        })
    }

    fn current(&self) -> (u64, FutureProducer) {
        self.inner.producer.read().expect("producer lock").clone()
    }

    /// Records the outcome of a publish made with producer `generation`,
    /// and replaces that producer when it is beyond recovery.
    fn observe(&self, generation: u64, producer: &FutureProducer, err: Option<&KafkaError>) {
        let mut since = self.inner.failing_since.lock().expect("failure lock");
        let Some(err) = err else {
            *since = None;
            return;
        };
        let started = *since.get_or_insert_with(Instant::now);
        let fatal = producer.client().fatal_error();
        // The broker no longer knows this producer's id or sequence: the
        // instance cannot deliver on that partition again.
        let lost_state = matches!(
            err.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownProducerId | RDKafkaErrorCode::OutOfOrderSequenceNumber)
        );
        if fatal.is_none() && !lost_state && started.elapsed() < self.inner.recreate_after {
            return;
        }
        let mut slot = self.inner.producer.write().expect("producer lock");
        if slot.0 != generation {
            return; // someone already replaced it
        }
        match self.inner.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(
                    ?fatal,
                    error = %err,
                    failing_for_ms = started.elapsed().as_millis() as u64,
                    "kafka producer cannot deliver; replaced it with a new instance"
                );
                let old = std::mem::replace(&mut *slot, (generation + 1, fresh)).1;
                *since = None;
                // Dropping a producer waits for its queue; not on this thread.
                std::thread::spawn(move || drop(old));
            }
            Err(e) => tracing::error!(error = %e, "could not create a new kafka producer"),
        }
    }

    /// Publishes one issuance and waits for the broker's acknowledgement.
    /// Many calls may wait at once; librdkafka batches them.
    pub async fn publish(&self, record: &IssuanceRecord) -> Result<(), PublishError> {
        let key = message::key(record);
        let payload = message::encode(record);
        self.send(&self.inner.topic, &key, &payload, None).await
    }

    /// Puts a dead-lettered message back on `coupon-issued`, as it was.
    pub async fn replay(&self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), PublishError> {
        self.send(&self.inner.topic, key.unwrap_or_default(), payload, None)
            .await
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
        self.send(&self.inner.dlq_topic, key, payload, Some(headers))
            .await
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
        let (generation, producer) = self.current();
        // Waiting for queue space is bounded by the delivery timeout too.
        let r = producer.send(rec, Timeout::Never).await;
        self.observe(generation, &producer, r.as_ref().err().map(|(e, _)| e));
        r.map(|_| ()).map_err(|(source, _)| PublishError {
            topic: topic.to_owned(),
            source,
        })
    }

    /// Waits until every queued message is delivered or `timeout` passes.
    /// Blocking: call from a blocking context.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.current().1.flush(Timeout::After(timeout))?;
        Ok(())
    }
}
