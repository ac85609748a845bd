use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::{Discount, DiscountType, EventId, IssuanceRecord, IssuedCoupon, UserId};
use coupond::proto;
use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};

use coupond::store::postgres::finalization::{IssuanceWriter, Recorded};

use redis::AsyncCommands;

use crate::helpers::{
    eventually, issue_all, preload_request, reconcile_cli, spawn_app, spawn_unswept,
    spawn_without_finalizer, start_finalizer, TestApp,
};

#[derive(QueryableByName)]
struct Snapshot {
    #[diesel(sql_type = Text)]
    rows: String,
}

/// Every coupon row of the event, every column that finalization writes.
async fn snapshot(app: &TestApp, event: &str) -> String {
    let mut c = AsyncPgConnection::establish(&app.settings.database.url)
        .await
        .unwrap();
    let s: Snapshot = diesel::sql_query(
        "SELECT coalesce(string_agg(concat_ws('|', code, state, user_id, issued_at, request_id, \
         finalized_at), ',' ORDER BY code), '') AS rows FROM coupons WHERE event_id = $1",
    )
    .bind::<Text, _>(event)
    .get_result(&mut c)
    .await
    .unwrap();
    s.rows
}

/// True when the finalizer's group has committed up to the end of every
/// partition of the topic.
fn group_caught_up(app: &TestApp) -> bool {
    let k = &app.settings.kafka;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(&k.topic), Duration::from_secs(5))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(&k.topic, p.id());
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    committed.elements().iter().all(|e| {
        let (_, high) = c
            .fetch_watermarks(&k.topic, e.partition(), Duration::from_secs(5))
            .unwrap();
        match e.offset() {
            Offset::Offset(o) => o >= high,
            _ => high == 0,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_messages_change_nothing_and_garbage_goes_to_the_dlq() {
    let app = spawn_app().await;
    let event = app.event_id("redeliver");
    app.preload(preload_request(&event, 20)).await.unwrap();
    let mut pairs = HashSet::new();
    let mut records = Vec::new();
    for i in 0..20 {
        let user = format!("user-{i}");
        let r = app.issue(&event, &user).await;
        let c = r.coupon.expect("issued");
        pairs.insert((c.code.clone(), user.clone()));
        let kind = if c.discount_type == proto::DiscountType::Percent as i32 {
            DiscountType::Percent
        } else {
            DiscountType::Amount
        };
        records.push(IssuanceRecord {
            event_id: EventId::parse(event.clone()).unwrap(),
            user_id: UserId::parse(user.clone()).unwrap(),
            coupon: IssuedCoupon {
                code: c.code,
                discount: Discount::new(kind, c.discount_value).unwrap(),
                issued_at: coupond::proto::wire::to_datetime(&c.issued_at.unwrap()).unwrap(),
            },
            request_id: r.request_id,
        });
    }
    app.await_finalized(&event, &pairs).await;
    assert!(eventually(Duration::from_secs(30), || async { group_caught_up(&app) }).await);
    let before = snapshot(&app, &event).await;

    // Every message again, twice, plus one that is not a CouponIssued.
    let publisher = app.publisher();
    for _ in 0..2 {
        for r in &records {
            publisher.publish(r).await.unwrap();
        }
    }
    let garbage = format!("not protobuf {}", app.tag).into_bytes();
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &app.settings.kafka.brokers)
        .create()
        .unwrap();
    raw.send(
        FutureRecord::<(), _>::to(&app.settings.kafka.topic).payload(&garbage),
        Timeout::Never,
    )
    .await
    .unwrap();

    assert!(
        eventually(Duration::from_secs(60), || async { group_caught_up(&app) }).await,
        "the finalizer consumed and committed everything"
    );
    assert_eq!(snapshot(&app, &event).await, before, "postgres unchanged");
    assert_eq!(app.redis_state(&event).await.3, 0, "nothing pending");

    // The garbage is in the dead-letter topic with a reason.
    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &app.settings.kafka.brokers)
        .set("group.id", format!("dlq-reader-{}", app.tag))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&app.settings.kafka.dlq_topic()]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut found = false;
    while !found && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
            if m.payload() == Some(&garbage[..]) {
                use rdkafka::message::Headers;
                let h = m.headers().expect("dlq headers");
                found = h.iter().any(|h| h.key == "coupond-dlq-reason");
            }
        }
    }
    assert!(found, "garbage dead-lettered with a reason");
}

