//! Redis key names. Every key of an event carries the event id as its hash
//! tag, so one event lives in one Redis Cluster slot and its scripts may
//! touch all of its keys.

use crate::domain::{EventId, PreloadId};

/// Where an event's preload works: its shard 0 (an event of one shard: its
/// own keys), the shard that is live first and holds every code at first.
#[derive(Debug, Clone)]
pub struct ShardZero {
    pub tag: String,
}

impl ShardZero {
    pub fn of(event: &EventId, shards: u32) -> Self {
        Self {
            tag: crate::domain::shard::tag(event, 0, shards.max(1)),
        }
    }

    pub fn keys(&self) -> EventKeys {
        EventKeys::tagged(&self.tag)
    }
}

impl From<&EventId> for ShardZero {
    fn from(event: &EventId) -> Self {
        Self::of(event, 1)
    }
}

impl std::fmt::Display for ShardZero {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.tag)
    }
}

/// The Redis keys of one event.
#[derive(Debug, Clone)]
pub struct EventKeys {
    /// List of "code\ttype\tvalue" entries still to hand out.
    pub queue: String,
    /// Hash user id -> issuance record (see `store::record`).
    pub issued: String,
    /// Hash starts_at, ends_at (unix ms), total. Its presence makes the event live.
    pub meta: String,
    /// Sorted set of users issued but not yet finalized, scored by issued_at ms.
    pub pending: String,
    /// Rebuild's staged queue (a preload job stages under `preload_staging`).
    pub staging: String,
    /// The preload id of the job allowed to stage and make the event live
    /// (the Redis half of the job's fence; PostgreSQL's row is the other).
    pub preload_owner: String,
    /// Rebuild's staged issued hash.
    pub issued_staging: String,
    /// Rebuild's staged pending set.
    pub pending_staging: String,
    /// Where a forced rebuild parks the meta hash while the event is offline.
    pub meta_offline: String,
    /// The lock a running rebuild holds (see `rebuild_lock.lua`).
    pub rebuild_lock: String,
    /// When the finalizer last recorded an issuance of the event (unix ms,
    /// expiring): the sweeper holds back while the finalizer is progressing.
    pub progress: String,
    /// Written by every issue call when the failover guard is on, so that
    /// the WAIT after it covers everything the event's master replicated
    /// so far (expires by itself).
    pub guard: String,
    /// Set of users whose issuance PostgreSQL refused (record state C).
    pub conflicts: String,
    /// Hash user -> "refused code \t held code": users whose second
    /// issuance PostgreSQL refused because it holds another coupon of theirs
    /// (see `supersede.lua`); reconcile reports them.
    pub superseded: String,
    /// Hash transfer id -> record: codes on their way from this shard to
    /// another (see `transfer_out.lua`).
    pub transfers: String,
    /// Set of the ids of the transfers from this shard that are done (their
    /// records dropped; see `transfer_out.lua`).
    pub sent: String,
    /// Set of the transfer ids whose codes this shard received (see
    /// `transfer_in.lua`).
    pub received: String,
}

impl EventKeys {
    /// A preload job's own staging list, renamed to `queue` when the job
    /// makes the event live; no other job can ever write or rename it.
    pub fn preload_staging(event: impl Into<ShardZero>, preload: &PreloadId) -> String {
        let tag = event.into().tag;
        format!("couponStaging:{{{tag}}}:{preload}")
    }

    /// The keys that hold the event's live data (everything but the meta
    /// hash, staging and the preload fence): what retention expires and a
    /// reopening keeps.
    pub fn data(&self) -> [&str; 9] {
        [
            &self.queue,
            &self.issued,
            &self.pending,
            &self.conflicts,
            &self.progress,
            &self.superseded,
            &self.transfers,
            &self.sent,
            &self.received,
        ]
    }

    pub fn new(event: &EventId) -> Self {
        Self::tagged(event.as_str())
    }

    /// The keys of shard `shard` of an event of `shards` shards (an event
    /// of one shard: its keys as ever).
    pub fn shard(event: &EventId, shard: u32, shards: u32) -> Self {
        Self::tagged(&crate::domain::shard::tag(event, shard, shards))
    }

    /// The keys whose hash tag is `tag`: an event id, or a shard's tag.
    pub fn tagged(tag: &str) -> Self {
        Self {
            queue: format!("couponQueue:{{{tag}}}"),
            issued: format!("couponIssued:{{{tag}}}"),
            meta: format!("couponMeta:{{{tag}}}"),
            pending: format!("couponPending:{{{tag}}}"),
            staging: format!("couponRebuildStaging:{{{tag}}}"),
            preload_owner: format!("couponPreload:{{{tag}}}"),
            issued_staging: format!("couponIssuedStaging:{{{tag}}}"),
            pending_staging: format!("couponPendingStaging:{{{tag}}}"),
            meta_offline: format!("couponMetaOffline:{{{tag}}}"),
            rebuild_lock: format!("couponRebuild:{{{tag}}}"),
            progress: format!("couponProgress:{{{tag}}}"),
            guard: format!("couponGuard:{{{tag}}}"),
            conflicts: format!("couponConflicts:{{{tag}}}"),
            superseded: format!("couponSuperseded:{{{tag}}}"),
            transfers: format!("couponTransfers:{{{tag}}}"),
            sent: format!("couponSent:{{{tag}}}"),
            received: format!("couponReceived:{{{tag}}}"),
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
            &k.rebuild_lock,
            &k.progress,
            &k.preload_owner,
            &k.conflicts,
            &k.superseded,
            &k.transfers,
            &k.sent,
            &k.received,
        ] {
            assert!(key.ends_with(":{e-1}"), "{key}");
        }
        let staging = EventKeys::preload_staging(
            &EventId::parse("e-1").unwrap(),
            &PreloadId::from_stored("p9".into()),
        );
        assert_eq!(staging, "couponStaging:{e-1}:p9");
    }
}
