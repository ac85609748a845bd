//! Events, their discount policies and the validation of a preload request.

use chrono::{DateTime, SubsecRound, Utc};

use crate::domain::allocation::allocate;
use crate::domain::error::FieldError;
use crate::domain::ids::{CodePrefix, EventId};
use crate::domain::preload::PreloadStatus;

/// How a coupon discounts a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscountType {
    /// A percentage, 1..=100.
    Percent,
    /// An amount in minor currency units, > 0.
    Amount,
}

impl DiscountType {
    /// Stable text form, used in PostgreSQL and Redis records.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscountType::Percent => "PERCENT",
            DiscountType::Amount => "AMOUNT",
        }
    }

    pub fn from_str_opt(s: &str) -> Option<Self> {
        match s {
            "PERCENT" => Some(DiscountType::Percent),
            "AMOUNT" => Some(DiscountType::Amount),
            _ => None,
        }
    }
}

/// A validated discount: the type together with a value that fits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Discount {
    kind: DiscountType,
    value: i64,
}

impl Discount {
    pub fn new(kind: DiscountType, value: i64) -> Result<Self, String> {
        match kind {
            DiscountType::Percent if !(1..=100).contains(&value) => {
                Err(format!("PERCENT value must be 1..=100, got {value}"))
            }
            DiscountType::Amount if value <= 0 => {
                Err(format!("AMOUNT value must be > 0, got {value}"))
            }
            _ => Ok(Self { kind, value }),
        }
    }

    pub fn kind(&self) -> DiscountType {
        self.kind
    }

    pub fn value(&self) -> i64 {
        self.value
    }
}

/// A policy: a discount and its weight in the split of the event's coupons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub discount: Discount,
    pub weight: u32,
}

/// The issuance window: `starts_at` inclusive, `ends_at` exclusive, always
/// `starts_at < ends_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventWindow {
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
}

impl EventWindow {
    pub fn new(starts_at: DateTime<Utc>, ends_at: DateTime<Utc>) -> Result<Self, String> {
        if starts_at >= ends_at {
            return Err("starts_at must be before ends_at".into());
        }
        Ok(Self { starts_at, ends_at })
    }

    pub fn starts_at(&self) -> DateTime<Utc> {
        self.starts_at
    }

    pub fn ends_at(&self) -> DateTime<Utc> {
        self.ends_at
    }
}

/// A policy as it arrives from a caller, before validation. `discount_type`
/// is `None` when the caller sent an unspecified or unknown enum value.
#[derive(Debug, Clone)]
pub struct PolicyInput {
    pub discount_type: Option<DiscountType>,
    pub discount_value: i64,
    pub weight: u32,
}

/// A preload request as it arrives from a caller, before validation.
#[derive(Debug, Clone)]
pub struct PreloadInput {
    pub event_id: String,
    pub name: String,
    pub total_count: u32,
    pub policies: Vec<PolicyInput>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub code_prefix: String,
    /// Shards to split the event over; 0 means the default, 1.
    pub shards: u32,
}

/// A validated event ready to be preloaded, with its per-policy counts.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub name: String,
    pub total_count: u32,
    pub policies: Vec<Policy>,
    /// Coupons per policy, same order as `policies`; sums to `total_count`.
    pub counts: Vec<u32>,
    pub window: EventWindow,
    pub prefix: CodePrefix,
    /// Shards the event's codes are split over (1..=`shard::MAX_SHARDS`).
    pub shards: u32,
}

impl NewEvent {
    pub const MAX_TOTAL: u32 = 10_000_000;
    pub const MAX_POLICIES: usize = 16;
    pub const MAX_NAME_CHARS: usize = 200;

