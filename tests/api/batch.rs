use std::collections::{HashMap, HashSet};
use std::time::Duration;

use coupond::domain::{EventId, IssuanceRecord, IssueOutcome, IssuedCoupon, RequestId, UserId};
use coupond::proto::{self, IssueResult};
use coupond::store::redis::Verdict;
use futures::StreamExt;

use crate::helpers::{preload_request, spawn_app, spawn_unswept, TestApp};

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

/// Issues one coupon to each of `users` in one script call.
async fn issue_all_at_once(app: &TestApp, id: &EventId, users: &[&str]) -> Vec<IssuedCoupon> {
    let users = ids(users);
    let items: Vec<_> = users.iter().map(|(u, r)| (u, r)).collect();
    let verdicts = app.redis.issue_batch(id, &items).await.unwrap();
    verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Decided(IssueOutcome::Issued(c)) => c,
            other => panic!("a code for every user: {other:?}"),
        })
        .collect()
}

/// Every record of the event's issued hash, user -> record.
async fn records(app: &TestApp, event: &str) -> HashMap<String, String> {
    let mut c = app.redis.conn().await.unwrap();
    redis::cmd("HGETALL")
        .arg(&app.keys(event).issued)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// More users in one call than a script hands one Redis command (4,000):
/// the sweep's claim and the finalize each take 9,000 at once, and the
/// items of one call are decided in order, as separate calls would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_finalize_take_more_users_than_a_slice_and_decide_in_order() {
    const N: usize = 9_000;
    let app = spawn_unswept().await;
    let event = app.event_id("slices");
    app.preload(preload_request(&event, N as u32))
        .await
        .unwrap();
    let id = EventId::parse(event.clone()).unwrap();
    let names: Vec<String> = (0..N).map(|i| format!("u{i}")).collect();
    let users: Vec<UserId> = names
        .iter()
        .map(|u| UserId::parse(u.as_str()).unwrap())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let coupons = issue_all_at_once(&app, &id, &refs).await;
    let codes: HashSet<&str> = coupons.iter().map(|c| c.code.as_str()).collect();
    assert_eq!(codes.len(), N, "a distinct code each");

    // u0 is final already but still pending; every issuance looks 2 h old.
    let first = [(&users[0], coupons[0].code.as_str())];
    assert_eq!(app.redis.finalize(&id, 1, &first).await.unwrap().done, 1);
    let old = chrono::Utc::now().timestamp_millis() - 7_200_000;
    let mut c = app.redis.conn().await.unwrap();
    let mut aging = redis::cmd("ZADD");
    aging.arg(&app.keys(&event).pending);
    for u in &names {
        aging.arg(old).arg(u);
    }
    let _: () = aging.query_async(&mut c).await.unwrap();

    let (age, max_age) = (Duration::from_secs(5), Duration::from_secs(60));
    let claimed = app
        .redis
        .claim_stale(&id, 1, age, max_age, N + 10)
        .await
        .unwrap();
    let claimed: HashSet<&str> = claimed.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        claimed,
        refs[1..].iter().copied().collect(),
        "all but the final one"
    );
    let pending: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(&app.keys(&event).pending)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pending.len(), N - 1, "the final one left the pending set");
    assert!(
        pending.iter().all(|(_, at)| *at > old),
        "each claim re-scored"
    );

    // Everyone's code, then a stale code for u1 and u2 named twice.
    let mut items: Vec<(&UserId, &str)> = (1..N)
        .map(|i| (&users[i], coupons[i].code.as_str()))
        .collect();
    items.push((&users[1], "not-u1s-code"));
    items.push((&users[2], coupons[2].code.as_str()));
    let ghost = UserId::parse("ghost").unwrap();
    items.push((&ghost, coupons[0].code.as_str()));
    let found = app.redis.finalize(&id, 1, &items).await.unwrap();
    assert_eq!(
        found.done as usize, N,
        "N - 1 finalized, the repeat counted, the stale one and the unknown user not"
    );
    assert_eq!(
        found.unknown,
        vec![items.len() - 1],
        "only the user Redis has no record of"
    );
    assert_eq!(app.redis_state(&event).await.3, 0, "nothing pending");
    let recs = records(&app, &event).await;
    assert_eq!(recs.len(), N);
    for (i, u) in names.iter().enumerate() {
        let rec = &recs[u];
        assert!(
            rec.starts_with(&format!("{}\t", coupons[i].code)),
            "{u}: {rec}"
        );
        assert!(rec.ends_with('F'), "{u} final: {rec}");
    }
}

/// A batch of refusals in one call: a pending issuance becomes conflicted,
/// a final one is left alone, and a user Redis does not know, named twice
/// with two codes, gets the first refused record only (the second is stale
/// against it), as two calls would leave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_in_one_call_are_decided_in_order() {
    let app = spawn_unswept().await;
    let event = app.event_id("conflicts");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let id = EventId::parse(event.clone()).unwrap();
    let coupons = issue_all_at_once(&app, &id, &["late", "done", "x", "y"]).await;
    let done = UserId::parse("done").unwrap();
    let finalized = [(&done, coupons[1].code.as_str())];
    assert_eq!(
        app.redis.finalize(&id, 1, &finalized).await.unwrap().done,
        1
    );

    let record = |user: &str, coupon: &IssuedCoupon| IssuanceRecord {
        event_id: id.clone(),
        user_id: UserId::parse(user).unwrap(),
        coupon: coupon.clone(),
        request_id: format!("r-{user}"),
    };
    let refused = [
        record("late", &coupons[0]),
        record("done", &coupons[1]),
        record("ghost", &coupons[2]),
        record("ghost", &coupons[3]),
    ];
    let items: Vec<&IssuanceRecord> = refused.iter().collect();
    let ttl = Duration::from_secs(3600);
    let marked = app
        .redis
        .mark_conflicted(&id, 1, &items, ttl)
        .await
        .unwrap();
    assert_eq!(marked, 2, "late and the ghost's first");

    let recs = records(&app, &event).await;
    assert!(recs["late"].ends_with('C'), "{}", recs["late"]);
    assert!(recs["done"].ends_with('F'), "{}", recs["done"]);
    let ghost = &recs["ghost"];
    assert!(
        ghost.starts_with(&format!("{}\t", coupons[2].code)),
        "{ghost}"
    );
    assert!(ghost.ends_with('C'), "{ghost}");
    let mut c = app.redis.conn().await.unwrap();
    let conflicts: HashSet<String> = redis::cmd("SMEMBERS")
        .arg(&app.keys(&event).conflicts)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(conflicts, ["late", "ghost"].map(String::from).into());
    // x and y still pending; late left.
    assert_eq!(app.redis_state(&event).await.3, 2);
}
