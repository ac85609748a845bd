//! Moving codes between two shards of one event. No script can touch two
//! shards (they are two slots, usually two masters), so a transfer is three
//! steps, each atomic on one shard and idempotent by the transfer id:
//!
//! 1. out (donor): codes leave the donor's queue into a transfer record;
//! 2. in (target): they join the target's queue, and the target remembers
//!    the id;
//! 3. done (donor): the spent record is dropped and its id joins the
//!    donor's sent set, atomically (a re-sent step 1 of the same id finds
//!    it done and moves nothing more).
//!
//! At every moment a code is in one queue, or in one open record (one whose
//! id the target has not received): between steps 2 and 3 the record is
//! spent and holds nothing. A transfer cut short at any step is finished
//! by whoever finds its record (`finish_transfers`): step 2 again (adds
//! nothing twice), then step 3. With the failover guard on, steps 1 and 2
//! return only once a replica holds their writes, so a failover cannot
//! undo a step the next one builds on.
//!
//! Nothing leaves a shard without meta (offline for a rebuild, or lost),
//! and step 2 lands only at a target of the donor's generation (changed by
//! every rebuild, which drops every record): a step that comes late, after
//! a rebuild put the record's codes back in the rebuilt queues, adds
//! nothing.

use super::*;

/// A transfer record found on a donor shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTransfer {
    pub id: String,
    /// The target shard's hash tag.
    pub target: String,
    pub entries: Vec<String>,
}

impl OpenTransfer {
    fn parse(id: String, record: &str) -> Result<Self, RedisStoreError> {
        let mut lines = record.split('\n').filter(|l| !l.is_empty());
        let target = lines
            .next()
            .ok_or_else(|| RedisStoreError::Reply(format!("transfer record {id}: no target")))?;
        Ok(Self {
            target: target.to_owned(),
            entries: lines.map(str::to_owned).collect(),
            id,
        })
    }
}

/// What step 1 found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOut {
    /// The transfer's codes, in its record (made now, or found), and the
    /// donor's generation (step 2's `gen`).
    Moving(Vec<String>, String),
    /// The transfer was finished (by whoever found its record).
    Done,
    /// The donor's queue is empty: nothing moved.
    Dry,
    /// The donor has no meta (offline for a rebuild, or lost): nothing moved.
    Offline,
}