    /// Validates every field (the first failure wins, named by its proto
    /// path) and allocates the counts.
    pub fn parse(input: PreloadInput) -> Result<Self, FieldError> {
        let id = EventId::parse(input.event_id).map_err(|r| FieldError::new("event_id", r))?;
        let name = Self::parse_name(&input.name)?;
        if !(1..=Self::MAX_TOTAL).contains(&input.total_count) {
            return Err(FieldError::new(
                "total_count",
                format!("must be 1..={}, got {}", Self::MAX_TOTAL, input.total_count),
            ));
        }
        let policies = Self::parse_policies(&input.policies)?;
        // Kept to the microsecond, PostgreSQL's precision, so that a stored
        // event compares equal to the request it was made from.
        let required = |t: Option<DateTime<Utc>>, field: &str| {
            t.map(|t| t.trunc_subsecs(6))
                .ok_or_else(|| FieldError::new(field, "is required"))
        };
        let window = EventWindow::new(
            required(input.starts_at, "starts_at")?,
            required(input.ends_at, "ends_at")?,
        )
        .map_err(|r| FieldError::new("ends_at", r))?;
        let prefix =
            CodePrefix::parse(input.code_prefix).map_err(|r| FieldError::new("code_prefix", r))?;
        let shards = Self::parse_shards(input.shards, input.total_count)?;
        let weights: Vec<u32> = policies.iter().map(|p| p.weight).collect();
        Ok(Self {
            id,
            name,
            total_count: input.total_count,
            counts: allocate(input.total_count, &weights),
            policies,
            window,
            prefix,
            shards,
        })
    }

    fn parse_shards(shards: u32, total: u32) -> Result<u32, FieldError> {
        let max = crate::domain::shard::MAX_SHARDS;
        let shards = shards.max(1);
        if shards > max {
            return Err(FieldError::new(
                "shards",
                format!("must be 0..={max} (0 means 1), got {shards}"),
            ));
        }
        if shards > total {
            return Err(FieldError::new(
                "shards",
                format!("must not exceed total_count ({total}), got {shards}"),
            ));
        }
        Ok(shards)
    }

    fn parse_name(name: &str) -> Result<String, FieldError> {
        let name = name.trim().to_owned();
        let bad = |why: String| Err(FieldError::new("name", why));
        if name.is_empty() {
            return bad("must not be empty".into());
        }
        if name.chars().count() > Self::MAX_NAME_CHARS {
            return bad(format!(
                "must be at most {} characters",
                Self::MAX_NAME_CHARS
            ));
        }
        if name.chars().any(char::is_control) {
            return bad("must not contain control characters".into());
        }
        Ok(name)
    }

    fn parse_policies(input: &[PolicyInput]) -> Result<Vec<Policy>, FieldError> {
        if input.is_empty() || input.len() > Self::MAX_POLICIES {
            return Err(FieldError::new(
                "policies",
                format!(
                    "must hold 1..={} policies, got {}",
                    Self::MAX_POLICIES,
                    input.len()
                ),
            ));
        }
        input
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let field = |f: &str| format!("policies[{i}].{f}");
                let kind = p.discount_type.ok_or_else(|| {
                    FieldError::new(
                        field("discount_type"),
                        "must be DISCOUNT_TYPE_PERCENT or DISCOUNT_TYPE_AMOUNT",
                    )
                })?;
                let discount = Discount::new(kind, p.discount_value)
                    .map_err(|r| FieldError::new(field("discount_value"), r))?;
                if p.weight == 0 {
                    return Err(FieldError::new(field("weight"), "must be > 0"));
                }
                Ok(Policy {
                    discount,
                    weight: p.weight,
                })
            })
            .collect()
    }

    /// The first difference between a preload request and the stored event of
    /// the same id, named by its proto field path; `None` when they are the
    /// same request.
    pub fn difference(&self, stored: &StoredEvent) -> Option<String> {
        let new = self;
        let differs = |field: &str, theirs: String, ours: String| {
            Some(format!(
                "{field} is {theirs} in the existing event, {ours} in this request"
            ))
        };
        if new.name != stored.name {
            return differs(
                "name",
                format!("{:?}", stored.name),
                format!("{:?}", new.name),
            );
        }
        if new.total_count != stored.total_count {
            return differs(
                "total_count",
                stored.total_count.to_string(),
                new.total_count.to_string(),
            );
        }
        if new.window.starts_at() != stored.window.starts_at() {
            return differs(
                "starts_at",
                stored.window.starts_at().to_rfc3339(),
                new.window.starts_at().to_rfc3339(),
            );
        }
        if new.window.ends_at() != stored.window.ends_at() {
            return differs(
                "ends_at",
                stored.window.ends_at().to_rfc3339(),
                new.window.ends_at().to_rfc3339(),
            );
        }
        if new.prefix != stored.prefix {
            return differs(
                "code_prefix",
                format!("{:?}", stored.prefix.as_str()),
                format!("{:?}", new.prefix.as_str()),
            );
        }
        if new.shards != stored.shards {
            return differs("shards", stored.shards.to_string(), new.shards.to_string());
        }
        if new.policies.len() != stored.policies.len() {
            return differs(
                "policies",
                format!("{} policies", stored.policies.len()),
                format!("{} policies", new.policies.len()),
            );
        }
        for (i, (ours, (theirs, _))) in new.policies.iter().zip(&stored.policies).enumerate() {
            if ours != theirs {
                return differs(
                    &format!("policies[{i}]"),
                    format!("{theirs:?}"),
                    format!("{ours:?}"),
                );
            }
        }
        None
    }
}

