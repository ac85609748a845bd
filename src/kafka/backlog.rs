//! What the finalizer has not consumed yet: the consumer group's lag on
//! `coupon-issued`, and the issuances of one event in that lag. A rebuild
//! of Redis from PostgreSQL must know both, since those issuances are in
//! neither store it reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::domain::{EventId, IssuanceRecord};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Per partition: (the group's next offset, the high watermark).
pub struct Backlog {
    ranges: HashMap<i32, (i64, i64)>,
}

impl Backlog {
    /// Reads the finalizer group's committed offsets and the partitions'
    /// high watermarks. Blocking (librdkafka calls): run off the runtime.
    pub fn read(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let consumer = consumer(settings, &settings.group)?;
        let topic = settings.topic.as_str();
        let meta = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        let partitions: Vec<i32> = meta
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        // A topic that is not there (a wrong name, no access) is no empty
        // backlog: whoever asks is deciding that nothing is on its way.
        anyhow::ensure!(
            !partitions.is_empty(),
            "topic {topic} has no partitions the broker shows (missing, or not readable)"
        );
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(topic, *p);
        }
        // Asks the group coordinator without joining the group, so the
        // running finalizers are not rebalanced.
        let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
        let mut ranges = HashMap::new();
        for p in partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
            let next = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => low,
            };
            ranges.insert(p, (next, high));
        }
        Ok(Self { ranges })
    }

    /// Unconsumed messages per partition.
    pub fn per_partition(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.ranges
            .iter()
            .map(|(p, (next, high))| (*p, (high - next).max(0) as u64))
    }

    /// Messages the group has not consumed yet, over all partitions.
    pub fn lag(&self) -> u64 {
        self.per_partition().map(|(_, lag)| lag).sum()
    }

    /// The issuances of `event` among the unconsumed messages (undecodable
    /// ones are the finalizer's to dead-letter). Reads with a consumer of
    /// its own that commits nothing. Blocking.
    pub fn issuances_of(
        &self,
        settings: &KafkaSettings,
        event: &EventId,
    ) -> anyhow::Result<Vec<IssuanceRecord>> {
        let topic = settings.topic.as_str();
        let mut tpl = TopicPartitionList::new();
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        for (p, (next, high)) in &self.ranges {
            if high > next {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*next))?;
                remaining.insert(*p, *high);
            }
        }
        if remaining.is_empty() {
            return Ok(Vec::new());
        }
        let reader = consumer(settings, &format!("{}-backlog-reader", settings.group))?;
        reader.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut found = Vec::new();
        while !remaining.is_empty() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "reading the finalizer's backlog took over 120 s"
            );
            let Some(m) = reader.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = m?;
            if let Some(Ok(r)) = m.payload().map(super::message::decode) {
                if &r.event_id == event {
                    found.push(r);
                }
            }
            if remaining
                .get(&m.partition())
                .is_some_and(|h| m.offset() + 1 >= *h)
            {
                remaining.remove(&m.partition());
            }
        }
        Ok(found)
    }
}

fn consumer(settings: &KafkaSettings, group: &str) -> anyhow::Result<BaseConsumer> {
    let mut c = super::client_config(settings)?;
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted");
    Ok(c.create()?)
}
