//! Shared by the test binaries: unique names, an isolated database, request
//! builders and the checks both the integration and the fault tests make.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coupond::client::BearerToken;
use coupond::config::Settings;
use coupond::domain::{EventId, EventState};
use coupond::proto::{DiscountPolicy, DiscountType, PreloadRequest};
use coupond::store::{PgStore, RedisStore};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub mod proxy;

pub fn admin_db_url() -> String {
    std::env::var("COUPOND_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Replaces the database name of a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database url has a path");
    format!("{base}/{db}")
}

pub fn unique_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Settings for an isolated test: fresh database, topics and group.
pub async fn isolated_settings(tag: &str) -> Settings {
    let mut s = coupond::cli::args::settings_from_env().expect("settings from env");
    let db = format!("coupond_test_{tag}");
    let mut admin = AsyncPgConnection::establish(&admin_db_url())
        .await
        .expect("connect to the admin database");
    diesel::sql_query(format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    s.database.url = with_database(&admin_db_url(), &db);
    s.database.pool_size = 4;
    s.kafka.topic = format!("coupon-issued-test-{tag}");
    s.kafka.group = format!("coupond-test-{tag}");
    s.kafka.create_partitions = 3;
    s.consumer.batch_wait = std::time::Duration::from_millis(10);
    s
}

/// The `coupond` binary: the one way the tests launch it, with `settings`'
/// stores, topics and group in its environment, and warnings only in its
/// logs (`FAULT_LOG` sets the filter). Callers add what else it needs.
pub fn coupond(settings: &Settings, args: &[&str]) -> std::process::Command {
    let s = settings;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_coupond"));
    c.args(args)
        .env("COUPOND_DATABASE_URL", &s.database.url)
        .env("COUPOND_REDIS_URL", &s.redis.url)
        .env("COUPOND_REDIS_CLUSTER", s.redis.cluster.join(","))
        .env("COUPOND_KAFKA_BROKERS", &s.kafka.brokers)
        .env("COUPOND_KAFKA_TOPIC", &s.kafka.topic)
        .env("COUPOND_KAFKA_GROUP", &s.kafka.group)
        .env(
            "RUST_LOG",
            std::env::var("FAULT_LOG").unwrap_or_else(|_| "warn".into()),
        );
    c
}

/// Polls `check` every 50 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    coupond::proto::wire::timestamp(t)
}

pub fn policy(kind: DiscountType, value: i64, weight: u32) -> DiscountPolicy {
    DiscountPolicy {
        discount_type: kind as i32,
        discount_value: value,
        weight,
    }
}

/// A valid request: `total` coupons over 10%, 5000-unit and 20% policies
/// (weights 1:1:1), open from an hour ago for an hour.
pub fn preload_request(event_id: &str, total: u32) -> PreloadRequest {
    let now = Utc::now();
    PreloadRequest {
        event_id: event_id.into(),
        name: "Test drop".into(),
        total_count: total,
        policies: vec![
            policy(DiscountType::Percent, 10, 1),
            policy(DiscountType::Amount, 5000, 1),
            policy(DiscountType::Percent, 20, 1),
        ],
        starts_at: Some(ts(now - chrono::Duration::hours(1))),
        ends_at: Some(ts(now + chrono::Duration::hours(1))),
        code_prefix: String::new(),
        shards: 0,
    }
}

