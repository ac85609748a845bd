//! Redis key names. Every key of an event carries the event id as its hash
//! tag, so one event lives in one Redis Cluster slot and its scripts may
//! touch all of its keys.

use crate::domain::EventId;

/// The Redis keys of one event.
pub struct EventKeys {
    /// List of "code\ttype\tvalue" entries still to hand out.
    pub queue: String,
    /// Hash user id -> issuance record (see `store::record`).
    pub issued: String,
    /// Hash starts_at, ends_at (unix ms), total. Its presence makes the event live.
    pub meta: String,
    /// Sorted set of users issued but not yet finalized, scored by issued_at ms.
    pub pending: String,
    /// Preload's staging list, renamed to `queue` when the event goes live.
    pub staging: String,
    /// Rebuild's staged issued hash.
    pub issued_staging: String,
    /// Rebuild's staged pending set.
    pub pending_staging: String,
    /// Where a forced rebuild parks the meta hash while the event is offline.
    pub meta_offline: String,
    /// When the finalizer last recorded an issuance of the event (unix ms,
    /// expiring): the sweeper holds back while the finalizer is progressing.
    pub progress: String,
}

impl EventKeys {
    pub fn new(event: &EventId) -> Self {
        Self {
            queue: format!("couponQueue:{{{event}}}"),
            issued: format!("couponIssued:{{{event}}}"),
            meta: format!("couponMeta:{{{event}}}"),
            pending: format!("couponPending:{{{event}}}"),
            staging: format!("couponStaging:{{{event}}}"),
            issued_staging: format!("couponIssuedStaging:{{{event}}}"),
            pending_staging: format!("couponPendingStaging:{{{event}}}"),
            meta_offline: format!("couponMetaOffline:{{{event}}}"),
            progress: format!("couponProgress:{{{event}}}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_the_event_hash_tag() {
        let k = EventKeys::new(&EventId::parse("e-1").unwrap());
        for key in [
            &k.queue,
            &k.issued,
            &k.meta,
            &k.pending,
            &k.staging,
            &k.issued_staging,
            &k.pending_staging,
            &k.meta_offline,
            &k.progress,
        ] {
            assert!(key.ends_with(":{e-1}"), "{key}");
        }
    }
}