/// One batch mixing new issuances, a redelivery, a code already held by
/// another user, an unknown code, a user who holds another coupon and a row
/// PostgreSQL refuses (a timestamp out of its range): each gets its own
/// verdict, and only the new ones change a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_gets_a_verdict_per_record() {
    let app = spawn_app().await;
    let event = app.event_id("mixed");
    app.preload(preload_request(&event, 5)).await.unwrap();
    let id = EventId::parse(&event).unwrap();
    let rows = app.pg.coupons(&id).await.unwrap();
    let record = |i: usize, user: &str| IssuanceRecord {
        event_id: id.clone(),
        user_id: UserId::parse(user.to_owned()).unwrap(),
        coupon: IssuedCoupon {
            code: rows[i].code.clone(),
            discount: rows[i].discount,
            issued_at: chrono::Utc::now(),
        },
        request_id: format!("req-{user}"),
    };
    let writer = IssuanceWriter::connect(&app.settings.database.url, 1).unwrap();
    let first = [record(0, "ann"), record(1, "bob")];
    assert_eq!(
        writer.record(&first).await.unwrap(),
        vec![Recorded::Done, Recorded::Done]
    );

    let mut unknown = record(2, "dan");
    unknown.coupon.code = "NOSUCHCODE23".into();
    let mut ancient = record(2, "gus");
    ancient.coupon.issued_at = chrono::DateTime::from_timestamp(-300_000_000_000, 0).unwrap();
    let batch = [
        record(3, "eve"),  // new
        record(0, "ann"),  // redelivered: already hers
        record(1, "carl"), // bob's code
        unknown,           // not a code of the event
        record(2, "bob"),  // bob holds code 1 already
        ancient,           // year -7537: PostgreSQL refuses the row
        record(4, "fay"),  // new
    ];
    let before = snapshot(&app, &event).await;
    let verdicts = writer.record(&batch).await.unwrap();
    let held = match &verdicts[4] {
        Recorded::UserHolds {
            coupon,
            request_id,
            free,
        } => {
            assert!(free, "code 2 is nobody's");
            (coupon.code.clone(), request_id.clone())
        }
        other => panic!("bob: {other:?}"),
    };
    assert_eq!(held, (rows[1].code.clone(), "req-bob".to_string()));
    assert!(
        matches!(&verdicts[5], Recorded::Invalid(why) if why.contains("22008")),
        "{:?}",
        verdicts[5]
    );
    assert_eq!(
        [&verdicts[..4], &verdicts[6..]].concat(),
        vec![
            Recorded::Done,
            Recorded::Done,
            Recorded::Refused,
            Recorded::Refused,
            Recorded::Done
        ]
    );
    let pairs = app.issued_pairs_in_pg(&event).await;
    let expected: HashSet<(String, String)> = [(0, "ann"), (1, "bob"), (3, "eve"), (4, "fay")]
        .into_iter()
        .map(|(i, u)| (rows[i].code.clone(), u.to_owned()))
        .collect();
    assert_eq!(pairs, expected);
    assert_ne!(
        before,
        snapshot(&app, &event).await,
        "eve and fay were recorded"
    );
}

/// Makes Redis lose `user`'s issuance as a failover before the replica
/// had the write does: the record and the pending entry gone, the code
/// back at the head of the queue. Returns the code.
async fn lose_issuance(app: &TestApp, event: &str, user: &str) -> String {
    let k = app.keys(event);
    let mut c = app.redis.conn().await.unwrap();
    let rec: String = c.hget(&k.issued, user).await.unwrap();
    let entry = rec.split('\t').take(3).collect::<Vec<_>>().join("\t");
    let _: () = redis::pipe()
        .hdel(&k.issued, user)
        .zrem(&k.pending, user)
        .lpush(&k.queue, &entry)
        .query_async(&mut c)
        .await
        .unwrap();
    rec.split('\t').next().unwrap().to_owned()
}

