//! Forced rebuilds under way: a finalizer committing beside the rebuild's
//! reads never makes it hand a finalized code out again; a control made
//! while the rebuild runs is kept; a rebuild that fails after taking the
//! event offline puts it back, and one that was killed is finished by the
//! next.

use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::EventId;
use coupond::proto::{self, IssueResult};
use coupond::store::keys::EventKeys;
use coupond::store::redis::Presence;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::helpers::{
    coupond_command, dead_letters, eventually, issue_all, lose_event_in_redis, preload_request,
    reconcile_cli, spawn_app, spawn_with, spawn_without_finalizer, TestApp,
};

/// Holds an exclusive lock on the test database's coupons table: a rebuild
/// reading the rows waits (its event already offline) until `release`.
struct CouponsLocked(AsyncPgConnection);

async fn lock_coupons(app: &TestApp) -> CouponsLocked {
    let mut c = AsyncPgConnection::establish(&app.settings.database.url)
        .await
        .unwrap();
    for sql in ["BEGIN", "LOCK TABLE coupons IN ACCESS EXCLUSIVE MODE"] {
        diesel::sql_query(sql).execute(&mut c).await.unwrap();
    }
    CouponsLocked(c)
}

impl CouponsLocked {
    async fn release(mut self) {
        diesel::sql_query("COMMIT")
            .execute(&mut self.0)
            .await
            .unwrap();
    }
}

/// A live event of 50 coupons, 10 of them issued and finalized.
async fn event_with_holders(app: &TestApp, name: &str) -> (String, EventId) {
    event_with_holders_over(app, name, 1).await
}

/// `event_with_holders` split over `shards` shards.
async fn event_with_holders_over(app: &TestApp, name: &str, shards: u32) -> (String, EventId) {
    let event = app.event_id(name);
    let mut req = preload_request(&event, 50);
    req.shards = shards;
    app.preload(req).await.unwrap();
    let users: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    let pairs: HashSet<(String, String)> = issue_all(app, &event, &users)
        .await
        .into_iter()
        .map(|(u, r)| (r.coupon.unwrap().code, u))
        .collect();
    app.await_finalized(&event, &pairs).await;
    let id = EventId::parse(event.clone()).unwrap();
    (event, id)
}

