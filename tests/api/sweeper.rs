//! The sweeper's claim of stale pending issuances holds back while the
//! finalizer is recording the event (those issuances are most likely still
//! queued in Kafka), yet still claims what is older than the max age, and
//! everything stale once the finalizer has gone quiet. Its claims back off
//! with how long an issuance has been pending, and a pass ends on shutdown.

use coupond::config::SweepSettings;
use coupond::domain::{EventId, UserId};
use coupond::service::sweeper::Sweeper;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::helpers::{preload_request, spawn_unswept, TestApp};

const AGE_MS: u64 = 5_000;

async fn claim(app: &TestApp, event: &EventId, max_age_ms: u64) -> Vec<String> {
    app.redis
        .claim_stale(
            event,
            1,
            std::time::Duration::from_millis(AGE_MS),
            std::time::Duration::from_millis(max_age_ms),
            100,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(u, _)| u.as_str().to_owned())
        .collect()
}

/// Makes the user's pending issuance look `ms` old.
async fn age_pending(app: &TestApp, event: &str, user: &str, ms: u64) {
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c
        .zadd(app.keys(event).pending, user, now_ms() as u64 - ms)
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
        .finalize(&id, 1, &[(&early, first.as_str())])
        .await
        .unwrap()
        .done;
    assert_eq!(done, 1);
    age_pending(&app, &event, "late", 120_000).await;
    assert!(claim(&app, &id, 600_000).await.is_empty());
    // ...but claimed under a 1-minute one.
    assert_eq!(claim(&app, &id, 60_000).await, vec!["late".to_owned()]);

    // The finalizer goes quiet (its progress mark is older than the age).
    let mut c = app.redis.conn().await.unwrap();
    let quiet_since = now_ms() as u64 - 2 * AGE_MS;
    let _: () = c.set(app.keys(&event).progress, quiet_since).await.unwrap();
    age_pending(&app, &event, "late", 120_000).await;
    assert_eq!(claim(&app, &id, 600_000).await, vec!["late".to_owned()]);
    app.stop().await;
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Rewrites the user's issued record as if issued `ms` ago.
async fn backdate_issuance(app: &TestApp, event: &str, user: &str, ms: i64) {
    let mut c = app.redis.conn().await.unwrap();
    let issued = app.keys(event).issued;
    let rec: String = c.hget(&issued, user).await.unwrap();
    let mut fields: Vec<String> = rec.split('\t').map(str::to_owned).collect();
    fields[3] = (now_ms() - ms).to_string();
    let _: () = c.hset(&issued, user, fields.join("\t")).await.unwrap();
}

async fn pending_score(app: &TestApp, event: &str, user: &str) -> i64 {
    let mut c = app.redis.conn().await.unwrap();
    let score: f64 = c.zscore(app.keys(event).pending, user).await.unwrap();
    score as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_back_off_with_how_long_an_issuance_has_been_pending() {
    let mut app = spawn_unswept().await;
    let event = app.event_id("backoff");
    app.preload(preload_request(&event, 10)).await.unwrap();
    app.issue(&event, "fresh").await;
    app.issue(&event, "stuck").await;
    let id = EventId::parse(&event).unwrap();
    const MAX_AGE_MS: i64 = 60_000;

    // Pending for two hours (a finalizer down that long): the next claim
    // waits the max age, not one age.
    backdate_issuance(&app, &event, "stuck", 7_200_000).await;
    // Pending for just over an age: claimed again one age later.
    age_pending(&app, &event, "fresh", AGE_MS + 1).await;
    age_pending(&app, &event, "stuck", AGE_MS + 1).await;
    let before = now_ms();
    let mut claimed = claim(&app, &id, MAX_AGE_MS as u64).await;
    claimed.sort();
    assert_eq!(claimed, vec!["fresh".to_owned(), "stuck".to_owned()]);
    let after = now_ms();

    let next_fresh = pending_score(&app, &event, "fresh").await + AGE_MS as i64;
    let next_stuck = pending_score(&app, &event, "stuck").await + AGE_MS as i64;
    let fresh_wait = AGE_MS as i64;
    assert!(
        (before + fresh_wait - 50..=after + fresh_wait + 50).contains(&next_fresh),
        "fresh: claimable again one age after the claim"
    );
    assert!(
        (before + MAX_AGE_MS - 50..=after + MAX_AGE_MS + 50).contains(&next_stuck),
        "stuck: claimable again one max age after the claim"
    );
    assert!(claim(&app, &id, MAX_AGE_MS as u64).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_pass_covers_every_claim_batch_and_stops_on_shutdown() {
    const USERS: usize = 700; // more than one claim batch
    let mut app = spawn_unswept().await;
    let event = app.event_id("pass");
    app.preload(preload_request(&event, USERS as u32))
        .await
        .unwrap();
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    futures::future::join_all(users.iter().map(|u| app.issue(&event, u))).await;
    for u in &users {
        age_pending(&app, &event, u, 2 * AGE_MS).await;
    }
    let sweeper = Sweeper::new(
        app.pg.clone(),
        app.redis.clone(),
        app.publisher(),
        app.settings.kafka.clone(),
        SweepSettings {
            age: std::time::Duration::from_millis(AGE_MS),
            max_age: std::time::Duration::from_millis(60_000),
            interval: std::time::Duration::from_millis(1_000),
            retention: std::time::Duration::from_secs(86_400),
        },
    );

    let stopped = CancellationToken::new();
    stopped.cancel();
    assert_eq!(sweeper.sweep_all(&stopped).await.unwrap(), 0);
    assert_eq!(
        sweeper.sweep_all(&CancellationToken::new()).await.unwrap(),
        USERS
    );
    // All claimed: the next pass finds nothing due.
    assert_eq!(
        sweeper.sweep_all(&CancellationToken::new()).await.unwrap(),
        0
    );
    app.stop().await;
}
