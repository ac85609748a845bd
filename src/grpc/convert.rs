//! Proto <-> domain conversions. Field paths in errors use proto names.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::domain::{
    EventState, FieldError, IssuanceState, IssueOutcome, IssuedCoupon, PolicyInput, PreloadInput,
    StoredEvent,
};
use crate::proto;
use crate::proto::wire::{
    discount_type_from_proto, discount_type_to_proto, timestamp, to_datetime,
};
use crate::service::admin::EventView;

fn time_field(t: Option<&Timestamp>, field: &str) -> Result<Option<DateTime<Utc>>, FieldError> {
    t.map(|t| {
        to_datetime(t).ok_or_else(|| {
            FieldError::new(
                field,
                "timestamp out of range: must lie in years 1 to 9999 with nanos 0..1e9",
            )
        })
    })
    .transpose()
}

impl TryFrom<proto::PreloadRequest> for PreloadInput {
    type Error = FieldError;

    fn try_from(r: proto::PreloadRequest) -> Result<Self, FieldError> {
        Ok(PreloadInput {
            starts_at: time_field(r.starts_at.as_ref(), "starts_at")?,
            ends_at: time_field(r.ends_at.as_ref(), "ends_at")?,
            event_id: r.event_id,
            name: r.name,
            total_count: r.total_count,
            policies: r
                .policies
                .into_iter()
                .map(|p| PolicyInput {
                    discount_type: discount_type_from_proto(p.discount_type),
                    discount_value: p.discount_value,
                    weight: p.weight,
                })
                .collect(),
            code_prefix: r.code_prefix,
            shards: r.shards,
        })
    }
}

pub fn coupon(c: &IssuedCoupon) -> proto::Coupon {
    proto::Coupon {
        code: c.code.clone(),
        discount_type: discount_type_to_proto(c.discount.kind()) as i32,
        discount_value: c.discount.value(),
        issued_at: Some(timestamp(c.issued_at)),
    }
}

/// An outcome as an `IssueResponse` for the request `request_id`;
/// `durable`: Kafka acknowledged an ISSUED one.
pub fn issue_response(request_id: String, o: &IssueOutcome, durable: bool) -> proto::IssueResponse {
    use proto::IssueResult as R;
    let (result, coupon_, detail) = match o {
        IssueOutcome::Issued(c) => (R::Issued, Some(coupon(c)), "coupon issued"),
        IssueOutcome::AlreadyIssued(c) => (
            R::AlreadyIssued,
            Some(coupon(c)),
            "the user already holds a coupon of this event",
        ),
        IssueOutcome::SoldOut => (R::SoldOut, None, "no coupons left"),
        IssueOutcome::NotStarted => (R::NotStarted, None, "the event has not started"),
        IssueOutcome::Ended => (R::Ended, None, "the event has ended"),
        IssueOutcome::EventNotFound => (R::EventNotFound, None, "no such event"),
        IssueOutcome::Paused => (R::Paused, None, "the event is paused; ask again later"),
        IssueOutcome::Conflicted(c) => (
            R::Conflicted,
            Some(coupon(c)),
            "the coupon issued to this user is recorded for another user; the user holds none",
        ),
    };
    proto::IssueResponse {
        request_id,
        result: result as i32,
        coupon: coupon_,
        detail: detail.to_owned(),
        durable: durable && result == R::Issued,
    }
}

/// A per-item failure inside a stream (the stream itself goes on).
pub fn issue_failure(
    request_id: String,
    result: proto::IssueResult,
    detail: String,
) -> proto::IssueResponse {
    proto::IssueResponse {
        request_id,
        result: result as i32,
        coupon: None,
        detail,
        durable: false,
    }
}

pub fn issuance_state(s: IssuanceState) -> proto::IssuanceState {
    match s {
        IssuanceState::Pending => proto::IssuanceState::Pending,
        IssuanceState::Finalized => proto::IssuanceState::Finalized,
        IssuanceState::Conflicted => proto::IssuanceState::Conflicted,
    }
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub fn event_state(s: EventState) -> proto::EventState {
    match s {
        EventState::Preparing => proto::EventState::Preparing,
        EventState::Live => proto::EventState::Live,
        EventState::Failed => proto::EventState::Failed,
    }
}

/// The answer to a Preload whose event is LIVE: the same for every call.
pub fn preload_response(e: &StoredEvent) -> proto::PreloadResponse {
    let t = e.preload.timings.unwrap_or_default();
    proto::PreloadResponse {
        event_id: e.id.to_string(),
        counts_per_policy: e.policies.iter().map(|(_, n)| *n).collect(),
        generate_ms: t.generate.as_millis() as u64,
        database_ms: t.database.as_millis() as u64,
        redis_ms: t.redis.as_millis() as u64,
        total_ms: t.total.as_millis() as u64,
        state: event_state(e.preload.state) as i32,
        preload_id: e.preload.preload_id.to_string(),
    }
}

pub fn event(v: &EventView) -> proto::Event {
    let e: &StoredEvent = &v.event;
    proto::Event {
        event_id: e.id.to_string(),
        name: e.name.clone(),
        starts_at: Some(timestamp(e.window.starts_at())),
        ends_at: Some(timestamp(e.window.ends_at())),
        code_prefix: e.prefix.as_str().to_owned(),
        policies: e
            .policies
            .iter()
            .map(|(p, n)| proto::EventPolicy {
                policy: Some(proto::DiscountPolicy {
                    discount_type: discount_type_to_proto(p.discount.kind()) as i32,
                    discount_value: p.discount.value(),
                    weight: p.weight,
                }),
                coupon_count: *n,
            })
            .collect(),
        total_count: e.total_count,
        remaining_count: clamp_u32(v.redis.remaining),
        issued_count: clamp_u32(v.redis.issued.saturating_sub(v.redis.conflicted)),
        finalized_count: clamp_u32(v.finalized),
        state: event_state(e.preload.state) as i32,
        preloaded_count: e.preload.written,
        failure_reason: e.preload.failure.clone().unwrap_or_default(),
        preload_id: e.preload.preload_id.to_string(),
        conflicted_count: clamp_u32(v.redis.conflicted),
        paused: e.paused,
        settled_at: e.settled_at.map(timestamp),
        offline: v.offline,
        shards: e.shards,
        archived_at: e.archived_at.map(timestamp),
    }
}
