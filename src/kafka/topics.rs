//! Creates the coupond topics when they are missing.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSettings;

/// Ensures `topic` and `topic.dlq` exist, with `create_partitions`
/// partitions when created here. An existing topic is left as it is.
pub async fn ensure(s: &KafkaSettings) -> anyhow::Result<()> {
    if s.create_partitions <= 0 {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .create()?;
    let dlq = s.dlq_topic();
    let topics = [
        NewTopic::new(
            &s.topic,
            s.create_partitions,
            TopicReplication::Fixed(s.create_replication),
        ),
        NewTopic::new(
            &dlq,
            s.create_partitions,
            TopicReplication::Fixed(s.create_replication),
        ),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    for r in admin.create_topics(&topics, &opts).await? {
        match r {
            Ok(t) => tracing::info!(topic = %t, partitions = s.create_partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}
