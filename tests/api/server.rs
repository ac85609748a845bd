use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_coupon_services_and_health_says_serving() {
    let app = spawn_app().await;
    let ch = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut refl = ServerReflectionClient::new(ch.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "coupon.v1.CouponAdmin",
        "coupon.v1.CouponIssuer",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }

    let mut health = HealthClient::new(ch);
    for s in ["coupon.v1.CouponAdmin", "coupon.v1.CouponIssuer"] {
        let r = health
            .check(HealthCheckRequest { service: s.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{s} SERVING");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_returns_cleanly() {
    let mut app = spawn_app().await;
    let event = app.event_id("stop");
    app.preload(crate::helpers::preload_request(&event, 3))
        .await
        .unwrap();
    let r = app.issue(&event, "u").await;
    assert!(r.coupon.is_some());
    tokio::time::timeout(std::time::Duration::from_secs(30), app.stop())
        .await
        .expect("shutdown completes");
    assert!(
        tokio::net::TcpStream::connect(app.addr).await.is_err(),
        "listener closed"
    );
}
