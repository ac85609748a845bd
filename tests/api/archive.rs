//! `coupond archive`: an ended, settled event's issued coupons move out of
//! the table every drop writes, the codes nobody was given are dropped.
//! Its holders keep their coupon (Issue, GetIssuance, a redelivery to the
//! finalizer), nothing reopens or rebuilds it, an event still in play is
//! refused unchanged, and no preload draws an archived code.

use std::collections::HashSet;
use std::time::Duration;

use coupond::domain::{Discount, DiscountType, EventId, IssuanceRecord, IssuedCoupon, UserId};
use coupond::proto::{IssuanceState, IssueResult};
use coupond::store::postgres::finalization::{IssuanceWriter, Recorded};
use diesel_async::{AsyncConnection, RunQueryDsl};
use redis::AsyncCommands;

use crate::helpers::{
    coupond_cli, eventually, preload_request, reconcile_cli, spawn_without_finalizer,
    start_finalizer, ts, TestApp,
};
use crate::retention::{await_expired, await_settled, ending_event, extension_refused};

/// Every answer a holder can get: a repeat of their request (ISSUED), a new
/// request (ALREADY_ISSUED), GetIssuance (FINALIZED), each with their code.
async fn holders_keep_their_coupons(app: &TestApp, event: &str, pairs: &HashSet<(String, String)>) {
    for (code, user) in pairs {
        let repeat = app.issue(event, user).await;
        assert_eq!(
            repeat.result,
            IssueResult::Issued as i32,
            "{user}: {repeat:?}"
        );
        assert_eq!(&repeat.coupon.unwrap().code, code, "{user}");
        let anew = app.issue_as(event, user, "a-new-request").await;
        assert_eq!(
            anew.result,
            IssueResult::AlreadyIssued as i32,
            "{user}: {anew:?}"
        );
        assert_eq!(&anew.coupon.unwrap().code, code, "{user}");
        let got = app.get_issuance(event, user).await;
        assert_eq!(&got.coupon.unwrap().code, code, "{user}");
        assert_eq!(got.state, IssuanceState::Finalized as i32, "{user}");
    }
}

fn archive_cli(app: &TestApp, event: &str) -> (i32, String) {
    coupond_cli(app, &["archive", "--event", event])
}

