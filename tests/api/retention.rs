//! Retention: once an event has ended and every issuance is finalized, the
//! sweeper settles it (stops visiting it) and its Redis keys expire after
//! the retention time; PostgreSQL keeps the record and GetIssuance and
//! GetEvent answer from it. An extension reopens a settled event.

use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::EventId;
use coupond::proto::{self, IssuanceState};
use redis::AsyncCommands;

use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::helpers::{
    eventually, isolated_settings, preload_request, spawn_with, ts, unique_tag, TestApp,
};

/// A server sweeping every 200 ms with `retention_secs`, and a live event
/// of 10 coupons ending in 3 s to which u1 and u2 hold finalized coupons.
pub(crate) async fn ending_event(
    retention_secs: u64,
) -> (TestApp, String, HashSet<(String, String)>) {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.sweep.interval = std::time::Duration::from_millis(200);
    settings.sweep.retention = std::time::Duration::from_secs(retention_secs);
    let app = spawn_with(settings, tag).await;
    let event = app.event_id("retention");
    let mut req = preload_request(&event, 10);
    req.ends_at = Some(ts(chrono::Utc::now() + chrono::Duration::seconds(3)));
    app.preload(req).await.unwrap();
    let mut pairs = HashSet::new();
    for u in ["u1", "u2"] {
        pairs.insert((
            app.issue(&event, u).await.coupon.unwrap().code,
            u.to_string(),
        ));
    }
    app.await_finalized(&event, &pairs).await;
    (app, event, pairs)
}

/// Waits until the event is settled in PostgreSQL and gone from Redis.
pub(crate) async fn await_expired(app: &TestApp, event: &str) {
    let id = EventId::parse(event).unwrap();
    let gone = eventually(Duration::from_secs(30), || async {
        settled(app, event).await && !app.redis.event_exists(&id, 1).await.unwrap()
    })
    .await;
    assert!(gone, "settled and expired from redis");
}

/// An extension of the event is refused, saying `says`, and nothing is
/// recorded.
pub(crate) async fn extension_refused(app: &TestApp, id: &EventId, says: &str) {
    let e = app
        .extend(id.as_str(), chrono::Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(says), "{e:?}");
    assert!(
        app.pg.controls(id).await.unwrap().is_empty(),
        "nothing recorded"
    );
}

/// Waits until the sweeper settled the event.
pub(crate) async fn await_settled(app: &TestApp, event: &str) {
    let done = eventually(Duration::from_secs(30), || async {
        settled(app, event).await
    })
    .await;
    assert!(done, "the sweeper settles the ended event");
}

