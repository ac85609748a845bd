use coupond::domain::{EventId, IssueOutcome, RequestId, UserId};
use coupond::proto::{self, IssueResult};
use coupond::store::redis::Verdict;
use futures::StreamExt;

use crate::helpers::{preload_request, spawn_app};

fn ids(users: &[&str]) -> Vec<(UserId, RequestId)> {
    // Each item is a request of its own (a repeated user is a new request).
    users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            (
                UserId::parse(*u).unwrap(),
                RequestId::parse(format!("r{i}-{u}")).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_script_call_issues_a_repeated_user_once_and_sells_out_mid_batch() {
    let app = spawn_app().await;
    let event = app.event_id("batch");
    app.preload(preload_request(&event, 3)).await.unwrap();
    let id = EventId::parse(event.clone()).unwrap();

    let users = ids(&["a", "b", "a", "c", "d", "e", "b"]);
    let items: Vec<_> = users.iter().map(|(u, r)| (u, r)).collect();
    let out: Vec<IssueOutcome> = app
        .redis
        .issue_batch(&id, &items)
        .await
        .unwrap()
        .into_iter()
        .map(|v| match v {
            Verdict::Decided(o) => o,
            other => panic!("the live event decides: {other:?}"),
        })
        .collect();
    assert_eq!(out.len(), 7, "one outcome per item, in order");
    let code = |o: &IssueOutcome| match o {
        IssueOutcome::Issued(c) | IssueOutcome::AlreadyIssued(c) => c.code.clone(),
        other => panic!("no coupon in {other:?}"),
    };
    assert!(matches!(out[0], IssueOutcome::Issued(_)));
    assert!(matches!(out[1], IssueOutcome::Issued(_)));
    assert!(
        matches!(out[2], IssueOutcome::AlreadyIssued(_)),
        "{:?}",
        out[2]
    );
    assert_eq!(
        code(&out[2]),
        code(&out[0]),
        "the repeat gets the same coupon"
    );
    assert!(matches!(out[3], IssueOutcome::Issued(_)));
    assert_eq!(out[4], IssueOutcome::SoldOut, "sold out mid-batch");
    assert_eq!(out[5], IssueOutcome::SoldOut);
    assert!(
        matches!(out[6], IssueOutcome::AlreadyIssued(_)),
        "a holder still gets theirs after sell-out"
    );
    assert_eq!(code(&out[6]), code(&out[1]));
    assert_eq!(app.redis_state(&event).await, (true, 0, 3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_mixing_events_answers_each_item_for_its_own_event() {
    let app = spawn_app().await;
    let (e1, e2) = (app.event_id("mix-1"), app.event_id("mix-2"));
    app.preload(preload_request(&e1, 2)).await.unwrap();
    app.preload(preload_request(&e2, 1)).await.unwrap();
    let missing = app.event_id("mix-missing");
    let reqs: Vec<proto::IssueRequest> = [
        (&e1, "u1"),
        (&e2, "u1"),
        (&missing, "u1"),
        (&e1, "u2"),
        (&e2, "u2"),
        (&e1, "u3"),
        (&e2, "u1"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (e, u))| proto::IssueRequest {
        event_id: (*e).clone(),
        user_id: (*u).into(),
        request_id: i.to_string(),
    })
    .collect();
    let got: Vec<proto::IssueResponse> = app
        .issuer
        .clone()
        .issue_stream(futures::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    use IssueResult::*;
    let results: Vec<i32> = got.iter().map(|r| r.result).collect();
    assert_eq!(
        results,
        [
            Issued,
            Issued,
            EventNotFound,
            Issued,
            SoldOut,
            SoldOut,
            AlreadyIssued
        ]
        .map(|r| r as i32)
        .to_vec()
    );
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.request_id, i.to_string());
    }
    assert_eq!(got[6].coupon, got[1].coupon);
    let (_, remaining, issued, _) = app.redis_state(&e1).await;
    assert_eq!((remaining, issued), (0, 2));
    assert_eq!(app.redis_state(&e2).await.2, 1);
}
