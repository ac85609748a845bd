use coupond::proto::{self, IssueResult};
use futures::future::join_all;

use crate::helpers::{check_thousand_issued, issue_request, preload_request, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_users_over_streams_get_exactly_one_thousand_coupons() {
    let app = spawn_app().await;
    let event = app.event_id("stream");
    app.preload(preload_request(&event, 1000)).await.unwrap();

    // Four concurrent streams of 500 distinct users each.
    let chunks: Vec<Vec<String>> = (0..4)
        .map(|s| (0..500).map(|i| format!("s{s}-user-{i}")).collect())
        .collect();
    let results = join_all(chunks.iter().map(|users| {
        let reqs = users.iter().map(|u| issue_request(&event, u)).collect();
        app.issue_stream(reqs)
    }))
    .await;

    let mut responses = Vec::new();
    for (users, got) in chunks.iter().zip(results) {
        assert_eq!(got.len(), users.len(), "one response per request");
        // Responses come back in request order.
        for (u, r) in users.iter().zip(&got) {
            assert_eq!(r.request_id, format!("req-{u}"));
        }
        responses.extend(users.iter().cloned().zip(got));
    }
    let issued = check_thousand_issued(&responses);
    app.await_finalized(&event, &issued).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_get_invalid_and_the_stream_goes_on() {
    let app = spawn_app().await;
    let event = app.event_id("mixed");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let reqs = vec![
        issue_request(&event, "ok-1"),
        issue_request(&event, ""),
        issue_request("bad event id", "u"),
        issue_request(&event, &"x".repeat(129)),
        issue_request(&event, "ctl\u{1}"),
        proto::IssueRequest {
            event_id: event.clone(),
            user_id: "ok-2".into(),
            request_id: "r\n".into(),
        },
        issue_request(&event, "ok-2"),
        // A new request of a user who holds a coupon.
        proto::IssueRequest {
            request_id: "again".into(),
            ..issue_request(&event, "ok-1")
        },
    ];
    let got = app.issue_stream(reqs).await;
    let results: Vec<i32> = got.iter().map(|r| r.result).collect();
    use IssueResult::*;
    assert_eq!(
        results,
        [
            Issued,
            Invalid,
            Invalid,
            Invalid,
            Invalid,
            Invalid,
            Issued,
            AlreadyIssued
        ]
        .map(|r| r as i32)
        .to_vec()
    );
    assert!(got[1].detail.contains("user_id"), "{}", got[1].detail);
    assert!(got[2].detail.contains("event_id"), "{}", got[2].detail);
    assert!(got[5].detail.contains("request_id"), "{}", got[5].detail);
    assert_eq!(
        got[7].coupon, got[0].coupon,
        "the repeat gets the same coupon"
    );
    let (_, remaining, issued, _) = app.redis_state(&event).await;
    assert_eq!((remaining, issued), (8, 2), "invalid items took nothing");
}