/// A new transfer id: 128 random bits, hex.
pub fn transfer_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl RedisStore {
    /// Step 1: up to `n` (at least 1) codes leave `donor`'s queue into the
    /// record `id` for the shard tagged `target`; a record of `id` already
    /// there is found instead (a re-sent call, or a finisher confirming it).
    #[instrument(skip_all, fields(transfer_id = id, n), err)]
    pub async fn transfer_out(
        &self,
        donor: &EventKeys,
        id: &str,
        n: usize,
        target: &str,
    ) -> Result<TransferOut, RedisStoreError> {
        let keys = [&donor.queue, &donor.transfers, &donor.sent, &donor.meta];
        let mut eval = self.guarded_eval(&self.scripts.transfer_out, &keys, donor);
        eval.arg(id).arg(n.max(1)).arg(target);
        let mut c = self.conn().await?;
        let (state, entries, gen): (String, Vec<String>, String) = self
            .run_guarded(&mut c, &self.scripts.transfer_out, &eval, &donor.queue)
            .await?;
        match state.as_str() {
            "MOVING" => Ok(TransferOut::Moving(entries, gen)),
            "DONE" => Ok(TransferOut::Done),
            "DRY" => Ok(TransferOut::Dry),
            "OFFLINE" => Ok(TransferOut::Offline),
            other => Err(RedisStoreError::Reply(format!("transfer_out: {other}"))),
        }
    }

    /// Step 2: the entries of transfer `id` join `target`'s queue once,
    /// if `target` is live in the donor's generation `gen`. Returns how
    /// many joined now (0: received before), or `None` when the target is
    /// offline, lost or rebuilt since step 1 (the record stays).
    #[instrument(skip_all, fields(transfer_id = id, n = entries.len()), err)]
    pub async fn transfer_in(
        &self,
        target: &EventKeys,
        id: &str,
        gen: &str,
        entries: &[String],
    ) -> Result<Option<u64>, RedisStoreError> {
        let mut eval = self.guarded_eval(
            &self.scripts.transfer_in,
            &[&target.queue, &target.received, &target.meta],
            target,
        );
        eval.arg(id).arg(gen).arg(entries);
        let mut c = self.conn().await?;
        let joined: i64 = self
            .run_guarded(&mut c, &self.scripts.transfer_in, &eval, &target.queue)
            .await?;
        Ok(u64::try_from(joined).ok())
    }

    /// Step 3: the spent record `id` on `donor` is dropped and the id
    /// remembered as sent, in one script call. Call only once step 2
    /// returned.
    pub async fn transfer_done(&self, donor: &EventKeys, id: &str) -> Result<(), RedisStoreError> {
        let mut c = self.conn().await?;
        let _: i64 = self
            .scripts
            .transfer_done
            .key(&donor.transfers)
            .key(&donor.sent)
            .arg(id)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// The records on `donor` of transfers started and not yet done.
    pub async fn open_transfers(
        &self,
        donor: &EventKeys,
    ) -> Result<Vec<OpenTransfer>, RedisStoreError> {
        let mut c = self.conn().await?;
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&donor.transfers)
            .query_async(&mut c)
            .await?;
        all.into_iter()
            .map(|(id, rec)| OpenTransfer::parse(id, &rec))
            .collect()
    }

    /// The open records on `donor` whose codes have not reached their
    /// target yet: a spent record (its target received it, step 3 not yet
    /// done) holds nothing, its codes being in the target's queue.
    pub async fn unspent_transfers(
        &self,
        donor: &EventKeys,
    ) -> Result<Vec<OpenTransfer>, RedisStoreError> {
        let mut out = Vec::new();
        for t in self.open_transfers(donor).await? {
            let mut c = self.conn().await?;
            let spent: bool = redis::cmd("SISMEMBER")
                .arg(&EventKeys::tagged(&t.target).received)
                .arg(&t.id)
                .query_async(&mut c)
                .await?;
            if !spent {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Finishes the open transfers of every shard of `event` (the sweeper:
    /// a record whose starter died on a quiet event would wait otherwise).
    pub async fn finish_all_transfers(
        &self,
        event: &EventId,
        shards: u32,
    ) -> Result<usize, RedisStoreError> {
        let mut finished = 0;
        for s in 0..shards {
            finished += self
                .finish_transfers(&EventKeys::shard(event, s, shards))
                .await?;
        }
        Ok(finished)
    }

    /// Moves up to `n` codes from `donor` to the shard tagged `target`, all
    /// three steps. Returns how many moved (0: the donor is dry; a transfer
    /// a finisher completed meanwhile moved what its record held).
    pub async fn transfer(
        &self,
        donor: &EventKeys,
        target: &str,
        n: usize,
    ) -> Result<usize, RedisStoreError> {
        let id = transfer_id();
        let (entries, gen) = match self.transfer_out(donor, &id, n, target).await? {
            TransferOut::Moving(entries, gen) => (entries, gen),
            TransferOut::Offline => return Err(offline(&donor.meta, "donor")),
            TransferOut::Done | TransferOut::Dry => return Ok(0),
        };
        failpoint("transfer_after_out").await;
        let target_keys = EventKeys::tagged(target);
        if self
            .transfer_in(&target_keys, &id, &gen, &entries)
            .await?
            .is_none()
        {
            return Err(offline(&target_keys.meta, "target"));
        }
        failpoint("transfer_after_in").await;
        self.transfer_done(donor, &id).await?;
        crate::metrics::shard_transfer(entries.len());
        Ok(entries.len())
    }

    /// Finishes every transfer `donor` holds a record of (steps 2 and 3),
    /// whoever started it and wherever it stopped. Each record is first
    /// read again through step 1 (which finds it, and with the failover
    /// guard on returns once a replica holds it): a record its starter could
    /// not get confirmed must not reach the target, or a failover of the
    /// donor would bring its codes back to the donor's queue as well.
    /// Returns how many it finished.
    pub async fn finish_transfers(&self, donor: &EventKeys) -> Result<usize, RedisStoreError> {
        let mut finished = 0;
        for t in self.open_transfers(donor).await? {
            let n = t.entries.len();
            let TransferOut::Moving(entries, gen) =
                self.transfer_out(donor, &t.id, n, &t.target).await?
            else {
                continue; // finished meanwhile, or the donor is offline
            };
            let target = EventKeys::tagged(&t.target);
            if self
                .transfer_in(&target, &t.id, &gen, &entries)
                .await?
                .is_none()
            {
                // Offline for a rebuild, which drops the record; or lost.
                tracing::warn!(transfer_id = %t.id, target = %t.target, "a transfer's target shard is not live: its codes stay in the record");
                continue;
            }
            self.transfer_done(donor, &t.id).await?;
            finished += 1;
        }
        Ok(finished)
    }

    /// `EVALSHA` of `script` over `keys`, and the shard's guard key when the
    /// failover guard is on (the script writes it, so the WAIT behind it
    /// covers a re-sent call that writes nothing else).
    fn guarded_eval(&self, script: &Script, keys: &[&String], shard: &EventKeys) -> redis::Cmd {
        let mut keys = keys.to_vec();
        if self.guard.replicas > 0 {
            keys.push(&shard.guard);
        }
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(script.get_hash()).arg(keys.len()).arg(&keys[..]);
        eval
    }
}

/// A shard a transfer needs is offline for a rebuild or lost: its users
/// hear UNAVAILABLE (try again), never SOLD_OUT.
fn offline(meta: &str, role: &str) -> RedisStoreError {
    RedisStoreError::ShardLost(format!(
        "the transfer's {role} shard has no live meta ({meta}): offline for a rebuild, or lost"
    ))
}

/// For the fault tests only: with `COUPOND_TEST_FAILPOINT` naming `step`,
/// the transfer stops there for good, as if its process died at that
/// moment (the test then SIGKILLs it and another process must finish the
/// transfer). Read once; unset, it costs a load per transfer.
async fn failpoint(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("COUPOND_TEST_FAILPOINT").ok());
    if at.as_deref() == Some(step) {
        tracing::warn!(
            step,
            "COUPOND_TEST_FAILPOINT: the transfer stops here for good"
        );
        std::future::pending::<()>().await;
    }
}
