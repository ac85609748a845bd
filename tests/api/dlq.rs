//! `coupond dlq list | replay`: dead letters are listed with the issuance
//! and the reason; a replay puts each back on coupon-issued once, and the
//! finalizer records a replayed issuance exactly once.

use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::{EventId, IssuanceRecord, RequestId, UserId};

use crate::common::topic_messages;
use crate::helpers::{
    coupond_cli, eventually, preload_request, spawn_without_finalizer, start_finalizer, TestApp,
};

fn dead_letters(app: &TestApp) -> i64 {
    topic_messages(&app.settings.kafka.brokers, &app.settings.kafka.dlq_topic())
}

async fn await_dead_letters(app: &TestApp, n: i64) {
    let ok = eventually(Duration::from_secs(60), || async { dead_letters(app) == n }).await;
    assert!(ok, "dead-letter topic holds {}, not {n}", dead_letters(app));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_the_reason_and_replayed_once() {
    let app = spawn_without_finalizer().await;
    let event = app.event_id("dlq");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let code = app.issue(&event, "u1").await.coupon.unwrap().code;
    let (id, user) = (
        EventId::parse(event.clone()).unwrap(),
        UserId::parse("u1").unwrap(),
    );
    let held = app.redis.issuance(&id, 1, &user).await.unwrap().unwrap();
    let record = IssuanceRecord {
        event_id: id.clone(),
        user_id: user,
        coupon: held.coupon,
        request_id: RequestId::parse("req-u1").unwrap().as_str().into(),
    };
    // What an older finalizer might have dead-lettered before a fix, and a
    // message nobody can decode (the finalizer dead-letters it).
    let publisher = app.publisher();
    let payload = coupond::kafka::message::encode(&record);
    let key = coupond::kafka::message::key(&record);
    publisher
        .dead_letter(Some(key.as_bytes()), &payload, "lost before the fix")
        .await
        .unwrap();
    publisher
        .replay(None, b"not protobuf at all")
        .await
        .unwrap();
    let finalizer = start_finalizer(&app).await;
    await_dead_letters(&app, 2).await;

    let (exit, out) = coupond_cli(&app, &["dlq", "list", "--json"]);
    assert_eq!(exit, 0, "{out}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    let ours = rows
        .iter()
        .find(|r| r["user_id"] == "u1")
        .expect("u1's letter");
    assert_eq!(
        (ours["code"].as_str(), ours["reason"].as_str()),
        (Some(code.as_str()), Some("lost before the fix"))
    );
    let garbage = rows
        .iter()
        .find(|r| r["user_id"].is_null())
        .expect("the garbage");
    assert!(
        garbage["reason"]
            .as_str()
            .unwrap()
            .contains("not a CouponIssued"),
        "{garbage}"
    );

    let (exit, out) = coupond_cli(&app, &["dlq", "replay"]);
    assert_eq!(exit, 0, "{out}");
    assert!(out.contains("replayed 2 dead letters"), "{out}");
    // The garbage comes back dead-lettered; u1 is recorded once.
    await_dead_letters(&app, 3).await;
    finalizer
        .await_finalized(&event, &HashSet::from([(code, "u1".to_string())]))
        .await;
    // A second replay takes only what was dead-lettered since.
    let (exit, out) = coupond_cli(&app, &["dlq", "replay"]);
    assert_eq!(exit, 0, "{out}");
    assert!(out.contains("replayed 1 dead letters"), "{out}");
}
