//! Metrics, shown with the real thing: a Prometheus server scrapes a coupond
//! under load, and its HTTP API must count exactly what the clients were
//! told. The shipped scrape configuration and alerting rules pass promtool.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::eventually;
use crate::support::{free_port, repo_root, Env, Load, Proc, LOAD_CONCURRENCY, SERIAL};

const COUPONS: u32 = 1500;
const USERS: u64 = 2000;

/// A Prometheus of the test's own, scraping one target every second.
struct Prometheus {
    port: u16,
    dir: std::path::PathBuf,
    _proc: Proc,
}

impl Prometheus {
    async fn scraping(target: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("coupond-prometheus-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: coupond\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (scripts/stack.sh up installs it)");
        let p = Self {
            port,
            dir,
            _proc: Proc::from(child),
        };
        let up = eventually(Duration::from_secs(30), || async {
            p.query("up").is_some_and(|v| v == 1.0)
        })
        .await;
        assert!(up, "prometheus did not come up and scrape {target}");
        p
    }

    /// The value of an instant query that returns one sample, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sf", "--get", "--data-urlencode"])
            .arg(format!("query={promql}"))
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .ok()?;
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_counts_exactly_what_the_clients_were_told() {
    let _serial = SERIAL.lock().await;
    let env = Env::new().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut server = env
        .serve_env(&[], &[("COUPOND_METRICS_LISTEN", metrics.as_str())])
        .await;
    let prometheus = Prometheus::scraping(&metrics).await;
    let event = env.preload(COUPONS).await;
    let (told, errors) = Load::start(&env, &event, USERS, LOAD_CONCURRENCY)
        .await
        .finish()
        .await;
    assert_eq!((told.len() as u32, errors), (COUPONS, 0));
    let issued = r#"sum(coupond_issue_outcomes_total{rpc="issue",result="issued"})"#;
    let sold_out = r#"sum(coupond_issue_outcomes_total{result="sold_out"})"#;
    let finalized = r#"sum(coupond_finalizer_rows_total{outcome="finalized"})"#;
    let expected = [
        (issued, f64::from(COUPONS)),
        (sold_out, (USERS - u64::from(COUPONS)) as f64),
        (finalized, f64::from(COUPONS)),
        // Every answer timed; every finalized issuance's delay observed.
        (
            r#"sum(coupond_issue_duration_seconds_count{rpc="issue"})"#,
            USERS as f64,
        ),
        (
            "sum(coupond_finalize_delay_seconds_count)",
            f64::from(COUPONS),
        ),
        // Nothing left behind: no lag, nothing pending, nothing dead.
        ("sum(coupond_consumer_lag_messages)", 0.0),
        (r#"sum(coupond_pending_issuances{event=~"fault-.*"})"#, 0.0),
        (r#"coupond_serving{service="issuer"}"#, 1.0),
    ];
    let seen = eventually(Duration::from_secs(60), || async {
        expected
            .iter()
            .all(|(q, v)| prometheus.query(q) == Some(*v))
    })
    .await;
    for (q, v) in expected {
        let got = prometheus.query(q);
        eprintln!("prometheus: {q} = {got:?} (clients: {v})");
        assert!(
            seen,
            "{q}: prometheus says {got:?}, the clients were told {v}"
        );
    }
    // The live view reads the same server: the event's counts, and the
    // server's p99 and errors over the last seconds, while late users are
    // told SOLD_OUT.
    let late = Load::start(&env, &event, 20_000, LOAD_CONCURRENCY).await;
    let metrics_url = format!("http://{metrics}/metrics");
    let (exit, screen) = env.run(&[
        "watch",
        "--server",
        &env.addr(),
        "--event",
        &event,
        "--metrics",
        &metrics_url,
        "--frames",
        "3",
    ]);
    late.finish().await;
    eprintln!("{screen}");
    assert_eq!(exit, 0, "{screen}");
    assert!(
        screen.contains(&format!("{COUPONS} of {COUPONS}")),
        "{screen}"
    );
    assert!(screen.contains("this event, every server:"), "{screen}");
    assert!(screen.contains("every event, last 10 s:"), "{screen}");
    assert!(screen.contains("errors              0"), "{screen}");
    assert!(
        screen.contains(" ms\n"),
        "a p99 of the last seconds from the metrics: {screen}"
    );
    server.terminate().await;
}

#[test]
fn the_shipped_scrape_configuration_and_alerts_pass_promtool() {
    let dir = repo_root().join("ops/prometheus");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool (scripts/stack.sh up installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