pub(crate) async fn settled(app: &TestApp, event: &str) -> bool {
    let id = EventId::parse(event).unwrap();
    app.pg.settled(&id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_event_leaves_redis_and_answers_from_postgres() {
    let (app, event, pairs) = ending_event(1).await;
    let id = EventId::parse(event.clone()).unwrap();
    await_expired(&app, &event).await;
    let mut c = app.redis.conn().await.unwrap();
    let k = app.keys(&event);
    let left: usize = c.exists(&[&k.queue, &k.issued, &k.pending]).await.unwrap();
    assert_eq!(left, 0, "every key of the event expired");
    assert!(
        !app.pg
            .events_to_sweep()
            .await
            .unwrap()
            .iter()
            .any(|(e, _)| *e == id),
        "the sweeper no longer visits it"
    );
    for (code, user) in &pairs {
        let got = app
            .issuer
            .clone()
            .get_issuance(proto::GetIssuanceRequest {
                event_id: event.clone(),
                user_id: user.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.coupon.unwrap().code, *code);
        assert_eq!(got.state, IssuanceState::Finalized as i32);
    }
    let ev = app.get_event(&event).await;
    assert_eq!(
        (ev.issued_count, ev.finalized_count, ev.remaining_count),
        (2, 2, 8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_reopens_a_settled_event_and_its_keys_stay() {
    let (app, event, _) = ending_event(3600).await;
    let k = app.keys(&event);
    let mut c = app.redis.conn().await.unwrap();
    let expiring = eventually(Duration::from_secs(30), || async {
        let ttl: i64 = app
            .redis
            .conn()
            .await
            .unwrap()
            .pttl(&k.queue)
            .await
            .unwrap();
        settled(&app, &event).await && ttl > 0
    })
    .await;
    assert!(expiring, "settled, with the retention expiry on its keys");
    app.extend(&event, chrono::Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap();
    let ttl: i64 = c.pttl(&k.queue).await.unwrap();
    assert_eq!(ttl, -1, "no expiry once reopened");
    assert!(!settled(&app, &event).await);
    let r = app.issue(&event, "u3").await;
    assert_eq!(r.result, proto::IssueResult::Issued as i32);
}

/// Milliseconds until the key expires (-1: never, -2: gone).
async fn pttl(app: &TestApp, key: &str) -> i64 {
    app.redis.conn().await.unwrap().pttl(key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_of_a_settled_event_keep_its_keys_expiring() {
    let (app, event, _) = ending_event(3600).await;
    let k = app.keys(&event);
    let expiring = eventually(Duration::from_secs(30), || async {
        settled(&app, &event).await && pttl(&app, &k.issued).await > 0
    })
    .await;
    assert!(expiring, "settled, with the retention expiry on its keys");
    let ended = app.get_event(&event).await.ends_at;
    let closed = app.close(&event, "again").await.unwrap();
    assert_eq!(
        closed.ends_at, ended,
        "closing an ended event keeps its end"
    );
    let id = EventId::parse(event.clone()).unwrap();
    let recorded = app.pg.controls(&id).await.unwrap();
    let end = recorded.last().and_then(|(_, _, end, _)| *end).map(ts);
    assert_eq!(end, ended, "and records the end it kept");
    app.pause(&event, "late pause").await.unwrap();
    for key in [&k.meta, &k.issued, &k.queue] {
        assert!(pttl(&app, key).await > 0, "{key} still expires");
    }
    assert!(settled(&app, &event).await);
    // A close whose time came from a server clock ahead of Redis's: an end
    // "in the future" of a settled event still takes no expiry off.
    let ahead = coupond::domain::ControlState {
        seq: 1_000,
        ends_at: chrono::Utc::now() + chrono::Duration::seconds(5),
        paused: false,
        settled: true,
    };
    app.redis.sync_controls(&id, 1, &ahead).await.unwrap();
    for key in [&k.meta, &k.issued, &k.queue] {
        assert!(pttl(&app, key).await > 0, "{key} still expires");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_of_an_expired_event_is_refused_naming_the_rebuild_and_changes_nothing() {
    let (app, event, _) = ending_event(1).await;
    let id = EventId::parse(event.clone()).unwrap();
    await_expired(&app, &event).await;
    extension_refused(&app, &id, "--rebuild-redis").await;
    assert!(settled(&app, &event).await);
    let k = app.keys(&event);
    assert_eq!(pttl(&app, &k.meta).await, -2, "nothing written to redis");
}

/// Settlement is decided with Redis's clock and window, the ones Issue
/// uses: PostgreSQL saying the window is over (a skewed clock, an edit)
/// cannot settle, and so expire, an event Redis still issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_redis_still_issues_is_never_settled() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.sweep.interval = std::time::Duration::from_millis(100);
    settings.sweep.retention = std::time::Duration::from_secs(1);
    let app = spawn_with(settings, tag).await;
    let event = app.event_id("skewed");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let mut pg = diesel_async::AsyncPgConnection::establish(&app.settings.database.url)
        .await
        .unwrap();
    diesel::sql_query("UPDATE events SET ends_at = now() - interval '1 minute' WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(&event)
        .execute(&mut pg)
        .await
        .unwrap();
    let id = EventId::parse(event.clone()).unwrap();
    // A later event that ends at once: once the sweeper settled it, it has
    // visited the first one (in creation order) after that, too.
    let witness = app.event_id("witness");
    let mut req = preload_request(&witness, 10);
    req.ends_at = Some(ts(chrono::Utc::now() + chrono::Duration::seconds(1)));
    app.preload(req).await.unwrap();
    let swept = eventually(Duration::from_secs(30), || async {
        settled(&app, &witness).await
    })
    .await;
    assert!(swept, "the sweeper settled the witness");
    assert!(
        !settled(&app, &event).await,
        "not settled while redis issues"
    );
    assert_eq!(pttl(&app, &app.keys(&event).queue).await, -1);
    let r = app.issue(&event, "u1").await;
    assert_eq!(r.result, proto::IssueResult::Issued as i32);
    assert!(app.redis.event_exists(&id, 1).await.unwrap());
}
