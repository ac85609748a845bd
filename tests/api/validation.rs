use coupond::domain::EventId;
use coupond::proto::{self, DiscountType, PreloadRequest};
use tonic::Code;

use crate::helpers::{policy, preload_request, spawn_app, TestApp};

/// Asserts the request is refused with INVALID_ARGUMENT naming `field`, and
/// that nothing of the event exists afterwards in PostgreSQL or Redis.
async fn assert_rejected(app: &TestApp, req: PreloadRequest, field: &str) {
    let event = req.event_id.clone();
    let err = app.preload(req).await.expect_err("must be rejected");
    assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
    assert!(
        err.message().starts_with(field),
        "message {:?} names {field}",
        err.message()
    );
    if let Ok(id) = EventId::parse(event.clone()) {
        assert!(
            app.pg.event(&id).await.unwrap().is_none(),
            "{field}: event row written"
        );
        assert_eq!(
            app.pg.coupon_count(&id).await.unwrap(),
            0,
            "{field}: coupons written"
        );
        let (live, queued, _, _) = app.redis_state(&event).await;
        assert!(!live && queued == 0, "{field}: redis written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_preload_field_is_named_and_changes_nothing() {
    let app = spawn_app().await;
    let e = app.event_id("v");
    type Edit = Box<dyn Fn(&mut PreloadRequest)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("event_id", Box::new(|r| r.event_id = String::new())),
        ("event_id", Box::new(|r| r.event_id = "x".repeat(65))),
        ("event_id", Box::new(|r| r.event_id = "has space".into())),
        ("event_id", Box::new(|r| r.event_id = "brace{".into())),
        ("name", Box::new(|r| r.name = String::new())),
        ("name", Box::new(|r| r.name = "bell\u{7}".into())),
        ("name", Box::new(|r| r.name = "n".repeat(201))),
        ("total_count", Box::new(|r| r.total_count = 0)),
        ("total_count", Box::new(|r| r.total_count = 10_000_001)),
        ("total_count", Box::new(|r| r.total_count = u32::MAX)),
        ("policies", Box::new(|r| r.policies.clear())),
        (
            "policies",
            Box::new(|r| r.policies = vec![policy(DiscountType::Percent, 5, 1); 17]),
        ),
        (
            "policies[0].discount_type",
            Box::new(|r| r.policies[0].discount_type = 0),
        ),
        (
            "policies[1].discount_type",
            Box::new(|r| r.policies[1].discount_type = 42),
        ),
        (
            "policies[0].discount_value",
            Box::new(|r| r.policies[0].discount_value = 0),
        ),
        (
            "policies[0].discount_value",
            Box::new(|r| r.policies[0].discount_value = 101),
        ),
        (
            "policies[1].discount_value",
            Box::new(|r| r.policies[1].discount_value = -1),
        ),
        (
            "policies[1].discount_value",
            Box::new(|r| r.policies[1].discount_value = i64::MIN),
        ),
        ("policies[2].weight", Box::new(|r| r.policies[2].weight = 0)),
        ("starts_at", Box::new(|r| r.starts_at = None)),
        ("ends_at", Box::new(|r| r.ends_at = None)),
        ("ends_at", Box::new(|r| r.ends_at = r.starts_at)),
        (
            "starts_at",
            Box::new(|r| {
                r.starts_at = Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            }),
        ),
        (
            "ends_at",
            Box::new(|r| {
                r.ends_at = Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -5,
                })
            }),
        ),
        (
            // 10000-01-01T00:00:00Z: one second past protobuf's range.
            "ends_at",
            Box::new(|r| {
                r.ends_at = Some(prost_types::Timestamp {
                    seconds: 253_402_300_800,
                    nanos: 0,
                })
            }),
        ),
        (
            "starts_at",
            Box::new(|r| {
                r.starts_at = Some(prost_types::Timestamp {
                    seconds: -62_135_596_801,
                    nanos: 0,
                })
            }),
        ),
        ("code_prefix", Box::new(|r| r.code_prefix = "lower".into())),
        ("code_prefix", Box::new(|r| r.code_prefix = "A".repeat(17))),
    ];
    for (i, (field, edit)) in cases.iter().enumerate() {
        let mut req = preload_request(&format!("{e}-{i}"), 100);
        edit(&mut req);
        assert_rejected(&app, req, field).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_preload_of_an_event_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let event = app.event_id("dup");
    app.preload(preload_request(&event, 50)).await.unwrap();
    let r = app.issue(&event, "u1").await;
    let before = app.redis_state(&event).await;
    let id = EventId::parse(event.clone()).unwrap();

    let mut again = preload_request(&event, 80);
    again.name = "Other".into();
    let err = app.preload(again).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("name") && err.message().contains("\"Other\""),
        "names the difference: {}",
        err.message()
    );
    // Pending is left out: the finalizer may record u1 meanwhile.
    let (live, queued, issued, _) = app.redis_state(&event).await;
    assert_eq!((live, queued, issued), (before.0, before.1, before.2));
    assert_eq!(app.pg.coupon_count(&id).await.unwrap(), 50);
    let again = app.issue(&event, "u1").await;
    assert_eq!(again.coupon, r.coupon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_unary_issue_input_is_invalid_argument_and_takes_nothing() {
    let app = spawn_app().await;
    let event = app.event_id("bad-issue");
    app.preload(preload_request(&event, 5)).await.unwrap();
    let cases = [
        ("event_id", String::new(), "u".to_string(), String::new()),
        (
            "event_id",
            "a b".to_string(),
            "u".to_string(),
            String::new(),
        ),
        ("event_id", "e".repeat(65), "u".to_string(), String::new()),
        ("user_id", event.clone(), String::new(), String::new()),
        ("user_id", event.clone(), "u".repeat(129), String::new()),
        (
            "user_id",
            event.clone(),
            "nul\u{0}".to_string(),
            String::new(),
        ),
        (
            "user_id",
            event.clone(),
            "del\u{7f}".to_string(),
            String::new(),
        ),
        (
            "request_id",
            event.clone(),
            "u".to_string(),
            "r".repeat(129),
        ),
        (
            "request_id",
            event.clone(),
            "u".to_string(),
            "tab\t".to_string(),
        ),
    ];
    for (field, event_id, user_id, request_id) in cases {
        let err = app
            .issuer
            .clone()
            .issue(proto::IssueRequest {
                event_id,
                user_id,
                request_id,
            })
            .await
            .expect_err("must be rejected");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(field),
            "{:?} names {field}",
            err.message()
        );
    }
    assert_eq!(app.redis_state(&event).await, (true, 5, 0, 0));

    for (event_id, user_id, field) in [("", "u", "event_id"), ("ok", "", "user_id")] {
        let err = app
            .issuer
            .clone()
            .get_issuance(proto::GetIssuanceRequest {
                event_id: event_id.into(),
                user_id: user_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field));
    }
    let err = app
        .admin
        .clone()
        .get_event(proto::GetEventRequest {
            event_id: "no spaces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
