//! Transfers of codes between the shards of one event (the groundwork of
//! sharded events): three steps, each atomic on one shard and idempotent by
//! the transfer id; at every moment each code is in exactly one queue or
//! one open transfer record; a transfer cut short at any step is finished
//! by another process. Runs on a single node and on the cluster, where the
//! shards' tags land on three different masters.

use std::collections::{BTreeMap, HashMap, HashSet};

use coupond::domain::shard;
use coupond::domain::{EventId, IssueOutcome, RequestId, UserId};
use coupond::store::keys::EventKeys;
use coupond::store::redis::{transfer_id, TransferOut, Verdict};
use coupond::store::RedisStore;
use redis::AsyncCommands;

use crate::helpers::{spawn_unswept, TestApp};

const SHARDS: u32 = 3;

/// The event's shards (keys and tags), each with a meta, the donor's
/// queue filled with `n` entries; returns them and the entries.
async fn sharded(app: &TestApp, name: &str, n: usize) -> (Vec<(EventKeys, String)>, Vec<String>) {
    let (_, shards, entries) = sharded_live(app, name, [n, 0, 0]).await;
    (shards, entries)
}

/// Where every code is: each shard's queue and each open record whose id
/// its target has not received. Panics if a code is in two places.
async fn places(app: &TestApp, shards: &[(EventKeys, String)]) -> BTreeMap<String, String> {
    let mut c = app.redis.conn().await.unwrap();
    let mut at = BTreeMap::new();
    let mut put = |entry: String, place: String| {
        if let Some(before) = at.insert(entry.clone(), place.clone()) {
            panic!("{entry} is in {before} and in {place}");
        }
    };
    for (k, tag) in shards {
        let queued: Vec<String> = c.lrange(&k.queue, 0, -1).await.unwrap();
        for e in queued {
            put(e, format!("the queue of {tag}"));
        }
        for t in app.redis.open_transfers(k).await.unwrap() {
            let target = EventKeys::tagged(&t.target);
            let received: bool = c.sismember(&target.received, &t.id).await.unwrap();
            if !received {
                for e in t.entries {
                    put(e, format!("transfer {} from {tag}", t.id));
                }
            }
        }
    }
    at
}

/// Checks every entry is in exactly one place and returns how many each
/// shard's queue holds.
async fn queued(app: &TestApp, shards: &[(EventKeys, String)], entries: &[String]) -> Vec<usize> {
    let at = places(app, shards).await;
    let all: HashSet<&String> = at.keys().collect();
    assert_eq!(all, entries.iter().collect(), "every code somewhere");
    shards
        .iter()
        .map(|(_, tag)| {
            at.values()
                .filter(|p| **p == format!("the queue of {tag}"))
                .count()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_codes_between_shards_and_each_code_stays_in_one_place() {
    let app = spawn_unswept().await;
    let (shards, entries) = sharded(&app, "moved", 50).await;
    assert_eq!(queued(&app, &shards, &entries).await, vec![50, 0, 0]);

    let moved = app
        .redis
        .transfer(&shards[0].0, &shards[1].1, 20)
        .await
        .unwrap();
    assert_eq!(moved, 20);
    assert_eq!(queued(&app, &shards, &entries).await, vec![30, 20, 0]);
    assert!(app
        .redis
        .open_transfers(&shards[0].0)
        .await
        .unwrap()
        .is_empty());

    // More than the donor holds: what it has; a dry donor: nothing.
    let moved = app
        .redis
        .transfer(&shards[0].0, &shards[2].1, 100)
        .await
        .unwrap();
    assert_eq!(moved, 30);
    let dry = app
        .redis
        .transfer(&shards[0].0, &shards[2].1, 10)
        .await
        .unwrap();
    assert_eq!(dry, 0);
    assert_eq!(queued(&app, &shards, &entries).await, vec![0, 20, 30]);

    if !app.settings.redis.cluster.is_empty() {
        assert_shards_on_distinct_masters(&app, &shards).await;
    }
}

/// On the cluster: the masters serving the shards' slots are three.
async fn assert_shards_on_distinct_masters(app: &TestApp, shards: &[(EventKeys, String)]) {
    let mut c = app.redis.conn().await.unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap();
    let master_of = |slot: u32| -> String {
        nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f[2].contains("master") && !f[2].contains("fail"))
            .find(|f| {
                f[8..].iter().any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    (a.parse().unwrap_or(u32::MAX)..=b.parse().unwrap_or(0)).contains(&slot)
                })
            })
            .map(|f| f[1].to_owned())
            .expect("a master serves the slot")
    };
    let masters: HashSet<String> = shards
        .iter()
        .map(|(_, tag)| master_of(shard::slot(tag)))
        .collect();
    assert_eq!(masters.len(), SHARDS as usize, "{masters:?}");
}

