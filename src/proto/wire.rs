//! Shared proto <-> domain conversions of plain values.

use chrono::{DateTime, TimeZone, Utc};
use prost_types::Timestamp;

use crate::domain::DiscountType;
use crate::proto;

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range a
/// `google.protobuf.Timestamp` may hold.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A proto timestamp as a chrono time; `None` when it is outside the range
/// protobuf allows (years 1 to 9999) or not normalized (nanos outside
/// 0..1e9).
pub fn to_datetime(t: &Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&t.nanos) || !TIMESTAMP_SECONDS.contains(&t.seconds) {
        return None;
    }
    Utc.timestamp_opt(t.seconds, t.nanos as u32).single()
}

pub fn discount_type_to_proto(k: DiscountType) -> proto::DiscountType {
    match k {
        DiscountType::Percent => proto::DiscountType::Percent,
        DiscountType::Amount => proto::DiscountType::Amount,
    }
}

pub fn discount_type_from_proto(v: i32) -> Option<DiscountType> {
    match proto::DiscountType::try_from(v) {
        Ok(proto::DiscountType::Percent) => Some(DiscountType::Percent),
        Ok(proto::DiscountType::Amount) => Some(DiscountType::Amount),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_out_of_range_are_rejected() {
        assert!(to_datetime(&Timestamp {
            seconds: 0,
            nanos: 0
        })
        .is_some());
        assert!(to_datetime(&Timestamp {
            seconds: 0,
            nanos: -1
        })
        .is_none());
        assert!(to_datetime(&Timestamp {
            seconds: 0,
            nanos: 1_000_000_000
        })
        .is_none());
        assert!(to_datetime(&Timestamp {
            seconds: i64::MAX,
            nanos: 0
        })
        .is_none());
        // Years 1 and 9999 are in; a second outside either end is not.
        assert!(to_datetime(&Timestamp {
            seconds: -62_135_596_800,
            nanos: 0
        })
        .is_some());
        assert!(to_datetime(&Timestamp {
            seconds: 253_402_300_799,
            nanos: 999_999_999
        })
        .is_some());
        assert!(to_datetime(&Timestamp {
            seconds: -62_135_596_801,
            nanos: 0
        })
        .is_none());
        assert!(to_datetime(&Timestamp {
            seconds: 253_402_300_800,
            nanos: 0
        })
        .is_none());
    }

    #[test]
    fn unknown_enum_values_become_none() {
        assert_eq!(discount_type_from_proto(0), None);
        assert_eq!(discount_type_from_proto(99), None);
        assert_eq!(discount_type_from_proto(-1), None);
        assert_eq!(discount_type_from_proto(2), Some(DiscountType::Amount));
    }
}
