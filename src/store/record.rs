//! The text forms the Lua scripts keep in Redis.
//!
//! Queue entry: `code \t TYPE \t value`.
//! Issued record: `code \t TYPE \t value \t issued_ms \t request_id \t P|F|C`
//! (pending, finalized, conflicted).
//! Tabs cannot occur inside ids (control characters are rejected at the edge).

use chrono::{DateTime, TimeZone, Utc};

use crate::domain::{Discount, DiscountType, HeldCoupon, IssuanceState, IssuedCoupon};

pub fn queue_entry(code: &str, discount: &Discount) -> String {
    format!("{code}\t{}\t{}", discount.kind().as_str(), discount.value())
}

/// The issued-hash record the issue script would have written.
pub fn issued_record(coupon: &IssuedCoupon, request_id: &str, state: IssuanceState) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        queue_entry(&coupon.code, &coupon.discount),
        coupon.issued_at.timestamp_millis(),
        request_id,
        match state {
            IssuanceState::Pending => "P",
            IssuanceState::Finalized => "F",
            IssuanceState::Conflicted => "C",
        }
    )
}

#[derive(Debug, thiserror::Error)]
#[error("malformed issuance record in Redis: {0:?}")]
pub struct MalformedRecord(pub String);

pub fn millis_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

pub fn parse_issued(rec: &str) -> Result<HeldCoupon, MalformedRecord> {
    let bad = || MalformedRecord(rec.to_owned());
    let mut it = rec.splitn(5, '\t');
    let code = it.next().ok_or_else(bad)?;
    let kind = DiscountType::from_str_opt(it.next().ok_or_else(bad)?).ok_or_else(bad)?;
    let value: i64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let issued_ms: i64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let rest = it.next().ok_or_else(bad)?;
    let (request_id, state) = rest.rsplit_once('\t').ok_or_else(bad)?;
    let state = match state {
        "P" => IssuanceState::Pending,
        "F" => IssuanceState::Finalized,
        "C" => IssuanceState::Conflicted,
        _ => return Err(bad()),
    };
    Ok(HeldCoupon {
        coupon: IssuedCoupon {
            code: code.to_owned(),
            discount: Discount::new(kind, value).map_err(|_| bad())?,
            issued_at: millis_to_time(issued_ms).ok_or_else(bad)?,
        },
        request_id: request_id.to_owned(),
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_record_parses() {
        let r = parse_issued("ABC\tAMOUNT\t500\t1700000000123\treq 1\tP").unwrap();
        assert_eq!(r.coupon.code, "ABC");
        assert_eq!(r.coupon.discount.kind(), DiscountType::Amount);
        assert_eq!(r.coupon.discount.value(), 500);
        assert_eq!(r.coupon.issued_at.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(r.request_id, "req 1");
        assert_eq!(r.state, IssuanceState::Pending);
        let f = parse_issued("ABC\tPERCENT\t5\t1\t\tF").unwrap();
        assert_eq!(f.request_id, "");
        assert_eq!(f.state, IssuanceState::Finalized);
    }

    #[test]
    fn formatted_records_parse_back() {
        let r = parse_issued("XYZ\tPERCENT\t15\t1700000000000\treq\tF").unwrap();
        let text = issued_record(&r.coupon, &r.request_id, r.state);
        assert_eq!(text, "XYZ\tPERCENT\t15\t1700000000000\treq\tF");
        assert_eq!(parse_issued(&text).unwrap(), r);
    }

    #[test]
    fn malformed_records_are_errors() {
        for bad in [
            "",
            "ABC",
            "ABC\tFOO\t1\t1\tr\tP",
            "ABC\tAMOUNT\tx\t1\tr\tP",
            "ABC\tAMOUNT\t1\t1\tr\tX",
        ] {
            assert!(parse_issued(bad).is_err(), "{bad:?}");
        }
    }
}
