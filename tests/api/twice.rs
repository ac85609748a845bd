//! Every script run twice with the same arguments, as redis-rs's cluster
//! client does when a connection drops or times out before the reply: the
//! second run leaves Redis exactly as the first left it, and its answer
//! tells the caller the same (or, for a rebuild's install, that it must be
//! run again). Runs on a single node and, in the test command's second
//! pass, on the cluster.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use coupond::domain::{
    ControlState, EventId, IssuanceRecord, IssueOutcome, IssuedCoupon, PreloadId, RequestId, UserId,
};
use coupond::store::redis::{FenceReply, LockAction, RebuiltState, Verdict};
use redis::AsyncCommands;

use crate::helpers::{preload_request, spawn_unswept, TestApp};

/// Every key of the event a script writes, as text: type, content and
/// when it expires (unix ms, -1 never). The progress mark and the failover
/// guard hold the time of the call and are left out; the rebuild lock is a
/// lease its holder renews by taking it again, so only whether it expires
/// counts.
async fn dump(app: &TestApp, event: &str, extra: &[String]) -> BTreeMap<String, String> {
    let k = app.keys(event);
    let lease = k.rebuild_lock.clone();
    let mut keys = vec![
        k.queue,
        k.issued,
        k.meta,
        k.pending,
        k.staging,
        k.preload_owner,
        k.issued_staging,
        k.pending_staging,
        k.meta_offline,
        k.rebuild_lock,
        k.conflicts,
        k.superseded,
        k.transfers,
        k.sent,
        k.received,
    ];
    keys.extend_from_slice(extra);
    let mut c = app.redis.conn().await.unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        let content = match kind.as_str() {
            "none" => continue,
            "string" => c.get::<_, String>(&key).await.unwrap(),
            "list" => c
                .lrange::<_, Vec<String>>(&key, 0, -1)
                .await
                .unwrap()
                .join("|"),
            "hash" => format!(
                "{:?}",
                c.hgetall::<_, BTreeMap<String, String>>(&key)
                    .await
                    .unwrap()
            ),
            "zset" => format!(
                "{:?}",
                c.zrange_withscores::<_, Vec<(String, i64)>>(&key, 0, -1)
                    .await
                    .unwrap()
            ),
            "set" => {
                let mut m: Vec<String> = c.smembers(&key).await.unwrap();
                m.sort();
                m.join("|")
            }
            other => panic!("{key}: unexpected type {other}"),
        };
        let mut expires: i64 = redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        if key == lease {
            expires = expires.signum();
        }
        out.insert(key, format!("{kind} expires at {expires} {content}"));
    }
    out
}

/// Runs `step` twice and checks the second run left Redis as the first
/// did; returns both answers.
async fn twice<T, F, Fut>(app: &TestApp, event: &str, extra: &[String], step: F) -> (T, T)
where
    T: Debug,
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let first = step().await;
    let after_first = dump(app, event, extra).await;
    let second = step().await;
    let after_second = dump(app, event, extra).await;
    assert_eq!(
        after_first, after_second,
        "the second run changed Redis (answers {first:?}, then {second:?})"
    );
    (first, second)
}

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

fn code_of(v: &Verdict) -> IssuedCoupon {
    match v {
        Verdict::Decided(IssueOutcome::Issued(c) | IssueOutcome::AlreadyIssued(c)) => c.clone(),
        other => panic!("not issued: {other:?}"),
    }
}

/// Pending issuances of `users` look `ms` old to the sweeper.
async fn age(app: &TestApp, event: &str, users: &[&str], ms: i64) {
    let mut c = app.redis.conn().await.unwrap();
    let at = Utc::now().timestamp_millis() - ms;
    for u in users {
        let _: () = c.zadd(&app.keys(event).pending, *u, at).await.unwrap();
    }
}

