//! Preload as a job: idempotent calls, fencing, callers that give up,
//! failures that leave nothing behind, listing.

use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::{EventId, CODE_ALPHABET};
use coupond::proto;
use redis::AsyncCommands;
use tonic::Code;

use crate::common::{
    assert_live_and_consistent, assert_no_leftovers, staging_lists, topic_messages,
};
use crate::helpers::{
    check_issued, eventually, isolated_settings, preload_request, spawn_app, spawn_with, unique_tag,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_writes_every_code_to_postgres_and_the_redis_queue() {
    let app = spawn_app().await;
    let (db, conn) = tokio_postgres::connect(&app.settings.database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let before: std::time::SystemTime = db.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let event = app.event_id("pre");
    let mut req = preload_request(&event, 3000);
    req.code_prefix = "XMAS-".into();
    let r = app.preload(req).await.unwrap();
    assert_eq!(r.event_id, event);
    assert_eq!(r.counts_per_policy, vec![1000, 1000, 1000]);

    let id = EventId::parse(event.clone()).unwrap();
    assert_eq!(app.pg.coupon_count(&id).await.unwrap(), 3000);
    let mut c = app.redis.conn().await.unwrap();
    let entries: Vec<String> = c.lrange(app.keys(&event).queue, 0, -1).await.unwrap();
    assert_eq!(entries.len(), 3000);
    let codes: HashSet<&str> = entries
        .iter()
        .map(|e| e.split('\t').next().unwrap())
        .collect();
    assert_eq!(codes.len(), 3000, "no code twice");
    for code in &codes {
        let body = code.strip_prefix("XMAS-").expect("prefix");
        assert_eq!(body.len(), 12);
        assert!(body.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{code}");
    }
    // Shuffled: the first 100 entries are not all of one policy.
    let first_kinds: HashSet<&str> = entries[..100]
        .iter()
        .map(|e| e.split_once('\t').unwrap().1)
        .collect();
    assert!(first_kinds.len() > 1, "policies interleave in the queue");
    assert_live_and_consistent(&app.pg, &app.redis, &event, 3000).await;

    // The planner knows the rows are there before the sale starts (else
    // the finalizer's lookups by code were planned as scans of the event):
    // the job analyzed the table. Its ANALYZE skips a table autovacuum
    // holds at that moment, whose own run then refreshes the statistics:
    // either counts.
    let analyzed = eventually(Duration::from_secs(30), || async {
        let row = db
            .query_one(
                "SELECT greatest(last_analyze, last_autoanalyze) \
                 FROM pg_stat_user_tables WHERE relname = 'coupons'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, Option<std::time::SystemTime>>(0)
            .is_some_and(|t| t >= before)
    })
    .await;
    assert!(analyzed, "the preload job analyzed the coupons table");
}

/// Ten identical Preloads at once, spread over two servers sharing the
/// stores: one event, one job, ten identical answers; then every ISSUED
/// answer is finalized with its code and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_identical_concurrent_preloads_make_one_event_and_ten_identical_answers() {
    let app = spawn_app().await;
    let other = spawn_with(app.settings.clone(), app.tag.clone()).await;
    let event = app.event_id("ten");
    let req = preload_request(&event, 30_000);
    let calls = (0..10).map(|i| {
        let server = if i % 2 == 0 { &app } else { &other };
        server.preload(req.clone())
    });
    let answers: Vec<_> = futures::future::join_all(calls).await;
    let first = answers[0].clone().expect("preload succeeds");
    for a in &answers {
        assert_eq!(a.as_ref().expect("every call succeeds"), &first);
    }
    assert_eq!(first.state, proto::EventState::Live as i32);
    assert_eq!(first.counts_per_policy, vec![10_000, 10_000, 10_000]);
    assert_live_and_consistent(&app.pg, &app.redis, &event, 30_000).await;
    let events = app.pg.events_after("", 100).await.unwrap();
    assert_eq!(events.len(), 1, "one event row");
    assert_eq!(events[0].preload.preload_id.as_str(), first.preload_id);

    let mut responses = Vec::new();
    for i in 0..200 {
        let server = if i % 2 == 0 { &app } else { &other };
        let user = format!("u{i}");
        responses.push((user.clone(), server.issue(&event, &user).await));
    }
    let issued = check_issued(&responses, 200, &[]);
    app.await_finalized(&event, &issued).await;
    let dlq = app.settings.kafka.dlq_topic();
    assert_eq!(
        topic_messages(&app.settings.kafka.brokers, &dlq),
        0,
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_content_under_a_taken_id_is_refused_concurrently_and_after_live() {
    let app = spawn_app().await;
    let event = app.event_id("diff");
    let small = preload_request(&event, 20_000);
    let mut large = small.clone();
    large.total_count = 40_000;
    let (a, b) = tokio::join!(app.preload(small.clone()), app.preload(large.clone()));
    let (won, lost) = match (&a, &b) {
        (Ok(_), Err(e)) => (&small, e),
        (Err(e), Ok(_)) => (&large, e),
        other => panic!("exactly one of two different preloads wins: {other:?}"),
    };
    assert_eq!(lost.code(), Code::AlreadyExists, "{lost:?}");
    assert!(lost.message().contains("total_count"), "{}", lost.message());
    assert_live_and_consistent(&app.pg, &app.redis, &event, won.total_count).await;

    let before = app.redis_state(&event).await;
    let mut renamed = won.clone();
    renamed.policies[1].discount_value = 7000;
    let err = app.preload(renamed).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("policies[1]"), "{}", err.message());
    assert_eq!(app.redis_state(&event).await, before, "nothing changed");
    assert_live_and_consistent(&app.pg, &app.redis, &event, won.total_count).await;
    // The identical request is still answered, as often as it is asked.
    assert!(app.preload(won.clone()).await.is_ok());
}

/// A caller whose deadline passes mid-job ends its wait, not the job: the
/// job's progress shows in GetEvent and the event ends LIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_does_not_end_the_job() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.preload.chunk = 10_000;
    let app = spawn_with(settings, tag).await;
    let event = app.event_id("gaveup");
    let total = 300_000;
    let request = preload_request(&event, total);
    let mut req = tonic::Request::new(request.clone());
    req.set_timeout(Duration::from_millis(300));
    let err = app.admin.clone().preload(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );

    let seen_progress = std::sync::atomic::AtomicBool::new(false);
    let live = eventually(Duration::from_secs(60), || async {
        let e = app.get_event(&event).await;
        let preparing = e.state == proto::EventState::Preparing as i32;
        if preparing && e.preloaded_count > 0 && e.preloaded_count < total {
            seen_progress.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        e.state == proto::EventState::Live as i32
    })
    .await;
    let seen_progress = seen_progress.into_inner();
    assert!(live, "the job went on to LIVE");
    assert!(
        seen_progress,
        "GetEvent showed the job's progress while PREPARING"
    );
    let e = app.get_event(&event).await;
    assert_eq!((e.preloaded_count, e.remaining_count), (total, total));
    assert_live_and_consistent(&app.pg, &app.redis, &event, total).await;
    let again = app.preload(request).await.unwrap();
    assert_eq!(again.state, proto::EventState::Live as i32);
}

/// A job that cannot finish (here: a preload id unknown to PostgreSQL holds
/// the event's Redis fence) ends FAILED with its reason and nothing left in
/// either store; once the cause is gone, the same id preloads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_leaves_nothing_and_the_id_can_be_preloaded_again() {
    let app = spawn_app().await;
    let event = app.event_id("failed");
    // Redis has the event live with codes PostgreSQL never had (another
    // deployment's, or a restore of the wrong backup): the job must fail.
    let meta = format!("couponMeta:{{{event}}}");
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c
        .hset_multiple(&meta, &[("preload_id", "a-stranger"), ("total", "1")])
        .await
        .unwrap();

    let err = app
        .preload(preload_request(&event, 5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("a-stranger"), "{}", err.message());
    let e = app.get_event(&event).await;
    assert_eq!(e.state, proto::EventState::Failed as i32);
    assert!(
        e.failure_reason.contains("a-stranger"),
        "{}",
        e.failure_reason
    );
    let id = EventId::parse(event.clone()).unwrap();
    assert_eq!(app.pg.coupon_count(&id).await.unwrap(), 0);
    assert_eq!(
        staging_lists(&app.redis, &event).await,
        Vec::<String>::new()
    );
    assert_no_leftovers(&app.redis, &event).await;

    let _: () = c.del(&meta).await.unwrap();
    let mut other = preload_request(&event, 4_000);
    other.name = "Second try".into();
    let r = app
        .preload(other)
        .await
        .expect("a failed id preloads again");
    assert_ne!(r.preload_id, e.preload_id, "a new job");
    assert_live_and_consistent(&app.pg, &app.redis, &event, 4_000).await;
    let got = app.issue(&event, "u1").await;
    assert_eq!(got.result, proto::IssueResult::Issued as i32);
}

/// A Redis fence held by a preload id PostgreSQL does not name (a job that
/// died, whose successor failed too) never blocks the event: the job
/// PostgreSQL names takes it from exactly that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_of_a_preload_postgres_does_not_name_is_taken_over() {
    let app = spawn_app().await;
    let event = app.event_id("stranger");
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c
        .set(format!("couponPreload:{{{event}}}"), "a-stranger")
        .await
        .unwrap();
    let _: () = c
        .rpush(
            format!("couponStaging:{{{event}}}:a-stranger"),
            "X\tPERCENT\t1",
        )
        .await
        .unwrap();
    let r = app.preload(preload_request(&event, 5_000)).await.unwrap();
    assert_eq!(r.state, proto::EventState::Live as i32);
    assert_live_and_consistent(&app.pg, &app.redis, &event, 5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_events_pages_through_every_event_with_its_state() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..5).map(|i| app.event_id(&format!("list{i}"))).collect();
    for id in &ids {
        app.preload(preload_request(id, 30)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .admin
            .clone()
            .list_events(proto::ListEventsRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2);
        for e in &page.events {
            assert_eq!(e.state, proto::EventState::Live as i32);
            assert_eq!(
                (e.total_count, e.preloaded_count, e.remaining_count),
                (30, 30, 30)
            );
            seen.push(e.event_id.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);
    let err = app
        .admin
        .clone()
        .list_events(proto::ListEventsRequest {
            page_size: 5000,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("page_size"), "{}", err.message());
}

/// A chunk is staged in several script calls (parts). A retry of the chunk
/// after a reply was lost, whether the earlier attempt got through one part
/// or all of them, leaves every entry once and in order. (Under Redis stalls
/// a retry used to find the later parts already there and refuse the chunk
/// for good: the job never ended.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_chunk_is_staged_once_however_far_its_lost_attempt_got() {
    use coupond::domain::PreloadId;
    use coupond::store::keys::EventKeys;
    use coupond::store::redis::FenceReply;

    let app = spawn_app().await;
    let event = EventId::parse(app.event_id("parts")).unwrap();
    let job = PreloadId::random(&mut rand::rng());
    let claimed = app.redis.claim_preload(&event, &job, None).await.unwrap();
    assert_eq!(claimed, FenceReply::Done);
    let entries: Vec<String> = (0..25_000)
        .map(|i| format!("CODE{i:08}\tPERCENT\t10"))
        .collect();
    // An attempt that got through its first part only, then the retry.
    let first = app
        .redis
        .stage_chunk(&event, &job, 0, &entries[..10_000])
        .await
        .unwrap();
    assert_eq!(first, 10_000);
    let staged = app.redis.stage_chunk(&event, &job, 0, &entries).await;
    assert_eq!(staged.unwrap(), 25_000);
    // An attempt that got through every part, then the retry.
    let again = app.redis.stage_chunk(&event, &job, 0, &entries).await;
    assert_eq!(again.unwrap(), 25_000, "a repeated chunk changes nothing");
    // The next chunk goes on from there.
    let next = app
        .redis
        .stage_chunk(&event, &job, 25_000, &entries[..5])
        .await;
    assert_eq!(next.unwrap(), 25_005);

    let staging = EventKeys::preload_staging(&event, &job);
    let mut c = app.redis.conn().await.unwrap();
    let listed: Vec<String> = c.lrange(&staging, 0, -1).await.unwrap();
    let mut expected = entries.clone();
    expected.extend_from_slice(&entries[..5]);
    assert!(listed == expected, "every entry once, in order");

    // Entries of another fill where this chunk's go (a reset whose DEL a
    // failover lost) are refused, not taken for this chunk's.
    let other: Vec<String> = (0..10_000)
        .map(|i| format!("OTHER{i:08}\tPERCENT\t10"))
        .collect();
    let refused = app.redis.stage_chunk(&event, &job, 0, &other).await;
    assert!(refused.is_err(), "{refused:?}");
    let after: Vec<String> = c.lrange(&staging, 0, -1).await.unwrap();
    assert!(after == expected, "a refused part changes nothing");
}
