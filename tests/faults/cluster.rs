//! coupond on the stack's Redis Cluster (three masters with a replica each,
//! `scripts/stack.sh redis-cluster-up`): events spread over every master,
//! a master SIGKILLed mid-load with its replica taking over, and several
//! servers and finalizers at once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::{eventually, preload_request};
use crate::support::{stack, Env, Load, SERIAL};

/// The stack's cluster nodes (masters and replicas; which is which moves
/// with failovers).
const NODES: [u16; 6] = [7001, 7002, 7003, 7004, 7005, 7006];

fn seeds() -> Vec<String> {
    NODES
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect()
}

/// An environment whose processes and stores use the cluster.
async fn cluster_env() -> Env {
    stack("redis-cluster-up");
    let mut env = Env::new().await;
    env.settings.redis.cluster = seeds();
    env
}

/// Restarts a killed node when the test ends, passed or failed (it
/// rejoins as a replica), so the cluster is whole for what runs next.
struct RestoreCluster;

impl Drop for RestoreCluster {
    fn drop(&mut self) {
        stack("redis-cluster-up");
    }
}

/// A connection to the first node that answers (any node can be the one
/// a test killed).
fn any_node() -> redis::Connection {
    NODES
        .iter()
        .filter_map(|p| redis::Client::open(format!("redis://127.0.0.1:{p}")).ok())
        .find_map(|c| c.get_connection().ok())
        .expect("a cluster node answers")
}

/// `CLUSTER NODES` as a live node sees it: (port, slot ranges) of each
/// master that is not failed.
fn masters() -> Vec<(u16, Vec<(u16, u16)>)> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut any_node())
        .expect("CLUSTER NODES");
    text.lines().filter_map(master_line).collect()
}

fn master_line(line: &str) -> Option<(u16, Vec<(u16, u16)>)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let flags = f.get(2)?;
    if !flags.contains("master") || flags.contains("fail") {
        return None;
    }
    let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
    let ranges = f[8..]
        .iter()
        .filter(|r| !r.starts_with('['))
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|s| (s, s)),
        })
        .collect();
    Some((port, ranges))
}

fn slot_of(event: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(format!("couponQueue:{{{event}}}"))
        .query(&mut any_node())
        .unwrap()
}

/// The port of the master that serves `event`'s keys now.
fn master_of(event: &str) -> Option<u16> {
    let slot = slot_of(event);
    masters()
        .into_iter()
        .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|(port, _)| port)
}

/// WAIT calls each live node has served (`INFO commandstats`).
fn wait_calls() -> HashMap<u16, u64> {
    NODES
        .iter()
        .filter_map(|&port| {
            let c = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut c.get_connection().ok()?)
                .ok()?;
            let calls = info
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
                .and_then(|rest| rest.split(',').next()?.parse().ok())
                .unwrap_or(0);
            Some((port, calls))
        })
        .collect()
}

/// Event ids (`<name><n>-<tag>`), one on each master.
fn one_event_per_master(env: &Env, name: &str) -> Vec<String> {
    let mut by_master: HashMap<u16, String> = HashMap::new();
    for n in 0.. {
        let event = format!("{name}{n}-{}", env.tag);
        let master = master_of(&event).expect("every slot is served");
        by_master.entry(master).or_insert(event);
        if by_master.len() == 3 {
            break;
        }
    }
    by_master.into_values().collect()
}

/// `n` environments sharing `env`'s stores and topics, each with a port
/// of its own: several servers of one deployment.
fn siblings(env: &Env, n: usize) -> Vec<Env> {
    (0..n)
        .map(|_| Env {
            tag: env.tag.clone(),
            settings: env.settings.clone(),
            port: crate::support::free_port(),
        })
        .collect()
}

/// Preloads `event`; its coupons per policy.
async fn preload(env: &Env, event: &str, coupons: u32) -> Vec<i64> {
    let r = env
        .admin()
        .await
        .preload(preload_request(event, coupons))
        .await
        .expect("preload on the cluster")
        .into_inner();
    r.counts_per_policy.iter().map(|&n| n as i64).collect()
}