/// A transfer stopped after each of its first two steps (its server died)
/// is finished by another process; every step re-sent changes nothing; a
/// step 1 re-sent after another process finished the transfer moves
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_short_at_any_step_is_finished_by_another_process() {
    let app = spawn_unswept().await;
    let other = RedisStore::open(&app.settings.redis).unwrap();
    let (shards, entries) = sharded(&app, "cut", 40).await;
    let (donor, target) = (&shards[0].0, &shards[1]);

    // Cut after step 1: the codes are in the record only.
    let id = transfer_id();
    let step1 = || app.redis.transfer_out(donor, &id, 10, &target.1);
    let out = step1().await.unwrap();
    let TransferOut::Moving(moving, _) = &out else {
        panic!("{out:?}")
    };
    assert_eq!(moving.len(), 10);
    assert_eq!(
        step1().await.unwrap(),
        out,
        "step 1 re-sent: the same codes"
    );
    assert_eq!(queued(&app, &shards, &entries).await, vec![30, 0, 0]);
    assert_eq!(other.finish_transfers(donor).await.unwrap(), 1);
    assert_eq!(queued(&app, &shards, &entries).await, vec![30, 10, 0]);
    let late = step1().await.unwrap();
    assert_eq!(late, TransferOut::Done, "a late step 1 moves nothing");
    assert_eq!(queued(&app, &shards, &entries).await, vec![30, 10, 0]);

    // Cut after step 2: the record is spent, the codes in the target.
    let id = transfer_id();
    let out = app.redis.transfer_out(donor, &id, 10, &target.1).await;
    let Ok(TransferOut::Moving(moving, gen)) = out else {
        panic!("{out:?}")
    };
    let joined = app.redis.transfer_in(&target.0, &id, &gen, &moving).await;
    assert_eq!(joined.unwrap(), Some(10));
    let again = app.redis.transfer_in(&target.0, &id, &gen, &moving).await;
    assert_eq!(again.unwrap(), Some(0), "step 2 re-sent adds nothing");
    assert_eq!(queued(&app, &shards, &entries).await, vec![20, 20, 0]);
    assert_eq!(other.finish_transfers(donor).await.unwrap(), 1);
    assert_eq!(queued(&app, &shards, &entries).await, vec![20, 20, 0]);
    assert!(other.open_transfers(donor).await.unwrap().is_empty());
    assert_eq!(
        other.finish_transfers(donor).await.unwrap(),
        0,
        "nothing left"
    );
}

/// A live sharded event made by hand (each shard its meta and `stock[s]`
/// codes): its shards and every code.
async fn sharded_live(
    app: &TestApp,
    name: &str,
    stock: [usize; 3],
) -> (EventId, Vec<(EventKeys, String)>, Vec<String>) {
    let id = EventId::parse(app.event_id(name)).unwrap();
    let shards: Vec<(EventKeys, String)> = (0..SHARDS)
        .map(|s| (EventKeys::shard(&id, s, SHARDS), shard::tag(&id, s, SHARDS)))
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    let total: usize = stock.iter().sum();
    let mut c = app.redis.conn().await.unwrap();
    let mut all = Vec::new();
    for ((k, _), n) in shards.iter().zip(stock) {
        let codes: Vec<String> = (0..n)
            .map(|i| format!("{}{i:08}\tPERCENT\t10", all.len() + 100))
            .collect();
        let _: () = c
            .hset_multiple(
                &k.meta,
                &[
                    ("starts_at", now - 3_600_000),
                    ("ends_at", now + 3_600_000),
                    ("total", total as i64),
                ],
            )
            .await
            .unwrap();
        if !codes.is_empty() {
            let _: () = c.rpush(&k.queue, &codes).await.unwrap();
        }
        all.extend(codes);
    }
    (id, shards, all)
}

