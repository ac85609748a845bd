//! Honest health: `grpc.health.v1` follows real outages. CouponIssuer needs
//! Redis, CouponAdmin needs Redis and PostgreSQL, `coupond consume`'s
//! "coupon.v1.Finalizer" needs all three and Kafka; each goes NOT_SERVING
//! while what it needs is down and SERVING again when it is back, and a
//! draining server says NOT_SERVING.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::eventually;
use crate::support::{free_port, stack, Env, OwnRedis, RestoreStack, SERIAL};

pub const ADMIN: &str = "coupon.v1.CouponAdmin";
pub const ISSUER: &str = "coupon.v1.CouponIssuer";
const FINALIZER: &str = "coupon.v1.Finalizer";

pub fn health(addr: String) -> HealthClient<Channel> {
    let ch = Endpoint::from_shared(addr)
        .unwrap()
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    HealthClient::new(ch)
}

async fn status(client: &HealthClient<Channel>, service: &str) -> Option<ServingStatus> {
    let r = client
        .clone()
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

/// Waits until every (service, status) pair holds at once.
pub async fn until(client: &HealthClient<Channel>, want: &[(&str, ServingStatus)], when: &str) {
    let ok = eventually(Duration::from_secs(30), || async {
        for (service, s) in want {
            if status(client, service).await != Some(*s) {
                return false;
            }
        }
        true
    })
    .await;
    let mut seen = Vec::new();
    for (service, _) in want {
        seen.push((service, status(client, service).await));
    }
    assert!(ok, "{when}: wanted {want:?}, saw {seen:?}");
}

use ServingStatus::{NotServing, Serving};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_follows_redis_postgres_and_kafka_outages_and_the_drain() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let mut redis = OwnRedis::start(false).await;
    let mut env = Env::new().await;
    env.settings.redis.url = redis.url();
    let mut server = env.serve(&[]).await;
    let consume_health = format!("127.0.0.1:{}", free_port());
    let _consumer = env.consume_env(&[("COUPOND_CONSUME_HEALTH_LISTEN", consume_health.as_str())]);
    let served = health(env.addr());
    let finalizer = health(format!("http://{consume_health}"));
    until(
        &served,
        &[(ADMIN, Serving), (ISSUER, Serving), ("", Serving)],
        "at start",
    )
    .await;
    until(&finalizer, &[(FINALIZER, Serving)], "consume at start").await;

    redis.kill9();
    until(
        &served,
        &[(ADMIN, NotServing), (ISSUER, NotServing), ("", NotServing)],
        "redis down",
    )
    .await;
    until(
        &finalizer,
        &[(FINALIZER, NotServing)],
        "consume, redis down",
    )
    .await;
    redis.restart().await;
    until(
        &served,
        &[(ADMIN, Serving), (ISSUER, Serving)],
        "redis back",
    )
    .await;
    until(&finalizer, &[(FINALIZER, Serving)], "consume, redis back").await;

    stack("stop-postgres");
    until(
        &served,
        &[(ADMIN, NotServing), (ISSUER, Serving), ("", NotServing)],
        "postgres down",
    )
    .await;
    until(
        &finalizer,
        &[(FINALIZER, NotServing)],
        "consume, postgres down",
    )
    .await;
    stack("up");
    until(
        &served,
        &[(ADMIN, Serving), (ISSUER, Serving), ("", Serving)],
        "postgres back",
    )
    .await;

    stack("stop-broker");
    until(
        &finalizer,
        &[(FINALIZER, NotServing)],
        "consume, kafka down",
    )
    .await;
    until(
        &served,
        &[(ADMIN, Serving), (ISSUER, Serving)],
        "serve, kafka down",
    )
    .await;
    stack("up");
    until(&finalizer, &[(FINALIZER, Serving)], "consume, kafka back").await;

    // Draining: a watcher sees NOT_SERVING before the server goes.
    let mut watch = served
        .clone()
        .watch(HealthCheckRequest {
            service: ISSUER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, Serving as i32);
    let terminating = tokio::spawn(async move { server.terminate().await });
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a status while draining");
    assert_eq!(next.unwrap().map(|m| m.status), Some(NotServing as i32));
    drop(watch); // an open Watch is an in-flight call the drain waits for
    terminating.await.unwrap();
}
