//! Every grpcurl example the README shows, run for real with the pinned
//! grpcurl (`scripts/grpcurl.sh`) against a server where `drop-1` is
//! preloaded: each exits 0 and answers what the README says it does.

use std::process::Command;

use crate::helpers::{preload_request, spawn_app, ADMIN_TOKEN};

/// The README's grpcurl command lines (those of its `sh` blocks).
fn readme_examples() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let mut in_sh = false;
    let mut out = Vec::new();
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && l.starts_with("grpcurl ") => out.push(l.to_owned()),
            _ => {}
        }
    }
    out
}

/// What an example's answer must contain, by the method it calls.
fn expected(example: &str) -> &'static str {
    let method = example.split_whitespace().last().unwrap_or_default();
    match method {
        "list" => "coupon.v1.CouponIssuer",
        "grpc.health.v1.Health/Check" => "SERVING",
        "coupon.v1.CouponIssuer/Issue" => "ISSUE_RESULT_ISSUED",
        "coupon.v1.CouponIssuer/GetIssuance" => "\"code\"",
        "coupon.v1.CouponAdmin/GetEvent" => "EVENT_STATE_LIVE",
        "coupon.v1.CouponAdmin/ListEvents" => "\"events\"",
        other => panic!("a README example calls {other}: say here what it answers"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpcurl_example_in_the_readme_runs() {
    let examples = readme_examples();
    assert!(examples.len() >= 5, "the README's examples: {examples:?}");
    let app = spawn_app().await;
    let event = app.event_id("drop-1");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let grpcurl = crate::helpers::installed("grpcurl.sh").await;
    for example in &examples {
        let line = example
            .replace("127.0.0.1:50051", &app.addr.to_string())
            .replace("drop-1", &event)
            .replacen("grpcurl", &grpcurl, 1);
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-c", &line])
                .env("COUPOND_ADMIN_TOKEN", ADMIN_TOKEN)
                .output()
                .expect("run bash")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(expected(example)),
            "{example}\n{}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("README: {} grpcurl examples ran", examples.len());
}
