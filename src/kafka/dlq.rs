//! The dead-letter topic (`<topic>.dlq`): reading what was dead-lettered
//! and why, and replaying it onto `coupon-issued` after a fix. Replay
//! remembers how far it got in a consumer group of its own
//! (`<group>-dlq-replay`), so each dead letter is replayed once; a crash
//! between the publish and that commit replays a message twice, which the
//! finalizer's idempotent recording absorbs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::domain::IssuanceRecord;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One dead-lettered message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// The `coupond-dlq-reason` header.
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The issuance, when the payload decodes.
    pub record: Option<IssuanceRecord>,
}

/// Reads the dead-letter topic from `group`'s committed offsets (or from
/// the start, without a group) to its end. Blocking. With a group, the
/// consumer is returned so the caller commits after acting.
pub fn read(
    settings: &KafkaSettings,
    group: Option<&str>,
) -> anyhow::Result<(Vec<DeadLetter>, BaseConsumer, TopicPartitionList)> {
    let topic = settings.dlq_topic();
    let mut config = super::client_config(settings)?;
    config
        .set("group.id", group.unwrap_or("coupond-dlq-reader"))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let (assign, ends, mut left) = unread(&consumer, &topic, group.is_some())?;
    consumer.assign(&assign)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !left.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic} took over 60 s");
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m?;
        if left
            .get(&m.partition())
            .is_some_and(|h| m.offset() + 1 >= *h)
        {
            left.remove(&m.partition());
        }
        out.push(letter(&m));
    }
    Ok((out, consumer, ends))
}

/// Per partition, what is left to read: from the group's committed offset
/// (when `committed`, else the start) to the end. Returns what to assign,
/// the ends (to commit after a replay), and the end of each partition with
/// something to read.
fn unread(
    consumer: &BaseConsumer,
    topic: &str,
    committed: bool,
) -> anyhow::Result<(TopicPartitionList, TopicPartitionList, HashMap<i32, i64>)> {
    let meta = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(topic, *p);
    }
    let done = match committed {
        true => consumer.committed_offsets(wanted, TIMEOUT)?,
        false => TopicPartitionList::new(),
    };
    let (mut assign, mut ends, mut left) = (
        TopicPartitionList::new(),
        TopicPartitionList::new(),
        HashMap::new(),
    );
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        let from = match done.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        ends.add_partition_offset(topic, p, Offset::Offset(high))?;
        if high > from {
            assign.add_partition_offset(topic, p, Offset::Offset(from))?;
            left.insert(p, high);
        }
    }
    Ok((assign, ends, left))
}

fn letter(m: &rdkafka::message::BorrowedMessage<'_>) -> DeadLetter {
    let payload = m.payload().unwrap_or_default().to_vec();
    let reason = m
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "coupond-dlq-reason"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    DeadLetter {
        partition: m.partition(),
        offset: m.offset(),
        reason,
        key: m.key().map(<[u8]>::to_vec),
        record: super::message::decode(&payload).ok(),
        payload,
    }
}

/// Records that everything up to `ends` was replayed.
pub fn commit(consumer: &BaseConsumer, ends: &TopicPartitionList) -> anyhow::Result<()> {
    if ends.count() > 0 {
        consumer.commit(ends, CommitMode::Sync)?;
    }
    Ok(())
}
