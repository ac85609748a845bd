//! Shared by the test binaries: unique names and an isolated database.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use coupond::config::Settings;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub fn admin_db_url() -> String {
    std::env::var("COUPOND_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Replaces the database name of a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database url has a path");
    format!("{base}/{db}")
}

pub fn unique_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Settings for an isolated test: fresh database, topics and group.
pub async fn isolated_settings(tag: &str) -> Settings {
    let mut s = Settings::from_env().expect("settings from env");
    let db = format!("coupond_test_{tag}");
    let mut admin = AsyncPgConnection::establish(&admin_db_url())
        .await
        .expect("connect to the admin database");
    diesel::sql_query(format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    s.database.url = with_database(&admin_db_url(), &db);
    s.database.pool_size = 4;
    s.kafka.topic = format!("coupon-issued-test-{tag}");
    s.kafka.group = format!("coupond-test-{tag}");
    s.kafka.create_partitions = 3;
    s.consumer.batch_ms = 10;
    s
}

/// Polls `check` every 50 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
