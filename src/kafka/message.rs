//! `coupon.v1.CouponIssued`: the protobuf payload of `coupon-issued`.

use prost::Message;

use crate::domain::code::check_code;
use crate::domain::{Discount, EventId, IssuanceRecord, IssuedCoupon, RequestId, UserId};
use crate::proto;
use crate::proto::wire::{
    discount_type_from_proto, discount_type_to_proto, timestamp, to_datetime,
};

/// The message key: per user, so one hot event spreads over every partition
/// while each user's messages stay ordered.
pub fn key(record: &IssuanceRecord) -> String {
    let (e, u) = (record.event_id.as_str(), record.user_id.as_str());
    let mut k = String::with_capacity(e.len() + 1 + u.len());
    k.push_str(e);
    k.push('/');
    k.push_str(u);
    k
}

/// The same bytes as `proto::CouponIssued { .. }.encode_to_vec()`, written
/// from the record's borrowed fields: building the message would copy every
/// string of every coupon once more (a test holds the two equal).
pub fn encode(record: &IssuanceRecord) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, int32, int64, message, WireType};
    let put_str = |tag: u32, s: &str, buf: &mut Vec<u8>| {
        if !s.is_empty() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(s.len() as u64, buf);
            buf.extend_from_slice(s.as_bytes());
        }
    };
    let c = &record.coupon;
    let kind = discount_type_to_proto(c.discount.kind()) as i32;
    let value = c.discount.value();
    let mut buf = Vec::with_capacity(
        64 + record.event_id.as_str().len()
            + record.user_id.as_str().len()
            + c.code.len()
            + record.request_id.len(),
    );
    put_str(1, record.event_id.as_str(), &mut buf);
    put_str(2, record.user_id.as_str(), &mut buf);
    put_str(3, &c.code, &mut buf);
    if kind != 0 {
        int32::encode(4, &kind, &mut buf);
    }
    if value != 0 {
        int64::encode(5, &value, &mut buf);
    }
    message::encode(6, &timestamp(c.issued_at), &mut buf);
    put_str(7, &record.request_id, &mut buf);
    buf
}

/// Why a payload is not a usable CouponIssued (it goes to the DLQ).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a CouponIssued protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("field {0}: {1}")]
    Field(&'static str, String),
}

/// Decodes a payload and checks every field by the API's rules (ids,
/// request id, code, discount), so what reaches a store is what coupond
/// itself would have written.
pub fn decode(payload: &[u8]) -> Result<IssuanceRecord, DecodeError> {
    let m = proto::CouponIssued::decode(payload)?;
    let kind = discount_type_from_proto(m.discount_type)
        .ok_or_else(|| DecodeError::Field("discount_type", m.discount_type.to_string()))?;
    check_code(&m.code).map_err(|e| DecodeError::Field("code", e))?;
    let request_id =
        RequestId::parse(m.request_id).map_err(|e| DecodeError::Field("request_id", e))?;
    let issued_at = m
        .issued_at
        .ok_or_else(|| DecodeError::Field("issued_at", "missing".into()))
        .and_then(|t| {
            to_datetime(&t).ok_or_else(|| DecodeError::Field("issued_at", "out of range".into()))
        })?;
    Ok(IssuanceRecord {
        event_id: EventId::parse(m.event_id).map_err(|e| DecodeError::Field("event_id", e))?,
        user_id: UserId::parse(m.user_id).map_err(|e| DecodeError::Field("user_id", e))?,
        coupon: IssuedCoupon {
            code: m.code,
            discount: Discount::new(kind, m.discount_value)
                .map_err(|e| DecodeError::Field("discount_value", e))?,
            issued_at,
        },
        request_id: request_id.as_str().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DiscountType;
    use chrono::{TimeZone, Utc};

    #[test]
    fn a_record_round_trips() {
        let r = IssuanceRecord {
            event_id: EventId::parse("e").unwrap(),
            user_id: UserId::parse("u/1").unwrap(),
            coupon: IssuedCoupon {
                code: "ABCDEFGH2345".into(),
                discount: Discount::new(DiscountType::Amount, 700).unwrap(),
                issued_at: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            },
            request_id: "r".into(),
        };
        assert_eq!(decode(&encode(&r)).unwrap(), r);
        assert_eq!(key(&r), "e/u/1");
    }

    #[test]
    fn every_field_is_checked_by_the_api_rules() {
        let good = IssuanceRecord {
            event_id: EventId::parse("e").unwrap(),
            user_id: UserId::parse("u").unwrap(),
            coupon: IssuedCoupon {
                code: "ABCDEFGH2345".into(),
                discount: Discount::new(DiscountType::Amount, 700).unwrap(),
                issued_at: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            },
            request_id: "r".into(),
        };
        let field = |f: fn(&mut proto::CouponIssued)| {
            let mut m = proto::CouponIssued::decode(&encode(&good)[..]).unwrap();
            f(&mut m);
            match decode(&m.encode_to_vec()) {
                Err(DecodeError::Field(name, _)) => name,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(field(|m| m.code = "AB\0CDEFGH".into()), "code");
        assert_eq!(field(|m| m.code = "abcdefgh".into()), "code");
        assert_eq!(field(|m| m.code = "ABC".into()), "code");
        assert_eq!(field(|m| m.request_id = "r\0".into()), "request_id");
        assert_eq!(field(|m| m.user_id = "u\0".into()), "user_id");
        assert_eq!(field(|m| m.event_id = "e/1".into()), "event_id");
        assert_eq!(field(|m| m.discount_value = 0), "discount_value");
        assert_eq!(field(|m| m.issued_at = None), "issued_at");
    }

    #[test]
    fn encode_writes_what_prost_writes() {
        let at = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        let records = [
            (
                "e",
                "u/1",
                "ABCDEFGH2345",
                DiscountType::Amount,
                700,
                at,
                "r",
            ),
            ("E-1", "ü", "ABCDEFGH2345", DiscountType::Percent, 1, at, ""),
            (
                "e",
                "u",
                "ABCDEFGH2345",
                DiscountType::Amount,
                1,
                Utc.timestamp_opt(0, 0).unwrap(),
                "x".repeat(128).leak(),
            ),
        ];
        for (e, u, code, kind, value, issued_at, req) in records {
            let r = IssuanceRecord {
                event_id: EventId::parse(e).unwrap(),
                user_id: UserId::parse(u).unwrap(),
                coupon: IssuedCoupon {
                    code: code.into(),
                    discount: Discount::new(kind, value).unwrap(),
                    issued_at,
                },
                request_id: req.into(),
            };
            let by_prost = proto::CouponIssued {
                event_id: e.into(),
                user_id: u.into(),
                code: code.into(),
                discount_type: discount_type_to_proto(kind) as i32,
                discount_value: value,
                issued_at: Some(timestamp(issued_at)),
                request_id: req.into(),
            }
            .encode_to_vec();
            assert_eq!(encode(&r), by_prost, "{r:?}");
        }
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode(b"\xff\xff\xff").is_err());
        assert!(decode(b"").is_err(), "an empty payload has no event id");
    }
}
