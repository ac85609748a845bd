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

/// Shutdown in the documented order: stop accepting, finish the calls in
/// flight, flush the producer, then the finalizer records what its
/// partitions hold and stops. Every issuance answered ISSUED, also during
/// the drain, is in PostgreSQL when the server has stopped, with nothing
/// run afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuances_answered_during_the_drain_are_finalized_before_the_server_stops() {
    let mut app = spawn_app().await;
    let event = app.event_id("drain");
    app.preload(crate::helpers::preload_request(&event, 1000))
        .await
        .unwrap();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls: Vec<_> = (0..400)
        .map(|i| {
            let mut issuer = app.issuer.clone();
            let (event, answered) = (event.clone(), answered.clone());
            tokio::spawn(async move {
                let user = format!("u{i}");
                let r = issuer
                    .issue(coupond::proto::IssueRequest {
                        event_id: event,
                        user_id: user.clone(),
                        request_id: format!("r{i}"),
                    })
                    .await;
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                r.ok()
                    .and_then(|r| r.into_inner().coupon)
                    .map(|c| (c.code, user))
            })
        })
        .collect();
    // Stop while calls are in flight.
    let started = crate::helpers::eventually(std::time::Duration::from_secs(30), || {
        let n = answered.load(std::sync::atomic::Ordering::Relaxed);
        async move { n >= 50 }
    })
    .await;
    assert!(started, "calls are being answered");
    app.shutdown.cancel();
    let mut told = std::collections::HashSet::new();
    for c in calls {
        if let Some(pair) = c.await.unwrap() {
            told.insert(pair);
        }
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), app.stop())
        .await
        .expect("shutdown completes");
    let in_pg = app.issued_pairs_in_pg(&event).await;
    eprintln!(
        "drain: {} told ISSUED, {} in postgres at stop",
        told.len(),
        in_pg.len()
    );
    assert!(told.len() >= 50);
    let missing: Vec<_> = told.difference(&in_pg).collect();
    assert!(
        missing.is_empty(),
        "answered ISSUED but not recorded at stop: {missing:?}"
    );
}
