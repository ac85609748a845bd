//! `coupond dlq list | replay`: what the finalizer dead-lettered and why,
//! and putting it back on `coupon-issued` after a fix.

use crate::config::{Durability, KafkaSettings};
use crate::kafka::dlq::{self, DeadLetter};
use crate::kafka::Publisher;

/// Prints every dead letter: where, why, and the issuance it carries.
pub async fn list(kafka: &KafkaSettings, json: bool) -> anyhow::Result<()> {
    let k = kafka.clone();
    let (letters, _, _) = tokio::task::spawn_blocking(move || dlq::read(&k, None)).await??;
    if json {
        let rows: Vec<serde_json::Value> = letters.iter().map(as_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{} dead letters in {}", letters.len(), kafka.dlq_topic());
        for l in &letters {
            println!("{}", line(l));
        }
    }
    Ok(())
}

/// Publishes the dead letters not replayed before back onto the topic and
/// records how far it got; returns how many it replayed.
pub async fn replay(kafka: &KafkaSettings) -> anyhow::Result<usize> {
    let k = kafka.clone();
    let group = replay_group(kafka);
    let (letters, consumer, ends) =
        tokio::task::spawn_blocking(move || dlq::read(&k, Some(&group))).await??;
    // Nobody waits on a replay's acknowledgements one by one.
    let publisher = Publisher::new(kafka, kafka.producer_linger(Durability::Async))?;
    for l in &letters {
        publisher
            .replay(l.key.as_deref(), &l.payload)
            .await
            .map_err(|e| anyhow::anyhow!("replaying {}: {e}", line(l)))?;
    }
    tokio::task::spawn_blocking(move || dlq::commit(&consumer, &ends)).await??;
    println!(
        "replayed {} dead letters onto {}",
        letters.len(),
        kafka.topic
    );
    Ok(letters.len())
}

/// The consumer group whose offsets say how far replays got.
fn replay_group(kafka: &KafkaSettings) -> String {
    format!("{}-dlq-replay", kafka.group)
}

/// The dead letters no replay took yet (blocking; commits nothing).
pub fn unreplayed(kafka: &KafkaSettings) -> anyhow::Result<Vec<DeadLetter>> {
    Ok(dlq::read(kafka, Some(&replay_group(kafka)))?.0)
}

fn line(l: &DeadLetter) -> String {
    let what = match &l.record {
        Some(r) => format!(
            "event {} user {:?} code {}",
            r.event_id,
            r.user_id.as_str(),
            r.coupon.code
        ),
        None => format!("{} undecodable bytes", l.payload.len()),
    };
    format!("  {}/{}: {what}: {}", l.partition, l.offset, l.reason)
}

fn as_json(l: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "partition": l.partition,
        "offset": l.offset,
        "reason": l.reason,
        "event_id": l.record.as_ref().map(|r| r.event_id.to_string()),
        "user_id": l.record.as_ref().map(|r| r.user_id.to_string()),
        "code": l.record.as_ref().map(|r| r.coupon.code.clone()),
    })
}
