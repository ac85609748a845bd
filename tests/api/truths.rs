//! What an operator reads is true: normal outcomes are not logged as
//! errors and piped logs carry no colour codes; a command's error is
//! printed once; the README's metric list is what `/metrics` shows; the
//! same `coupond preload` run twice attaches; `reconcile --json` has its
//! verdict; a graceful shutdown ends open health watches instead of
//! waiting for them.

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use coupond::proto::{self, IssueResult};
use futures::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{
    coupond_cli, coupond_command, eventually, preload_request, reconcile_cli, scrape_metrics,
    spawn_app,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_outcomes_are_not_errors_and_piped_logs_have_no_colour() {
    let app = spawn_app().await;
    let event = app.event_id("logs");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let port = free_port();
    let mut serve = coupond_command(&app, &["serve", "--no-consumer"]);
    serve
        .env("COUPOND_LISTEN", format!("127.0.0.1:{port}"))
        .env("COUPOND_METRICS_LISTEN", "off")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = serve.spawn().unwrap();
    let up = eventually(Duration::from_secs(60), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "coupond serve came up");
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut issuer = proto::coupon_issuer_client::CouponIssuerClient::new(channel.clone());
    let mut admin = crate::common::admin_client(channel);
    let issue = |user: &str| proto::IssueRequest {
        event_id: event.clone(),
        user_id: user.into(),
        request_id: String::new(),
    };
    // Every normal outcome once: NOT_FOUND, INVALID_ARGUMENT, ALREADY_EXISTS,
    // EVENT_NOT_FOUND, ISSUED, ALREADY_ISSUED, PAUSED.
    let nobody = proto::GetIssuanceRequest {
        event_id: event.clone(),
        user_id: "nobody".into(),
    };
    assert_eq!(
        issuer.get_issuance(nobody).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert!(issuer.issue(issue("")).await.is_err());
    let mut other = preload_request(&event, 11);
    other.name = "other".into();
    assert_eq!(
        admin.preload(other).await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
    let mut unknown = issue("u1");
    unknown.event_id = app.event_id("nosuch");
    let r = issuer.issue(unknown).await.unwrap().into_inner();
    assert_eq!(r.result, IssueResult::EventNotFound as i32);
    for _ in 0..2 {
        issuer.issue(issue("u1")).await.unwrap();
    }
    admin
        .pause_event(proto::PauseEventRequest {
            event_id: event.clone(),
            reason: "logs".into(),
        })
        .await
        .unwrap();
    let r = issuer.issue(issue("u2")).await.unwrap().into_inner();
    assert_eq!(r.result, IssueResult::Paused as i32);

    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{logs}");
    assert!(logs.contains("coupond serving"), "{logs}");
    assert!(
        !logs.contains("ERROR"),
        "a normal outcome logged as an error:\n{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in piped logs:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_error_is_printed_once() {
    let app = spawn_app().await;
    let missing = app.event_id("missing");
    let (exit, out) = reconcile_cli(&app, &missing, &[]);
    assert_ne!(exit, 0);
    assert_eq!(out.matches("is not in postgres").count(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_preload_command_run_again_reports_the_live_event() {
    let app = spawn_app().await;
    let event = app.event_id("rerun");
    let cmd = [
        "preload",
        "--event-id",
        &event,
        "--name",
        "Rerun",
        "--count",
        "100",
        "--policy",
        "PERCENT:10",
    ];
    let (exit, first) = coupond_cli(&app, &cmd);
    assert_eq!(exit, 0, "{first}");
    assert!(first.contains("defaults: now"), "{first}");
    // Later, the very same command (its "now" is another moment).
    let (exit, again) = coupond_cli(&app, &cmd);
    assert_eq!(exit, 0, "{again}");
    assert!(again.contains("as the event was recorded"), "{again}");
    let live = |out: &str| {
        out.lines()
            .find(|l| l.contains("is LIVE (preload"))
            .map(str::to_owned)
    };
    assert_eq!(live(&first), live(&again), "{first}\n{again}");
    assert!(live(&again).is_some());
    let (exit, json) = reconcile_cli(&app, &event, &["--json"]);
    assert_eq!(exit, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdict"], "CONSISTENT", "{json}");
}

/// Every metric the README's table names is served, and the counters alerts
/// watch are there from the start at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_metric_list_is_what_metrics_shows() {
    let at_start = scrape_metrics();
    for series in [
        r#"coupond_dead_letters_total{reason="undecodable"}"#,
        r#"coupond_dead_letters_total{reason="conflict"}"#,
        r#"coupond_dead_letters_total{reason="refused"}"#,
        "coupond_dead_letters_failed_total",
        "coupond_publish_failures_total",
        "coupond_issued_not_durable_total",
        "coupond_conflicts_total",
    ] {
        assert!(at_start.contains(series), "{series} missing at start");
    }
    let app = spawn_app().await;
    let event = app.event_id("metrics");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let code = app.issue(&event, "u1").await.coupon.unwrap().code;
    app.await_finalized(&event, &HashSet::from([(code, "u1".to_string())]))
        .await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let named: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `coupond_"))
        .flat_map(|l| {
            l.split('|')
                .nth(1)
                .unwrap()
                .split('/')
                .map(|n| n.trim().trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(named.len() >= 16, "{named:?}");
    let served = eventually(Duration::from_secs(15), || async {
        let now = scrape_metrics();
        named.iter().all(|n| now.contains(n.as_str()))
    })
    .await;
    let now = scrape_metrics();
    let missing: Vec<&String> = named.iter().filter(|n| !now.contains(n.as_str())).collect();
    assert!(served, "README names metrics /metrics lacks: {missing:?}");
    let listed: HashSet<&str> = named.iter().map(String::as_str).collect();
    let unlisted: Vec<&str> = now
        .lines()
        .filter(|l| l.starts_with("# TYPE coupond_"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|n| !listed.contains(n))
        .collect();
    assert!(
        unlisted.is_empty(),
        "/metrics has what the README lacks: {unlisted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_ends_open_health_watches() {
    let mut app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    app.shutdown.cancel();
    let server = app.server.take().unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), server).await;
    assert!(stopped.is_ok(), "the server waited for the open watch");
    let mut last = None;
    while let Some(Ok(m)) = watch.next().await {
        last = Some(m.status);
    }
    assert_eq!(last, Some(ServingStatus::NotServing as i32));
}

/// The pending gauge of an event drops to 0 when it settles: the gauges
/// stop visiting a settled event, so the last reading would otherwise stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_gauge_drops_to_0_when_the_event_settles() {
    scrape_metrics(); // the exporter, before anything is recorded
    let tag = crate::helpers::unique_tag();
    let mut settings = crate::helpers::isolated_settings(&tag).await;
    settings.sweep.interval = std::time::Duration::from_millis(200);
    let mut serve = crate::helpers::serve_settings();
    serve.no_consumer = true;
    let app = crate::helpers::spawn_serving(settings, serve, tag).await;
    let event = app.event_id("gauge");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let mut pairs = HashSet::new();
    for u in ["u1", "u2", "u3"] {
        pairs.insert((
            app.issue(&event, u).await.coupon.unwrap().code,
            u.to_string(),
        ));
    }
    let series = format!("coupond_pending_issuances{{event=\"{event}\"}}");
    let reads = |n: &'static str| {
        let series = series.clone();
        move || {
            let series = series.clone();
            async move {
                scrape_metrics()
                    .lines()
                    .any(|l| l.starts_with(&series) && l.ends_with(&format!(" {n}")))
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(30), reads("3")).await,
        "the gauge read 3 pending"
    );
    // The event ends and its issuances are recorded: it settles.
    app.close(&event, "done").await.unwrap();
    let finalizer = crate::helpers::start_finalizer(&app).await;
    finalizer.await_finalized(&event, &pairs).await;
    let id = coupond::domain::EventId::parse(event.clone()).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.pg.settled(&id).await.unwrap()
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(30), reads("0")).await,
        "the gauge of a settled event reads 0"
    );
}
