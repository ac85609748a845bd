//! One bad message never stops the finalizer: messages produced straight to
//! the topic with a NUL byte, a row PostgreSQL refuses, or a payload too
//! large for the dead-letter topic are dead-lettered (or, the last, skipped
//! and counted) while every issuance after them is finalized. And what
//! PostgreSQL decides wins in Redis: a user it holds another coupon for
//! keeps that one (the second code goes back to the queue), and a replayed
//! dead letter it now accepts turns a conflict into FINALIZED.

use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::EventId;
use coupond::proto::{self, IssuanceState, IssueResult};
use diesel_async::{AsyncConnection, RunQueryDsl};
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use redis::AsyncCommands;

use crate::helpers::{
    coupond_cli, dead_letters, eventually, issue_all, preload_request, reconcile_cli,
    scrape_metrics, spawn_app, TestApp,
};

/// Produces `payload` to partition `partition` of the test's topic, as an
/// outside producer would (up to 2 MB).
async fn produce(app: &TestApp, partition: i32, payload: &[u8]) {
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &app.settings.kafka.brokers)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    raw.send(
        FutureRecord::<(), _>::to(&app.settings.kafka.topic)
            .partition(partition)
            .payload(payload),
        Timeout::Never,
    )
    .await
    .unwrap();
}

/// A CouponIssued for `user` of the event, with code `code`.
fn coupon_issued(event: &str, user: &str, code: &str) -> proto::CouponIssued {
    proto::CouponIssued {
        event_id: event.into(),
        user_id: user.into(),
        code: code.into(),
        discount_type: proto::DiscountType::Percent as i32,
        discount_value: 10,
        issued_at: Some(crate::helpers::ts(chrono::Utc::now())),
        request_id: format!("req-{user}"),
    }
}

/// Issues to `n` users and waits until every one is finalized.
async fn the_line_moves(app: &TestApp, event: &str, n: usize) {
    let users: Vec<String> = (0..n).map(|i| format!("after-{i}")).collect();
    let pairs: HashSet<(String, String)> = issue_all(app, event, &users)
        .await
        .into_iter()
        .map(|(u, r)| (r.coupon.expect("issued").code, u))
        .collect();
    app.await_finalized(event, &pairs).await;
}

async fn await_dead_letters(app: &TestApp, n: i64) {
    let ok = eventually(Duration::from_secs(60), || async { dead_letters(app) == n }).await;
    assert!(ok, "dead-letter topic holds {}, not {n}", dead_letters(app));
}

