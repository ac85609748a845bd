//! What the finalizer records in Redis once PostgreSQL has decided.

use super::*;

/// What `finalize` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finalized {
    /// Items whose record holds their code (finalized now or before).
    pub done: u64,
    /// Positions (in the items given) of users Redis has no record of:
    /// Redis lost their issuance, see `restore`.
    pub unknown: Vec<usize>,
}

/// What `restore` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Users who had no record and got PostgreSQL's.
    pub users: u64,
    /// Codes taken out of the queue's head.
    pub dequeued: u64,
    /// Codes not found there: handed on already (a conflict follows), or
    /// never back in the queue.
    pub not_queued: u64,
}

impl RedisStore {
    /// Marks issuances of one event finalized (record state F, out of the
    /// pending set).
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn finalize(
        &self,
        event: &EventId,
        items: &[(&UserId, &str)],
    ) -> Result<Finalized, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.finalize.prepare_invoke();
        inv.key(&k.issued)
            .key(&k.pending)
            .key(&k.progress)
            .key(&k.conflicts);
        for (u, code) in items {
            inv.arg(u.as_str()).arg(*code);
        }
        let mut c = self.conn().await?;
        let (done, unknown): (u64, Vec<usize>) = inv.invoke_async(&mut c).await?;
        Ok(Finalized {
            done,
            unknown: unknown.into_iter().map(|i| i - 1).collect(),
        })
    }
    /// Makes Redis hold what PostgreSQL recorded for `items` (see
    /// `restore.lua`): a user with no record gets PostgreSQL's, finalized,
    /// and each item's code is taken out of the queue's head, where a lost
    /// pop left it.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn restore(
        &self,
        event: &EventId,
        items: &[&IssuanceRecord],
    ) -> Result<Restored, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.restore.prepare_invoke();
        inv.key(&k.issued).key(&k.queue).key(&k.meta);
        for r in items {
            inv.arg(r.user_id.as_str())
                .arg(record::issued_record(
                    &r.coupon,
                    &r.request_id,
                    IssuanceState::Finalized,
                ))
                .arg(record::queue_entry(&r.coupon.code, &r.coupon.discount));
        }
        let mut c = self.conn().await?;
        let (users, dequeued, not_queued) = inv.invoke_async(&mut c).await?;
        Ok(Restored {
            users,
            dequeued,
            not_queued,
        })
    }
    /// Marks issuances of one event that PostgreSQL refused as conflicted
    /// (record state C, out of the pending set, into the conflict set; see
    /// `conflict.lua`; a user Redis no longer knows gets the refused record;
    /// keys of an event Redis does not hold expire after `ttl`).
    /// Returns how many are conflicted now.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn mark_conflicted(
        &self,
        event: &EventId,
        items: &[&IssuanceRecord],
        ttl: Duration,
    ) -> Result<u64, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.conflict.prepare_invoke();
        inv.key(&k.issued)
            .key(&k.pending)
            .key(&k.conflicts)
            .key(&k.meta)
            .key(&k.meta_offline)
            .arg(ttl.as_millis() as u64);
        for r in items {
            inv.arg(r.user_id.as_str())
                .arg(&r.coupon.code)
                .arg(record::issued_record(
                    &r.coupon,
                    &r.request_id,
                    IssuanceState::Conflicted,
                ));
        }
        let mut c = self.conn().await?;
        Ok(inv.invoke_async(&mut c).await?)
    }
    /// Resolves issuances PostgreSQL refused because it holds another
    /// coupon for their user (see `supersede.lua`): each item is the
    /// refused issuance, PostgreSQL's coupon of the user with its request
    /// id, and whether the refused code is free in PostgreSQL (only then may
    /// it be queued again). Returns how many refused codes went back to the
    /// queue.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn supersede(
        &self,
        event: &EventId,
        items: &[(&IssuanceRecord, &IssuedCoupon, &str, bool)],
        ttl: Duration,
    ) -> Result<u64, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut inv = self.scripts.supersede.prepare_invoke();
        inv.key(&k.issued)
            .key(&k.pending)
            .key(&k.conflicts)
            .key(&k.queue)
            .key(&k.superseded)
            .key(&k.meta)
            .key(&k.meta_offline)
            .arg(ttl.as_millis() as u64);
        for (refused, held, held_request, free) in items {
            let entry = match free {
                true => record::queue_entry(&refused.coupon.code, &refused.coupon.discount),
                false => String::new(),
            };
            inv.arg(refused.user_id.as_str())
                .arg(&refused.coupon.code)
                .arg(entry)
                .arg(record::issued_record(
                    held,
                    held_request,
                    IssuanceState::Finalized,
                ));
        }
        let mut c = self.conn().await?;
        Ok(inv.invoke_async(&mut c).await?)
    }
}