/// `coupond archive` refuses the event (of 10 coupons), saying `says`, and
/// its coupons stay where they were.
async fn archive_refused(app: &TestApp, id: &EventId, says: &str) {
    let (code, out) = archive_cli(app, id.as_str());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(says), "{out}");
    assert_eq!(app.pg.coupon_count(id).await.unwrap(), 10, "nothing moved");
    let stored = app.pg.event(id).await.unwrap().unwrap();
    assert!(stored.archived_at.is_none(), "not marked archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_event_answers_its_holders_and_refuses_every_change() {
    let (app, event, pairs) = ending_event(1).await;
    let id = EventId::parse(event.clone()).unwrap();
    archive_refused(&app, &id, "has not ended").await;

    await_settled(&app, &event).await;
    // A dead letter of the event not replayed may be a user told ISSUED
    // whom PostgreSQL refused: archiving is refused until one says so.
    let (held, holder) = pairs.iter().next().unwrap();
    let record = |user: &str| IssuanceRecord {
        event_id: id.clone(),
        user_id: UserId::parse(user.to_owned()).unwrap(),
        coupon: IssuedCoupon {
            code: held.clone(),
            discount: Discount::new(DiscountType::Percent, 10).unwrap(),
            issued_at: chrono::Utc::now(),
        },
        request_id: format!("req-{user}"),
    };
    let letter = coupond::kafka::message::encode(&record(holder));
    app.publisher()
        .dead_letter(None, &letter, "refused before")
        .await
        .unwrap();
    archive_refused(&app, &id, "1 dead letters of it were not replayed").await;
    let (code, out) = coupond_cli(
        &app,
        &["archive", "--event", &event, "--ignore-dead-letters"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 issued coupons moved to the archive, 8 codes"),
        "{out}"
    );
    assert_eq!(
        app.pg.coupon_count(&id).await.unwrap(),
        0,
        "out of the coupons table"
    );
    let (code, out) = archive_cli(&app, &event);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 issued coupons in the archive; nothing changed"),
        "{out}"
    );

    await_expired(&app, &event).await;
    holders_keep_their_coupons(&app, &event, &pairs).await;
    let newcomer = app.issue(&event, "u3").await;
    assert_eq!(newcomer.result, IssueResult::Ended as i32, "{newcomer:?}");
    let shown = app.get_event(&event).await;
    assert_eq!((shown.issued_count, shown.finalized_count), (2, 2));
    assert!(shown.archived_at.is_some());

    extension_refused(&app, &id, "archived").await;
    for extra in [&[][..], &["--rebuild-redis", "--force"][..]] {
        let (code, out) = reconcile_cli(&app, &event, extra);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("is archived"), "{out}");
    }
    assert!(!app.redis.event_exists(&id, 1).await.unwrap(), "no rebuild");

    // A consumer re-reading old offsets redelivers an archived issuance:
    // the finalizer finds it recorded; another user's claim to it is not.
    let writer = IssuanceWriter::connect(&app.settings.database.url, 1).unwrap();
    let verdicts = writer
        .record(&[record(holder), record("u9")])
        .await
        .unwrap();
    assert_eq!(verdicts, vec![Recorded::Done, Recorded::Refused]);
    holders_keep_their_coupons(&app, &event, &pairs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_whose_issuances_are_not_all_recorded_is_not_archived() {
    let app = spawn_without_finalizer().await;
    let event = app.event_id("unrecorded");
    let id = EventId::parse(event.clone()).unwrap();
    let mut req = preload_request(&event, 10);
    let ends_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    req.ends_at = Some(ts(ends_at));
    app.preload(req).await.unwrap();
    let told = app.issue(&event, "u1").await;
    assert_eq!(told.result, IssueResult::Issued as i32);
    let over = eventually(Duration::from_secs(30), || async {
        chrono::Utc::now() > ends_at
    })
    .await;
    assert!(over);
    let late = app.issue(&event, "late").await;
    assert_eq!(late.result, IssueResult::Ended as i32, "the window ended");
    archive_refused(&app, &id, "not settled yet").await;

    // Redis loses u1's record before the finalizer ran (a failover without
    // the replica's ack): nothing is pending, the sweeper settles the
    // event, but u1's issuance is still on its way in Kafka.
    let k = app.keys(&event);
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c.hdel(&k.issued, "u1").await.unwrap();
    let _: () = c.zrem(&k.pending, "u1").await.unwrap();
    await_settled(&app, &event).await;
    archive_refused(
        &app,
        &id,
        "1 of its issuances are in the finalizer's backlog",
    )
    .await;

    let _finalizer = start_finalizer(&app).await;
    let pairs = HashSet::from([(told.coupon.unwrap().code, "u1".to_owned())]);
    app.await_finalized(&event, &pairs).await;
    let (code, out) = archive_cli(&app, &event);
    assert_eq!(code, 0, "{out}");
    holders_keep_their_coupons(&app, &event, &pairs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preload_never_draws_a_code_an_archived_event_holds() {
    use coupond::domain::{Policy, PreloadId};
    use coupond::store::postgres::coupon_writer::CouponWriter;
    let (app, event, pairs) = ending_event(3600).await;
    await_settled(&app, &event).await;
    let (code, out) = archive_cli(&app, &event);
    assert_eq!(code, 0, "{out}");

    // A preload job's chunk that drew an archived code (as a random draw
    // can), beside a fresh one, for an event of its own.
    let job = app.event_id("after-archive");
    let mut pg = diesel_async::AsyncPgConnection::establish(&app.settings.database.url)
        .await
        .unwrap();
    diesel::sql_query(
        "INSERT INTO events (id, name, total_count, starts_at, ends_at, state, preload_id) \
         VALUES ($1, 'after', 2, now(), now() + interval '1 hour', 'PREPARING', 'job-1')",
    )
    .bind::<diesel::sql_types::Text, _>(&job)
    .execute(&mut pg)
    .await
    .unwrap();
    diesel::sql_query("INSERT INTO policies VALUES ($1, 0, 'PERCENT', 10, 1, 2)")
        .bind::<diesel::sql_types::Text, _>(&job)
        .execute(&mut pg)
        .await
        .unwrap();
    let archived: Vec<String> = pairs.iter().map(|(c, _)| c.clone()).collect();
    let mut chunk = vec![(archived[0].clone(), 0i16), ("FRESHCODE234".to_owned(), 0)];
    let mut drawn = ["DRAWNCODE234".to_owned()].into_iter().cycle();
    let mut writer = CouponWriter::connect(&app.settings.database.url)
        .await
        .unwrap();
    let policy = Policy {
        discount: Discount::new(DiscountType::Percent, 10).unwrap(),
        weight: 1,
    };
    let replaced = writer
        .write_chunk(
            &EventId::parse(job.clone()).unwrap(),
            &PreloadId::from_stored("job-1".into()),
            Duration::from_secs(60),
            &[policy],
            &mut chunk,
            &mut || drawn.next().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(replaced, 1);
    let codes: HashSet<String> = chunk.iter().map(|(c, _)| c.clone()).collect();
    let want: HashSet<String> = ["FRESHCODE234", "DRAWNCODE234"].map(String::from).into();
    assert_eq!(codes, want, "the archived code was drawn again");
    let job_id = EventId::parse(job).unwrap();
    assert_eq!(app.pg.coupon_count(&job_id).await.unwrap(), 2);
    holders_keep_their_coupons(&app, &event, &pairs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_running_or_left_unfinished_keeps_an_event_from_being_archived() {
    use coupond::store::redis::LockAction;
    let (app, event, pairs) = ending_event(3600).await;
    let id = EventId::parse(event.clone()).unwrap();
    await_settled(&app, &event).await;
    let lock = |action| {
        app.redis
            .rebuild_lock(&id, action, "another-rebuild", Duration::from_secs(30))
    };
    assert_eq!(lock(LockAction::Take).await.unwrap(), None);
    archive_refused(&app, &id, "a rebuild of it is running").await;
    assert_eq!(lock(LockAction::Release).await.unwrap(), None);

    // A rebuild that died after taking the event offline.
    assert!(app
        .redis
        .take_offline(&app.keys(&event), "a-dead-rebuild")
        .await
        .unwrap());
    archive_refused(&app, &id, "a rebuild left it offline").await;
    let (code, out) = reconcile_cli(&app, &event, &["--rebuild-redis"]);
    assert_eq!(code, 0, "{out}");
    await_settled(&app, &event).await;
    let (code, out) = archive_cli(&app, &event);
    assert_eq!(code, 0, "{out}");
    holders_keep_their_coupons(&app, &event, &pairs).await;
}