/// The hot path and the finalizer's scripts: issue, claim_stale,
/// finalize, conflict, supersede, restore, control and settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issue_finalizer_sweeper_and_control_scripts_run_twice_to_the_same_end() {
    let app = spawn_unswept().await;
    let event = app.event_id("twice");
    app.preload(preload_request(&event, 20)).await.unwrap();
    let id = EventId::parse(event.clone()).unwrap();
    let names = ["a", "b", "c", "d", "e"];
    let users: Vec<(UserId, RequestId)> = names
        .iter()
        .map(|u| (user(u), RequestId::parse(format!("req-{u}")).unwrap()))
        .collect();
    let items: Vec<_> = users.iter().map(|(u, r)| (u, r)).collect();

    // Issue: the re-sent batch finds each user's record with its own
    // request id and tells the same ISSUED with the same code.
    let (first, second) = twice(&app, &event, &[], || async {
        app.redis.issue_batch(&id, &items).await.unwrap()
    })
    .await;
    assert!(first
        .iter()
        .all(|v| matches!(v, Verdict::Decided(IssueOutcome::Issued(_)))));
    assert_eq!(first, second);
    let coupons: Vec<IssuedCoupon> = first.iter().map(code_of).collect();
    let record = |i: usize| IssuanceRecord {
        event_id: id.clone(),
        user_id: users[i].0.clone(),
        coupon: coupons[i].clone(),
        request_id: users[i].1.as_str().to_owned(),
    };

    // The sweeper's claim: the re-sent one claims nothing (the first
    // re-scored the claimed issuances into the future).
    age(&app, &event, &["a"], 120_000).await;
    let (first, second) = twice(&app, &event, &[], || async {
        let claimed = app
            .redis
            .claim_stale(&id, 1, Duration::from_secs(5), Duration::from_secs(60), 10)
            .await
            .unwrap();
        claimed
            .into_iter()
            .map(|(u, _)| u.as_str().to_owned())
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!((first, second), (vec!["a".to_owned()], vec![]));

    // Finalize: the same count, nothing moves backwards.
    let fin = [(&users[0].0, coupons[0].code.as_str())];
    let (first, second) = twice(&app, &event, &[], || async {
        app.redis.finalize(&id, 1, &fin).await.unwrap().done
    })
    .await;
    assert_eq!((first, second), (1, 1));

    // Conflict: b's issuance refused; marked once, the same count.
    let refused = [record(1)];
    let refused: Vec<&IssuanceRecord> = refused.iter().collect();
    let (first, second) = twice(&app, &event, &[], || async {
        app.redis
            .mark_conflicted(&id, 1, &refused, Duration::from_secs(60))
            .await
            .unwrap()
    })
    .await;
    assert_eq!((first, second), (1, 1));

    // Supersede: PostgreSQL holds a's coupon for c; c's code goes back to
    // the queue once, not twice.
    let c_refused = record(2);
    let held = coupons[0].clone();
    let items = [(&c_refused, &held, "req-a", true)];
    let (first, second) = twice(&app, &event, &[], || async {
        app.redis
            .supersede(&id, 1, &items, Duration::from_secs(60))
            .await
            .unwrap()
    })
    .await;
    assert_eq!((first, second), (1, 0), "queued again once");

    // Restore: Redis lost d's issuance (its record, and the pop: the code
    // is back at the queue's head); the record comes back once and the
    // code leaves the queue once.
    let mut c = app.redis.conn().await.unwrap();
    let k = app.keys(&event);
    let entry = coupond::store::record::queue_entry(&coupons[3].code, &coupons[3].discount);
    let _: () = redis::pipe()
        .hdel(&k.issued, "d")
        .lpush(&k.queue, &entry)
        .query_async(&mut c)
        .await
        .unwrap();
    let queued = app.redis_state(&event).await.1;
    let lost = [record(3)];
    let lost: Vec<&IssuanceRecord> = lost.iter().collect();
    let (first, second) = twice(&app, &event, &[], || async {
        let r = app.redis.restore(&id, 1, &lost).await.unwrap();
        (r.users, r.dequeued, r.not_queued)
    })
    .await;
    assert_eq!((first, second), ((1, 1, 0), (0, 0, 1)));
    assert_eq!(app.redis_state(&event).await.1, queued - 1, "one entry out");

    // Controls are numbered: the re-sent one is already current.
    let paused = ControlState {
        seq: 7,
        ends_at: Utc::now() + chrono::Duration::hours(1),
        paused: true,
        settled: false,
    };
    let (first, second) = twice(&app, &event, &[], || async {
        format!(
            "{:?}",
            app.redis.sync_controls(&id, 1, &paused).await.unwrap()
        )
    })
    .await;
    assert_eq!((first.as_str(), second.as_str()), ("Applied", "Current"));

    // Settle: end the window and finalize everyone, then settle twice:
    // the same end, the keys keep the first run's expiry.
    let ended = ControlState {
        seq: 8,
        ends_at: Utc::now() - chrono::Duration::seconds(1),
        paused: false,
        settled: false,
    };
    app.redis.sync_controls(&id, 1, &ended).await.unwrap();
    let rest: Vec<(&UserId, &str)> = (0..5)
        .map(|i| (&users[i].0, coupons[i].code.as_str()))
        .collect();
    app.redis.finalize(&id, 1, &rest).await.unwrap();
    assert_eq!(app.redis_state(&event).await.3, 0, "nothing pending");
    let (first, second) = twice(&app, &event, &[], || async {
        app.redis
            .settle(&id, 1, Duration::from_secs(600))
            .await
            .unwrap()
    })
    .await;
    assert!(first.is_some() && first == second, "{first:?} {second:?}");
}

/// A preload job's steps: the fence, a staged part, make-live, abandon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preload_scripts_run_twice_to_the_same_end() {
    let app = spawn_unswept().await;
    let event = app.event_id("twice-preload");
    let id = EventId::parse(event.clone()).unwrap();
    let job = PreloadId::random(&mut rand::rng());
    let staging = vec![coupond::store::keys::EventKeys::preload_staging(&id, &job)];

    let (first, second) = twice(&app, &event, &staging, || async {
        app.redis.claim_preload(&id, &job, None).await.unwrap()
    })
    .await;
    assert_eq!((first, second), (FenceReply::Done, FenceReply::Done));

    let part: Vec<String> = (0..5).map(|i| format!("CODE{i:08}\tPERCENT\t10")).collect();
    let (first, second) = twice(&app, &event, &staging, || async {
        app.redis.stage_chunk(&id, &job, 0, &part).await.unwrap()
    })
    .await;
    assert_eq!((first, second), (5, 5), "the part is staged once");

    let now = Utc::now().timestamp_millis();
    let (first, second) = twice(&app, &event, &staging, || async {
        app.redis
            .make_live(&id, &job, (now - 1_000, now + 3_600_000), 5)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!((first, second), (Ok(()), Ok(())), "live once, by this job");
    assert_eq!(app.redis_state(&event).await, (true, 5, 0, 0));

    // Abandoning a job that made the event live changes nothing, twice.
    let (first, second) = twice(&app, &event, &staging, || async {
        app.redis.abandon_preload(&id, &job, None).await.unwrap()
    })
    .await;
    assert_eq!(first, FenceReply::Live(job.clone()));
    assert_eq!(first, second);

    // A second job's fence, abandoned twice: let go once, then nothing held.
    let other = app.event_id("twice-abandon");
    let other_id = EventId::parse(other.clone()).unwrap();
    let job2 = PreloadId::random(&mut rand::rng());
    app.redis
        .claim_preload(&other_id, &job2, None)
        .await
        .unwrap();
    let (first, second) = twice(&app, &other, &[], || async {
        app.redis
            .abandon_preload(&other_id, &job2, None)
            .await
            .unwrap()
    })
    .await;
    assert_eq!((first, second), (FenceReply::Done, FenceReply::Done));
}

/// A forced rebuild's steps: offline, the lock, the install, back online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_scripts_run_twice_to_the_same_end() {
    let app = spawn_unswept().await;
    let event = app.event_id("twice-rebuild");
    app.preload(preload_request(&event, 5)).await.unwrap();
    let id = EventId::parse(event.clone()).unwrap();

    let (first, second) = twice(&app, &event, &[], || async {
        app.redis
            .take_offline(&app.keys(&event), "me")
            .await
            .unwrap()
    })
    .await;
    assert_eq!((first, second), (true, false), "moved once");

    let (first, second) = twice(&app, &event, &[], || async {
        let lifetime = Duration::from_secs(600);
        let r = app
            .redis
            .rebuild_lock(&id, LockAction::Take, "me", lifetime)
            .await;
        r.unwrap()
    })
    .await;
    assert_eq!((first, second), (None, None), "taken, and still mine");

    let (first, second) = twice(&app, &event, &[], || async {
        app.redis
            .bring_online(&app.keys(&event), "me", "")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        (first, second),
        (Some(true), Some(false)),
        "back once, then live already"
    );

    // The install: rebuild.lua re-sent after it made the event live finds
    // it live and refuses, writing nothing (the rebuild reports failure:
    // run reconcile again).
    app.redis
        .take_offline(&app.keys(&event), "me")
        .await
        .unwrap();
    let queue: Vec<String> = (0..3).map(|i| format!("RB{i:08}\tPERCENT\t10")).collect();
    let preload = PreloadId::random(&mut rand::rng());
    let state = RebuiltState {
        queue: &queue,
        issued: &[],
        pending: &[],
        starts_ms: Utc::now().timestamp_millis() - 1_000,
        total: 3,
        preload_id: &preload,
        conflicted: &[],
        controls: ControlState {
            seq: 1,
            ends_at: Utc::now() + chrono::Duration::hours(1),
            paused: false,
            settled: false,
        },
        gen: "gen-1",
        shards_made: false,
        parked: false,
        holder: "me",
    };
    let (starts, ends) = (state.starts_ms, state.controls.ends_at.timestamp_millis());
    app.redis
        .install_rebuilt(&app.keys(&event), state)
        .await
        .unwrap();
    let before = dump(&app, &event, &[]).await;
    // The script call install_rebuilt made, as the client would re-send it.
    let k = app.keys(&event);
    let script = redis::Script::new(include_str!("../../scripts/lua/rebuild.lua"));
    let mut inv = script.prepare_invoke();
    for key in [
        &k.staging,
        &k.issued_staging,
        &k.pending_staging,
        &k.queue,
        &k.issued,
        &k.pending,
        &k.meta,
        &k.meta_offline,
        &k.conflicts,
        &k.transfers,
        &k.sent,
        &k.received,
    ] {
        inv.key(key);
    }
    inv.arg(starts)
        .arg(ends)
        .arg(3)
        .arg(queue.len())
        .arg(0)
        .arg(preload.as_str())
        .arg(0)
        .arg(1)
        .arg("gen-1")
        .arg(0)
        .arg(0)
        .arg("me");
    let mut c = app.redis.conn().await.unwrap();
    let again: Result<i64, redis::RedisError> = inv.invoke_async(&mut c).await;
    let err = again.expect_err("a live event is not installed over");
    assert_eq!(err.code(), Some("EVENT_LIVE"), "{err}");
    assert_eq!(
        before,
        dump(&app, &event, &[]).await,
        "the re-sent install wrote nothing"
    );
    assert_eq!(app.redis_state(&event).await, (true, 3, 0, 0));
}

/// Every key of each of an event's `shards` shards.
fn shard_keys(id: &EventId, shards: u32) -> Vec<String> {
    (0..shards)
        .flat_map(|s| {
            let k = coupond::store::keys::EventKeys::shard(id, s, shards);
            // The progress mark holds the time of the call (see `dump`).
            let mut keys: Vec<String> = k.data().iter().map(|k| k.to_string()).collect();
            keys.retain(|key| *key != k.progress);
            keys.push(k.meta.clone());
            keys
        })
        .collect()
}

/// A sharded event's scripts: issue at the home shards, the shards' metas
/// and controls, finalize, settle (transfers: see `transfer.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shard_scripts_run_twice_to_the_same_end() {
    const SHARDS: u32 = 3;
    let app = spawn_unswept().await;
    let event = app.event_id("twiceshard");
    let mut req = preload_request(&event, 30);
    req.shards = SHARDS;
    app.preload(req).await.unwrap();
    let id = EventId::parse(event.clone()).unwrap();
    let keys = shard_keys(&id, SHARDS);
    let users: Vec<(UserId, RequestId)> = (0..9)
        .map(|i| {
            (
                user(&format!("s{i}")),
                RequestId::parse(format!("r{i}")).unwrap(),
            )
        })
        .collect();
    let items: Vec<_> = users.iter().map(|(u, r)| (u, r)).collect();
    let (first, second) = twice(&app, &event, &keys, || async {
        app.redis.issue_sharded(&id, SHARDS, &items).await.unwrap()
    })
    .await;
    assert_eq!(first, second);
    let coupons: Vec<IssuedCoupon> = first.iter().map(code_of).collect();

    // A control reaches every shard; the re-sent one is current everywhere.
    let paused = ControlState {
        seq: 3,
        ends_at: Utc::now() + chrono::Duration::hours(1),
        paused: true,
        settled: false,
    };
    let (first, second) = twice(&app, &event, &keys, || async {
        format!(
            "{:?}",
            app.redis.sync_controls(&id, SHARDS, &paused).await.unwrap()
        )
    })
    .await;
    assert_eq!((first.as_str(), second.as_str()), ("Applied", "Current"));
    let (first, _) = twice(&app, &event, &keys, || async {
        app.redis
            .shard_metas(&id, SHARDS, false, false)
            .await
            .unwrap()
    })
    .await;
    assert!(first);

    // Finalize at the home shards, then settle every shard.
    let ended = ControlState {
        seq: 4,
        ends_at: Utc::now() - chrono::Duration::seconds(1),
        paused: false,
        settled: false,
    };
    app.redis.sync_controls(&id, SHARDS, &ended).await.unwrap();
    let done: Vec<(&UserId, &str)> = users
        .iter()
        .zip(&coupons)
        .map(|((u, _), c)| (u, c.code.as_str()))
        .collect();
    let (first, second) = twice(&app, &event, &keys, || async {
        app.redis.finalize(&id, SHARDS, &done).await.unwrap().done
    })
    .await;
    assert_eq!((first, second), (9, 9));
    let (first, second) = twice(&app, &event, &keys, || async {
        app.redis
            .settle(&id, SHARDS, Duration::from_secs(600))
            .await
            .unwrap()
    })
    .await;
    assert!(first.is_some() && first == second, "{first:?} {second:?}");
}
