//! The operator's commands against a running server: `coupond preload`
//! and `coupond events`.

use std::process::{Command, Output};

use crate::common::assert_live_and_consistent;
use crate::helpers::{spawn_app, TestApp, ADMIN_TOKEN};

fn coupond(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coupond"))
        .args(args)
        .env("COUPOND_SERVER", format!("http://{}", app.addr))
        .env("COUPOND_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run coupond")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coupond_preload_waits_for_live_and_coupond_events_lists_it() {
    let app = spawn_app().await;
    let event = app.event_id("cli");
    let out = coupond(
        &app,
        &[
            "preload",
            "--event-id",
            &event,
            "--name",
            "CLI drop",
            "--count",
            "200000",
            "--policy",
            "PERCENT:10",
            "--policy",
            "AMOUNT:5000:3",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("event {event} is LIVE")),
        "{stdout}"
    );
    assert!(
        stdout.contains("AMOUNT 5000 (weight 3): 150000 coupons"),
        "{stdout}"
    );
    assert_live_and_consistent(&app.pg, &app.redis, &event, 200_000).await;

    let out = coupond(&app, &["events"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&event))
        .unwrap_or_else(|| panic!("{event} listed:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[1..5],
        ["LIVE", "200000", "200000", "200000"],
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coupond_preload_names_the_bad_field_and_fails() {
    let app = spawn_app().await;
    let event = app.event_id("clibad");
    let out = coupond(
        &app,
        &[
            "preload",
            "--event-id",
            &event,
            "--name",
            "x",
            "--count",
            "0",
            "--policy",
            "PERCENT:10",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("INVALID_ARGUMENT: total_count"), "{stderr}");
    let out = coupond(
        &app,
        &["preload", "--event-id", &event, "--policy", "FREE:1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--policy FREE:1"), "{stderr}");
}
