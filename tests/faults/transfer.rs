//! A transfer between the shards of an event whose server is SIGKILLed
//! after each of its steps (held there by `COUPOND_TEST_FAILPOINT`), then
//! finished by another server: every code stays in exactly one place, the
//! event sells out exactly, and PostgreSQL records what users were told.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use coupond::domain::{shard, EventId, UserId};
use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, IssueResult};
use coupond::store::keys::EventKeys;
use coupond::store::RedisStore;
use redis::AsyncCommands;

use crate::common::{eventually, preload_request};
use crate::support::{free_port, Env, SERIAL};

const SHARDS: u32 = 3;
const COUPONS: u32 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_whose_server_died_after_step_one_is_finished_by_another_server() {
    killed_mid_transfer("transfer_after_out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_whose_server_died_after_step_two_is_finished_by_another_server() {
    killed_mid_transfer("transfer_after_in").await;
}

/// Server B preloads and drains shard 0; server A, held at `step` of the
/// refill its user's request starts, is SIGKILLed there; server B then
/// serves that user and everyone else.
async fn killed_mid_transfer(step: &str) {
    let _serial = SERIAL.lock().await;
    let b_env = Env::new().await;
    let a_env = Env {
        tag: b_env.tag.clone(),
        settings: b_env.settings.clone(),
        port: free_port(),
    };
    // No sweeps: the transfer must be found and finished by a server's
    // refill, not by a sweeper that happens to pass first.
    let quiet = ("COUPOND_SWEEP_INTERVAL_MS", "600000");
    let mut b = b_env.serve_env(&[], &[quiet]).await;
    let event = format!("xfer-{}", b_env.tag);
    let mut req = preload_request(&event, COUPONS);
    req.shards = SHARDS;
    b_env.admin().await.preload(req).await.expect("preload");
    let id = EventId::parse(event.clone()).unwrap();
    let redis = b_env.redis();
    let spread = eventually(Duration::from_secs(60), || async {
        queue_lengths(&redis, &id).await == [10, 10, 10]
    })
    .await;
    assert!(spread, "{:?}", queue_lengths(&redis, &id).await);
    let mut told = HashMap::new();
    let b_issuer = CouponIssuerClient::new(b_env.channel().await);
    for u in users_at(0, 10, "drain") {
        let r = issue(&b_issuer, &event, &u).await;
        assert_eq!(r.result, IssueResult::Issued as i32, "{u}");
        told.insert(u, r.coupon.unwrap().code);
    }
    assert_eq!(queue_lengths(&redis, &id).await, [0, 10, 10]);

    let mut a = a_env
        .serve_env(
            &["--no-consumer"],
            &[quiet, ("COUPOND_TEST_FAILPOINT", step)],
        )
        .await;
    let user = users_at(0, 1, "stranded").remove(0);
    let asking = {
        let (issuer, event, user) = (
            CouponIssuerClient::new(a_env.channel().await),
            event.clone(),
            user.clone(),
        );
        // Never answered: server A stops for good inside the refill and is
        // killed there.
        tokio::spawn(async move {
            let req = proto::IssueRequest {
                event_id: event,
                user_id: user.clone(),
                request_id: format!("req-{user}"),
            };
            issuer.clone().issue(req).await
        })
    };
    let held = eventually(Duration::from_secs(60), || async {
        stopped_at(&redis, &id, step).await
    })
    .await;
    assert!(held, "server A stopped at {step}:\n{}", a.log_tail());
    a.kill9();
    asking.abort();
    assert_each_code_in_one_place(&redis, &id, &told).await;

    // Server B: the stranded user (a refill finishes the open transfer
    // first, or the codes are at shard 0 already), then everyone else.
    let r = issue(&b_issuer, &event, &user).await;
    assert_eq!(r.result, IssueResult::Issued as i32, "{user}");
    told.insert(user, r.coupon.unwrap().code);
    for i in 0..30 {
        let u = format!("later-{i}");
        let r = issue(&b_issuer, &event, &u).await;
        match IssueResult::try_from(r.result).unwrap() {
            IssueResult::Issued => {
                told.insert(u, r.coupon.unwrap().code);
            }
            IssueResult::SoldOut => {}
            other => panic!("{u}: {other:?}"),
        }
    }
    assert_eq!(told.len() as u32, COUPONS, "the event sold out exactly");
    // Selling out finished the transfer (a refill finishes every open
    // record before SOLD_OUT): no record is open.
    let finished = eventually(Duration::from_secs(30), || async {
        open_records(&redis, &id).await == 0
    })
    .await;
    assert!(finished, "the transfer was finished");
    b_env.assert_exactly_recorded(&event, &told).await;
    let (code, report) = b_env.reconcile(&event, &[]);
    assert_eq!(code, 0, "reconcile finds nothing wrong:\n{report}");
    b.terminate().await;
}

async fn issue(
    issuer: &CouponIssuerClient<tonic::transport::Channel>,
    event: &str,
    user: &str,
) -> proto::IssueResponse {
    issuer
        .clone()
        .issue(proto::IssueRequest {
            event_id: event.into(),
            user_id: user.into(),
            request_id: format!("req-{user}"),
        })
        .await
        .expect("issue")
        .into_inner()
}

/// `n` user ids whose home shard is `home`.
fn users_at(home: u32, n: usize, prefix: &str) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|u| shard::home(&UserId::parse(u.clone()).unwrap(), SHARDS) == home)
        .take(n)
        .collect()
}