/// Messages in a topic: the sum of its partitions' high watermarks (0 when
/// the topic does not exist).
pub fn topic_messages(brokers: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("kafka client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    md.topics()
        .first()
        .map(|t| {
            t.partitions()
                .iter()
                .map(|p| {
                    c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                        .expect("watermarks")
                        .1
                })
                .sum()
        })
        .unwrap_or(0)
}

/// How many `coupon-issued` messages the topic holds for each user of
/// `event` (the issue path's one, and every republish), read from the
/// start of every partition up to its end.
pub fn messages_per_user(brokers: &str, topic: &str, event: &str) -> HashMap<String, usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let c: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("count-{}", unique_tag()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in md.topics()[0].partitions() {
        let (_, high) = c
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
        ends.insert(p.id(), high);
    }
    c.assign(&tpl).expect("assign");
    let mut counts = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ends
        .iter()
        .any(|(p, high)| *high > 0 && !done(&c, topic, *p, *high))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} took over 60 s"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("a message");
        let r = coupond::kafka::message::decode(m.payload().unwrap_or_default())
            .expect("a coupon-issued message");
        if r.event_id.as_str() == event {
            *counts.entry(r.user_id.as_str().to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Whether the consumer's position on `partition` reached `high`.
fn done(c: &rdkafka::consumer::BaseConsumer, topic: &str, partition: i32, high: i64) -> bool {
    use rdkafka::consumer::Consumer;
    let pos = c.position().expect("position");
    matches!(
        pos.find_partition(topic, partition).map(|e| e.offset()),
        Some(rdkafka::Offset::Offset(o)) if o >= high
    )
}

/// Keys of the event's preload staging lists still in Redis.
pub async fn staging_lists(redis: &RedisStore, event: &str) -> Vec<String> {
    let mut c = redis.conn().await.expect("redis");
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, part): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("couponStaging:{{{event}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("scan");
        keys.extend(part);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The event is LIVE with `total` coupons in PostgreSQL and the Redis queue,
/// `coupond reconcile` finds nothing amiss, and no job left anything behind.
pub async fn assert_live_and_consistent(pg: &PgStore, redis: &RedisStore, event: &str, total: u32) {
    let id = EventId::parse(event).unwrap();
    let e = pg.event(&id).await.unwrap().expect("event recorded");
    assert_eq!(
        e.preload.state,
        EventState::Live,
        "{event}: {:?}",
        e.preload
    );
    assert_eq!(e.preload.written, total);
    assert_eq!(pg.coupon_count(&id).await.unwrap(), u64::from(total));
    let report = coupond::ops::reconcile::reconcile(pg, redis, &id)
        .await
        .unwrap();
    assert!(report.consistent(), "{report}");
    assert!(report.redis_live, "{report}");
    assert_eq!(
        report.redis_queue + report.redis_issued,
        total as usize,
        "{report}"
    );
    assert_no_leftovers(redis, event).await;
}

/// No staging list and no preload fence of the event remain in Redis.
pub async fn assert_no_leftovers(redis: &RedisStore, event: &str) {
    assert_eq!(staging_lists(redis, event).await, Vec::<String>::new());
    let mut c = redis.conn().await.unwrap();
    let owner: Option<String> = redis::cmd("GET")
        .arg(format!("couponPreload:{{{event}}}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(owner, None, "{event}: preload fence left behind");
}

/// Polls GetEvent-like state from PostgreSQL until the event's job ended.
pub async fn await_preload_end(pg: &PgStore, event: &str, within: Duration) -> EventState {
    let id = EventId::parse(event).unwrap();
    let ended = eventually(within, || async {
        matches!(
            pg.event(&id).await.ok().flatten().map(|e| e.preload.state),
            Some(EventState::Live | EventState::Failed)
        )
    })
    .await;
    let state = pg.event(&id).await.unwrap().map(|e| e.preload.state);
    assert!(ended, "{event}: preload still {state:?} after {within:?}");
    state.unwrap()
}

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub type AdminClient = coupond::proto::coupon_admin_client::CouponAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// A CouponAdmin client that sends `ADMIN_TOKEN`.
pub fn admin_client(channel: tonic::transport::Channel) -> AdminClient {
    coupond::proto::coupon_admin_client::CouponAdminClient::with_interceptor(
        channel,
        BearerToken::new(Some(ADMIN_TOKEN)).unwrap(),
    )
}

/// Polls until PostgreSQL holds exactly `expected` (code, user) pairs for
/// the event and its Redis pending set is empty, or panics at `within`
/// with the difference.
pub async fn await_exactly_recorded(
    pg: &PgStore,
    redis: &RedisStore,
    event: &str,
    expected: &HashSet<(String, String)>,
    within: Duration,
) {
    let id = EventId::parse(event).unwrap();
    let state = || async {
        let pairs: HashSet<(String, String)> = match pg.issued_pairs(&id).await {
            Ok(p) => p.into_iter().collect(),
            Err(_) => HashSet::new(),
        };
        let shards = pg.shards(&id).await.unwrap_or(1);
        let pending = redis
            .counts(&id, shards)
            .await
            .map(|c| c.pending)
            .unwrap_or(u64::MAX);
        (pairs, pending)
    };
    let ok = eventually(within, || async {
        let (pairs, pending) = state().await;
        pairs == *expected && pending == 0
    })
    .await;
    let (pairs, pending) = state().await;
    assert!(
        ok,
        "postgres holds {} pairs, {} expected: {} missing, {} extra; {pending} pending",
        pairs.len(),
        expected.len(),
        expected.difference(&pairs).count(),
        pairs.difference(expected).count()
    );
}
