//! The sweeper's claim of stale pending issuances holds back while the
//! finalizer is recording the event (those issuances are most likely still
//! queued in Kafka), yet still claims what is older than the max age, and
//! everything stale once the finalizer has gone quiet.

use coupond::domain::{EventId, UserId};
use redis::AsyncCommands;

use crate::helpers::{
    isolated_settings, preload_request, serve_settings, spawn_serving, unique_tag, TestApp,
};

const AGE_MS: u64 = 5_000;

/// A server without a finalizer, whose own sweeper never claims anything.
async fn spawn_unswept() -> TestApp {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.sweep.age_ms = 3_600_000;
    settings.sweep.max_age_ms = 3_600_000;
    let mut serve = serve_settings();
    serve.no_consumer = true;
    spawn_serving(settings, serve, tag).await
}

async fn claim(app: &TestApp, event: &EventId, max_age_ms: u64) -> Vec<String> {
    app.redis
        .claim_stale(event, AGE_MS, max_age_ms, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(u, _)| u.as_str().to_owned())
        .collect()
}

/// Makes the user's pending issuance look `ms` old.
async fn age_pending(app: &TestApp, event: &str, user: &str, ms: u64) {
    let mut c = app.redis.conn().await.unwrap();
    let now_ms = chrono::Utc::now().timestamp_millis() as u64;
    let _: () = c
        .zadd(app.keys(event).pending, user, now_ms - ms)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_holds_back_while_the_finalizer_progresses() {
    let mut app = spawn_unswept().await;
    let event = app.event_id("sweep");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let first = app.issue(&event, "early").await.coupon.unwrap().code;
    app.issue(&event, "late").await;
    let id = EventId::parse(&event).unwrap();

    // Quiet finalizer: anything older than the age is claimed.
    age_pending(&app, &event, "late", 120_000).await;
    assert_eq!(claim(&app, &id, 600_000).await, vec!["late".to_owned()]);

    // The finalizer records one issuance of the event: a 2-minute-old
    // pending one is now left alone under a 10-minute max age...
    let early = UserId::parse("early".to_owned()).unwrap();
    let done = app
        .redis
        .finalize(&id, &[(&early, first.as_str())])
        .await
        .unwrap();
    assert_eq!(done, 1);
    age_pending(&app, &event, "late", 120_000).await;
    assert!(claim(&app, &id, 600_000).await.is_empty());
    // ...but claimed under a 1-minute one.
    assert_eq!(claim(&app, &id, 60_000).await, vec!["late".to_owned()]);

    // The finalizer goes quiet (its progress mark is older than the age).
    let mut c = app.redis.conn().await.unwrap();
    let quiet_since = chrono::Utc::now().timestamp_millis() as u64 - 2 * AGE_MS;
    let _: () = c.set(app.keys(&event).progress, quiet_since).await.unwrap();
    age_pending(&app, &event, "late", 120_000).await;
    assert_eq!(claim(&app, &id, 600_000).await, vec!["late".to_owned()]);
    app.stop().await;
}
