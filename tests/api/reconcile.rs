use std::collections::HashSet;
use std::process::Command;

use coupond::domain::EventId;
use coupond::proto::IssueResult;
use futures::future::join_all;
use redis::AsyncCommands;

use crate::helpers::{preload_request, spawn_app, TestApp};

/// Runs `coupond reconcile` against the test's database and Redis.
fn reconcile_cli(app: &TestApp, event: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coupond"))
        .env("COUPOND_DATABASE_URL", &app.settings.database.url)
        .env("COUPOND_REDIS_URL", &app.settings.redis.url)
        .args(["reconcile", "--event", event])
        .args(extra)
        .output()
        .expect("run coupond reconcile");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn issue_all(
    app: &TestApp,
    event: &str,
    users: &[String],
) -> Vec<(String, coupond::proto::IssueResponse)> {
    join_all(
        users
            .iter()
            .map(|u| async move { (u.clone(), app.issue(event, u).await) }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_redis_event_is_reported_rebuilt_and_issuing_goes_on_without_duplicates() {
    let app = spawn_app().await;
    let event = app.event_id("rebuild");
    let id = EventId::parse(event.clone()).unwrap();
    app.preload(preload_request(&event, 200)).await.unwrap();

    let first: Vec<String> = (0..100).map(|i| format!("early-{i}")).collect();
    let mut pairs: HashSet<(String, String)> = HashSet::new();
    for (u, r) in issue_all(&app, &event, &first).await {
        assert_eq!(r.result, IssueResult::Issued as i32);
        pairs.insert((r.coupon.unwrap().code, u));
    }
    app.await_finalized(&event, &pairs).await;
    let (code, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("CONSISTENT"), "{report}");

    // Redis loses the event (as after a restart without persistence).
    let k = app.keys(&event);
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c
        .del(&[&k.queue, &k.issued, &k.meta, &k.pending])
        .await
        .unwrap();
    assert_eq!(
        app.issue(&event, "early-0").await.result,
        IssueResult::EventNotFound as i32
    );
    let (code, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("issued in postgres only (unknown to redis): 100"),
        "{report}"
    );
    assert!(
        report.contains("available codes in neither queue nor issued: 100"),
        "{report}"
    );

    let (code, report) = reconcile_cli(&app, &event, &["--rebuild-redis"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(app.redis_state(&event).await, (true, 100, 100, 0));

    // Rebuilding a live event needs --force.
    let (code, _) = reconcile_cli(&app, &event, &["--rebuild-redis"]);
    assert_ne!(code, 0, "a live event is not rebuilt without --force");

    // Issuing goes on: old users keep their coupons, 100 new ones are left.
    // The same requests again: each is recognised by its request id.
    let again = issue_all(&app, &event, &first).await;
    for (u, r) in &again {
        assert_eq!(r.result, IssueResult::Issued as i32);
        assert!(pairs.contains(&(r.coupon.as_ref().unwrap().code.clone(), u.clone())));
    }
    let late: Vec<String> = (0..150).map(|i| format!("late-{i}")).collect();
    let mut sold_out = 0;
    for (u, r) in issue_all(&app, &event, &late).await {
        if r.result == IssueResult::Issued as i32 {
            assert!(
                pairs.insert((r.coupon.unwrap().code, u)),
                "a code went out twice"
            );
        } else {
            assert_eq!(r.result, IssueResult::SoldOut as i32);
            sold_out += 1;
        }
    }
    assert_eq!((pairs.len(), sold_out), (200, 50));
    let codes: HashSet<&String> = pairs.iter().map(|(c, _)| c).collect();
    assert_eq!(codes.len(), 200, "no code twice");
    app.await_finalized(&event, &pairs).await;
    let report = coupond::reconcile::reconcile(&app.pg, &app.redis, &id)
        .await
        .unwrap();
    assert!(report.consistent(), "{report}");
    assert_eq!((report.pg_issued, report.redis_queue), (200, 0));
}
