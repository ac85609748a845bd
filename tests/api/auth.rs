use coupond::client::BearerToken;
use coupond::proto::coupon_admin_client::CouponAdminClient;
use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, IssueResult};
use tonic::transport::Channel;
use tonic::Code;

use crate::helpers::{
    isolated_settings, preload_request, serve_settings, spawn_app, spawn_serving, unique_tag,
    ADMIN_TOKEN,
};

async fn admin_with(
    addr: std::net::SocketAddr,
    token: Option<&str>,
) -> CouponAdminClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    CouponAdminClient::with_interceptor(ch, BearerToken::new(token).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_right_token() {
    let app = spawn_app().await;
    let event = app.event_id("auth");
    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some("wrong-token-0123456789"), Code::Unauthenticated),
    ] {
        let err = admin_with(app.addr, token)
            .await
            .preload(preload_request(&event, 5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code);
    }
    assert!(
        !app.redis_state(&event).await.0,
        "refused calls change nothing"
    );
    admin_with(app.addr, Some(ADMIN_TOKEN))
        .await
        .preload(preload_request(&event, 5))
        .await
        .expect("the right token is let in");
    // The issuer is open by default (trusted internal network).
    assert_eq!(
        app.issue(&event, "u").await.result,
        IssueResult::Issued as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_admin_is_closed_unless_insecure_dev() {
    for insecure in [false, true] {
        let tag = unique_tag();
        let mut serve = serve_settings();
        serve.auth.admin_token = None;
        serve.auth.insecure_dev = insecure;
        let app = spawn_serving(isolated_settings(&tag).await, serve, tag).await;
        let r = admin_with(app.addr, None)
            .await
            .get_event(proto::GetEventRequest {
                event_id: app.event_id("none"),
            })
            .await;
        match (insecure, r) {
            (false, Err(s)) => assert_eq!(s.code(), Code::PermissionDenied),
            (true, Err(s)) => {
                assert_eq!(s.code(), Code::NotFound, "open, and the event is unknown")
            }
            (_, Ok(_)) => panic!("no such event"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_token_when_configured_is_required() {
    let tag = unique_tag();
    let mut serve = serve_settings();
    serve.auth.issuer_token = Some("issuer-token-0123456789".into());
    let app = spawn_serving(isolated_settings(&tag).await, serve, tag).await;
    let event = app.event_id("issuer-auth");
    app.preload(preload_request(&event, 5)).await.unwrap();
    let ch = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = || proto::IssueRequest {
        event_id: event.clone(),
        user_id: "u".into(),
        request_id: String::new(),
    };
    for token in [None, Some("issuer-token-WRONG456789")] {
        let err =
            CouponIssuerClient::with_interceptor(ch.clone(), BearerToken::new(token).unwrap())
                .issue(req())
                .await
                .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    assert_eq!(
        app.redis_state(&event).await.2,
        0,
        "nothing issued to refused callers"
    );
    let ok = CouponIssuerClient::with_interceptor(
        ch,
        BearerToken::new(Some("issuer-token-0123456789")).unwrap(),
    )
    .issue(req())
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ok.result, IssueResult::Issued as i32);
}
