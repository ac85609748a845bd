//! Apache Kafka's own failures: a broker SIGKILLed and restarted with its
//! data, one broker of a three-broker cluster SIGKILLed (acks=all with two
//! in-sync replicas keeps ack mode answering), and one of two finalizers in
//! a consumer group SIGKILLed (its partitions move to the other).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, IssueResult};

use crate::support::{stack, Env, Load, RestoreStack, SERIAL};

const COUPONS: u32 = 1500;
const USERS: u64 = 6000;
const CONCURRENCY: usize = 24;
const CLUSTER: &str = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_killed_and_restarted_mid_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let (mut server, event, load) = env.serve_under_load((&[], &[]), COUPONS, USERS, 300).await;
    stack("stop-broker"); // SIGKILL; its log directory stays
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage being tested
    stack("up");
    env.finish_and_check(load, &event, COUPONS, "broker kill")
        .await;
    server.terminate().await;
}

/// Stops the three-broker cluster when a test ends, passed or failed.
struct ClusterDown;

impl Drop for ClusterDown {
    fn drop(&mut self) {
        stack("cluster-down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_broker_killed_mid_load_does_not_stop_ack_mode() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    stack("cluster-up");
    let _down = ClusterDown;
    let mut env = Env::new().await;
    env.settings.kafka.brokers = CLUSTER.into();
    let replicated = [("COUPOND_KAFKA_CREATE_REPLICATION", "3")];
    let (mut server, event, load) = env
        .serve_under_load((&[], &replicated), COUPONS, USERS, 300)
        .await;
    stack("cluster-kill 2");
    // With broker 2 gone, every partition still has two in-sync replicas
    // once leadership moves: acks=all answers go on while it is down.
    let at_kill = load.answered.load(Ordering::Relaxed);
    load.until_answered((at_kill + 1500).min(USERS)).await;
    let while_down = load.answered.load(Ordering::Relaxed) - at_kill;
    stack("cluster-up");
    eprintln!("cluster broker kill: {while_down} answered while it was down");
    env.finish_and_check(load, &event, COUPONS, "cluster broker kill")
        .await;
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_finalizers_killed_mid_load_hands_its_partitions_over() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let mut server = env.serve(&["--no-consumer"]).await;
    let mut first = env.consume();
    let mut second = env.consume();
    let event = env.preload(COUPONS).await;
    let load = Load::start(&env, &event, USERS, CONCURRENCY).await;
    load.until_answered(500).await;
    first.kill9();
    // Only the survivor is left to record the rest.
    env.finish_and_check(load, &event, COUPONS, "one of two finalizers killed")
        .await;
    second.terminate().await;
    server.terminate().await;
}

/// ack mode keeps its word: with the broker down past the publish timeout,
/// an issuance is answered ISSUED with `durable` false (the coupon is the
/// user's, pending in Redis), never `durable` true; once the broker is back
/// every one of them is finalized.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_past_the_publish_timeout_answers_not_yet_durable_and_finalizes_later() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let quick = [("COUPOND_KAFKA_DELIVERY_TIMEOUT_MS", "1500")];
    let mut server = env.serve_env(&[], &quick).await;
    let event = env.preload(COUPONS).await;
    let issue = |user: String| {
        let (env, event) = (&env, event.clone());
        async move {
            let mut c = CouponIssuerClient::new(env.channel().await);
            let r = c
                .issue(proto::IssueRequest {
                    event_id: event,
                    user_id: user.clone(),
                    request_id: format!("r-{user}"),
                })
                .await
                .expect("answered")
                .into_inner();
            assert_eq!(r.result, IssueResult::Issued as i32, "{user}: {r:?}");
            (user, r.coupon.unwrap().code, r.durable)
        }
    };
    let (user, code, durable) = issue("before".into()).await;
    assert!(durable, "with the broker up, ISSUED is durable");
    let mut told = HashMap::from([(user, code)]);

    stack("stop-broker");
    let during = futures::future::join_all((0..40).map(|i| issue(format!("down-{i}")))).await;
    assert!(
        during.iter().all(|(_, _, durable)| !durable),
        "no answer claims durability while the broker is down"
    );
    stack("up");
    told.extend(during.into_iter().map(|(u, c, _)| (u, c)));
    eprintln!("broker down: 40 told ISSUED not yet durable; all finalized after it returned");
    env.assert_exactly_recorded(&event, &told).await;
    server.terminate().await;
}
