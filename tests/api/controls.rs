//! Event controls: PauseEvent / ResumeEvent / CloseEvent / ExtendEvent take
//! effect at once in Issue, are recorded in PostgreSQL with the reason, are
//! refused with the field named on bad input (changing nothing), survive a
//! rebuild of Redis, and work as `coupond events <control>`.

use coupond::domain::EventId;
use coupond::proto::{self, IssueResult};
use tonic::Code;

use std::time::Duration;

use coupond::domain::Control;
use redis::AsyncCommands;

use crate::helpers::{
    coupond_cli, eventually, isolated_settings, preload_request, spawn_app, spawn_with, unique_tag,
    TestApp,
};

fn result(r: &proto::IssueResponse) -> IssueResult {
    IssueResult::try_from(r.result).unwrap()
}

/// The field the status's google.rpc.BadRequest detail names.
fn field(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let bad = s.get_details_bad_request().expect("a BadRequest detail");
    bad.field_violations[0].field.clone()
}

async fn live_event(app: &TestApp, name: &str) -> String {
    let event = app.event_id(name);
    app.preload(preload_request(&event, 20)).await.unwrap();
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_take_effect_at_once_and_are_recorded_with_the_reason() {
    let app = spawn_app().await;
    let event = live_event(&app, "controls").await;
    let mut admin = app.admin.clone();
    assert_eq!(result(&app.issue(&event, "u1").await), IssueResult::Issued);

    let paused = app.pause(&event, "suspicious traffic").await.unwrap();
    assert!(paused.paused);
    assert_eq!(result(&app.issue(&event, "u2").await), IssueResult::Paused);
    assert_eq!(
        result(&app.issue(&event, "u1").await),
        IssueResult::Issued,
        "paused: a holder still gets their coupon (see tests/api/precedence.rs)"
    );
    let resumed = admin
        .resume_event(proto::ResumeEventRequest {
            event_id: event.clone(),
            reason: "cleared".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert!(!resumed.paused);
    assert_eq!(result(&app.issue(&event, "u2").await), IssueResult::Issued);

    let closed = app.close(&event, "sold enough").await.unwrap();
    let closed_at = closed.ends_at.unwrap().seconds;
    assert!((closed_at - chrono::Utc::now().timestamp()).abs() <= 5);
    assert_eq!(result(&app.issue(&event, "u3").await), IssueResult::Ended);

    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let extended = app.extend(&event, later).await.unwrap();
    assert_eq!(extended.ends_at.unwrap().seconds, later.timestamp());
    assert_eq!(result(&app.issue(&event, "u3").await), IssueResult::Issued);

    let id = EventId::parse(event.clone()).unwrap();
    let controls = app.pg.controls(&id).await.unwrap();
    let seen: Vec<(&str, &str)> = controls
        .iter()
        .map(|(a, r, _, _)| (a.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("pause", "suspicious traffic"),
            ("resume", "cleared"),
            ("close", "sold enough"),
            ("extend", "demand"),
        ]
    );
    assert_eq!(
        controls[3].2.map(|t| t.timestamp()),
        Some(later.timestamp())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_controls_name_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let event = live_event(&app, "badctl").await;
    let e = app.pause(&event, "").await.unwrap_err();
    assert_eq!(
        (e.code(), field(&e)),
        (Code::InvalidArgument, "reason".into())
    );
    let e = app.pause("no such/id", "x").await.unwrap_err();
    assert_eq!(
        (e.code(), field(&e)),
        (Code::InvalidArgument, "event_id".into())
    );
    let e = app.pause(&app.event_id("missing"), "x").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let before_start = chrono::Utc::now() - chrono::Duration::days(1);
    let e = app.extend(&event, before_start).await.unwrap_err();
    assert_eq!(
        (e.code(), field(&e)),
        (Code::InvalidArgument, "ends_at".into())
    );
    // Nothing changed: still live, open and unpaused; nothing recorded.
    assert_eq!(result(&app.issue(&event, "u1").await), IssueResult::Issued);
    let id = EventId::parse(event.clone()).unwrap();
    assert!(app.pg.controls(&id).await.unwrap().is_empty());
    // Without the admin token: refused.
    let mut anonymous = coupond::proto::coupon_admin_client::CouponAdminClient::connect(format!(
        "http://{}",
        app.addr
    ))
    .await
    .unwrap();
    let e = anonymous
        .pause_event(proto::PauseEventRequest {
            event_id: event.clone(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_rebuild_and_the_cli_controls_events() {
    let app = spawn_app().await;
    let event = live_event(&app, "ctlcli").await;
    let pause = [
        "events",
        "pause",
        "--event",
        &event,
        "--reason",
        "incident 42",
    ];
    let (exit, out) = coupond_cli(&app, &pause);
    assert_eq!(exit, 0, "{out}");
    assert!(out.contains("LIVE (PAUSED)"), "{out}");

    let (exit, out) = coupond_cli(
        &app,
        &["reconcile", "--event", &event, "--rebuild-redis", "--force"],
    );
    assert_eq!(exit, 0, "{out}");
    assert_eq!(result(&app.issue(&event, "u1").await), IssueResult::Paused);

    let resume = [
        "events", "resume", "--event", &event, "--reason", "resolved",
    ];
    let (exit, out) = coupond_cli(&app, &resume);
    assert_eq!(exit, 0, "{out}");
    assert_eq!(result(&app.issue(&event, "u1").await), IssueResult::Issued);
    let extend = [
        "events",
        "extend",
        "--event",
        &event,
        "--reason",
        "r",
        "--ends-at",
        "yesterday",
    ];
    let (exit, out) = coupond_cli(&app, &extend);
    assert_ne!(exit, 0);
    assert!(out.contains("--ends-at"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_recorded_but_missed_by_redis_is_applied_by_the_sweeper() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.sweep.interval = std::time::Duration::from_millis(100);
    let app = spawn_with(settings, tag).await;
    let event = live_event(&app, "ctlhalf").await;
    let id = EventId::parse(event.clone()).unwrap();
    // PostgreSQL recorded the pause; its call died before the Redis step.
    let recorded = app
        .pg
        .apply_control(&id, &Control::Pause, "half applied")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((recorded.paused, recorded.control_seq), (true, 1));
    let meta_paused = || async {
        let mut c = app.redis.conn().await.unwrap();
        let p: Option<String> = c.hget(&app.keys(&event).meta, "paused").await.unwrap();
        p.as_deref() == Some("1")
    };
    assert!(
        eventually(Duration::from_secs(10), meta_paused).await,
        "the sweeper applied the recorded pause"
    );
    assert_eq!(result(&app.issue(&event, "u1").await), IssueResult::Paused);
    // An older control applied late changes nothing.
    let stale = coupond::domain::ControlState {
        paused: false,
        ..recorded.controls()
    };
    let stale = coupond::domain::ControlState {
        seq: stale.seq - 1,
        ..stale
    };
    let synced = app.redis.sync_controls(&id, 1, &stale).await.unwrap();
    assert_eq!(synced, coupond::store::redis::Synced::Current);
    assert_eq!(result(&app.issue(&event, "u2").await), IssueResult::Paused);
}