/// Redis loses an issuance after answering it (a failover before the
/// replica had the write): the user's record is gone and the code is back
/// at the head of the queue. The finalizer's record wins: the user gets
/// PostgreSQL's coupon back, asking again answers ALREADY_ISSUED with the
/// code they were told, and the code goes to nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizers_record_wins_when_redis_lost_the_issuance() {
    let app = spawn_without_finalizer().await;
    let event = app.event_id("forgot");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let first: Vec<String> = (0..3).map(|i| format!("u{i}")).collect();
    let mut pairs = HashSet::new();
    for (u, r) in issue_all(&app, &event, &first).await {
        assert_eq!(r.result, proto::IssueResult::Issued as i32, "{u}");
        pairs.insert((r.coupon.unwrap().code, u));
    }
    let told = lose_issuance(&app, &event, "u0").await;
    assert_eq!(app.redis_state(&event).await, (true, 8, 2, 2));

    let _finalizer = start_finalizer(&app).await;
    app.await_finalized(&event, &pairs).await;
    let restored = eventually(Duration::from_secs(30), || async {
        app.redis_state(&event).await == (true, 7, 3, 0)
    })
    .await;
    assert!(
        restored,
        "u0 back, its code out of the queue: {:?}",
        app.redis_state(&event).await
    );
    // The same request again is the same answer; another request of u0's
    // hears that u0 holds that coupon.
    let again = app.issue(&event, "u0").await;
    assert_eq!(again.result, proto::IssueResult::Issued as i32);
    assert_eq!(again.coupon.unwrap().code, told);
    let other = app.issue_as(&event, "u0", "another").await;
    assert_eq!(other.result, proto::IssueResult::AlreadyIssued as i32);
    assert_eq!(other.coupon.unwrap().code, told);
    let held = app
        .issuer
        .clone()
        .get_issuance(proto::GetIssuanceRequest {
            event_id: event.clone(),
            user_id: "u0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.state, proto::IssuanceState::Finalized as i32);
    assert_eq!(held.coupon.unwrap().code, told);

    let rest: Vec<String> = (3..11).map(|i| format!("u{i}")).collect();
    for (u, r) in issue_all(&app, &event, &rest).await {
        if r.result == proto::IssueResult::SoldOut as i32 {
            continue;
        }
        assert_eq!(r.result, proto::IssueResult::Issued as i32, "{u}");
        let code = r.coupon.unwrap().code;
        assert_ne!(code, told, "{u} was handed u0's code");
        pairs.insert((code, u));
    }
    assert_eq!(pairs.len(), 10, "ten coupons, ten users: {pairs:?}");
    app.await_finalized(&event, &pairs).await;
    let (code, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(code, 0, "{report}");
}

/// Redis loses two issuances (records and pops: both codes back at the
/// queue's head), and one of the two users asks again before the finalizer
/// gets there: they are handed the other user's lost code. Whatever order
/// the finalizer sees the three messages in, PostgreSQL's records win: each
/// user holds the code they were told first, neither code stays in the
/// queue, and no later user is handed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_issued_again_after_redis_lost_them_keeps_the_first_coupon() {
    let app = spawn_without_finalizer().await;
    let event = app.event_id("forgot-twice");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let mut first = HashSet::new();
    let mut told = std::collections::HashMap::new();
    for (u, r) in issue_all(&app, &event, &["u0".into(), "u1".into()]).await {
        let code = r.coupon.unwrap().code;
        first.insert((code.clone(), u.clone()));
        told.insert(u, code);
    }
    for u in ["u1", "u0"] {
        lose_issuance(&app, &event, u).await;
    }
    let again = app.issue_as(&event, "u1", "again").await;
    assert_eq!(again.result, proto::IssueResult::Issued as i32);
    assert_eq!(
        again.coupon.unwrap().code,
        told["u0"],
        "handed u0's lost code"
    );

    let _finalizer = start_finalizer(&app).await;
    app.await_finalized(&event, &first).await;
    let settled = eventually(Duration::from_secs(30), || async {
        app.redis_state(&event).await == (true, 8, 2, 0)
    })
    .await;
    assert!(
        settled,
        "both codes out of the queue: {:?}",
        app.redis_state(&event).await
    );
    for u in ["u0", "u1"] {
        let r = app.issue_as(&event, u, "later").await;
        assert_eq!(r.result, proto::IssueResult::AlreadyIssued as i32, "{u}");
        assert_eq!(
            r.coupon.unwrap().code,
            told[u],
            "{u} holds the code told first"
        );
    }
    let rest: Vec<String> = (2..11).map(|i| format!("u{i}")).collect();
    let mut pairs = first.clone();
    for (u, r) in issue_all(&app, &event, &rest).await {
        if r.result == proto::IssueResult::SoldOut as i32 {
            continue;
        }
        let code = r.coupon.unwrap().code;
        assert!(
            !told.values().any(|c| *c == code),
            "{u} was handed a lost code"
        );
        pairs.insert((code, u));
    }
    assert_eq!(pairs.len(), 10, "ten coupons, ten users");
    app.await_finalized(&event, &pairs).await;
}

/// Restoring looks for a lost code in the first and the last 10,000
/// entries of the queue only: codes at both ends are taken out (the tail
/// ones too when taking the head ones out shortens a queue of just over
/// 10,000), and a code in the middle of a longer queue is reported not
/// found and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_searches_both_ends_of_a_long_queue() {
    let app = spawn_unswept().await;
    restore_from(
        &app,
        "just-over",
        10_003,
        &[0, 1, 2, 10_000, 10_001, 10_002],
        None,
    )
    .await;
    restore_from(&app, "long", 30_005, &[0, 1, 30_003, 30_004], Some(15_000)).await;
}