fn issued_code(v: &Verdict) -> Option<String> {
    match v {
        Verdict::Decided(IssueOutcome::Issued(c)) => Some(c.code.clone()),
        _ => None,
    }
}

/// Home shards running dry unevenly (codes on shards 0 and 2 only): users
/// of every home get codes through transfers, nobody hears SOLD_OUT while
/// a code is left anywhere, every code goes to exactly one user, and each
/// user's record is on their home shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_event_sells_out_exactly_with_uneven_home_shards() {
    let app = spawn_unswept().await;
    let (id, shards, codes) = sharded_live(&app, "uneven", [10, 0, 5]).await;
    let mut told: HashMap<String, String> = HashMap::new();
    let mut sold_out = 0;
    for i in 0..20 {
        let (user, req) = (
            UserId::parse(format!("user-{i}")).unwrap(),
            RequestId::parse(format!("r{i}")).unwrap(),
        );
        let v = app
            .redis
            .issue_sharded(&id, SHARDS, &[(&user, &req)])
            .await
            .unwrap();
        match issued_code(&v[0]) {
            Some(code) => {
                told.insert(user.as_str().to_owned(), code);
                let home = &shards[shard::home(&user, SHARDS) as usize].0;
                let mut c = app.redis.conn().await.unwrap();
                let held: bool = c.hexists(&home.issued, user.as_str()).await.unwrap();
                assert!(held, "{user}'s record on its home shard");
            }
            None => {
                assert_eq!(v[0], Verdict::Decided(IssueOutcome::SoldOut), "{user}");
                let left = places(&app, &shards).await;
                assert!(
                    left.is_empty(),
                    "{user} told SOLD_OUT while codes were left: {left:?}"
                );
                sold_out += 1;
            }
        }
    }
    assert_eq!((told.len(), sold_out), (15, 5));
    let given: HashSet<&str> = told.values().map(String::as_str).collect();
    let all: HashSet<&str> = codes
        .iter()
        .map(|e| e.split('\t').next().unwrap())
        .collect();
    assert_eq!(given, all, "every code to exactly one user");
    // A repeat is answered at the home shard with the same coupon.
    let (user, req) = (
        UserId::parse("user-0").unwrap(),
        RequestId::parse("r0").unwrap(),
    );
    let again = app
        .redis
        .issue_sharded(&id, SHARDS, &[(&user, &req)])
        .await
        .unwrap();
    assert_eq!(
        issued_code(&again[0]).as_deref(),
        Some(told["user-0"].as_str())
    );
}

/// Four batches at once on an event whose codes all start on one shard:
/// concurrent refills never hand a code twice or lose one, and exactly the
/// stock is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_refilling_dry_shards_issue_exactly_the_stock() {
    let app = spawn_unswept().await;
    let (id, shards, codes) = sharded_live(&app, "concurrent", [30, 0, 0]).await;
    let users: Vec<(UserId, RequestId)> = (0..40)
        .map(|i| {
            (
                UserId::parse(format!("u-{i}")).unwrap(),
                RequestId::parse(format!("q{i}")).unwrap(),
            )
        })
        .collect();
    let batches = users.chunks(10).map(|b| {
        let items: Vec<(&UserId, &RequestId)> = b.iter().map(|(u, r)| (u, r)).collect();
        let app = &app;
        let id = &id;
        async move { app.redis.issue_sharded(id, SHARDS, &items).await.unwrap() }
    });
    let verdicts: Vec<Verdict> = futures::future::join_all(batches)
        .await
        .into_iter()
        .flatten()
        .collect();
    let given: Vec<String> = verdicts.iter().filter_map(issued_code).collect();
    let distinct: HashSet<&String> = given.iter().collect();
    let left = places(&app, &shards).await;
    let others: Vec<&Verdict> = verdicts
        .iter()
        .filter(|v| issued_code(v).is_none())
        .collect();
    assert_eq!(
        (given.len(), distinct.len()),
        (30, 30),
        "the stock, no code twice; left {left:?}; {others:?}"
    );
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| **v == Verdict::Decided(IssueOutcome::SoldOut))
            .count(),
        10
    );
    assert!(
        places(&app, &shards).await.is_empty(),
        "nothing left anywhere"
    );
    assert_eq!(codes.len(), 30);
}
