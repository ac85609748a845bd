//! Processes, faults and a retrying load client for the fault tests.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupond::config::Settings;
use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, IssueResult};
use coupond::store::{PgStore, RedisStore};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::common::{
    admin_client, await_exactly_recorded, eventually, isolated_settings, preload_request,
    topic_messages, unique_tag, AdminClient, ADMIN_TOKEN,
};

/// Fault tests stop shared services (the broker, PostgreSQL): one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/stack.sh <arg>` and asserts it succeeded.
pub fn stack(args: &str) {
    let st = Command::new("bash")
        .arg(repo_root().join("scripts/stack.sh"))
        .args(args.split_whitespace())
        .status()
        .expect("run stack.sh");
    assert!(st.success(), "stack.sh {args} failed");
}

/// Runs one Redis command on a connection of its own (faults: CLIENT
/// PAUSE, CLIENT KILL).
pub fn redis_cmd(args: &[&str]) {
    let mut c = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.exec(&mut c).expect("redis command");
}

/// Brings the stack back up when a fault test ends, passed or failed, so a
/// failure never leaves PostgreSQL or the broker down for what runs next.
pub struct RestoreStack;

impl Drop for RestoreStack {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg("up")
            .status();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One isolated environment: database, topics, group, and a port.
pub struct Env {
    pub tag: String,
    pub settings: Settings,
    pub port: u16,
}

impl Env {
    pub async fn new() -> Self {
        let tag = unique_tag();
        let settings = isolated_settings(&tag).await;
        Self {
            tag,
            settings,
            port: free_port(),
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = crate::common::coupond(&self.settings, args);
        // The old names (_MS) on purpose: they are still accepted.
        c.env("COUPOND_KAFKA_CREATE_PARTITIONS", "3")
            .env("COUPOND_KAFKA_DELIVERY_TIMEOUT_MS", "10000")
            .env("COUPOND_CONSUMER_BATCH_MS", "10")
            .env("COUPOND_SWEEP_AGE_MS", "1500")
            .env("COUPOND_SWEEP_INTERVAL_MS", "300")
            .env("COUPOND_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("COUPOND_ADMIN_TOKEN", ADMIN_TOKEN)
            // Several processes per test: only a test that scrapes opens it.
            .env("COUPOND_METRICS_LISTEN", "off")
            .env("COUPOND_CONSUME_HEALTH_LISTEN", "off")
            .stdin(Stdio::null());
        c
    }

    /// Runs `coupond reconcile --event <event> <extra>`: exit code, and
    /// stdout and stderr together.
    pub fn reconcile(&self, event: &str, extra: &[&str]) -> (i32, String) {
        let mut args = vec!["reconcile", "--event", event];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Runs `coupond <args>` against this environment: exit code, and
    /// stdout and stderr together.
    pub fn run(&self, args: &[&str]) -> (i32, String) {
        let out = self.command(args).output().expect("run coupond");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Messages in the dead-letter topic.
    pub fn dead_letters(&self) -> i64 {
        topic_messages(
            &self.settings.kafka.brokers,
            &self.settings.kafka.dlq_topic(),
        )
    }

    /// Messages in the topic: the sum of its partitions' high watermarks.
    pub fn topic_messages(&self) -> i64 {
        topic_messages(&self.settings.kafka.brokers, &self.settings.kafka.topic)
    }

    /// Starts `coupond serve` and waits until it accepts connections.
    pub async fn serve(&self, extra: &[&str]) -> Proc {
        self.serve_env(extra, &[]).await
    }

    /// `serve` with extra environment variables.
    pub async fn serve_env(&self, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        let mut c = self.command(&args);
        c.envs(envs.iter().copied());
        // A restarted server takes over its finalizer's partitions at once.
        c.env("COUPOND_KAFKA_INSTANCE_ID", format!("serve-{}", self.tag));
        let mut p = Proc::logged(c, &format!("serve-{}", self.tag));
        let port = self.port;
        let up = eventually(Duration::from_secs(60), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(
            up && p.child.try_wait().unwrap().is_none(),
            "coupond serve did not come up"
        );
        p
    }

    /// Starts `coupond consume`.
    pub fn consume(&self) -> Proc {
        self.consume_env(&[])
    }

    /// `consume` with extra environment variables.
    pub fn consume_env(&self, envs: &[(&str, &str)]) -> Proc {
        let mut c = self.command(&["consume"]);
        c.envs(envs.iter().copied());
        Proc::logged(c, &format!("consume-{}", self.tag))
    }

    pub fn pg(&self) -> PgStore {
        PgStore::connect(&self.settings.database.url, 2).unwrap()
    }

    pub fn redis(&self) -> RedisStore {
        RedisStore::open(&self.settings.redis).unwrap()
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.addr())
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(15))
            .connect_lazy()
    }

    pub async fn admin(&self) -> AdminClient {
        admin_client(self.channel().await)
    }

    /// Preloads `total` coupons into a fresh event, open now.
    pub async fn preload(&self, total: u32) -> String {
        let event = format!("fault-{}", self.tag);
        self.admin()
            .await
            .preload(preload_request(&event, total))
            .await
            .expect("preload");
        event
    }

    /// Preloads `req` with a client deadline of `wait`: the answer, or the
    /// status the caller got when it stopped waiting.
    pub async fn preload_within(
        &self,
        req: proto::PreloadRequest,
        wait: Duration,
    ) -> Result<proto::PreloadResponse, tonic::Status> {
        let mut r = tonic::Request::new(req);
        r.set_timeout(wait);
        self.admin().await.preload(r).await.map(|r| r.into_inner())
    }

    /// Waits until PostgreSQL holds exactly `told` for the event and nothing
    /// is pending, then checks it (with a report of the difference).
    /// Starts `coupond serve <extra>` with `envs`, preloads a fresh event
    /// of `coupons`, and starts a load of `users` once `answered` of them
    /// were answered: the server, the event and the load.
    pub async fn serve_under_load(
        &self,
        (extra, envs): (&[&str], &[(&str, &str)]),
        coupons: u32,
        users: u64,
        answered: u64,
    ) -> (Proc, String, Load) {
        let server = self.serve_env(extra, envs).await;
        let event = self.preload(coupons).await;
        let load = Load::start(self, &event, users, LOAD_CONCURRENCY).await;
        load.until_answered(answered).await;
        (server, event, load)
    }

    /// Waits for the load to end, then checks every coupon went to someone
    /// and PostgreSQL holds exactly what the load was told; returns how
    /// many calls failed and were retried.
    pub async fn finish_and_check(
        &self,
        load: Load,
        event: &str,
        coupons: u32,
        fault: &str,
    ) -> u64 {
        let (told, errors) = load.finish().await;
        eprintln!(
            "{fault}: told {} ISSUED, {errors} retried errors",
            told.len()
        );
        assert_eq!(told.len() as u32, coupons, "every coupon went to someone");
        self.assert_exactly_recorded(event, &told).await;
        errors
    }

    pub async fn assert_exactly_recorded(&self, event: &str, told: &HashMap<String, String>) {
        let expected: HashSet<(String, String)> =
            told.iter().map(|(u, c)| (c.clone(), u.clone())).collect();
        let (pg, redis) = (self.pg(), self.redis());
        await_exactly_recorded(&pg, &redis, event, &expected, Duration::from_secs(120)).await;
        let codes: HashSet<&String> = told.values().collect();
        assert_eq!(codes.len(), told.len(), "no code told to two users");
    }
}

/// A Redis server of the test's own, on a free port and a directory of its
/// own, for faults that crash and restart it.
pub struct OwnRedis {
    pub port: u16,
    dir: std::path::PathBuf,
    /// Append-only file with `appendfsync always`; otherwise no persistence.
    aof: bool,
    proc: Option<Proc>,
}

impl OwnRedis {
    pub async fn start(aof: bool) -> Self {
        let mut r = Self {
            port: free_port(),
            dir: std::env::temp_dir().join(format!("coupond-redis-{}", unique_tag())),
            aof,
            proc: None,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Crashes it (SIGKILL): what it had not persisted is gone.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts it on the same port and directory; waits until it answers.
    pub async fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.proc = Some(Proc::from(child));
        let url = self.url();
        let up = eventually(Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let Ok(c) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut c) = c.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            }
        })
        .await;
        assert!(up, "redis on port {} did not come up", self.port);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How many lines of a process's log a failure message shows.
const LOG_TAIL: usize = 40;

/// A child process, killed when dropped.
pub struct Proc {
    child: Child,
    /// Where its stderr goes, for the failure report (CI shortens long
    /// output, so a process's log is shown only when a check fails).
    log: Option<PathBuf>,
}

impl From<Child> for Proc {
    fn from(child: Child) -> Self {
        Self { child, log: None }
    }
}

impl Proc {
    /// Spawns `c` with its stderr in a file named after `name`.
    fn logged(mut c: Command, name: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join("coupond-faults");
        std::fs::create_dir_all(&dir).unwrap();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{name}-{n}.log"));
        let file = std::fs::File::create(&path).unwrap();
        let child = c.stderr(file).spawn().expect("spawn coupond");
        Self {
            child,
            log: Some(path),
        }
    }

    /// The last lines the process logged, for a failure message.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
        format!("\n--- last lines of {} ---\n{tail}", path.display())
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit: longer than the server's own
    /// drain deadlines add up to (startup.rs), so a slow machine is not a
    /// failure but a drain that overruns them is.
    pub async fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let started = std::time::Instant::now();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let exited = eventually(Duration::from_secs(90), || {
            let done = matches!(self.child.try_wait(), Ok(Some(_)));
            async move { done }
        })
        .await;
        let took = started.elapsed();
        assert!(
            exited,
            "process did not stop within {took:?} of SIGTERM{}",
            self.log_tail()
        );
        let st = self.child.wait().unwrap();
        assert!(
            st.success(),
            "exit {took:?} after SIGTERM: {st:?}{}",
            self.log_tail()
        );
        eprintln!("process stopped {took:?} after SIGTERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
        // A failed test's logs stay for a look.
        if let (Some(path), false) = (&self.log, std::thread::panicking()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Concurrent clients of a fault test's load.
pub const LOAD_CONCURRENCY: usize = 24;

/// A load of distinct users that retries every failed call (an idempotent
/// Issue returns the same coupon) and records each (user, code) it was told.
pub struct Load {
    pub told: Arc<Mutex<HashMap<String, String>>>,
    pub answered: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    pub async fn start(env: &Env, event: &str, users: u64, concurrency: usize) -> Self {
        let told = Arc::new(Mutex::new(HashMap::new()));
        let answered = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let mut client = CouponIssuerClient::new(env.channel().await);
            let (told, answered, errors, next) =
                (told.clone(), answered.clone(), errors.clone(), next.clone());
            let event = event.to_owned();
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= users {
                        return;
                    }
                    let user = format!("user-{n}");
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
                    loop {
                        let r = client
                            .issue(proto::IssueRequest {
                                event_id: event.clone(),
                                user_id: user.clone(),
                                request_id: format!("r{n}"),
                            })
                            .await;
                        match r.map(|r| r.into_inner()) {
                            Ok(resp) => {
                                let res = IssueResult::try_from(resp.result).unwrap();
                                if matches!(res, IssueResult::Issued | IssueResult::AlreadyIssued) {
                                    let code = resp.coupon.unwrap().code;
                                    let prev =
                                        told.lock().unwrap().insert(user.clone(), code.clone());
                                    assert!(
                                        prev.is_none() || prev.as_ref() == Some(&code),
                                        "{user} told two codes"
                                    );
                                } else {
                                    assert_eq!(res, IssueResult::SoldOut, "{user}: {resp:?}");
                                }
                                answered.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                assert!(
                                    tokio::time::Instant::now() < deadline,
                                    "{user} never answered"
                                );
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            }));
        }
        Self {
            told,
            answered,
            errors,
            tasks,
        }
    }

    /// Waits until at least `n` users were answered.
    pub async fn until_answered(&self, n: u64) {
        let a = self.answered.clone();
        assert!(
            eventually(Duration::from_secs(120), || {
                let v = a.load(Ordering::Relaxed);
                async move { v >= n }
            })
            .await,
            "load stalled before {n} answers"
        );
    }

    /// Users told ISSUED or ALREADY_ISSUED so far.
    pub fn told_now(&self) -> usize {
        self.told.lock().unwrap().len()
    }

    /// Waits for every user to be answered; returns what they were told.
    pub async fn finish(self) -> (HashMap<String, String>, u64) {
        for t in self.tasks {
            t.await.expect("load task");
        }
        let told = self.told.lock().unwrap().clone();
        (told, self.errors.load(Ordering::Relaxed))
    }
}
