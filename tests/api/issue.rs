use std::collections::HashSet;

use chrono::Utc;
use coupond::proto::{self, IssueResult};
use futures::future::join_all;

use crate::helpers::{check_thousand_issued, preload_request, spawn_app, ts};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_concurrent_users_get_exactly_one_thousand_coupons_all_finalized() {
    let app = spawn_app().await;
    let event = app.event_id("unary");
    let started = std::time::Instant::now();
    let r = app
        .preload(preload_request(&event, 1000))
        .await
        .expect("preload");
    assert_eq!(r.counts_per_policy, vec![334, 333, 333]);

    let users: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
    let responses = join_all(users.iter().map(|u| {
        let app = &app;
        let event = &event;
        async move { (u.clone(), app.issue(event, u).await) }
    }))
    .await;
    let issued = check_thousand_issued(&responses);
    app.await_finalized(&event, &issued).await;
    let (_, remaining, issued_n, _) = app.redis_state(&event).await;
    assert_eq!((remaining, issued_n), (0, 1000));
    eprintln!("end-to-end unary test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_again_returns_the_same_coupon() {
    let app = spawn_app().await;
    let event = app.event_id("again");
    app.preload(preload_request(&event, 5)).await.unwrap();
    let first = app.issue(&event, "alice").await;
    assert_eq!(first.result, IssueResult::Issued as i32);
    // A new request (another request id) of the same user.
    let again = app.issue_as(&event, "alice", "tap-2").await;
    assert_eq!(again.result, IssueResult::AlreadyIssued as i32);
    assert_eq!(again.coupon, first.coupon, "same coupon, same issued_at");
    // The first request asked again (its answer was lost): it is this
    // request's coupon, so ISSUED, the same one.
    let retried = app.issue(&event, "alice").await;
    assert_eq!(retried.result, IssueResult::Issued as i32);
    assert_eq!(retried.coupon, first.coupon);
    let (_, remaining, issued, _) = app.redis_state(&event).await;
    assert_eq!((remaining, issued), (4, 1), "the later calls took nothing");

    // GetIssuance sees it, PENDING until finalized, then FINALIZED.
    let code = first.coupon.unwrap().code;
    let pairs: HashSet<_> = [(code.clone(), "alice".to_string())].into();
    app.await_finalized(&event, &pairs).await;
    let g = app
        .issuer
        .clone()
        .get_issuance(proto::GetIssuanceRequest {
            event_id: event.clone(),
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.coupon.unwrap().code, code);
    assert_eq!(g.state, proto::IssuanceState::Finalized as i32);
    assert_eq!(g.request_id, "req-alice");

    let none = app
        .issuer
        .clone()
        .get_issuance(proto::GetIssuanceRequest {
            event_id: event.clone(),
            user_id: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_and_unknown_events_are_reported() {
    let app = spawn_app().await;
    let now = Utc::now();

    let future = app.event_id("future");
    let mut req = preload_request(&future, 3);
    req.starts_at = Some(ts(now + chrono::Duration::hours(1)));
    req.ends_at = Some(ts(now + chrono::Duration::hours(2)));
    app.preload(req).await.unwrap();
    assert_eq!(
        app.issue(&future, "u").await.result,
        IssueResult::NotStarted as i32
    );

    let past = app.event_id("past");
    let mut req = preload_request(&past, 3);
    req.starts_at = Some(ts(now - chrono::Duration::hours(2)));
    req.ends_at = Some(ts(now - chrono::Duration::hours(1)));
    app.preload(req).await.unwrap();
    assert_eq!(
        app.issue(&past, "u").await.result,
        IssueResult::Ended as i32
    );

    let missing = app.event_id("missing");
    let r = app.issue(&missing, "u").await;
    assert_eq!(r.result, IssueResult::EventNotFound as i32);
    assert!(r.coupon.is_none());

    // Nothing was taken from either queue.
    for e in [&future, &past] {
        let (live, remaining, issued, pending) = app.redis_state(e).await;
        assert_eq!((live, remaining, issued, pending), (true, 3, 0, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_event_reports_policies_and_counts() {
    let app = spawn_app().await;
    let event = app.event_id("counts");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let mut issued = HashSet::new();
    for u in ["a", "b", "c"] {
        let r = app.issue(&event, u).await;
        issued.insert((r.coupon.unwrap().code, u.to_string()));
    }
    app.await_finalized(&event, &issued).await;
    let e = app.get_event(&event).await;
    assert_eq!(e.event_id, event);
    assert_eq!(e.total_count, 10);
    assert_eq!(
        e.policies
            .iter()
            .map(|p| p.coupon_count)
            .collect::<Vec<_>>(),
        vec![4, 3, 3]
    );
    assert_eq!(
        (e.remaining_count, e.issued_count, e.finalized_count),
        (7, 3, 3)
    );

    let missing = app
        .admin
        .clone()
        .get_event(proto::GetEventRequest {
            event_id: app.event_id("nope"),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}
