//! Kafka: the `coupon-issued` producer, its message codec and topic setup.
//! Nothing here is specific to a broker implementation.

pub mod backlog;
pub mod dlq;
pub mod message;
pub mod producer;
pub mod topics;

pub use producer::Publisher;

use rdkafka::config::ClientConfig;

use crate::config::KafkaSettings;

/// A client configuration with the brokers and the operator's librdkafka
/// properties (TLS, SASL, ...); each client adds its own settings on top.
pub fn client_config(s: &KafkaSettings) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers);
    // Errors only, but always: an authentication or TLS failure is only
    // ever told through librdkafka's log.
    c.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
    for p in s.all_properties()? {
        c.set(&p.key, &p.value);
    }
    Ok(c)
}
