//! Retention: once an event has ended and every issuance is finalized, the
//! sweeper settles it (stops visiting it) and its Redis keys expire after
//! the retention time; PostgreSQL keeps the record and GetIssuance and
//! GetEvent answer from it. An extension reopens a settled event.

use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::EventId;
use coupond::proto::{self, IssuanceState};
use redis::AsyncCommands;

use crate::helpers::{
    eventually, isolated_settings, preload_request, spawn_with, ts, unique_tag, TestApp,
};

/// A server sweeping every 200 ms with `retention_secs`, and a live event
/// of 10 coupons ending in 3 s to which u1 and u2 hold finalized coupons.
async fn ending_event(retention_secs: u64) -> (TestApp, String, HashSet<(String, String)>) {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.sweep.interval_ms = 200;
    settings.sweep.retention_secs = retention_secs;
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

async fn settled(app: &TestApp, event: &str) -> bool {
    let id = EventId::parse(event).unwrap();
    app.pg.settled(&id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_event_leaves_redis_and_answers_from_postgres() {
    let (app, event, pairs) = ending_event(1).await;
    let id = EventId::parse(event.clone()).unwrap();
    let gone = eventually(Duration::from_secs(30), || async {
        settled(&app, &event).await && !app.redis.event_exists(&id).await.unwrap()
    })
    .await;
    assert!(gone, "settled and expired from redis");
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
    let ev = app
        .admin
        .clone()
        .get_event(proto::GetEventRequest { event_id: event })
        .await
        .unwrap()
        .into_inner();
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
    app.admin
        .clone()
        .extend_event(proto::ExtendEventRequest {
            event_id: event.clone(),
            ends_at: Some(ts(chrono::Utc::now() + chrono::Duration::hours(1))),
            reason: "more demand".into(),
        })
        .await
        .unwrap();
    let ttl: i64 = c.pttl(&k.queue).await.unwrap();
    assert_eq!(ttl, -1, "no expiry once reopened");
    assert!(!settled(&app, &event).await);
    let r = app.issue(&event, "u3").await;
    assert_eq!(r.result, proto::IssueResult::Issued as i32);
}
