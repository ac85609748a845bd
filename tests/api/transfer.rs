//! Transfers of codes between the shards of one event (the groundwork of
//! sharded events): three steps, each atomic on one shard and idempotent by
//! the transfer id; at every moment each code is in exactly one queue or
//! one open transfer record; a transfer cut short at any step is finished
//! by another process. Runs on a single node and on the cluster, where the
//! shards' tags land on three different masters.

use std::collections::{BTreeMap, HashSet};

use coupond::domain::shard;
use coupond::domain::EventId;
use coupond::store::keys::EventKeys;
use coupond::store::redis::{transfer_id, TransferOut};
use coupond::store::RedisStore;
use redis::AsyncCommands;

use crate::helpers::{spawn_unswept, TestApp};

const SHARDS: u32 = 3;

/// The event's shards (keys and tags), the donor's queue filled with `n`
/// entries; returns them and the entries.
async fn sharded(app: &TestApp, name: &str, n: usize) -> (Vec<(EventKeys, String)>, Vec<String>) {
    let id = EventId::parse(app.event_id(name)).unwrap();
    let shards: Vec<(EventKeys, String)> = (0..SHARDS)
        .map(|s| (EventKeys::shard(&id, s, SHARDS), shard::tag(&id, s, SHARDS)))
        .collect();
    let entries: Vec<String> = (0..n).map(|i| format!("T{i:011}\tPERCENT\t10")).collect();
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c.rpush(&shards[0].0.queue, &entries).await.unwrap();
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
    let TransferOut::Moving(moving) = &out else {
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
    let Ok(TransferOut::Moving(moving)) = out else {
        panic!("{out:?}")
    };
    let joined = app.redis.transfer_in(&target.0, &id, &moving).await;
    assert_eq!(joined.unwrap(), 10);
    let again = app.redis.transfer_in(&target.0, &id, &moving).await;
    assert_eq!(again.unwrap(), 0, "step 2 re-sent adds nothing");
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