/// Starts `coupond reconcile --rebuild-redis --force` and waits until it
/// took the event offline (it then waits for the locked rows).
async fn start_forced_rebuild(
    app: &TestApp,
    event: &str,
    id: &EventId,
    db_url: Option<&str>,
) -> std::process::Child {
    let mut cmd = coupond_command(
        app,
        &["reconcile", "--event", event, "--rebuild-redis", "--force"],
    );
    if let Some(url) = db_url {
        cmd.env("COUPOND_DATABASE_URL", url);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let shards = app.pg.shards(id).await.unwrap();
    let offline = eventually(Duration::from_secs(30), || async {
        app.redis.presence(id, shards).await.unwrap() == Presence::Offline
    })
    .await;
    assert!(offline, "the rebuild took the event offline");
    child
}

fn output(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn result(app: &TestApp, event: &str, user: &str) -> IssueResult {
    IssueResult::try_from(app.issue(event, user).await.result).unwrap()
}

/// Asserts that each of `users` (request id `req-<user>`) is answered `want`.
async fn answered(
    app: &TestApp,
    event: &str,
    users: impl Iterator<Item = String>,
    want: IssueResult,
) {
    for user in users {
        assert_eq!(result(app, event, &user).await, want, "{user}");
    }
}

/// A forced rebuild that fails after taking the event offline: the
/// coupons' rows are locked, and its rows query gives up after a second
/// of waiting for them. Its exit code and output.
async fn failing_rebuild(app: &TestApp, event: &str, id: &EventId) -> (i32, String) {
    let lock = lock_coupons(app).await;
    let impatient = format!(
        "{}?options=-c%20lock_timeout%3D1000",
        app.settings.database.url
    );
    let rebuild = start_forced_rebuild(app, event, id, Some(&impatient)).await;
    let out = output(rebuild);
    lock.release().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_made_while_a_rebuild_runs_is_kept() {
    control_during_rebuild(1).await;
}

/// Of a sharded event, the pause reaches shard 0's parked meta only while
/// the rebuild runs; every shard has it before any goes live again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_made_while_a_sharded_rebuild_runs_reaches_every_shard() {
    control_during_rebuild(3).await;
}

async fn control_during_rebuild(shards: u32) {
    let app = spawn_app().await;
    let (event, id) = event_with_holders_over(&app, "ctlrebuild", shards).await;
    let lock = lock_coupons(&app).await;
    let rebuild = start_forced_rebuild(&app, &event, &id, None).await;
    // The rebuild read the event (not paused) before the pause.
    let pausing = {
        let mut admin = app.admin.clone();
        let event = event.clone();
        tokio::spawn(async move {
            admin
                .pause_event(proto::PauseEventRequest {
                    event_id: event,
                    reason: "during the rebuild".into(),
                })
                .await
        })
    };
    let parked_paused = eventually(Duration::from_secs(10), || async {
        let mut c = app.redis.conn().await.unwrap();
        let p: Option<String> = redis::cmd("HGET")
            .arg(&EventKeys::shard(&id, 0, shards).meta_offline)
            .arg("paused")
            .query_async(&mut c)
            .await
            .unwrap();
        p.is_some()
    })
    .await;
    assert!(parked_paused, "the pause reached the parked meta");
    lock.release().await;
    let (exit, out) = output(rebuild);
    assert_eq!(exit, 0, "{out}");
    assert!(
        pausing
            .await
            .unwrap()
            .unwrap()
            .into_inner()
            .event
            .unwrap()
            .paused
    );
    answered(
        &app,
        &event,
        (0..12).map(|i| format!("newcomer-{i}")),
        IssueResult::Paused,
    )
    .await;
    answered(
        &app,
        &event,
        (0..10).map(|i| format!("h{i}")),
        IssueResult::Issued,
    )
    .await;
}

/// A rebuild whose lock lapsed while it went on is fenced off by the one
/// that took over: its install and its bringing online are refused, the
/// newer rebuild's go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_lost_its_lock_is_fenced_off_by_the_next() {
    let app = spawn_app().await;
    let (event, _) = event_with_holders(&app, "fenced").await;
    let k = app.keys(&event);
    assert!(app.redis.take_offline(&k, "first").await.unwrap());
    assert!(!app.redis.take_offline(&k, "second").await.unwrap());
    let mut c = app.redis.conn().await.unwrap();
    let owner: String = redis::cmd("HGET")
        .arg(&k.meta_offline)
        .arg("rebuilder")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(owner, "second");
    let late = app.redis.bring_online(&k, "first", "").await;
    assert!(late.is_err(), "{late:?}");
    assert_eq!(
        app.redis
            .presence(&EventId::parse(event.clone()).unwrap(), 1)
            .await
            .unwrap(),
        Presence::Offline
    );
    let stored = app
        .pg
        .event(&EventId::parse(event.clone()).unwrap())
        .await
        .unwrap()
        .unwrap();
    let install = |holder: &'static str| {
        let (k, stored) = (app.keys(&event), stored.clone());
        let app = &app;
        async move {
            let state = coupond::store::redis::RebuiltState {
                queue: &[],
                issued: &[],
                pending: &[],
                starts_ms: 0,
                total: 50,
                preload_id: &stored.preload.preload_id,
                conflicted: &[],
                controls: stored.controls(),
                gen: "g",
                shards_made: false,
                parked: false,
                holder,
            };
            app.redis.install_rebuilt(&k, state).await
        }
    };
    let refused = install("first").await.expect_err("fenced");
    assert!(refused.to_string().contains("FENCED"), "{refused}");
    assert_eq!(
        app.redis.bring_online(&k, "second", "").await.unwrap(),
        Some(true)
    );
    assert_eq!(result(&app, &event, "h0").await, IssueResult::Issued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_fails_after_taking_the_event_offline_puts_it_back() {
    let app = spawn_app().await;
    let (event, id) = event_with_holders(&app, "failrebuild").await;
    let (exit, out) = failing_rebuild(&app, &event, &id).await;
    assert_ne!(exit, 0, "{out}");
    assert!(out.contains("back online as it was"), "{out}");
    assert_eq!(app.redis.presence(&id, 1).await.unwrap(), Presence::Live);
    assert_eq!(result(&app, &event, "newcomer").await, IssueResult::Issued);
    let (exit, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(exit, 0, "{report}");
}

/// A sharded event left offline by a rebuild that died before installing
/// anything (its shards all of one generation): a rebuild after it that
/// fails puts every shard back online as it was, as for one shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rebuild_after_one_that_installed_nothing_puts_a_sharded_event_back() {
    let app = spawn_app().await;
    let (event, id) = event_with_holders_over(&app, "failsharded", 3).await;
    for s in 0..3 {
        let parked = app
            .redis
            .take_offline(&EventKeys::shard(&id, s, 3), "died")
            .await;
        assert!(parked.unwrap(), "shard {s} parked");
    }
    let (exit, out) = failing_rebuild(&app, &event, &id).await;
    assert_ne!(exit, 0, "{out}");
    assert!(out.contains("back online as it was"), "{out}");
    for s in 0..3 {
        let k = EventKeys::shard(&id, s, 3);
        assert_eq!(
            app.redis.presence_in(&k).await.unwrap(),
            Presence::Live,
            "shard {s}"
        );
    }
    answered(
        &app,
        &event,
        (0..6).map(|i| format!("newcomer-{i}")),
        IssueResult::Issued,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rebuild_is_finished_by_the_next_one() {
    let app = spawn_app().await;
    let (event, id) = event_with_holders(&app, "killrebuild").await;
    let lock = lock_coupons(&app).await;
    let mut rebuild = start_forced_rebuild(&app, &event, &id, None).await;
    rebuild.kill().unwrap(); // SIGKILL, with the event offline
    rebuild.wait().unwrap();
    lock.release().await;
    assert_eq!(app.redis.presence(&id, 1).await.unwrap(), Presence::Offline);
    // Offline: a holder keeps their coupon, anyone else is told to retry.
    assert_eq!(result(&app, &event, "h1").await, IssueResult::Issued);
    let e = app
        .issuer
        .clone()
        .issue(proto::IssueRequest {
            event_id: event.clone(),
            user_id: "newcomer".into(),
            request_id: "r".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let shown = app.get_event(&event).await;
    assert!(shown.offline, "GetEvent says the event is offline");
    // The same command again (here even without --force) finishes it, once
    // the dead rebuild's lock has run out (seconds).
    let mut out = String::new();
    let finished = eventually(Duration::from_secs(60), || {
        let (exit, o) = reconcile_cli(&app, &event, &["--rebuild-redis"]);
        out = o;
        async move { exit == 0 }
    })
    .await;
    assert!(finished, "{out}");
    assert!(out.contains("did not finish: finished it"), "{out}");
    assert!(!app.get_event(&event).await.offline);
    assert_eq!(app.redis.presence(&id, 1).await.unwrap(), Presence::Live);
    assert_eq!(result(&app, &event, "newcomer").await, IssueResult::Issued);
}

/// The finalizer commits batches all through the rebuild's reads. A batch
/// committed after the rows were read (their snapshot is taken when the
/// query starts; 100,000 rows take a while to arrive) and before the
/// backlog's offsets would be in neither (Redis lost it): its codes would
/// be queued and handed out again. Reading the backlog first closes that gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forced_rebuild_beside_a_lagging_finalizer_hands_no_code_out_twice() {
    const TOTAL: u32 = 100_000;
    let app = spawn_without_finalizer().await;
    let event = app.event_id("lagrebuild");
    let id = EventId::parse(event.clone()).unwrap();
    app.preload(preload_request(&event, TOTAL)).await.unwrap();
    let early: Vec<String> = (0..2000).map(|i| format!("early-{i}")).collect();
    let mut pairs: HashSet<(String, String)> = HashSet::new();
    for (u, r) in issue_all(&app, &event, &early).await {
        assert_eq!(r.result, IssueResult::Issued as i32, "{u}");
        pairs.insert((r.coupon.unwrap().code, u));
    }
    lose_event_in_redis(&app, &event).await;
    // A slow finalizer: 10 messages a batch, one batch at a time.
    let mut slow = app.settings.clone();
    slow.consumer.batch_size = 10;
    slow.consumer.in_flight = 1;
    let _finalizer = spawn_with(slow, app.tag.clone()).await;
    let started = eventually(Duration::from_secs(30), || async {
        app.pg.finalized_count(&id).await.unwrap() >= 100
    })
    .await;
    assert!(started, "the finalizer is committing");
    let (exit, out) = reconcile_cli(&app, &event, &["--rebuild-redis", "--force"]);
    assert_eq!(exit, 0, "{out}");
    let lag: u64 = out
        .split("(lag was ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        lag > 0,
        "the finalizer lagged when the rebuild started: {out}"
    );
    eprintln!("{}", out.lines().next().unwrap_or_default());
    // The rebuilt queue holds exactly the codes nobody holds (read in
    // chunks on a bulk connection: one LRANGE of 98,000 entries can outlast
    // a response timeout on a busy machine).
    let queue = app.redis.snapshot(&id, 1).await.unwrap().queue;
    let issued: HashSet<&str> = pairs.iter().map(|(c, _)| c.as_str()).collect();
    let again: Vec<&str> = queue
        .iter()
        .map(String::as_str)
        .filter(|c| issued.contains(c))
        .collect();
    assert!(
        again.is_empty(),
        "{} issued codes queued again: {again:?}",
        again.len()
    );
    assert_eq!(queue.len(), TOTAL as usize - pairs.len());
    app.await_finalized(&event, &pairs).await;
    assert_eq!(dead_letters(&app), 0, "no conflict dead-lettered");
    let (exit, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(exit, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_stopped_by_a_signal_puts_the_event_back_online() {
    let app = spawn_app().await;
    let (event, id) = event_with_holders(&app, "sigrebuild").await;
    let lock = lock_coupons(&app).await;
    let rebuild = start_forced_rebuild(&app, &event, &id, None).await;
    let sent = std::process::Command::new("kill")
        .args(["-INT", &rebuild.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (exit, out) = output(rebuild);
    lock.release().await;
    assert_ne!(exit, 0, "{out}");
    assert!(
        out.contains("stopped by a signal") && out.contains("back online as it was"),
        "{out}"
    );
    assert_eq!(app.redis.presence(&id, 1).await.unwrap(), Presence::Live);
    assert_eq!(result(&app, &event, "newcomer").await, IssueResult::Issued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rebuilds_of_one_event_never_run_at_once() {
    let app = spawn_app().await;
    let (event, id) = event_with_holders(&app, "busyrebuild").await;
    let taken = app
        .redis
        .rebuild_lock(
            &id,
            coupond::store::redis::LockAction::Take,
            "another-operator",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(taken, None);
    let (exit, out) = reconcile_cli(&app, &event, &["--rebuild-redis", "--force"]);
    assert_ne!(exit, 0, "{out}");
    assert!(
        out.contains("another rebuild of the event is running"),
        "{out}"
    );
    assert_eq!(
        app.redis.presence(&id, 1).await.unwrap(),
        Presence::Live,
        "untouched"
    );
}
