//! What a user holds decides first. A user who was issued a coupon is
//! answered ISSUED with it when repeating the request that issued it, and
//! ALREADY_ISSUED with it when asking anew, whatever happened to the event
//! since: paused, closed, its window ended, sold out, taken offline for a
//! rebuild, lost from Redis, or expired from Redis after retention. The
//! event's state decides only for users who hold nothing. Unary and stream.

use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::EventId;
use coupond::proto::{self, IssueResult};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    eventually, isolated_settings, lose_event_in_redis, preload_request, spawn_app, spawn_with, ts,
    unique_tag, TestApp,
};

const HOLDER: &str = "holder";
const FIRST_REQUEST: &str = "r-first";

/// What one ask was told: a result with its coupon's code, or (unary) a
/// gRPC status code.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Result(IssueResult, Option<String>),
    Status(Code),
}

fn told(r: &proto::IssueResponse) -> Told {
    Told::Result(
        IssueResult::try_from(r.result).unwrap(),
        r.coupon.as_ref().map(|c| c.code.clone()),
    )
}

fn request(event: &str, user: &str, request_id: &str) -> proto::IssueRequest {
    proto::IssueRequest {
        event_id: event.into(),
        user_id: user.into(),
        request_id: request_id.into(),
    }
}

/// The three asks: the holder repeating the request that issued it, the
/// holder with a new request id, and a user who never held a coupon.
fn asks(event: &str, round: &str) -> [proto::IssueRequest; 3] {
    [
        request(event, HOLDER, FIRST_REQUEST),
        request(event, HOLDER, &format!("r-again-{round}")),
        request(
            event,
            &format!("nobody-{round}"),
            &format!("r-nobody-{round}"),
        ),
    ]
}

async fn ask_unary(app: &TestApp, r: proto::IssueRequest) -> Told {
    match app.issuer.clone().issue(r).await {
        Ok(resp) => told(&resp.into_inner()),
        Err(s) => {
            if s.code() == Code::Unavailable {
                assert!(
                    s.get_details_retry_info().is_some(),
                    "UNAVAILABLE carries a retry hint: {s:?}"
                );
            }
            Told::Status(s.code())
        }
    }
}

async fn ask_stream(app: &TestApp, reqs: Vec<proto::IssueRequest>) -> Vec<Told> {
    app.issue_stream(reqs).await.iter().map(told).collect()
}

/// Asks the three, unary then on a stream, and checks every answer: the
/// holder keeps `code`; the user holding nothing is told `unary` and
/// `streamed`.
async fn check(app: &TestApp, event: &str, state: &str, code: &str, nobody: (Told, Told)) {
    let holder = |r| Told::Result(r, Some(code.to_owned()));
    let expected = |for_nobody: &Told| {
        vec![
            holder(IssueResult::Issued),
            holder(IssueResult::AlreadyIssued),
            for_nobody.clone(),
        ]
    };
    let mut unary = Vec::new();
    for r in asks(event, "unary") {
        unary.push(ask_unary(app, r).await);
    }
    assert_eq!(unary, expected(&nobody.0), "{state}, unary");
    let streamed = ask_stream(app, asks(event, "stream").to_vec()).await;
    assert_eq!(streamed, expected(&nobody.1), "{state}, stream");
}

/// A live event of `total` coupons to which the holder was issued one by
/// `FIRST_REQUEST`; returns its code.
async fn held(app: &TestApp, event: &str, req: proto::PreloadRequest) -> String {
    app.preload(req).await.unwrap();
    let first = ask_unary(app, request(event, HOLDER, FIRST_REQUEST)).await;
    match first {
        Told::Result(IssueResult::Issued, Some(code)) => code,
        other => panic!("{event}: first ask {other:?}"),
    }
}

/// Waits until PostgreSQL records the holder's coupon.
async fn finalized(app: &TestApp, event: &str, code: &str) {
    let pairs = HashSet::from([(code.to_owned(), HOLDER.to_owned())]);
    app.await_finalized(event, &pairs).await;
}

fn same(r: IssueResult) -> (Told, Told) {
    (Told::Result(r, None), Told::Result(r, None))
}

