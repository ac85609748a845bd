//! Events split over several shards (`PreloadRequest.shards`): the codes
//! spread over the shards at preload, each user decided at their home
//! shard, codes moving to a shard that runs dry, and every count, control
//! and answer as for an event of one shard. Runs on a single node and on
//! the cluster, where the shards land on three different masters.

use std::collections::HashSet;

use coupond::domain::{shard, EventId, IssuanceRecord, UserId};
use coupond::proto::{self, IssueResult};
use coupond::store::keys::EventKeys;
use redis::AsyncCommands;

use crate::helpers::{
    check_issued, check_thousand_issued, issue_all, issue_request, preload_request, reconcile_cli,
    spawn_app, spawn_unswept, TestApp,
};

const SHARDS: u32 = 3;

/// Preloads `event` with `total` coupons over `SHARDS` shards.
/// Preloads a sharded event and waits until its codes are spread: the
/// preload spreads them once the event is LIVE, so a test that touched a
/// shard before would race the spread.
async fn preload_sharded(app: &TestApp, event: &str, total: u32) {
    let mut req = preload_request(event, total);
    req.shards = SHARDS;
    let r = app.preload(req).await.expect("preload");
    assert_eq!(r.state, proto::EventState::Live as i32);
    // Each shard's share, the first ones taking the remainder.
    let shares: Vec<u64> = (0..SHARDS)
        .map(|s| u64::from(total / SHARDS + u32::from(s < total % SHARDS)))
        .collect();
    let spread = crate::common::eventually(std::time::Duration::from_secs(30), || async {
        queue_lengths(app, event).await == shares
    })
    .await;
    assert!(spread, "{:?}", queue_lengths(app, event).await);
}

/// Each shard's queue length, shard 0 first.
async fn queue_lengths(app: &TestApp, event: &str) -> Vec<u64> {
    let id = EventId::parse(event).unwrap();
    let mut c = app.redis.conn().await.unwrap();
    let mut out = Vec::new();
    for s in 0..SHARDS {
        let len: u64 = c
            .llen(EventKeys::shard(&id, s, SHARDS).queue)
            .await
            .unwrap();
        out.push(len);
    }
    out
}

/// On the cluster (`COUPOND_REDIS_CLUSTER`): the port of the master that
/// serves each shard's meta (the only node that answers for the key
/// rather than redirecting). None on a single node.
fn masters_of_shards(event: &str) -> Option<Vec<u16>> {
    std::env::var("COUPOND_REDIS_CLUSTER").ok()?;
    let id = EventId::parse(event).unwrap();
    let owner = |key: &str| {
        (7001..=7006).find(|port: &u16| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "EXISTS", key])
                .output()
                .expect("redis-cli runs");
            String::from_utf8_lossy(&out.stdout).trim() == "1"
        })
    };
    let masters = (0..SHARDS)
        .map(|s| owner(&EventKeys::shard(&id, s, SHARDS).meta).expect("a master holds the shard"))
        .collect();
    Some(masters)
}

