use std::collections::{HashMap, HashSet};
use std::time::Duration;

use coupond::config::{AuthSettings, ServeSettings, Settings};
use coupond::domain::EventId;
use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, PreloadRequest};
use coupond::startup::Application;
use coupond::store::keys::EventKeys;
use coupond::store::{PgStore, RedisStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use crate::common::{
    admin_client, eventually, isolated_settings, policy, preload_request, ts, unique_tag,
    AdminClient, ADMIN_TOKEN,
};

/// A running coupond with its own database and topics.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub settings: Settings,
    pub admin: AdminClient,
    pub issuer: CouponIssuerClient<Channel>,
    pub pg: PgStore,
    pub redis: RedisStore,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
    /// Unique per test; prefixes event ids.
    pub tag: String,
}

pub async fn spawn_app() -> TestApp {
    let tag = unique_tag();
    let settings = isolated_settings(&tag).await;
    spawn_with(settings, tag).await
}

/// The tests that install tools and build with them (the clients, the
/// gateway, grpcurl): one at a time. They share installs (buf, the Go
/// plugins) and several cores' worth of work.
pub static TOOL_BUILDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest a tool script may take: on a new machine the first run
/// downloads modules and packages (minutes); a hung download must fail its
/// test, not hold the suite until CI's own limit.
pub const TOOL_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Runs one of scripts/ that installs a pinned tool (grpcurl, ghz) and
/// prints its path, one tool build at a time; the path.
pub async fn installed(script: &str) -> String {
    let _one = TOOL_BUILDS.lock().await;
    let mut install = std::process::Command::new("bash");
    install.arg(format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR")));
    let out = run_tool(script, install).await;
    assert!(
        out.status.success(),
        "scripts/{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs a tool script (an install, a generator, a build, a client) to its
/// end and returns what it printed; past `TOOL_LIMIT` it fails the test.
pub async fn run_tool(what: &str, command: std::process::Command) -> std::process::Output {
    run_tool_within(command, TOOL_LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Runs `command` in a process group of its own, so that past `limit` it
/// is killed together with every process it started (go, npm, mvn), not
/// left running beside the next tests.
pub async fn run_tool_within(
    mut command: std::process::Command,
    limit: Duration,
) -> Result<std::process::Output, String> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let group = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(limit, waiting).await {
        Ok(out) => out.unwrap().map_err(|e| format!("waiting for it: {e}")),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            Err(format!(
                "not done within {limit:?}; killed with every process it started"
            ))
        }
    }
}

pub fn serve_settings() -> ServeSettings {
    ServeSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        no_consumer: false,
        auth: AuthSettings {
            admin_token: Some(ADMIN_TOKEN.into()),
            ..Default::default()
        },
        limits: Default::default(),
        tls: Default::default(),
        cors: Default::default(),
    }
}

pub async fn spawn_with(settings: Settings, tag: String) -> TestApp {
    spawn_serving(settings, serve_settings(), tag).await
}

pub async fn spawn_serving(settings: Settings, serve: ServeSettings, tag: String) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        coupond::telemetry::init(&coupond::config::TelemetrySettings {
            otlp_filter: "coupond=info".into(),
            ..Default::default()
        });
    }
    let app = Application::build(settings.clone(), serve)
        .await
        .expect("application builds");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the test server");
    TestApp {
        addr,
        admin: admin_client(channel.clone()),
        issuer: CouponIssuerClient::new(channel),
        pg: PgStore::connect(&settings.database.url, 2).unwrap(),
        redis: RedisStore::open(&settings.redis).unwrap(),
        settings,
        shutdown,
        server: Some(server),
        tag,
    }
}

impl TestApp {
    pub fn event_id(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }

    /// A producer of the app's own settings (its durability's linger).
    pub fn publisher(&self) -> coupond::kafka::Publisher {
        let linger = self
            .settings
            .kafka
            .producer_linger(self.settings.issue.durability);
        coupond::kafka::Publisher::new(&self.settings.kafka, linger).unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.server.take() {
            h.await.expect("server task").expect("server ran cleanly");
        }
    }

    pub async fn preload(
        &self,
        req: PreloadRequest,
    ) -> Result<proto::PreloadResponse, tonic::Status> {
        self.admin
            .clone()
            .preload(req)
            .await
            .map(|r| r.into_inner())
    }

    /// Issues with request id `req-<user>`.
    pub async fn issue(&self, event: &str, user: &str) -> proto::IssueResponse {
        self.issue_as(event, user, &format!("req-{user}")).await
    }

    pub async fn issue_as(
        &self,
        event: &str,
        user: &str,
        request_id: &str,
    ) -> proto::IssueResponse {
        self.issuer
            .clone()
            .issue(proto::IssueRequest {
                event_id: event.into(),
                user_id: user.into(),
                request_id: request_id.into(),
            })
            .await
            .expect("issue succeeds")
            .into_inner()
    }

