//! The broker's own rates, the ceiling of `ack` durability: the service's
//! producer (same settings: idempotent, acks=all, linger, compression)
//! sends N `CouponIssued` messages with every acknowledgement awaited
//! concurrently, then one consumer reads them back. A fresh topic per run,
//! deleted afterwards, so nothing reaches the finalizer.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};

use coupond::config::{Durability, KafkaSettings};
use coupond::domain::{Discount, DiscountType, EventId, IssuanceRecord, IssuedCoupon, UserId};
use coupond::kafka::{topics, Publisher};

/// Acknowledgements awaited at once (librdkafka batches the sends).
const IN_FLIGHT: usize = 20_000;

#[derive(Debug, serde::Serialize)]
pub struct BrokerReport {
    pub mode: &'static str,
    pub messages: u64,
    pub produce_errors: u64,
    pub produce_per_s: f64,
    pub consumed: u64,
    pub consume_per_s: f64,
}

impl BrokerReport {
    pub fn summary(&self) -> String {
        format!(
            "broker: {} messages produced (idempotent, acks=all) at {:.0}/s with {} errors; {} consumed at {:.0}/s",
            self.messages, self.produce_per_s, self.produce_errors, self.consumed, self.consume_per_s
        )
    }
}

pub async fn run(kafka: &KafkaSettings, messages: u64) -> anyhow::Result<BrokerReport> {
    let mut k = kafka.clone();
    k.topic = format!("{}.bench-{:08x}", kafka.topic, rand::random::<u32>());
    topics::ensure(&k).await?;
    let result = measure(&k, messages).await;
    if let Err(e) = delete_topics(&k).await {
        eprintln!("deleting the bench topic {} failed: {e}", k.topic);
    }
    result
}

async fn measure(k: &KafkaSettings, messages: u64) -> anyhow::Result<BrokerReport> {
    // Ack mode's producer: every acknowledgement is awaited.
    let publisher = Publisher::new(k, k.producer_linger(Durability::Ack))?;
    let event = EventId::parse("broker-bench").map_err(anyhow::Error::msg)?;
    let discount = Discount::new(DiscountType::Percent, 10).map_err(anyhow::Error::msg)?;
    let records = (0..messages).map(|i| IssuanceRecord {
        event_id: event.clone(),
        user_id: UserId::parse(format!("user-{i}")).expect("valid user id"),
        coupon: IssuedCoupon {
            code: format!("BENCH{i:010}"),
            discount,
            issued_at: chrono::Utc::now(),
        },
        request_id: format!("req-{i}"),
    });

    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut errors = 0;
    for record in records {
        if pending.len() >= IN_FLIGHT {
            errors += u64::from(
                pending
                    .next()
                    .await
                    .is_some_and(|r: Result<_, _>| r.is_err()),
            );
        }
        let p = publisher.clone();
        pending.push(async move { p.publish(&record).await });
    }
    while let Some(r) = pending.next().await {
        errors += u64::from(r.is_err());
    }
    let produce_s = started.elapsed().as_secs_f64().max(1e-9);

    let consumer: StreamConsumer = coupond::kafka::client_config(k)?
        .set("group.id", format!("{}-reader", k.topic))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[&k.topic])?;
    let expected = messages - errors;
    let mut consumed = 0;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumed < expected && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Ok(_)) => {
                first.get_or_insert_with(Instant::now);
                consumed += 1;
            }
            Ok(Err(e)) => eprintln!("bench consumer: {e}"),
            Err(_) => {}
        }
    }
    // From the first message: joining the group is not fetching.
    let consume_s = first.map_or(0.0, |t| t.elapsed().as_secs_f64()).max(1e-9);
    Ok(BrokerReport {
        mode: "broker",
        messages,
        produce_errors: errors,
        produce_per_s: (messages - errors) as f64 / produce_s,
        consumed,
        consume_per_s: consumed as f64 / consume_s,
    })
}

async fn delete_topics(k: &KafkaSettings) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = coupond::kafka::client_config(k)?.create()?;
    let dlq = k.dlq_topic();
    admin
        .delete_topics(&[&k.topic, &dlq], &AdminOptions::new())
        .await?;
    Ok(())
}