fn unavailable() -> (Told, Told) {
    (
        Told::Status(Code::Unavailable),
        Told::Result(IssueResult::Unavailable, None),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_keeps_their_coupon_whatever_happened_to_the_event() {
    let app = spawn_app().await;

    let paused = app.event_id("paused");
    let code = held(&app, &paused, preload_request(&paused, 10)).await;
    app.pause(&paused, "test").await.unwrap();
    check(&app, &paused, "paused", &code, same(IssueResult::Paused)).await;

    let closed = app.event_id("closed");
    let code = held(&app, &closed, preload_request(&closed, 10)).await;
    app.close(&closed, "test").await.unwrap();
    check(&app, &closed, "closed", &code, same(IssueResult::Ended)).await;

    let ended = app.event_id("ended");
    let mut req = preload_request(&ended, 10);
    let ends_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    req.ends_at = Some(ts(ends_at));
    let code = held(&app, &ended, req).await;
    let past = eventually(Duration::from_secs(10), || async {
        chrono::Utc::now() > ends_at + chrono::Duration::milliseconds(50)
    })
    .await;
    assert!(past);
    check(
        &app,
        &ended,
        "window ended",
        &code,
        same(IssueResult::Ended),
    )
    .await;

    let sold_out = app.event_id("soldout");
    let code = held(&app, &sold_out, preload_request(&sold_out, 3)).await;
    for u in ["other-1", "other-2"] {
        let r = ask_unary(&app, request(&sold_out, u, u)).await;
        assert!(matches!(r, Told::Result(IssueResult::Issued, _)), "{r:?}");
    }
    check(
        &app,
        &sold_out,
        "sold out",
        &code,
        same(IssueResult::SoldOut),
    )
    .await;

    let offline = app.event_id("offline");
    let code = held(&app, &offline, preload_request(&offline, 10)).await;
    assert!(app
        .redis
        .take_offline(&app.keys(&offline), "test")
        .await
        .unwrap());
    check(
        &app,
        &offline,
        "offline for a rebuild",
        &code,
        unavailable(),
    )
    .await;

    // Redis lost the event (its keys deleted) while its window is open.
    let lost = app.event_id("lost");
    let code = held(&app, &lost, preload_request(&lost, 10)).await;
    finalized(&app, &lost, &code).await;
    lose_event_in_redis(&app, &lost).await;
    check(&app, &lost, "lost from redis", &code, unavailable()).await;

    // An id nobody preloaded is the only one told EVENT_NOT_FOUND.
    let unknown = app.event_id("never");
    let r = ask_unary(&app, request(&unknown, HOLDER, FIRST_REQUEST)).await;
    assert_eq!(r, Told::Result(IssueResult::EventNotFound, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_keeps_their_coupon_after_retention_expired_the_event_from_redis() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.sweep.interval = std::time::Duration::from_millis(200);
    settings.sweep.retention = std::time::Duration::from_secs(1);
    let app = spawn_with(settings, tag).await;
    let event = app.event_id("expired");
    let mut req = preload_request(&event, 10);
    req.ends_at = Some(ts(chrono::Utc::now() + chrono::Duration::seconds(2)));
    let code = held(&app, &event, req).await;
    finalized(&app, &event, &code).await;
    let id = EventId::parse(event.clone()).unwrap();
    let gone = eventually(Duration::from_secs(30), || async {
        app.pg.settled(&id).await.unwrap() && app.redis_state(&event).await == (false, 0, 0, 0)
    })
    .await;
    assert!(gone, "settled and expired from redis");
    check(
        &app,
        &event,
        "retention expired",
        &code,
        same(IssueResult::Ended),
    )
    .await;
    assert_eq!(
        app.redis_state(&event).await,
        (false, 0, 0, 0),
        "answering from postgres wrote nothing to redis"
    );
}

/// The server's own retry after a lost reply meets the same precedence: the
/// script ran and issued, its reply was lost, the event was paused before
/// the retry, and the retry still answers ISSUED with the coupon the first
/// run recorded (not PAUSED: "nothing was issued").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_lost_before_a_pause_is_still_answered_issued_on_the_retry() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    let direct = settings.redis.url.clone();
    let upstream = direct.trim_start_matches("redis://").parse().unwrap();
    let proxy = crate::common::proxy::RedisProxy::start(upstream).await;
    settings.redis.url = proxy.url();
    let app = spawn_with(settings, tag).await;
    let redis = coupond::store::RedisStore::connect(&direct, 2).unwrap();
    let event = app.event_id("lostreply");
    app.preload(preload_request(&event, 10)).await.unwrap();
    // The script is loaded; the next EVALSHA of it is the one whose reply
    // gets lost.
    let warm = ask_unary(&app, request(&event, "warm", "warm")).await;
    assert!(matches!(warm, Told::Result(IssueResult::Issued, _)));
    let script = redis::Script::new(include_str!("../../scripts/lua/issue.lua"));
    proxy.lose_reply_to(script.get_hash().as_bytes());

    let asking = {
        let app_issuer = app.issuer.clone();
        let r = request(&event, "u1", "r1");
        tokio::spawn(async move { app_issuer.clone().issue(r).await })
    };
    tokio::time::timeout(Duration::from_secs(10), proxy.lost())
        .await
        .expect("the issue script's reply was lost");
    let recorded = redis
        .issuance(
            &EventId::parse(event.clone()).unwrap(),
            1,
            &coupond::domain::UserId::parse("u1").unwrap(),
        )
        .await
        .unwrap()
        .expect("the script ran and recorded u1");
    let mut c = redis.conn().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&app.keys(&event).meta)
        .arg("paused")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.release();

    let answer = asking.await.unwrap().expect("answered").into_inner();
    assert_eq!(
        told(&answer),
        Told::Result(IssueResult::Issued, Some(recorded.coupon.code.clone())),
        "the retry answers what the lost reply said"
    );
    // The same without a request id: the server's own id for the call lets
    // its retry recognise the issuance (ISSUED, not ALREADY_ISSUED).
    let _: () = redis::cmd("HDEL")
        .arg(&app.keys(&event).meta)
        .arg("paused")
        .query_async(&mut c)
        .await
        .unwrap();
    proxy.lose_reply_to(script.get_hash().as_bytes());
    let asking = {
        let app_issuer = app.issuer.clone();
        let r = request(&event, "u3", "");
        tokio::spawn(async move { app_issuer.clone().issue(r).await })
    };
    tokio::time::timeout(Duration::from_secs(10), proxy.lost())
        .await
        .expect("the second reply was lost");
    proxy.release();
    let answer = asking.await.unwrap().expect("answered").into_inner();
    assert_eq!(
        answer.result,
        IssueResult::Issued as i32,
        "a request without an id is recognised by the server's own: {answer:?}"
    );
    let _: () = redis::cmd("HSET")
        .arg(&app.keys(&event).meta)
        .arg("paused")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    let nobody = ask_unary(&app, request(&event, "u2", "r2")).await;
    assert_eq!(nobody, Told::Result(IssueResult::Paused, None));
    assert_eq!(
        app.redis_state(&event).await.2,
        3,
        "warm, u1 and u3, once each"
    );
}

/// Redis lost a live event while an issuance of it was still on its way to
/// PostgreSQL, and the event was closed since: the holder asking again must
/// not be told ENDED ("nothing was issued"); only a settled event (nothing
/// pending) can say so. Until a rebuild, everyone holding nothing in
/// PostgreSQL is told to try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_of_an_issuance_in_flight_is_never_told_ended_by_a_lost_event() {
    let app = crate::helpers::spawn_without_finalizer().await;
    let event = app.event_id("inflight");
    let code = held(&app, &event, preload_request(&event, 10)).await;
    crate::helpers::lose_event_in_redis(&app, &event).await;
    let id = EventId::parse(event.clone()).unwrap();
    let when = chrono::Utc::now();
    app.pg
        .apply_control(&id, &coupond::domain::Control::Close(when), "closed")
        .await
        .unwrap();
    let again = ask_unary(&app, request(&event, HOLDER, FIRST_REQUEST)).await;
    assert_eq!(
        again,
        Told::Status(Code::Unavailable),
        "not ENDED: {code} is in flight"
    );
    let streamed = ask_stream(&app, vec![request(&event, HOLDER, FIRST_REQUEST)]).await;
    assert_eq!(streamed, vec![Told::Result(IssueResult::Unavailable, None)]);
}