/// The dead letters' reasons, from `coupond dlq list --json`.
fn reasons(app: &TestApp) -> Vec<String> {
    let (exit, out) = coupond_cli(app, &["dlq", "list", "--json"]);
    assert_eq!(exit, 0, "{out}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows.iter()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_in_every_partition_is_dead_lettered_and_the_line_keeps_moving() {
    let app = spawn_app().await;
    let event = app.event_id("nul");
    app.preload(preload_request(&event, 20)).await.unwrap();
    for p in 0..3 {
        let m = coupon_issued(&event, &format!("evil-{p}"), "AB\0CDEFGH");
        produce(&app, p, &m.encode_to_vec()).await;
    }
    the_line_moves(&app, &event, 12).await;
    await_dead_letters(&app, 3).await;
    for r in reasons(&app) {
        assert!(r.contains("field code"), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgres_refuses_is_dead_lettered_with_its_reason() {
    let app = spawn_app().await;
    let event = app.event_id("refused");
    app.preload(preload_request(&event, 20)).await.unwrap();
    let id = EventId::parse(event.clone()).unwrap();
    let code = app.pg.coupons(&id).await.unwrap()[0].code.clone();
    // This database refuses issuances dated before 2000 (a rule of its
    // operator's); the message is valid by every rule of the API.
    let mut pg = diesel_async::AsyncPgConnection::establish(&app.settings.database.url)
        .await
        .unwrap();
    diesel::sql_query(
        "ALTER TABLE coupons ADD CONSTRAINT issued_this_century \
         CHECK (issued_at IS NULL OR issued_at >= '2000-01-01')",
    )
    .execute(&mut pg)
    .await
    .unwrap();
    let mut m = coupon_issued(&event, "ancient", &code);
    m.issued_at = Some(prost_types::Timestamp {
        seconds: 631_152_000, // 1990
        nanos: 0,
    });
    produce(&app, 0, &m.encode_to_vec()).await;
    // Dead-lettered before anyone else could be issued its code.
    await_dead_letters(&app, 1).await;
    the_line_moves(&app, &event, 12).await;
    let why = reasons(&app).remove(0);
    assert!(
        why.contains("postgres refused the row") && why.contains("23514"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_the_broker_is_skipped_counted_and_logged() {
    let app = spawn_app().await;
    let event = app.event_id("huge");
    app.preload(preload_request(&event, 20)).await.unwrap();
    let before = failed_dead_letters();
    // Undecodable and just over the producer's 1,000,000-byte limit.
    produce(&app, 1, &vec![0xff; 1_010_000]).await;
    the_line_moves(&app, &event, 12).await;
    let counted = eventually(Duration::from_secs(30), || async {
        failed_dead_letters() > before
    })
    .await;
    assert!(counted, "coupond_dead_letters_failed_total counted it");
    assert_eq!(
        dead_letters(&app),
        0,
        "nothing reached the dead-letter topic"
    );
}

/// `coupond_dead_letters_failed_total` of this test process.
fn failed_dead_letters() -> f64 {
    scrape_metrics()
        .lines()
        .find(|l| l.starts_with("coupond_dead_letters_failed_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

async fn issuance(app: &TestApp, event: &str, user: &str) -> (String, i32) {
    let r = app
        .issuer
        .clone()
        .get_issuance(proto::GetIssuanceRequest {
            event_id: event.into(),
            user_id: user.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (r.coupon.unwrap().code, r.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_postgres_holds_another_coupon_for_keeps_it_and_the_second_goes_back() {
    let app = spawn_app().await;
    let event = app.event_id("supersede");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let first = app.issue(&event, "u1").await.coupon.unwrap().code;
    app.await_finalized(&event, &HashSet::from([(first.clone(), "u1".to_string())]))
        .await;
    // Redis loses u1's record (a restart with a lagging append-only file);
    // u1 asks again and is issued a second code.
    let k = app.keys(&event);
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c.hdel(&k.issued, "u1").await.unwrap();
    let second = app.issue_as(&event, "u1", "again").await;
    assert_eq!(second.result, IssueResult::Issued as i32);
    let second = second.coupon.unwrap().code;
    assert_ne!(second, first);
    let queued_before: usize = c.llen(&k.queue).await.unwrap();

    let resolved = eventually(Duration::from_secs(60), || async {
        issuance(&app, &event, "u1").await == (first.clone(), IssuanceState::Finalized as i32)
    })
    .await;
    assert!(resolved, "u1 holds postgres's coupon, finalized");
    let again = app.issue(&event, "u1").await;
    assert_eq!(
        (again.result, again.coupon.unwrap().code),
        (IssueResult::Issued as i32, first.clone()),
        "the first request's own id: ISSUED with the first coupon"
    );
    let queue: Vec<String> = c.lrange(&k.queue, 0, -1).await.unwrap();
    assert_eq!(queue.len(), queued_before + 1, "the second code went back");
    assert!(queue.iter().any(|e| e.starts_with(&format!("{second}\t"))));
    let id = EventId::parse(event.clone()).unwrap();
    let counts = app.redis.counts(&id, 1).await.unwrap();
    assert_eq!((counts.pending, counts.conflicted), (0, 0));
    assert_eq!(dead_letters(&app), 0);
    let (exit, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(exit, 0, "{report}");
    assert!(
        report.contains(&format!(r#"user "u1" told {second} holds {first}"#)),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_postgres_now_accepts_turns_a_conflict_into_finalized() {
    let app = spawn_app().await;
    let event = app.event_id("replayfix");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let code = app.issue(&event, "u1").await.coupon.unwrap().code;
    app.await_finalized(&event, &HashSet::from([(code.clone(), "u1".to_string())]))
        .await;
    // u2 was issued u1's code (Redis lost a write): PostgreSQL refuses it.
    produce(&app, 0, &coupon_issued(&event, "u2", &code).encode_to_vec()).await;
    let conflicted = eventually(Duration::from_secs(60), || async {
        issuance(&app, &event, "u2").await.1 == IssuanceState::Conflicted as i32
    })
    .await;
    assert!(conflicted);
    await_dead_letters(&app, 1).await;
    // An operator decides u2 keeps the code: PostgreSQL releases it from
    // u1 (and Redis forgets u1's record), then the dead letter is replayed.
    let mut pg = diesel_async::AsyncPgConnection::establish(&app.settings.database.url)
        .await
        .unwrap();
    diesel::sql_query(
        "UPDATE coupons SET state = 'AVAILABLE', user_id = NULL, issued_at = NULL, \
         request_id = NULL, finalized_at = NULL WHERE code = $1",
    )
    .bind::<diesel::sql_types::Text, _>(&code)
    .execute(&mut pg)
    .await
    .unwrap();
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c.hdel(&app.keys(&event).issued, "u1").await.unwrap();
    let (exit, out) = coupond_cli(&app, &["dlq", "replay"]);
    assert_eq!(exit, 0, "{out}");
    let finalized = eventually(Duration::from_secs(60), || async {
        issuance(&app, &event, "u2").await == (code.clone(), IssuanceState::Finalized as i32)
    })
    .await;
    assert!(finalized, "the replay turned u2's conflict into FINALIZED");
    let id = EventId::parse(event.clone()).unwrap();
    assert_eq!(app.redis.counts(&id, 1).await.unwrap().conflicted, 0);
    let ev = app.get_event(&event).await;
    assert_eq!(ev.conflicted_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_an_event_redis_does_not_hold_leaves_only_expiring_keys() {
    let app = spawn_app().await;
    let ghost = app.event_id("ghost");
    produce(
        &app,
        2,
        &coupon_issued(&ghost, "u1", "ABCDEFGH2345").encode_to_vec(),
    )
    .await;
    await_dead_letters(&app, 1).await;
    let mut c = app.redis.conn().await.unwrap();
    let keys: Vec<String> = c.keys(format!("*{{{ghost}}}*")).await.unwrap();
    assert!(!keys.is_empty(), "the conflict is visible");
    for key in keys {
        let ttl: i64 = c.pttl(&key).await.unwrap();
        assert!(ttl > 0, "{key} expires (PTTL {ttl})");
    }
    assert!(!app
        .redis
        .event_exists(&EventId::parse(ghost.clone()).unwrap(), 1)
        .await
        .unwrap());
}

/// The refused code goes back to the queue only when PostgreSQL says nobody
/// holds it: after a Redis loss the code a user is issued again may well be
/// another user's already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_code_another_user_holds_is_not_queued_again() {
    let app = spawn_app().await;
    let event = app.event_id("supersede2");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let x = app.issue(&event, "u1").await.coupon.unwrap().code;
    let y = app.issue(&event, "w").await.coupon.unwrap().code;
    app.await_finalized(
        &event,
        &HashSet::from([(x.clone(), "u1".to_string()), (y.clone(), "w".to_string())]),
    )
    .await;
    // Redis loses u1's record and the pop of w's code (w's record stays).
    let k = app.keys(&event);
    let mut c = app.redis.conn().await.unwrap();
    let w_rec: String = c.hget(&k.issued, "w").await.unwrap();
    let entry: Vec<&str> = w_rec.splitn(4, '\t').take(3).collect();
    let _: () = c.hdel(&k.issued, "u1").await.unwrap();
    let _: () = c.lpush(&k.queue, entry.join("\t")).await.unwrap();
    let again = app.issue_as(&event, "u1", "again").await;
    assert_eq!(again.coupon.unwrap().code, y, "u1 was handed w's code");

    let resolved = eventually(Duration::from_secs(60), || async {
        issuance(&app, &event, "u1").await == (x.clone(), IssuanceState::Finalized as i32)
    })
    .await;
    assert!(resolved, "u1 holds postgres's coupon");
    let queue: Vec<String> = c.lrange(&k.queue, 0, -1).await.unwrap();
    assert!(
        !queue.iter().any(|e| e.starts_with(&format!("{y}\t"))),
        "w's code is not queued again"
    );
    assert_eq!(issuance(&app, &event, "w").await.0, y);
}

/// What the finalizer writes for a settled event (its keys expiring) expires
/// with them: a late conflict creates no key that outlives the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_message_for_a_settled_event_writes_only_keys_that_expire_with_it() {
    let tag = crate::helpers::unique_tag();
    let mut settings = crate::helpers::isolated_settings(&tag).await;
    settings.sweep.interval = std::time::Duration::from_millis(200);
    let app = crate::helpers::spawn_with(settings, tag).await;
    let event = app.event_id("lateconflict");
    let mut req = preload_request(&event, 10);
    req.ends_at = Some(crate::helpers::ts(
        chrono::Utc::now() + chrono::Duration::seconds(2),
    ));
    app.preload(req).await.unwrap();
    let code = app.issue(&event, "u1").await.coupon.unwrap().code;
    app.await_finalized(&event, &HashSet::from([(code.clone(), "u1".to_string())]))
        .await;
    let id = EventId::parse(event.clone()).unwrap();
    let settled = eventually(Duration::from_secs(30), || async {
        app.pg.settled(&id).await.unwrap()
    })
    .await;
    assert!(settled);
    // u2 claims u1's code: refused, marked conflicted.
    produce(&app, 0, &coupon_issued(&event, "u2", &code).encode_to_vec()).await;
    await_dead_letters(&app, 1).await;
    let k = app.keys(&event);
    let mut c = app.redis.conn().await.unwrap();
    let conflicts: i64 = c.pttl(&k.conflicts).await.unwrap();
    assert!(
        conflicts > 0,
        "the conflict set expires with the event ({conflicts})"
    );
    let meta: i64 = c.pttl(&k.meta).await.unwrap();
    assert!(conflicts <= meta + 1000, "{conflicts} > {meta}");
}