/// `n` user ids whose home shard is `home`.
fn users_at(home: u32, n: usize, prefix: &str) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|u| shard::home(&UserId::parse(u.clone()).unwrap(), SHARDS) == home)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_event_gives_two_thousand_users_exactly_its_thousand_coupons_all_finalized() {
    let app = spawn_app().await;
    let event = app.event_id("sharded");
    preload_sharded(&app, &event, 1000).await;
    assert_eq!(queue_lengths(&app, &event).await, vec![334, 333, 333]);
    if let Some(masters) = masters_of_shards(&event) {
        let distinct: HashSet<u16> = masters.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            3,
            "each shard on a master of its own: {masters:?}"
        );
    }
    let e = app.get_event(&event).await;
    assert_eq!((e.shards, e.remaining_count, e.issued_count), (3, 1000, 0));

    let users: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
    let (unary, streamed) = users.split_at(1000);
    let mut responses = issue_all(&app, &event, unary).await;
    let reqs = streamed.iter().map(|u| issue_request(&event, u)).collect();
    let answers = app.issue_stream(reqs).await;
    responses.extend(streamed.iter().cloned().zip(answers));
    let issued = check_thousand_issued(&responses);
    app.await_finalized(&event, &issued).await;
    let e = app.get_event(&event).await;
    assert_eq!(
        (e.remaining_count, e.issued_count, e.finalized_count),
        (0, 1000, 1000)
    );
    // Each user's coupon is found at their home shard, and asking again
    // gives the same one.
    for (code, user) in issued.iter().take(50) {
        let r = app.issue_as(&event, user, &format!("again-{user}")).await;
        assert_eq!(r.result, IssueResult::AlreadyIssued as i32, "{user}");
        assert_eq!(&r.coupon.unwrap().code, code, "{user}");
        let held = app.get_issuance(&event, user).await;
        assert_eq!(&held.coupon.unwrap().code, code, "{user}");
    }
    let (code, out) = reconcile_cli(&app, &event, &[]);
    assert_eq!(code, 0, "reconcile finds both stores agree:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn home_shards_that_run_dry_unevenly_sell_out_exactly_through_transfers() {
    let app = spawn_app().await;
    let event = app.event_id("uneven");
    preload_sharded(&app, &event, 300).await;
    // 400 users, all at shard 0, which holds 100 codes: 200 must move to
    // it from the other shards, and nobody hears SOLD_OUT while they can.
    let users = users_at(0, 400, "dry");
    let responses = issue_all(&app, &event, &users).await;
    let issued = check_issued(&responses, 300, &[]);
    app.await_finalized(&event, &issued).await;
    assert_eq!(queue_lengths(&app, &event).await, vec![0, 0, 0]);
    let e = app.get_event(&event).await;
    assert_eq!(
        (e.remaining_count, e.issued_count, e.finalized_count),
        (0, 300, 300)
    );
    // Users of the other shards are told SOLD_OUT too: the whole event is.
    for home in 1..SHARDS {
        for u in users_at(home, 3, "late") {
            let r = app.issue(&event, &u).await;
            assert_eq!(r.result, IssueResult::SoldOut as i32, "{u} at shard {home}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_at_every_shard_keep_their_coupon_through_pause_and_close() {
    let app = spawn_app().await;
    let event = app.event_id("shardctl");
    preload_sharded(&app, &event, 30).await;
    let holders: Vec<String> = (0..SHARDS).flat_map(|h| users_at(h, 2, "holder")).collect();
    let mut held = HashSet::new();
    for (u, r) in issue_all(&app, &event, &holders).await {
        assert_eq!(r.result, IssueResult::Issued as i32, "{u}");
        held.insert((u, r.coupon.unwrap().code));
    }
    let newcomers: Vec<String> = (0..SHARDS).flat_map(|h| users_at(h, 1, "new")).collect();
    let answers = |want: IssueResult| {
        let (app, event, held, newcomers) = (&app, &event, &held, &newcomers);
        async move {
            for (u, code) in held {
                let r = app.issue_as(event, u, &format!("again-{u}")).await;
                assert_eq!(r.result, IssueResult::AlreadyIssued as i32, "{u}");
                assert_eq!(&r.coupon.unwrap().code, code, "{u}");
            }
            for u in newcomers {
                let r = app.issue(event, u).await;
                assert_eq!(r.result, want as i32, "{u}");
            }
        }
    };
    app.pause(&event, "check").await.unwrap();
    answers(IssueResult::Paused).await;
    let e = app.get_event(&event).await;
    assert!(e.paused);
    assert_eq!((e.issued_count, e.remaining_count), (6, 24));
    app.close(&event, "done").await.unwrap();
    answers(IssueResult::Ended).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shard_count_is_checked_and_kept() {
    let app = spawn_app().await;
    let event = app.event_id("shardcount");
    let mut req = preload_request(&event, 10);
    for (shards, why) in [(17, "must be 0..=16"), (11, "must not exceed total_count")] {
        req.shards = shards;
        let e = app.preload(req.clone()).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("shards"), "{}", e.message());
        assert!(e.message().contains(why), "{}", e.message());
    }
    req.shards = 2;
    app.preload(req.clone()).await.expect("preload");
    req.shards = 3;
    let e = app.preload(req).await.expect_err("another count");
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert!(e.message().contains("shards is 2"), "{}", e.message());
}

/// Redis lost `user`'s issuance at their home shard as a failover does (no
/// record, not pending, the code back at the head of the queue); returns
/// the record PostgreSQL will hold.
async fn lose_at_home(app: &TestApp, event: &str, user: &str) -> IssuanceRecord {
    let id = EventId::parse(event).unwrap();
    let u = UserId::parse(user).unwrap();
    let k = EventKeys::shard(&id, shard::home(&u, SHARDS), SHARDS);
    let mut c = app.redis.conn().await.unwrap();
    let rec: String = c.hget(&k.issued, user).await.unwrap();
    let held = coupond::store::record::parse_issued(&rec).unwrap();
    let entry = coupond::store::record::queue_entry(&held.coupon.code, &held.coupon.discount);
    let _: () = c.hdel(&k.issued, user).await.unwrap();
    let _: () = c.zrem(&k.pending, user).await.unwrap();
    let _: () = c.lpush(&k.queue, entry).await.unwrap();
    IssuanceRecord {
        event_id: id,
        user_id: u,
        coupon: held.coupon,
        request_id: held.request_id,
    }
}

/// A sharded event of 30 coupons whose user at shard 1 was issued a
/// coupon Redis then lost: the event and PostgreSQL's record of it.
async fn lost_at_shard_one(app: &TestApp, name: &str) -> (EventId, IssuanceRecord) {
    let event = app.event_id(name);
    preload_sharded(app, &event, 30).await;
    let user = users_at(1, 1, name).remove(0);
    let r = app.issue(&event, &user).await;
    assert_eq!(r.result, IssueResult::Issued as i32);
    let record = lose_at_home(app, &event, &user).await;
    (EventId::parse(event).unwrap(), record)
}

/// A refill takes codes from the donor's tail: a code a failover put back
/// at the head of the user's home shard stays there, where the finalizer's
/// restore finds it and takes it out, so nobody is handed it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_redis_lost_stays_at_its_home_shard_for_the_restore() {
    let app = spawn_unswept().await;
    let (id, record) = lost_at_shard_one(&app, "shardlost").await;
    let home = EventKeys::shard(&id, 1, SHARDS);
    let moved = app
        .redis
        .transfer(&home, &shard::tag(&id, 2, SHARDS), 5)
        .await
        .unwrap();
    assert_eq!(moved, 5);
    let found = app
        .redis
        .finalize(
            &id,
            SHARDS,
            &[(&record.user_id, record.coupon.code.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(found.unknown, vec![0], "redis forgot the user");
    let restored = app.redis.restore(&id, SHARDS, &[&record]).await.unwrap();
    assert_eq!((restored.users, restored.dequeued), (1, 1), "{restored:?}");
    let queued: Vec<String> = futures::future::join_all((0..SHARDS).map(|s| {
        let app = &app;
        let q = EventKeys::shard(&id, s, SHARDS).queue;
        async move {
            let mut c = app.redis.conn().await.unwrap();
            c.lrange::<_, Vec<String>>(q, 0, -1).await.unwrap()
        }
    }))
    .await
    .concat();
    assert!(
        !queued.iter().any(|e| e.starts_with(&record.coupon.code)),
        "the code is in no queue"
    );
}

/// A shard whose data was lost is not made again, empty, by the sweeper's
/// control repair: its holders hear their coupon from PostgreSQL, never a
/// second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shard_is_not_made_again_empty() {
    let app = spawn_app().await;
    let event = app.event_id("shardgone");
    preload_sharded(&app, &event, 30).await;
    let user = users_at(2, 1, "gone").remove(0);
    let r = app.issue(&event, &user).await;
    let code = r.coupon.unwrap().code;
    let pairs = HashSet::from([(code.clone(), user.clone())]);
    app.await_finalized(&event, &pairs).await;
    let id = EventId::parse(event.clone()).unwrap();
    let lost = EventKeys::shard(&id, 2, SHARDS);
    let mut c = app.redis.conn().await.unwrap();
    for key in lost.data().into_iter().chain([lost.meta.as_str()]) {
        let _: () = c.del(key).await.unwrap();
    }
    let stored = app.pg.event(&id).await.unwrap().unwrap();
    app.redis
        .sync_controls(&id, SHARDS, &stored.controls())
        .await
        .unwrap();
    let exists: bool = c.exists(&lost.meta).await.unwrap();
    assert!(!exists, "the lost shard stays without meta");
    let again = app.issue_as(&event, &user, "again").await;
    assert_eq!(again.result, IssueResult::AlreadyIssued as i32);
    assert_eq!(again.coupon.unwrap().code, code);
}

/// One shard failing (here its queue is not a list, as a script error;
/// on a cluster: its master failing over) is the answer of its own users
/// only: the users of the other shards in the same batch get their
/// verdicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shards_failure_is_the_answer_of_its_own_users_only() {
    let app = spawn_unswept().await;
    let event = app.event_id("shardfails");
    preload_sharded(&app, &event, 30).await;
    let id = EventId::parse(event.clone()).unwrap();
    let broken = EventKeys::shard(&id, 2, SHARDS).queue;
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c.del(&broken).await.unwrap();
    let _: () = c.set(&broken, "not a list").await.unwrap();
    let users: Vec<(UserId, coupond::domain::RequestId)> = (0..SHARDS)
        .map(|h| {
            let u = users_at(h, 1, "each").remove(0);
            let r = coupond::domain::RequestId::parse(format!("r-{u}")).unwrap();
            (UserId::parse(u).unwrap(), r)
        })
        .collect();
    let items: Vec<_> = users.iter().map(|(u, r)| (u, r)).collect();
    let answers = app.redis.issue_each(&id, SHARDS, &items).await;
    assert!(answers[0].is_ok() && answers[1].is_ok(), "{answers:?}");
    assert!(answers[2].is_err(), "{answers:?}");
}

/// When a transfer did carry a lost code to another shard (the last code
/// of a queue moves whole), the restore finds it there and takes it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_code_a_transfer_carried_away_is_found_on_the_other_shard() {
    let app = spawn_unswept().await;
    let (id, record) = lost_at_shard_one(&app, "shardcarried").await;
    let home = EventKeys::shard(&id, 1, SHARDS);
    let mut c = app.redis.conn().await.unwrap();
    let len: usize = c.llen(&home.queue).await.unwrap();
    let moved = app
        .redis
        .transfer(&home, &shard::tag(&id, 2, SHARDS), len)
        .await
        .unwrap();
    assert_eq!(moved, len, "the whole queue, the lost code with it");
    let restored = app.redis.restore(&id, SHARDS, &[&record]).await.unwrap();
    assert_eq!(
        (restored.users, restored.dequeued, restored.not_queued),
        (1, 1, 0),
        "{restored:?}"
    );
    let there: Vec<String> = c
        .lrange(EventKeys::shard(&id, 2, SHARDS).queue, 0, -1)
        .await
        .unwrap();
    assert!(!there.iter().any(|e| e.starts_with(&record.coupon.code)));
}

/// Deletes every key of shard `s` of `event`, its meta too: its master
/// lost its data.
async fn lose_shard(app: &TestApp, event: &str, s: u32) {
    let id = EventId::parse(event).unwrap();
    let lost = EventKeys::shard(&id, s, SHARDS);
    let mut c = app.redis.conn().await.unwrap();
    for key in lost.data().into_iter().chain([lost.meta.as_str()]) {
        let _: () = c.del(key).await.unwrap();
    }
}

/// Every code queued at any shard, checked to be in one place only.
async fn queued_codes(app: &TestApp, event: &str) -> HashSet<String> {
    let id = EventId::parse(event).unwrap();
    let mut c = app.redis.conn().await.unwrap();
    let mut all = HashSet::new();
    for s in 0..SHARDS {
        let q: Vec<String> = c
            .lrange(EventKeys::shard(&id, s, SHARDS).queue, 0, -1)
            .await
            .unwrap();
        for e in q {
            let code = e.split('\t').next().unwrap().to_owned();
            assert!(all.insert(code.clone()), "{code} queued twice");
        }
    }
    all
}

/// A shard lost with its master's data is rebuilt from PostgreSQL (a
/// forced rebuild, the other shards live): every holder, at every shard,
/// keeps their coupon; the codes nobody holds are queued once over the
/// shards; the event then sells out exactly, and reconcile finds the
/// stores agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shard_is_rebuilt_and_every_holder_keeps_their_coupon() {
    let app = spawn_app().await;
    let event = app.event_id("shardrebuilt");
    preload_sharded(&app, &event, 30).await;
    let holders: Vec<String> = (0..SHARDS).flat_map(|h| users_at(h, 2, "kept")).collect();
    let held: HashSet<(String, String)> = issue_all(&app, &event, &holders)
        .await
        .into_iter()
        .map(|(u, r)| (r.coupon.expect("issued").code, u))
        .collect();
    app.await_finalized(&event, &held).await;
    lose_shard(&app, &event, 2).await;

    let (code, out) = reconcile_cli(&app, &event, &["--rebuild-redis"]);
    assert_ne!(code, 0, "live shards need --force:\n{out}");
    assert!(out.contains("--force"), "{out}");
    let (code, out) = reconcile_cli(&app, &event, &["--rebuild-redis", "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("24 queued, 6 finalized"), "{out}");

    for (code, user) in &held {
        let r = app.issue_as(&event, user, &format!("again-{user}")).await;
        assert_eq!(r.result, IssueResult::AlreadyIssued as i32, "{user}");
        assert_eq!(&r.coupon.unwrap().code, code, "{user}");
    }
    let queued = queued_codes(&app, &event).await;
    assert_eq!(queued.len(), 24);
    assert!(
        held.iter().all(|(c, _)| !queued.contains(c)),
        "no held code queued"
    );
    let e = app.get_event(&event).await;
    assert_eq!((e.issued_count, e.remaining_count), (6, 24));

    let newcomers: Vec<String> = (0..40).map(|i| format!("after-{i}")).collect();
    let responses = issue_all(&app, &event, &newcomers).await;
    let issued = check_issued(&responses, 24, &[]);
    assert!(
        issued.iter().all(|(c, _)| queued.contains(c)),
        "each newcomer got a queued code"
    );
    app.await_finalized(&event, &issued.union(&held).cloned().collect())
        .await;
    let (code, out) = reconcile_cli(&app, &event, &[]);
    assert_eq!(code, 0, "reconcile finds both stores agree:\n{out}");
}

/// A transfer whose server stopped after step 1 (its codes in the donor's
/// record) and whose step 2 comes only after a rebuild: the rebuild put
/// those codes back in a queue and dropped the record, so the late step
/// adds nothing (another generation), and the event sells out exactly.
/// A shard taken offline lets no code leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_step_that_comes_after_a_rebuild_adds_nothing() {
    let app = spawn_app().await;
    let event = app.event_id("shardlate");
    preload_sharded(&app, &event, 30).await;
    let id = EventId::parse(event.clone()).unwrap();
    let (donor, target) = (EventKeys::shard(&id, 0, SHARDS), shard::tag(&id, 1, SHARDS));
    let tid = coupond::store::redis::transfer_id();
    let out = app.redis.transfer_out(&donor, &tid, 4, &target).await;
    let Ok(coupond::store::redis::TransferOut::Moving(codes, gen)) = out else {
        panic!("{out:?}")
    };

    let (code, out) = reconcile_cli(&app, &event, &["--rebuild-redis", "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("30 queued"), "{out}");
    let to = EventKeys::tagged(&target);
    let late = app.redis.transfer_in(&to, &tid, &gen, &codes).await;
    assert_eq!(late.unwrap(), None, "a late step 2 lands nothing");
    assert_eq!(
        app.redis.finish_all_transfers(&id, SHARDS).await.unwrap(),
        0
    );
    assert_eq!(queued_codes(&app, &event).await.len(), 30);

    let offline = EventKeys::shard(&id, 2, SHARDS);
    assert!(app.redis.take_offline(&offline, "test").await.unwrap());
    let moved = app.redis.transfer(&offline, &target, 5).await;
    assert!(moved.is_err(), "nothing leaves an offline shard: {moved:?}");
    assert_eq!(queue_lengths(&app, &event).await[2], 10);
    assert_eq!(
        app.redis.bring_online(&offline, "test", "").await.unwrap(),
        Some(true)
    );

    let users: Vec<String> = (0..40).map(|i| format!("late-{i}")).collect();
    let responses = issue_all(&app, &event, &users).await;
    let issued = check_issued(&responses, 30, &[]);
    app.await_finalized(&event, &issued).await;
    let (code, out) = reconcile_cli(&app, &event, &[]);
    assert_eq!(code, 0, "reconcile finds both stores agree:\n{out}");
}
