//! Gathering a batch of messages.

use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{BorrowedMessage, OwnedMessage};

/// Waits up to `idle` for the first message (none: an empty batch), then
/// takes what arrives within `max_wait` of it, up to `max` messages. Only
/// the wait for the first message may time out or fail: once messages were
/// taken from the consumer, a failing read ends the batch with them, since
/// dropping them would let a later commit move the offset past them.
pub async fn next_batch(
    consumer: &StreamConsumer,
    max: usize,
    max_wait: Duration,
    idle: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let first: BorrowedMessage<'_> = match tokio::time::timeout(idle, consumer.recv()).await {
        Ok(m) => m?,
        Err(_) => return Ok(Vec::new()),
    };
    let mut batch = Vec::with_capacity(max);
    batch.push(first.detach());
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => batch.push(m.detach()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, taken = batch.len(), "consuming failed mid-batch; applying what was taken");
                break;
            }
            Err(_) => break,
        }
    }
    Ok(batch)
}
