//! Property tests over validation and allocation: random input never
//! panics, and every accepted preload allocates exactly its total.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use crate::domain::event::{PolicyInput, PreloadInput};
use crate::domain::{allocate, DiscountType, EventId, IssueCommand, NewEvent};

fn discount_type() -> impl Strategy<Value = Option<DiscountType>> {
    prop_oneof![
        Just(None),
        Just(Some(DiscountType::Percent)),
        Just(Some(DiscountType::Amount)),
    ]
}

fn policy() -> impl Strategy<Value = PolicyInput> {
    (
        discount_type(),
        prop_oneof![any::<i64>(), -5i64..200],
        prop_oneof![any::<u32>(), 0u32..10],
    )
        .prop_map(|(discount_type, discount_value, weight)| PolicyInput {
            discount_type,
            discount_value,
            weight,
        })
}

fn time() -> impl Strategy<Value = Option<chrono::DateTime<Utc>>> {
    proptest::option::of((0i64..4_000_000_000).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap()))
}

fn preload() -> impl Strategy<Value = PreloadInput> {
    (
        prop_oneof![".{0,70}", "[A-Za-z0-9_-]{1,64}"],
        ".{0,210}",
        prop_oneof![any::<u32>(), 0u32..20_000_000],
        proptest::collection::vec(policy(), 0..20),
        time(),
        time(),
        prop_oneof![".{0,20}", "[A-Z0-9-]{0,16}"],
    )
        .prop_map(
            |(event_id, name, total_count, policies, starts_at, ends_at, code_prefix)| {
                PreloadInput {
                    event_id,
                    name,
                    total_count,
                    policies,
                    starts_at,
                    ends_at,
                    code_prefix,
                    shards: 0,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn allocation_always_sums_to_the_total(
        total in 1u32..=10_000_000,
        weights in proptest::collection::vec(1u32..=u32::MAX, 1..=16),
    ) {
        let counts = allocate(total, &weights);
        prop_assert_eq!(counts.len(), weights.len());
        prop_assert_eq!(counts.iter().map(|&c| u64::from(c)).sum::<u64>(), u64::from(total));
        let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        for (c, w) in counts.iter().zip(&weights) {
            let floor = u128::from(total) * u128::from(*w) / sum;
            prop_assert!(u128::from(*c) == floor || u128::from(*c) == floor + 1);
        }
    }

    #[test]
    fn every_accepted_preload_allocates_exactly_its_total(input in preload()) {
        if let Ok(e) = NewEvent::parse(input.clone()) {
            prop_assert_eq!(e.counts.len(), e.policies.len());
            prop_assert_eq!(e.counts.iter().map(|&c| u64::from(c)).sum::<u64>(), u64::from(input.total_count));
            prop_assert!(e.window.starts_at() < e.window.ends_at());
            prop_assert!(EventId::parse(e.id.as_str()).is_ok());
        }
    }

    #[test]
    fn issue_parsing_never_panics_and_accepts_only_clean_ids(
        e in ".{0,80}", u in ".{0,140}", r in ".{0,140}",
    ) {
        if let Ok(c) = IssueCommand::parse(&e, &u, &r) {
            prop_assert!(c.event_id.as_str().len() <= 64);
            prop_assert!(!c.user_id.as_str().chars().any(char::is_control));
            prop_assert!(c.user_id.as_str().chars().count() <= 128);
        }
    }
}
