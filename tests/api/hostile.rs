use std::time::Duration;

use coupond::proto::{self, IssueResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::Code;

use crate::helpers::{preload_request, spawn_app, TestApp};

/// The same field numbers as `IssueRequest`, but bytes, so a test can send
/// what no well-behaved client would: invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawIssueRequest {
    #[prost(bytes = "vec", tag = "1")]
    event_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    user_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    request_id: Vec<u8>,
}

async fn raw_issue(
    app: &TestApp,
    raw: RawIssueRequest,
) -> Result<proto::IssueResponse, tonic::Status> {
    let ch = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawIssueRequest, proto::IssueResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/coupon.v1.CouponIssuer/Issue");
    grpc.unary(tonic::Request::new(raw), path, codec)
        .await
        .map(|r| r.into_inner())
}

/// The server still answers a normal call.
async fn still_serving(app: &TestApp, event: &str, user: &str) {
    let r = tokio::time::timeout(Duration::from_secs(10), app.issue(event, user)).await;
    assert_eq!(
        r.expect("server answers").result,
        IssueResult::Issued as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_oversized_messages_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let event = app.event_id("hostile");
    app.preload(preload_request(&event, 10)).await.unwrap();

    let err = raw_issue(
        &app,
        RawIssueRequest {
            event_id: event.clone().into_bytes(),
            user_id: vec![b'u', 0xff, 0xfe],
            request_id: vec![],
        },
    )
    .await
    .unwrap_err();
    // gRPC's status-code guide maps unparseable messages to INTERNAL.
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("user_id"), "{}", err.message());

    let err = app
        .issuer
        .clone()
        .issue(proto::IssueRequest {
            event_id: event.clone(),
            user_id: "u".repeat(2 << 20),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{}", err.message());
    assert_eq!(app.redis_state(&event).await, (true, 10, 0, 0));
    still_serving(&app, &event, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_and_non_grpc_clients_do_not_hurt_the_server() {
    let app = spawn_app().await;
    let event = app.event_id("garbage");
    app.preload(preload_request(&event, 10)).await.unwrap();

    // Raw garbage, and an HTTP/1.1 request, on the gRPC port.
    for payload in [
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<u8>>(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
    ] {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let _ = s.write_all(&payload).await;
        let mut buf = [0u8; 1024];
        // The server answers or closes; either way it does not hang us.
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    }

    // A well-formed HTTP/2 client that does not speak gRPC.
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}/", app.addr))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("an answer, not a hang")
        .expect("a response");
    // Unknown paths get a trailers-only UNIMPLEMENTED answer.
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(grpc_status.as_deref(), Some("12"), "{:?}", resp.headers());

    still_serving(&app, &event, "after-garbage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_deadline_leaves_either_a_whole_issuance_or_nothing() {
    let app = spawn_app().await;
    let event = app.event_id("deadline");
    app.preload(preload_request(&event, 500)).await.unwrap();

    let mut expired = 0;
    for i in 0..120u64 {
        let user = format!("hurried-{i}");
        let mut req = tonic::Request::new(proto::IssueRequest {
            event_id: event.clone(),
            user_id: user.clone(),
            request_id: String::new(),
        });
        req.set_timeout(Duration::from_micros(50 + 40 * i));
        let first = app.issuer.clone().issue(req).await;
        if let Err(s) = &first {
            assert!(
                matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled),
                "{s:?}"
            );
            expired += 1;
        }
        // Whatever happened, the state is whole: a retry either issues (the
        // expired call took nothing) or returns the coupon the expired call
        // took, and GetIssuance agrees with it. (An expired call may still
        // be in flight on the server, so GetIssuance alone could answer
        // before it lands; the retry is ordered after it per user.)
        let retry = app.issue(&event, &user).await;
        assert!(
            retry.result == IssueResult::Issued as i32
                || retry.result == IssueResult::AlreadyIssued as i32,
            "{retry:?}"
        );
        let held = app
            .issuer
            .clone()
            .get_issuance(proto::GetIssuanceRequest {
                event_id: event.clone(),
                user_id: user.clone(),
            })
            .await
            .expect("the user holds a coupon after the retry");
        assert_eq!(
            retry.coupon.unwrap().code,
            held.into_inner().coupon.unwrap().code
        );
        if let Ok(r) = first {
            assert_eq!(r.into_inner().result, IssueResult::Issued as i32);
        }
    }
    assert!(expired > 0, "some deadlines expired");
    let (_, remaining, issued, _) = app.redis_state(&event).await;
    assert_eq!(
        (remaining, issued),
        (380, 120),
        "one coupon per user, none lost"
    );
}