/// An event as stored, with its allocated counts and its preload job.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: EventId,
    pub name: String,
    pub total_count: u32,
    pub policies: Vec<(Policy, u32)>,
    pub window: EventWindow,
    pub prefix: CodePrefix,
    pub preload: PreloadStatus,
    /// Paused by an operator (PauseEvent).
    pub paused: bool,
    /// How many controls were applied to it (see `ControlState`).
    pub control_seq: u64,
    /// When it was settled (ended with nothing pending; its Redis keys
    /// expire after the retention).
    pub settled_at: Option<DateTime<Utc>>,
    /// Shards its codes are split over (1: one set of keys, as ever).
    pub shards: u32,
    /// When its coupons were archived (`coupond archive`): the issued ones
    /// moved to the archive table, the rest dropped; nothing reopens it.
    pub archived_at: Option<DateTime<Utc>>,
}

impl StoredEvent {
    /// The event's controls as PostgreSQL records them: what Redis must
    /// reflect.
    pub fn controls(&self) -> crate::domain::ControlState {
        crate::domain::ControlState {
            seq: self.control_seq,
            ends_at: self.window.ends_at(),
            paused: self.paused,
            settled: self.settled_at.is_some(),
        }
    }

    /// The validated request this event was preloaded from.
    pub fn as_new_event(&self) -> NewEvent {
        NewEvent {
            id: self.id.clone(),
            name: self.name.clone(),
            total_count: self.total_count,
            policies: self.policies.iter().map(|(p, _)| p.clone()).collect(),
            counts: self.policies.iter().map(|(_, n)| *n).collect(),
            window: self.window,
            prefix: self.prefix.clone(),
            shards: self.shards,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn input() -> PreloadInput {
        let now = Utc::now();
        PreloadInput {
            event_id: "e1".into(),
            name: "Flash".into(),
            total_count: 1000,
            policies: vec![
                PolicyInput {
                    discount_type: Some(DiscountType::Percent),
                    discount_value: 10,
                    weight: 1,
                },
                PolicyInput {
                    discount_type: Some(DiscountType::Amount),
                    discount_value: 500,
                    weight: 1,
                },
                PolicyInput {
                    discount_type: Some(DiscountType::Percent),
                    discount_value: 100,
                    weight: 1,
                },
            ],
            starts_at: Some(now),
            ends_at: Some(now + Duration::hours(1)),
            code_prefix: "".into(),
            shards: 0,
        }
    }

    fn field_of(f: impl FnOnce(&mut PreloadInput)) -> String {
        let mut i = input();
        f(&mut i);
        NewEvent::parse(i).expect_err("must be rejected").field
    }

    #[test]
    fn a_valid_request_allocates_exactly_the_total() {
        let e = NewEvent::parse(input()).unwrap();
        assert_eq!(e.counts, vec![334, 333, 333]);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(|i| i.event_id = "".into()), "event_id");
        assert_eq!(field_of(|i| i.event_id = "a b".into()), "event_id");
        assert_eq!(field_of(|i| i.name = " ".into()), "name");
        assert_eq!(field_of(|i| i.name = "a\u{1}".into()), "name");
        assert_eq!(field_of(|i| i.total_count = 0), "total_count");
        assert_eq!(field_of(|i| i.total_count = 10_000_001), "total_count");
        assert_eq!(field_of(|i| i.policies.clear()), "policies");
        assert_eq!(
            field_of(|i| i.policies = vec![i.policies[0].clone(); 17]),
            "policies"
        );
        assert_eq!(
            field_of(|i| i.policies[1].discount_type = None),
            "policies[1].discount_type"
        );
        assert_eq!(
            field_of(|i| i.policies[0].discount_value = 101),
            "policies[0].discount_value"
        );
        assert_eq!(
            field_of(|i| i.policies[0].discount_value = 0),
            "policies[0].discount_value"
        );
        assert_eq!(
            field_of(|i| i.policies[1].discount_value = -5),
            "policies[1].discount_value"
        );
        assert_eq!(field_of(|i| i.policies[2].weight = 0), "policies[2].weight");
        assert_eq!(field_of(|i| i.starts_at = None), "starts_at");
        assert_eq!(field_of(|i| i.ends_at = None), "ends_at");
        assert_eq!(field_of(|i| i.ends_at = i.starts_at), "ends_at");
        assert_eq!(field_of(|i| i.code_prefix = "abc".into()), "code_prefix");
        assert_eq!(field_of(|i| i.shards = 17), "shards");
        assert_eq!(
            field_of(|i| {
                i.total_count = 2;
                i.shards = 3
            }),
            "shards"
        );
    }

    fn stored(e: &NewEvent) -> StoredEvent {
        use crate::domain::{EventState, PreloadId, PreloadStatus};
        StoredEvent {
            id: e.id.clone(),
            name: e.name.clone(),
            total_count: e.total_count,
            policies: e.policies.iter().cloned().zip(e.counts.clone()).collect(),
            window: e.window,
            prefix: e.prefix.clone(),
            preload: PreloadStatus {
                state: EventState::Live,
                preload_id: PreloadId::from_stored("p".into()),
                written: e.total_count,
                failure: None,
                timings: None,
            },
            paused: false,
            control_seq: 0,
            settled_at: None,
            archived_at: None,
            shards: e.shards,
        }
    }

    #[test]
    fn the_same_request_has_no_difference_and_each_field_is_named() {
        let e = NewEvent::parse(input()).unwrap();
        let s = stored(&e);
        assert_eq!(e.difference(&s), None);
        assert_eq!(s.as_new_event().difference(&s), None, "round trip");
        let named = |f: fn(&mut PreloadInput)| {
            let mut i = input();
            i.starts_at = Some(e.window.starts_at());
            i.ends_at = Some(e.window.ends_at());
            f(&mut i);
            NewEvent::parse(i).unwrap().difference(&s).expect("differs")
        };
        assert!(named(|i| i.name = "Other".into()).starts_with("name"));
        assert!(named(|i| i.total_count = 999).starts_with("total_count"));
        assert!(named(|i| i.code_prefix = "X-".into()).starts_with("code_prefix"));
        assert!(named(|i| i.shards = 2).starts_with("shards"));
        assert!(named(|i| i.policies[2].discount_value = 99).starts_with("policies[2]"));
        assert!(named(|i| i.policies[0].weight = 2).starts_with("policies[0]"));
        assert!(named(|i| {
            i.policies.pop();
        })
        .starts_with("policies"));
        assert!(
            named(|i| i.ends_at = i.ends_at.map(|t| t + Duration::seconds(1)))
                .starts_with("ends_at")
        );
    }

    #[test]
    fn times_keep_microseconds_like_the_database() {
        let mut i = input();
        let t = Utc::now();
        i.starts_at = Some(t);
        let e = NewEvent::parse(i).unwrap();
        assert_eq!(e.window.starts_at().timestamp_subsec_nanos() % 1000, 0);
        assert!(t - e.window.starts_at() < Duration::microseconds(1));
    }

    #[test]
    fn the_boundaries_are_accepted() {
        let mut i = input();
        i.total_count = 10_000_000;
        i.policies[0].discount_value = 1;
        i.policies[2].discount_value = 100;
        i.code_prefix = "A".repeat(16);
        assert!(NewEvent::parse(i).is_ok());
    }
}
