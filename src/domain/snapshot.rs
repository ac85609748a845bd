//! What each store holds of one event, as plain values: reconcile compares
//! them, a rebuild adds them up. The store layer reads them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::event::Discount;
use crate::domain::issue::{IssuanceState, IssuedCoupon};

/// A user's coupon as the live state (Redis) records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCoupon {
    pub coupon: IssuedCoupon,
    /// The request that issued it.
    pub request_id: String,
    pub state: IssuanceState,
}

/// One coupon as the record (PostgreSQL) keeps it.
#[derive(Debug, Clone)]
pub struct RecordedCoupon {
    pub code: String,
    pub discount: Discount,
    /// (user, issued_at, request_id) when ISSUED.
    pub issued: Option<(String, DateTime<Utc>, String)>,
}

#[cfg(test)]
impl RecordedCoupon {
    /// A 5 % coupon row, issued to `user` when given.
    pub fn sample(code: &str, user: Option<&str>) -> Self {
        RecordedCoupon {
            code: code.into(),
            discount: Discount::new(crate::domain::DiscountType::Percent, 5).unwrap(),
            issued: user.map(|u| (u.into(), Utc::now(), String::new())),
        }
    }
}

/// Everything the live state (Redis) holds of one event.
#[derive(Debug, Default)]
pub struct LiveState {
    /// The event is live there (its meta hash exists).
    pub live: bool,
    /// Codes in the queue, in queue order.
    pub queue: Vec<String>,
    /// User -> the coupon they hold.
    pub issued: HashMap<String, HeldCoupon>,
    /// User -> pending score (issued_at ms or last republish).
    pub pending: HashMap<String, i64>,
    /// User -> (the code they were issued and PostgreSQL refused, the code
    /// PostgreSQL holds for them): see `supersede.lua`.
    pub superseded: HashMap<String, (String, String)>,
}