/// PostgreSQL's count of finalized coupons per policy of `event`.
async fn finalized_per_policy(env: &Env, event: &str) -> Vec<i64> {
    let (db, conn) = tokio_postgres::connect(&env.settings.database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.query(
        "SELECT count(*) FROM coupons WHERE event_id = $1 AND user_id IS NOT NULL \
         GROUP BY policy_position ORDER BY policy_position",
        &[&event],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_on_every_master_issue_exactly_and_are_finalized() {
    let _serial = SERIAL.lock().await;
    let env = cluster_env().await;
    let mut server = env.serve(&[]).await;
    let events = one_event_per_master(&env, "spread");
    let masters: HashSet<u16> = events.iter().filter_map(|e| master_of(e)).collect();
    assert_eq!(masters.len(), 3, "one event on each master: {events:?}");
    let mut per_policy = Vec::new();
    for e in &events {
        per_policy.push(preload(&env, e, 1000).await);
    }
    let waits_before = wait_calls();
    let started = std::time::Instant::now();
    let loads: Vec<Load> =
        futures::future::join_all(events.iter().map(|e| Load::start(&env, e, 2000, 16))).await;
    for ((event, load), expected) in events.iter().zip(loads).zip(per_policy) {
        let (told, _) = load.finish().await;
        assert_eq!(told.len(), 1000, "{event}: every coupon went to someone");
        env.assert_exactly_recorded(event, &told).await;
        let finalized = finalized_per_policy(&env, event).await;
        assert_eq!(finalized, expected, "{event}: coupons per policy");
    }
    eprintln!(
        "3 events on 3 masters: 6,000 users for 3,000 coupons issued and finalized in {:?}",
        started.elapsed()
    );
    // The failover guard ran on every master (WAIT after each batch).
    let waits = wait_calls();
    for port in &masters {
        let (before, after) = (waits_before.get(port), waits.get(port));
        assert!(
            after.unwrap_or(&0) > before.unwrap_or(&0),
            "master {port} confirmed batches with WAIT: {before:?} -> {after:?}"
        );
    }
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_load_fails_over_without_a_lost_or_doubled_coupon() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreCluster;
    let env = cluster_env().await;
    let mut server = env.serve(&[]).await;
    let event = format!("failover-{}", env.tag);
    let coupons = 2000;
    preload(&env, &event, coupons).await;
    let load = Load::start(&env, &event, 3000, 24).await;
    load.until_answered(400).await;

    let victim = master_of(&event).expect("the event's master");
    let killed = std::time::Instant::now();
    kill_node(victim);
    let promoted = eventually(Duration::from_secs(60), || async {
        master_of(&event).is_some_and(|m| m != victim)
    })
    .await;
    assert!(promoted, "a replica took over the event's slot");
    // The new master has no replica left: the guard answers no ISSUED
    // until the killed node is back (as the operator's supervisor would
    // bring it), rejoining as its replica.
    stack("redis-cluster-up");
    eprintln!(
        "master {victim} killed after 400 answers; {:?} took over after {:?}",
        master_of(&event),
        killed.elapsed()
    );

    let (told, errors) = load.finish().await;
    eprintln!(
        "failover: told {} ISSUED, {errors} retried errors; load done {:?} after the kill",
        told.len(),
        killed.elapsed()
    );
    assert_eq!(told.len() as u32, coupons, "every coupon went to someone");
    env.assert_exactly_recorded(&event, &told).await;
    eprintln!(
        "failover: all recorded {:?} after the kill",
        killed.elapsed()
    );
    let (code, report) = env.reconcile(&event, &[]);
    assert_eq!(code, 0, "reconcile finds nothing wrong:\n{report}");
    eprintln!("failover: reconciled {:?} after the kill", killed.elapsed());
    server.terminate().await;
}

/// One event over three shards on three masters: the master of shard 1
/// SIGKILLed mid-load while users of every shard ask, shards running dry
/// and refilling from each other through transfers before and after the
/// failover. Every coupon goes to someone, each told ISSUED is recorded
/// with that code, and reconcile finds the shards and PostgreSQL agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_a_sharded_event_loses_and_doubles_nothing() {
    let _serial = SERIAL.lock().await;
    let _restore = RestoreCluster;
    let env = cluster_env().await;
    let mut server = env.serve(&[]).await;
    let event = format!("shardfail-{}", env.tag);
    let coupons = 2000;
    let mut req = preload_request(&event, coupons);
    req.shards = 3;
    env.admin().await.preload(req).await.expect("preload");
    let id = coupond::domain::EventId::parse(event.clone()).unwrap();
    let tags: Vec<String> = (0..3)
        .map(|s| coupond::domain::shard::tag(&id, s, 3))
        .collect();
    let masters: HashSet<u16> = tags.iter().filter_map(|t| master_of(t)).collect();
    assert_eq!(masters.len(), 3, "the shards on three masters: {tags:?}");
    let load = Load::start(&env, &event, 3000, 24).await;
    load.until_answered(400).await;

    let victim = master_of(&tags[1]).expect("shard 1's master");
    let killed = std::time::Instant::now();
    kill_node(victim);
    let promoted = eventually(Duration::from_secs(60), || async {
        master_of(&tags[1]).is_some_and(|m| m != victim)
    })
    .await;
    assert!(promoted, "a replica took over shard 1's slot");
    stack("redis-cluster-up");
    let (told, errors) = load.finish().await;
    eprintln!(
        "sharded failover: told {} ISSUED, {errors} retried errors; load done {:?} after the kill",
        told.len(),
        killed.elapsed()
    );
    assert_eq!(told.len() as u32, coupons, "every coupon went to someone");
    env.assert_exactly_recorded(&event, &told).await;
    let (code, report) = env.reconcile(&event, &[]);
    assert_eq!(code, 0, "reconcile finds nothing wrong:\n{report}");
    // Shards ran dry unevenly around the failover: transfers beyond the
    // preload's spread (one to each other shard) moved codes meanwhile.
    let mut c = env.redis().conn().await.unwrap();
    let mut done = 0u64;
    for s in 0..3 {
        let k = coupond::store::keys::EventKeys::shard(&id, s, 3);
        done += redis::cmd("SCARD")
            .arg(&k.sent)
            .query_async::<u64>(&mut c)
            .await
            .unwrap();
    }
    eprintln!("sharded failover: {done} transfers done");
    assert!(done > 2, "refills moved codes: {done} transfers");
    server.terminate().await;
}

/// SIGKILLs the cluster node on `port`.
fn kill_node(port: u16) {
    stack(&format!("redis-cluster-kill {port}"));
}

/// The port of a replica of the master on `port`.
fn replica_of(port: u16) -> u16 {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut any_node())
        .unwrap();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let port_of = |f: &Vec<&str>| -> u16 {
        f[1].split('@')
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let master_id = lines
        .iter()
        .find(|f| port_of(f) == port)
        .expect("the master")[0];
    let replica = lines
        .iter()
        .find(|f| f[2].contains("slave") && f[3] == master_id)
        .expect("a replica of the master");
    port_of(replica)
}

/// The process id of the Redis node on `port`.
fn node_pid(port: u16) -> String {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let info: String = redis::cmd("INFO").arg("server").query(&mut c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("process_id")
        .trim()
        .to_owned()
}

fn signal(pid: &str, signal: &str) {
    let st = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(st.success(), "kill {signal} {pid}");
}

/// A node stopped (SIGSTOP) until this is dropped (SIGCONT), passed or
/// failed.
struct Stopped(String);

impl Stopped {
    fn node(port: u16) -> Self {
        let pid = node_pid(port);
        signal(&pid, "-STOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

/// An issuance whose writes no replica confirmed is not told ISSUED (a
/// failover could still hand its code out again): the caller hears that
/// the outcome is unknown, and once the replica is back the same request
/// gets ISSUED with the code Redis recorded the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_issuance_no_replica_confirmed_is_not_told_issued() {
    use coupond::proto::coupon_issuer_client::CouponIssuerClient;
    use coupond::proto::{IssueRequest, IssueResult};

    let _serial = SERIAL.lock().await;
    let env = cluster_env().await;
    let mut server = env.serve(&[]).await;
    let event = format!("unconfirmed-{}", env.tag);
    preload(&env, &event, 10).await;
    let replica = replica_of(master_of(&event).expect("the event's master"));
    let mut issuer = CouponIssuerClient::connect(env.addr()).await.unwrap();
    let req = IssueRequest {
        event_id: event.clone(),
        user_id: "u1".into(),
        request_id: "r1".into(),
    };

    let stopped = Stopped::node(replica);
    let stalled = issuer.issue(req.clone()).await;
    let code = stalled.as_ref().map_err(|s| s.code());
    assert_eq!(
        code.err(),
        Some(tonic::Code::DeadlineExceeded),
        "no ISSUED without a replica's confirmation: {stalled:?}"
    );
    drop(stopped);

    // Asked again (the same request) until the replica confirms.
    let answer = std::sync::Arc::new(std::sync::Mutex::new(None));
    let confirmed = eventually(Duration::from_secs(60), || {
        let (mut issuer, req, answer) = (issuer.clone(), req.clone(), answer.clone());
        async move {
            let Ok(r) = issuer.issue(req).await else {
                return false;
            };
            *answer.lock().unwrap() = Some(r.into_inner());
            true
        }
    })
    .await;
    assert!(confirmed, "ISSUED once the replica is back");
    let answer = answer.lock().unwrap().take().unwrap();
    assert_eq!(answer.result(), IssueResult::Issued);
    let held = env
        .redis()
        .issuance(
            &coupond::domain::EventId::parse(event.clone()).unwrap(),
            1,
            &coupond::domain::UserId::parse("u1").unwrap(),
        )
        .await
        .unwrap()
        .expect("Redis holds the user's record");
    assert_eq!(
        answer.coupon.map(|c| c.code),
        Some(held.coupon.code),
        "the code recorded on the first attempt"
    );
    server.terminate().await;
}

/// Three servers (clients spread over them, every user asking through all
/// three at once) and two finalizers on the cluster; one server and one
/// finalizer SIGKILLed mid-load, the server started again. Every user is
/// told one code whichever server answered, and PostgreSQL holds exactly
/// what they were told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_and_two_finalizers_with_kills_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let env = cluster_env().await;
    let coupons = 2000;
    let event = format!("many-{}", env.tag);
    let envs: Vec<Env> = siblings(&env, 3);
    let mut servers = Vec::new();
    for e in &envs {
        servers.push(e.serve(&["--no-consumer"]).await);
    }
    let (mut killed, mut consumer) = (env.consume(), env.consume());
    preload(&envs[0], &event, coupons).await;
    let mut loads = Vec::new();
    for e in &envs {
        loads.push(Load::start(e, &event, 3000, 8).await);
    }
    loads[0].until_answered(300).await;
    servers[1].kill9();
    killed.kill9();
    servers[1] = envs[1].serve(&["--no-consumer"]).await;

    let mut told: HashMap<String, String> = HashMap::new();
    for load in loads {
        let (seen, _) = load.finish().await;
        for (user, code) in seen {
            let first = told.entry(user.clone()).or_insert(code.clone());
            assert_eq!(*first, code, "{user} told two codes by two servers");
        }
    }
    assert_eq!(told.len() as u32, coupons, "every coupon went to someone");
    env.assert_exactly_recorded(&event, &told).await;
    for mut s in servers {
        s.terminate().await;
    }
    consumer.terminate().await;
}

/// Health on the cluster: while a master and its replica are both stopped
/// (its slots have no reachable primary, and a third of the events can be
/// neither issued nor preloaded), the server reports NOT_SERVING; once they
/// run again, SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_is_not_serving_while_a_master_has_no_reachable_primary() {
    use crate::health::{health, until, ADMIN, ISSUER};
    use tonic_health::pb::health_check_response::ServingStatus::{NotServing, Serving};

    let _serial = SERIAL.lock().await;
    let _restore = RestoreCluster;
    let env = cluster_env().await;
    let mut server = env.serve(&[]).await;
    let served = health(env.addr());
    let all = |s| [(ADMIN, s), (ISSUER, s), ("", s)];
    until(&served, &all(Serving), "at start").await;

    let master = masters()[0].0;
    let replica = replica_of(master);
    let stopped = (Stopped::node(replica), Stopped::node(master));
    until(
        &served,
        &all(NotServing),
        "a master and its replica stopped",
    )
    .await;
    drop(stopped);
    until(&served, &all(Serving), "both running again").await;
    server.terminate().await;
}

/// Two servers sweeping one event on the cluster, no finalizer: each claim
/// is one atomic script on the event's master, so an issuance is
/// republished once per window whichever server claims it. The windows
/// double (1 s, 2 s, 4 s, ...): after E seconds an issuance has had at most
/// 1 + log2(E / 1 s) republishes; two servers claiming on their own would
/// have made about twice that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_sweeping_republish_each_issuance_once_per_window() {
    let _serial = SERIAL.lock().await;
    let env = cluster_env().await;
    let sweep = [
        ("COUPOND_SWEEP_AGE", "1s"),
        ("COUPOND_SWEEP_INTERVAL", "100ms"),
        ("COUPOND_SWEEP_MAX_AGE", "60s"),
    ];
    let envs: Vec<Env> = siblings(&env, 2);
    let mut servers = Vec::new();
    for e in &envs {
        servers.push(e.serve_env(&["--no-consumer"], &sweep).await);
    }
    let event = format!("swept-{}", env.tag);
    preload(&envs[0], &event, 200).await;
    let started = std::time::Instant::now();
    let (told, errors) = Load::start(&envs[1], &event, 200, 8).await.finish().await;
    assert_eq!(told.len(), 200);
    // A retried request would be published again by the issue path.
    assert_eq!(errors, 0, "no request retried");

    let k = &env.settings.kafka;
    let read = || crate::common::messages_per_user(&k.brokers, &k.topic, &event);
    let swept = eventually(Duration::from_secs(90), || async {
        let n = read();
        n.len() == 200 && n.values().all(|m| *m >= 4)
    })
    .await;
    let counts = read();
    let elapsed = started.elapsed();
    assert!(
        swept,
        "every issuance republished at least 3 times: {counts:?}"
    );
    // The windows double until they reach the 60 s max age.
    assert!(elapsed < Duration::from_secs(120), "{elapsed:?}");
    let most = 2 + (elapsed.as_secs_f64() / 1.0).log2().floor() as usize;
    let over: Vec<_> = counts.iter().filter(|(_, m)| **m > most).collect();
    assert!(
        over.is_empty(),
        "after {elapsed:?} no issuance may have more than {most} messages: {over:?}"
    );
    eprintln!(
        "sweep: after {elapsed:?}, messages per issuance between {:?} and {:?} (at most {most})",
        counts.values().min(),
        counts.values().max()
    );
    for mut s in servers {
        s.terminate().await;
    }
}

/// A preload job's lease across servers on the cluster: the server running
/// the job is SIGKILLed mid-job, and another running server takes the job
/// over once the lease runs out (PostgreSQL's lease, the Redis fence on the
/// event's master). The event ends live and consistent, and issues and
/// finalizes from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_server_takes_over_a_preload_whose_server_died() {
    use coupond::domain::EventState;

    let _serial = SERIAL.lock().await;
    let env = cluster_env().await;
    let envs = siblings(&env, 2);
    let job = crate::preload::JOB_ENV;
    let mut first = envs[0].serve_env(&["--no-consumer"], &job).await;
    let mut second = envs[1].serve_env(&[], &job).await;
    let event = format!("taken-{}", env.tag);
    let total = 400_000;
    let req = preload_request(&event, total);
    let (pg, id) = crate::preload::preload_under_way(&envs[0], &req, 40_000).await;
    first.kill9();
    let at_kill = pg.event(&id).await.unwrap().expect("the event").preload;
    assert_eq!(at_kill.state, EventState::Preparing, "killed mid-job");
    assert!(
        at_kill.written < total,
        "killed mid-job: {}",
        at_kill.written
    );
    let state = crate::common::await_preload_end(&pg, &event, Duration::from_secs(180)).await;
    eprintln!(
        "preload takeover: {} of {total} written at the kill; ended {state:?}",
        at_kill.written
    );
    assert_eq!(state, EventState::Live, "the other server finished the job");
    let finished = pg.event(&id).await.unwrap().expect("the event").preload;
    assert_ne!(
        finished.preload_id, at_kill.preload_id,
        "a job of the other server's (a takeover draws a new id) made it live"
    );
    let r = envs[1]
        .preload_within(req, Duration::from_secs(60))
        .await
        .expect("preload asked again");
    assert_eq!(r.state, coupond::proto::EventState::Live as i32);
    crate::common::assert_live_and_consistent(&pg, &env.redis(), &event, total).await;
    let (told, _) = Load::start(&envs[1], &event, 1_000, 8).await.finish().await;
    assert_eq!(told.len(), 1_000);
    env.assert_exactly_recorded(&event, &told).await;
    second.terminate().await;
}
