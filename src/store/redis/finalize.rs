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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    /// Marks issuances of one event of `shards` shards finalized (record
    /// state F, out of the pending set), each at its user's home shard.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn finalize(
        &self,
        event: &EventId,
        shards: u32,
        items: &[(&UserId, &str)],
    ) -> Result<Finalized, RedisStoreError> {
        let mut out = Finalized {
            done: 0,
            unknown: Vec::new(),
        };
        for (k, at) in home_groups(event, shards, items.iter().map(|(u, _)| *u)) {
            let part: Vec<(&UserId, &str)> = at.iter().map(|&i| items[i]).collect();
            let found = self.finalize_in(&k, &part).await?;
            out.done += found.done;
            out.unknown.extend(found.unknown.into_iter().map(|j| at[j]));
        }
        out.unknown.sort_unstable();
        Ok(out)
    }

    async fn finalize_in(
        &self,
        k: &EventKeys,
        items: &[(&UserId, &str)],
    ) -> Result<Finalized, RedisStoreError> {
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
        shards: u32,
        items: &[&IssuanceRecord],
    ) -> Result<Restored, RedisStoreError> {
        let mut sum = Restored::default();
        for (k, at) in home_groups(event, shards, items.iter().map(|r| &r.user_id)) {
            let part: Vec<&IssuanceRecord> = at.iter().map(|&i| items[i]).collect();
            let r = self.restore_in(&k, &part, true).await?;
            sum.users += r.users;
            sum.dequeued += r.dequeued;
            sum.not_queued += r.not_queued;
        }
        if shards > 1 && sum.not_queued > 0 {
            // A transfer may have carried a lost code to another shard, or
            // hold it in a record: finish the records, then search every
            // shard (a code is in one place, so none is taken out twice).
            self.finish_all_transfers(event, shards).await?;
            for s in 0..shards {
                let k = EventKeys::shard(event, s, shards);
                let found = self.restore_in(&k, items, false).await?.dequeued;
                sum.dequeued += found;
                sum.not_queued = sum.not_queued.saturating_sub(found);
            }
        }
        Ok(sum)
    }

    /// `with_records` false: the codes only (see `restore.lua`).
    async fn restore_in(
        &self,
        k: &EventKeys,
        items: &[&IssuanceRecord],
        with_records: bool,
    ) -> Result<Restored, RedisStoreError> {
        let mut inv = self.scripts.restore.prepare_invoke();
        inv.key(&k.issued).key(&k.queue).key(&k.meta);
        for r in items {
            let finalized = match with_records {
                true => record::issued_record(&r.coupon, &r.request_id, IssuanceState::Finalized),
                false => String::new(),
            };
            inv.arg(r.user_id.as_str())
                .arg(finalized)
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
        shards: u32,
        items: &[&IssuanceRecord],
        ttl: Duration,
    ) -> Result<u64, RedisStoreError> {
        let mut sum = 0;
        for (k, at) in home_groups(event, shards, items.iter().map(|r| &r.user_id)) {
            let part: Vec<&IssuanceRecord> = at.iter().map(|&i| items[i]).collect();
            sum += self.mark_conflicted_in(&k, &part, ttl).await?;
        }
        Ok(sum)
    }

    async fn mark_conflicted_in(
        &self,
        k: &EventKeys,
        items: &[&IssuanceRecord],
        ttl: Duration,
    ) -> Result<u64, RedisStoreError> {
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
        shards: u32,
        items: &[(&IssuanceRecord, &IssuedCoupon, &str, bool)],
        ttl: Duration,
    ) -> Result<u64, RedisStoreError> {
        let mut sum = 0;
        for (k, at) in home_groups(event, shards, items.iter().map(|i| &i.0.user_id)) {
            let part: Vec<_> = at.iter().map(|&i| items[i]).collect();
            sum += self.supersede_in(&k, &part, ttl).await?;
        }
        Ok(sum)
    }

    async fn supersede_in(
        &self,
        k: &EventKeys,
        items: &[(&IssuanceRecord, &IssuedCoupon, &str, bool)],
        ttl: Duration,
    ) -> Result<u64, RedisStoreError> {
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