    pub async fn pause(&self, event: &str, reason: &str) -> Result<proto::Event, tonic::Status> {
        let req = proto::PauseEventRequest {
            event_id: event.into(),
            reason: reason.into(),
        };
        let r = self.admin.clone().pause_event(req).await?;
        Ok(r.into_inner().event.expect("the event"))
    }

    pub async fn close(&self, event: &str, reason: &str) -> Result<proto::Event, tonic::Status> {
        let req = proto::CloseEventRequest {
            event_id: event.into(),
            reason: reason.into(),
        };
        let r = self.admin.clone().close_event(req).await?;
        Ok(r.into_inner().event.expect("the event"))
    }

    pub async fn extend(
        &self,
        event: &str,
        ends_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<proto::Event, tonic::Status> {
        let req = proto::ExtendEventRequest {
            event_id: event.into(),
            ends_at: Some(ts(ends_at)),
            reason: "demand".into(),
        };
        let r = self.admin.clone().extend_event(req).await?;
        Ok(r.into_inner().event.expect("the event"))
    }

    /// The user's issuance as GetIssuance shows it.
    pub async fn get_issuance(&self, event: &str, user: &str) -> proto::GetIssuanceResponse {
        self.issuer
            .clone()
            .get_issuance(proto::GetIssuanceRequest {
                event_id: event.into(),
                user_id: user.into(),
            })
            .await
            .expect("get issuance")
            .into_inner()
    }

    /// The event as GetEvent shows it.
    pub async fn get_event(&self, event: &str) -> proto::Event {
        self.admin
            .clone()
            .get_event(proto::GetEventRequest {
                event_id: event.into(),
            })
            .await
            .expect("get event")
            .into_inner()
    }

    /// Sends `reqs` on one IssueStream and collects every response.
    pub async fn issue_stream(&self, reqs: Vec<proto::IssueRequest>) -> Vec<proto::IssueResponse> {
        use futures::StreamExt;
        let out = self
            .issuer
            .clone()
            .issue_stream(futures::stream::iter(reqs))
            .await
            .expect("stream opens")
            .into_inner();
        out.map(|r| r.expect("stream item")).collect().await
    }

    pub fn keys(&self, event: &str) -> EventKeys {
        EventKeys::new(&EventId::parse(event).unwrap())
    }

    /// Raw Redis state of an event: (meta exists, queue len, issued len, pending len).
    pub async fn redis_state(&self, event: &str) -> (bool, u64, u64, u64) {
        let id = EventId::parse(event).unwrap();
        let exists = self.redis.event_exists(&id, 1).await.unwrap();
        let c = self.redis.counts(&id, 1).await.unwrap();
        (exists, c.remaining, c.issued, c.pending)
    }

    pub async fn issued_pairs_in_pg(&self, event: &str) -> HashSet<(String, String)> {
        let id = EventId::parse(event).unwrap();
        self.pg
            .issued_pairs(&id)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// Polls until PostgreSQL holds exactly `expected` for the event and its
    /// pending set is empty, or panics at the deadline with what it saw.
    pub async fn await_finalized(&self, event: &str, expected: &HashSet<(String, String)>) {
        let within = Duration::from_secs(60);
        crate::common::await_exactly_recorded(&self.pg, &self.redis, event, expected, within).await;
    }
}

/// The `coupond` command against the test's server, stores and topics.
pub fn coupond_command(app: &TestApp, args: &[&str]) -> std::process::Command {
    let mut c = crate::common::coupond(&app.settings, args);
    c.env("COUPOND_SERVER", format!("http://{}", app.addr))
        .env("COUPOND_ADMIN_TOKEN", ADMIN_TOKEN);
    c
}

/// Runs `command` to its end: exit code, and stdout and stderr together.
pub fn run_to_end(mut command: std::process::Command) -> (i32, String) {
    let out = command.output().expect("run coupond");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs the `coupond` binary against the test's server, stores and
/// topics: exit code, and stdout and stderr together.
pub fn coupond_cli(app: &TestApp, args: &[&str]) -> (i32, String) {
    run_to_end(coupond_command(app, args))
}

/// Runs `coupond reconcile --event <event> <extra>`.
pub fn reconcile_cli(app: &TestApp, event: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["reconcile", "--event", event];
    args.extend_from_slice(extra);
    coupond_cli(app, &args)
}

/// A small drop run to its end: `event` preloaded with `coupons`, users
/// u0.. u<users-1> each told ISSUED, and PostgreSQL holding exactly them.
pub async fn finalized_drop(app: &TestApp, event: &str, coupons: u32, users: usize) {
    app.preload(preload_request(event, coupons)).await.unwrap();
    let users: Vec<String> = (0..users).map(|i| format!("u{i}")).collect();
    let mut pairs = HashSet::new();
    for (u, r) in issue_all(app, event, &users).await {
        assert_eq!(r.result, proto::IssueResult::Issued as i32, "{u}");
        pairs.insert((r.coupon.unwrap().code, u));
    }
    app.await_finalized(event, &pairs).await;
}

/// Issues to every user at once (request id `req-<user>`).
pub async fn issue_all(
    app: &TestApp,
    event: &str,
    users: &[String],
) -> Vec<(String, proto::IssueResponse)> {
    futures::future::join_all(
        users
            .iter()
            .map(|u| async move { (u.clone(), app.issue(event, u).await) }),
    )
    .await
}

/// A server without a finalizer, whose own sweeper never claims anything.
pub async fn spawn_unswept() -> TestApp {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.sweep.age = std::time::Duration::from_millis(3_600_000);
    settings.sweep.max_age = std::time::Duration::from_millis(3_600_000);
    let mut serve = serve_settings();
    serve.no_consumer = true;
    spawn_serving(settings, serve, tag).await
}

/// Makes Redis forget the event (as a restart without persistence does).
pub async fn lose_event_in_redis(app: &TestApp, event: &str) {
    let k = app.keys(event);
    let mut c = app.redis.conn().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&k.queue)
        .arg(&k.issued)
        .arg(&k.meta)
        .arg(&k.pending)
        .arg(&k.conflicts)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// Messages in the test's dead-letter topic.
pub fn dead_letters(app: &TestApp) -> i64 {
    crate::common::topic_messages(&app.settings.kafka.brokers, &app.settings.kafka.dlq_topic())
}

/// A server whose finalizer does not run (it lags without end); a second
/// server from `start_finalizer` shares its stores and topics.
pub async fn spawn_without_finalizer() -> TestApp {
    let tag = unique_tag();
    let mut serve = serve_settings();
    serve.no_consumer = true;
    spawn_serving(isolated_settings(&tag).await, serve, tag).await
}

/// Starts a finalizer (a second server) on `app`'s stores and topics.
pub async fn start_finalizer(app: &TestApp) -> TestApp {
    spawn_with(app.settings.clone(), app.tag.clone()).await
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Checks the invariants over a set of responses to distinct users and
/// returns the (code, user) pairs that were ISSUED.
pub fn check_issued(
    responses: &[(String, proto::IssueResponse)],
    total: usize,
    expected_per_policy: &[(i32, i64, usize)],
) -> HashSet<(String, String)> {
    let mut issued = HashSet::new();
    let mut codes = HashSet::new();
    let mut users = HashSet::new();
    let mut per_policy: HashMap<(i32, i64), usize> = HashMap::new();
    let mut sold_out = 0;
    for (user, r) in responses {
        assert_eq!(r.request_id, format!("req-{user}"), "request id echoed");
        match proto::IssueResult::try_from(r.result).unwrap() {
            proto::IssueResult::Issued => {
                let c = r.coupon.as_ref().expect("ISSUED carries a coupon");
                assert!(codes.insert(c.code.clone()), "code {} issued twice", c.code);
                assert!(users.insert(user.clone()), "user {user} issued twice");
                *per_policy
                    .entry((c.discount_type, c.discount_value))
                    .or_default() += 1;
                issued.insert((c.code.clone(), user.clone()));
            }
            proto::IssueResult::SoldOut => sold_out += 1,
            other => panic!("unexpected result {other:?} for {user}"),
        }
    }
    assert_eq!(issued.len(), total, "exactly the total is issued");
    assert_eq!(
        sold_out,
        responses.len() - total,
        "everyone else is told SOLD_OUT"
    );
    for &(kind, value, n) in expected_per_policy {
        assert_eq!(
            per_policy.get(&(kind, value)).copied().unwrap_or(0),
            n,
            "policy {kind}/{value}"
        );
    }
    issued
}

/// `check_issued` for a drop of 1,000 coupons of `preload_request`'s
/// policies (334, 333 and 333 of them).
pub fn check_thousand_issued(
    responses: &[(String, proto::IssueResponse)],
) -> HashSet<(String, String)> {
    check_issued(
        responses,
        1000,
        &[
            (proto::DiscountType::Percent as i32, 10, 334),
            (proto::DiscountType::Amount as i32, 5000, 333),
            (proto::DiscountType::Percent as i32, 20, 333),
        ],
    )
}

/// An IssueRequest with request id `req-<user>`, as `TestApp::issue` sends.
pub fn issue_request(event: &str, user: &str) -> proto::IssueRequest {
    proto::IssueRequest {
        event_id: event.into(),
        user_id: user.into(),
        request_id: format!("req-{user}"),
    }
}

/// This test process's Prometheus text (the exporter is installed once, on
/// a port of its own): counters every test of the process adds to.
pub fn scrape_metrics() -> String {
    use std::io::{Read, Write};
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    let addr = *ADDR.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        // The exporter's listener runs on a runtime of its own thread.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                coupond::metrics::install(addr).unwrap();
                std::future::pending::<()>().await
            })
        });
        addr
    });
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no metrics listener on {addr}");
}
