//! gRPC-Web's CORS: a browser's preflight is answered with the origins an
//! operator allowed, and with nothing when none is set (the default), so a
//! browser refuses the cross-origin call. (The gRPC-Web calls themselves
//! are made by the gRPC-Web client, `clients::the_grpc_web_client_…`.)

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use coupond::config::CorsOrigins;

use crate::common::{isolated_settings, unique_tag};
use crate::helpers::{serve_settings, spawn_app, spawn_serving, TestApp};

/// The head of the answer to a browser's preflight of an Issue call from
/// `origin`, lowercased.
async fn preflight(app: &TestApp, origin: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let req = format!(
        "OPTIONS /coupon.v1.CouponIssuer/Issue HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,authorization\r\n\
         Connection: close\r\n\r\n",
        app.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).await.unwrap();
    head.to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allowed_origins_a_browser_gets_no_cors_headers() {
    let app = spawn_app().await;
    let head = preflight(&app, "https://shop.example").await;
    assert!(head.starts_with("http/1.1 "), "{head}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_get_cors_headers_and_others_none() {
    let tag = unique_tag();
    let settings = isolated_settings(&tag).await;
    let mut serve = serve_settings();
    serve.cors = "https://shop.example".parse::<CorsOrigins>().unwrap();
    let app = spawn_serving(settings, serve, tag).await;
    let head = preflight(&app, "https://shop.example").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://shop.example"),
        "{head}"
    );
    assert!(
        head.contains("x-grpc-web"),
        "the gRPC-Web header allowed: {head}"
    );
    let head = preflight(&app, "https://elsewhere.example").await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
}

/// A gRPC-Web request over HTTP/1.1 whose message is larger than the
/// server takes is refused as OUT_OF_RANGE by its declared length, as a
/// gRPC one is (the body is read only up to the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_grpc_web_message_is_out_of_range() {
    let app = spawn_app().await;
    let declared: u32 = 2 << 20;
    let sent = (1 << 20) + 100_000;
    let mut body = vec![0u8];
    body.extend_from_slice(&declared.to_be_bytes());
    body.resize(5 + sent, b'x');
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /coupon.v1.CouponIssuer/Issue HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\n\r\n",
        app.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before it read everything.
    let _ = s.write_all(&body).await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.contains("grpc-status: 11"), "{answer}");
}
