//! Fault tests: real coupond processes under load while the broker, the
//! server, PostgreSQL or the consumer fails. After recovery PostgreSQL must
//! hold exactly the (user, code) pairs the load client was told, and nothing
//! may be left pending. They stop shared services, so they run one at a time.

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod health;
mod kafka;
mod metrics;
mod otlp;
mod preload;
mod redis;
mod support;
mod transfer;

use std::time::Duration;

use support::{stack, Env, Load, RestoreStack, SERIAL};

const COUPONS: u32 = 1500;
const USERS: u64 = 6000;
const CONCURRENCY: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_crashed_and_lost_its_data_mid_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let (mut server, event, load) = env.serve_under_load((&[], &[]), COUPONS, USERS, 300).await;
    stack("stop-broker"); // SIGKILL
    stack("wipe-broker"); // every message, topic and committed offset gone
    tokio::time::sleep(Duration::from_secs(4)).await; // the outage being tested
    stack("up");
    env.finish_and_check(load, &event, COUPONS, "broker crash, data wiped")
        .await;
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_killed_mid_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let (mut server, event, load) = env.serve_under_load((&[], &[]), COUPONS, USERS, 300).await;
    server.kill9();
    let mut server = env.serve(&[]).await;
    let errors = env
        .finish_and_check(load, &event, COUPONS, "server kill")
        .await;
    assert!(errors > 0, "the kill interrupted calls");
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_mid_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let (mut server, event, load) = env.serve_under_load((&[], &[]), COUPONS, USERS, 300).await;
    stack("stop-postgres");
    // Issuance goes on from Redis while the database is down.
    let before = load.answered.load(std::sync::atomic::Ordering::Relaxed);
    load.until_answered((before + 300).min(USERS)).await;
    stack("up");
    env.finish_and_check(load, &event, COUPONS, "postgres stopped")
        .await;
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_killed_mid_batch_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    let mut server = env.serve(&["--no-consumer"]).await;
    let mut consumer = env.consume();
    let event = env.preload(COUPONS).await;
    let load = Load::start(&env, &event, USERS, CONCURRENCY).await;
    load.until_answered(500).await;
    consumer.kill9();
    load.until_answered(1000).await;
    let mut consumer = env.consume();
    env.finish_and_check(load, &event, COUPONS, "consumer killed")
        .await;
    consumer.terminate().await;
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_load_drains_flushes_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreStack;
    let env = Env::new().await;
    // async durability: answers do not wait for Kafka, so only the shutdown
    // flush can get the last issuances into the topic before exit.
    let mut server = env.serve_env(&[], &[("COUPOND_DURABILITY", "async")]).await;
    let event = env.preload(COUPONS).await;
    let load = Load::start(&env, &event, USERS, CONCURRENCY).await;
    load.until_answered(400).await;
    server.terminate().await; // asserts a clean exit within 30 s
    let told_at_exit = load.told_now() as i64;
    assert!(
        env.topic_messages() >= told_at_exit,
        "every issuance answered before exit was flushed to Kafka"
    );
    let mut server = env.serve(&[]).await;
    env.finish_and_check(load, &event, COUPONS, "sigterm").await;
    server.terminate().await;
}
