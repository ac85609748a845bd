use std::collections::HashSet;

use coupond::domain::EventId;
use coupond::proto::IssueResult;
use redis::AsyncCommands;

use crate::helpers::{
    coupond_cli, dead_letters, eventually, finalized_drop, issue_all, lose_event_in_redis,
    preload_request, reconcile_cli, spawn_app, spawn_without_finalizer, start_finalizer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_redis_event_is_reported_rebuilt_and_issuing_goes_on_without_duplicates() {
    let app = spawn_app().await;
    let event = app.event_id("rebuild");
    let id = EventId::parse(event.clone()).unwrap();
    app.preload(preload_request(&event, 200)).await.unwrap();

    let first: Vec<String> = (0..100).map(|i| format!("early-{i}")).collect();
    let mut pairs: HashSet<(String, String)> = HashSet::new();
    for (u, r) in issue_all(&app, &event, &first).await {
        assert_eq!(r.result, IssueResult::Issued as i32);
        pairs.insert((r.coupon.unwrap().code, u));
    }
    app.await_finalized(&event, &pairs).await;
    let (code, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("CONSISTENT"), "{report}");

    // Redis loses the event (as after a restart without persistence).
    let k = app.keys(&event);
    let mut c = app.redis.conn().await.unwrap();
    let _: () = c
        .del(&[&k.queue, &k.issued, &k.meta, &k.pending])
        .await
        .unwrap();
    // A holder is still answered with their coupon (from PostgreSQL), and
    // nobody is told the event does not exist.
    let again = app.issue(&event, "early-0").await;
    assert_eq!(again.result, IssueResult::Issued as i32);
    let code = again.coupon.unwrap().code;
    assert!(pairs.contains(&(code, "early-0".to_string())));
    let err = app
        .issuer
        .clone()
        .issue(coupond::proto::IssueRequest {
            event_id: event.clone(),
            user_id: "newcomer".into(),
            request_id: "r".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("rebuild"), "{err:?}");
    let (code, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("issued in postgres only (unknown to redis): 100"),
        "{report}"
    );
    assert!(
        report.contains("available codes in neither queue nor issued: 100"),
        "{report}"
    );

    let (code, report) = reconcile_cli(&app, &event, &["--rebuild-redis"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(app.redis_state(&event).await, (true, 100, 100, 0));

    // Rebuilding a live event needs --force.
    let (code, _) = reconcile_cli(&app, &event, &["--rebuild-redis"]);
    assert_ne!(code, 0, "a live event is not rebuilt without --force");

    // Issuing goes on: old users keep their coupons, 100 new ones are left.
    // The same requests again: each is recognised by its request id.
    let again = issue_all(&app, &event, &first).await;
    for (u, r) in &again {
        assert_eq!(r.result, IssueResult::Issued as i32);
        assert!(pairs.contains(&(r.coupon.as_ref().unwrap().code.clone(), u.clone())));
    }
    let late: Vec<String> = (0..150).map(|i| format!("late-{i}")).collect();
    let mut sold_out = 0;
    for (u, r) in issue_all(&app, &event, &late).await {
        if r.result == IssueResult::Issued as i32 {
            assert!(
                pairs.insert((r.coupon.unwrap().code, u)),
                "a code went out twice"
            );
        } else {
            assert_eq!(r.result, IssueResult::SoldOut as i32);
            sold_out += 1;
        }
    }
    assert_eq!((pairs.len(), sold_out), (200, 50));
    let codes: HashSet<&String> = pairs.iter().map(|(c, _)| c).collect();
    assert_eq!(codes.len(), 200, "no code twice");
    app.await_finalized(&event, &pairs).await;
    let report = coupond::ops::reconcile::reconcile(&app.pg, &app.redis, &id)
        .await
        .unwrap();
    assert!(report.consistent(), "{report}");
    assert_eq!((report.pg_issued, report.redis_queue), (200, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflict_ends_marked_counted_visible_and_reported() {
    let app = spawn_without_finalizer().await;
    let event = app.event_id("conflict");
    app.preload(preload_request(&event, 10)).await.unwrap();
    let first = app.issue(&event, "u1").await;
    let code = first.coupon.unwrap().code;

    // Redis loses its last writes (a restart with a lagging append-only
    // file): u1's record is gone and its code is back at the queue's head,
    // while u1's CouponIssued message is already in Kafka.
    let k = app.keys(&event);
    let mut c = app.redis.conn().await.unwrap();
    let rec: String = c.hget(&k.issued, "u1").await.unwrap();
    let entry: Vec<&str> = rec.splitn(4, '\t').take(3).collect();
    let _: () = c.hdel(&k.issued, "u1").await.unwrap();
    let _: () = c.zrem(&k.pending, "u1").await.unwrap();
    let _: () = c.lpush(&k.queue, entry.join("\t")).await.unwrap();
    let second = app.issue(&event, "u2").await;
    assert_eq!(second.coupon.unwrap().code, code, "the code went out twice");

    // The two messages may reach PostgreSQL in either order (users are
    // keys, spread over partitions): the first takes the code, the other is
    // refused. Either way the refused user ends conflicted, visibly.
    let _finalizer = start_finalizer(&app).await;
    let state_of = |user: &'static str| {
        let (app, event) = (&app, event.clone());
        async move {
            app.issuer
                .clone()
                .get_issuance(coupond::proto::GetIssuanceRequest {
                    event_id: event,
                    user_id: user.into(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().state)
        }
    };
    let conflicted = coupond::proto::IssuanceState::Conflicted as i32;
    let settled = eventually(std::time::Duration::from_secs(60), || async {
        let states = (state_of("u1").await, state_of("u2").await);
        app.issued_pairs_in_pg(&event).await.len() == 1
            && (states.0 == Some(conflicted) || states.1 == Some(conflicted))
    })
    .await;
    assert!(settled, "one user finalized, the other marked conflicted");
    let pg = app.issued_pairs_in_pg(&event).await;
    let holder = pg.iter().next().unwrap().1.clone();
    let loser = if holder == "u1" { "u2" } else { "u1" };
    assert_eq!(pg, HashSet::from([(code.clone(), holder.clone())]));
    assert_eq!(state_of(loser).await, Some(conflicted));
    let (_, _, _, pending) = app.redis_state(&event).await;
    assert_eq!(pending, 0, "no longer pending, so never republished");
    // A finalizer that died between marking and dead-lettering gets the
    // message again and marks it again: nothing changes.
    let id = EventId::parse(event.clone()).unwrap();
    let loser_id = coupond::domain::UserId::parse(loser).unwrap();
    let held = app
        .redis
        .issuance(&id, 1, &loser_id)
        .await
        .unwrap()
        .unwrap();
    let again = coupond::domain::IssuanceRecord {
        event_id: id.clone(),
        user_id: loser_id,
        coupon: held.coupon,
        request_id: held.request_id,
    };
    assert_eq!(
        app.redis
            .mark_conflicted(&id, 1, &[&again], std::time::Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    let c = app.redis.counts(&id, 1).await.unwrap();
    assert_eq!(
        (c.conflicted, c.pending),
        (1, 0),
        "marking twice counts once"
    );
    let again = app.issue(&event, loser).await;
    assert_eq!(again.result, IssueResult::Conflicted as i32);
    let ev = app.get_event(&event).await;
    // Issued counts the records Redis holds less the conflicted: the
    // holder's, either way (u1's record, which Redis had lost, is restored
    // from PostgreSQL when u1's message comes first).
    assert_eq!((ev.conflicted_count, ev.issued_count), (1, 1));
    let holder_id = coupond::domain::UserId::parse(holder.clone()).unwrap();
    let held = app.redis.issuance(&id, 1, &holder_id).await.unwrap();
    assert_eq!(held.expect("the holder's record").coupon.code, code);

    // A later issuance is finalized; the conflict was dead-lettered once.
    let third = app.issue(&event, "u3").await;
    let mut expected = pg.clone();
    expected.insert((third.coupon.unwrap().code, "u3".into()));
    app.await_finalized(&event, &expected).await;
    assert_eq!(dead_letters(&app), 1);

    let (exit, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(exit, 1, "{report}");
    assert!(
        report.contains(&format!(
            r#"user "{loser}" code {code} held in postgres by "{holder}""#
        )),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_waits_for_the_finalizer_and_a_forced_one_keeps_its_backlog() {
    let app = spawn_without_finalizer().await;
    let event = app.event_id("lagging");
    app.preload(preload_request(&event, 50)).await.unwrap();
    let early: Vec<String> = (0..20).map(|i| format!("early-{i}")).collect();
    let mut pairs: HashSet<(String, String)> = HashSet::new();
    for (u, r) in issue_all(&app, &event, &early).await {
        assert_eq!(r.result, IssueResult::Issued as i32);
        pairs.insert((r.coupon.unwrap().code, u));
    }
    lose_event_in_redis(&app, &event).await;

    let (exit, out) = reconcile_cli(&app, &event, &["--rebuild-redis"]);
    assert_ne!(exit, 0, "{out}");
    assert!(out.contains("unconsumed messages in kafka"), "{out}");
    assert_eq!(
        app.redis_state(&event).await,
        (false, 0, 0, 0),
        "nothing changed"
    );

    let (exit, out) = reconcile_cli(&app, &event, &["--rebuild-redis", "--force"]);
    assert_eq!(exit, 0, "{out}");
    assert!(
        out.contains("20 pending from the finalizer's backlog"),
        "{out}"
    );
    assert_eq!(app.redis_state(&event).await, (true, 30, 20, 20));

    // The 30 codes left go to new users, none of the early ones twice.
    let late: Vec<String> = (0..31).map(|i| format!("late-{i}")).collect();
    let mut sold_out = 0;
    for (u, r) in issue_all(&app, &event, &late).await {
        match IssueResult::try_from(r.result).unwrap() {
            IssueResult::Issued => assert!(pairs.insert((r.coupon.unwrap().code, u))),
            IssueResult::SoldOut => sold_out += 1,
            other => panic!("{u}: {other:?}"),
        }
    }
    assert_eq!((pairs.len(), sold_out), (50, 1));
    let codes: HashSet<&String> = pairs.iter().map(|(c, _)| c).collect();
    assert_eq!(codes.len(), 50, "no code twice");

    let finalizer = start_finalizer(&app).await;
    finalizer.await_finalized(&event, &pairs).await;
    assert_eq!(dead_letters(&app), 0, "no conflict");
    let (exit, report) = reconcile_cli(&app, &event, &[]);
    assert_eq!(exit, 0, "{report}");
}

/// `reconcile --live` checks every live event at once and names those that
/// differ: the runbook's one command after a Redis or master loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_live_checks_every_live_event_and_names_those_that_differ() {
    let app = spawn_app().await;
    let (kept, lost) = (app.event_id("kept"), app.event_id("lost"));
    for event in [&kept, &lost] {
        finalized_drop(&app, event, 20, 5).await;
    }
    let (code, out) = coupond_cli(&app, &["reconcile", "--live"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("event {kept} ")), "{out}");
    assert!(out.contains(&format!("event {lost} ")), "{out}");
    assert!(
        out.contains("2 live events, 0 differ or could not be checked"),
        "{out}"
    );

    lose_event_in_redis(&app, &lost).await;
    let (code, out) = coupond_cli(&app, &["reconcile", "--live"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "2 live events, 1 differ or could not be checked: {lost}"
        )),
        "{out}"
    );
    let (code, out) = coupond_cli(&app, &["reconcile", "--live", "--json"]);
    assert_eq!(code, 1, "{out}");
    let json_start = out.find('[').expect("a JSON array");
    let reports: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out[json_start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let verdicts: HashSet<(String, String)> = reports
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().unwrap().into(),
                r["verdict"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        HashSet::from([
            (kept.clone(), "CONSISTENT".into()),
            (lost.clone(), "INCONSISTENT".into())
        ])
    );

    // --live checks; it neither takes one event nor rebuilds.
    for bad in [
        &["--live", "--event", kept.as_str()][..],
        &["--live", "--rebuild-redis"],
    ] {
        let (code, out) = coupond_cli(&app, &[&["reconcile"][..], bad].concat());
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("cannot be used with"), "{out}");
    }
    let (code, out) = coupond_cli(&app, &["reconcile"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--event"), "{out}");
}
