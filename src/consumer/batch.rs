//! Gathering a batch of messages.

use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{BorrowedMessage, OwnedMessage};

/// Waits for the first message, then takes what arrives within `max_wait`
/// of it, up to `max` messages.
pub async fn next_batch(
    consumer: &StreamConsumer,
    max: usize,
    max_wait: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let first: BorrowedMessage<'_> = consumer.recv().await?;
    let mut batch = Vec::with_capacity(max);
    batch.push(first.detach());
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => batch.push(m?.detach()),
            Err(_) => break,
        }
    }
    Ok(batch)
}