fn shard_keys(id: &EventId) -> Vec<EventKeys> {
    (0..SHARDS)
        .map(|s| EventKeys::shard(id, s, SHARDS))
        .collect()
}

async fn queue_lengths(redis: &RedisStore, id: &EventId) -> Vec<u64> {
    let mut c = redis.conn().await.unwrap();
    let mut out = Vec::new();
    for k in shard_keys(id) {
        out.push(c.llen(&k.queue).await.unwrap());
    }
    out
}

async fn open_records(redis: &RedisStore, id: &EventId) -> usize {
    let mut n = 0;
    for k in shard_keys(id) {
        n += redis.open_transfers(&k).await.unwrap().len();
    }
    n
}

/// Whether a transfer to shard 0 stands where `step` holds it: after
/// step 1 an open record its target has not received; after step 2 one
/// it has.
async fn stopped_at(redis: &RedisStore, id: &EventId, step: &str) -> bool {
    let target = &shard_keys(id)[0];
    let mut c = redis.conn().await.unwrap();
    for k in &shard_keys(id)[1..] {
        for t in redis.open_transfers(k).await.unwrap() {
            let received: bool = c.sismember(&target.received, &t.id).await.unwrap();
            if received == (step == "transfer_after_in") {
                return true;
            }
        }
    }
    false
}

/// Every one of the event's codes is in exactly one place: a queue, an
/// unspent transfer record, or a user's issuance (those told so far).
async fn assert_each_code_in_one_place(
    redis: &RedisStore,
    id: &EventId,
    told: &HashMap<String, String>,
) {
    let mut c = redis.conn().await.unwrap();
    let mut places: Vec<String> = told.values().cloned().collect();
    for k in shard_keys(id) {
        let q: Vec<String> = c.lrange(&k.queue, 0, -1).await.unwrap();
        places.extend(q.iter().map(|e| e.split('\t').next().unwrap().to_owned()));
        for t in redis.unspent_transfers(&k).await.unwrap() {
            places.extend(
                t.entries
                    .iter()
                    .map(|e| e.split('\t').next().unwrap().to_owned()),
            );
        }
    }
    let distinct: HashSet<&String> = places.iter().collect();
    assert_eq!(distinct.len(), places.len(), "a code in two places");
    assert_eq!(places.len() as u32, COUPONS, "every code somewhere");
}