/// A live event whose queue holds `len` entries; users lost the codes at
/// `lost` (and at `middle`), and their restore takes every one out but the
/// middle one.
async fn restore_from(
    app: &TestApp,
    name: &str,
    len: usize,
    lost: &[usize],
    middle: Option<usize>,
) {
    let event = app.event_id(name);
    let id = EventId::parse(event.clone()).unwrap();
    let k = app.keys(&event);
    let code = |i: usize| format!("L{i:011}");
    let entries: Vec<String> = (0..len)
        .map(|i| format!("{}\tPERCENT\t10", code(i)))
        .collect();
    let mut c = app.redis.conn().await.unwrap();
    let _: () = redis::pipe()
        .hset(&k.meta, "total", len)
        .rpush(&k.queue, &entries)
        .query_async(&mut c)
        .await
        .unwrap();
    let records: Vec<IssuanceRecord> = lost
        .iter()
        .chain(middle.iter())
        .map(|&i| IssuanceRecord {
            event_id: id.clone(),
            user_id: UserId::parse(format!("user-{i}")).unwrap(),
            coupon: IssuedCoupon {
                code: code(i),
                discount: Discount::new(DiscountType::Percent, 10).unwrap(),
                issued_at: chrono::Utc::now(),
            },
            request_id: format!("req-{i}"),
        })
        .collect();
    let refs: Vec<&IssuanceRecord> = records.iter().collect();
    let done = app.redis.restore(&id, 1, &refs).await.unwrap();
    let found = lost.len() as u64;
    let missed = middle.iter().count() as u64;
    assert_eq!(
        (done.users, done.dequeued, done.not_queued),
        (found + missed, found, missed),
        "{name}"
    );
    let left: Vec<String> = c.lrange(&k.queue, 0, -1).await.unwrap();
    assert_eq!(left.len(), len - lost.len(), "{name}");
    for r in &records {
        let queued = left
            .iter()
            .any(|e| e.starts_with(&format!("{}\t", r.coupon.code)));
        let stays = middle.map(code) == Some(r.coupon.code.clone());
        assert_eq!(queued, stays, "{name}: {}", r.coupon.code);
    }
}
