//! Issuing: the issue script over a batch, and a user's record.

use super::*;

/// What the issue script decided for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The outcome, decided by Redis.
    Decided(IssueOutcome),
    /// The user holds nothing in Redis and the event has no meta there: it
    /// expired after retention, was lost, or never existed. PostgreSQL
    /// decides.
    NotInRedis,
    /// The user holds nothing in Redis and a forced rebuild has the event
    /// offline: try again shortly (or PostgreSQL knows the user's coupon).
    Offline,
}

impl RedisStore {
    /// Runs the issue script for `items` (user, request id) of one event in
    /// one call; verdicts come back in the order of `items`. A user's own
    /// record decides first (see `IssueOutcome::for_holder`); the event's
    /// state only for users who hold nothing.
    #[instrument(skip_all, fields(event_id = %event, n = items.len()), err)]
    pub async fn issue_batch(
        &self,
        event: &EventId,
        items: &[(&UserId, &RequestId)],
    ) -> Result<Vec<Verdict>, RedisStoreError> {
        self.issue_in(&EventKeys::new(event), items).await
    }

    /// The issue script over the keys `k` (an event's, or one shard's).
    pub(super) async fn issue_in(
        &self,
        k: &EventKeys,
        items: &[(&UserId, &RequestId)],
    ) -> Result<Vec<Verdict>, RedisStoreError> {
        let guarded = self.guard.replicas > 0;
        let mut keys = vec![&k.queue, &k.issued, &k.meta, &k.pending, &k.meta_offline];
        if guarded {
            keys.push(&k.guard);
        }
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(self.scripts.issue.get_hash()).arg(keys.len());
        eval.arg(&keys[..]).arg(items.len());
        for (u, r) in items {
            eval.arg(u.as_str()).arg(r.as_str());
        }
        let mut c = self.conn().await?;
        let reply: Vec<redis::Value> = self
            .run_guarded(&mut c, &self.scripts.issue, &eval, &k.queue)
            .await?;
        if reply.len() != items.len() * 2 {
            return Err(RedisStoreError::Reply(format!(
                "{} values for {} items",
                reply.len(),
                items.len()
            )));
        }
        reply
            .chunks_exact(2)
            .zip(items)
            .map(|(pair, (_, asking))| {
                let status: i64 = redis::from_redis_value_ref(&pair[0])?;
                let rec: String = redis::from_redis_value_ref(&pair[1])?;
                let decided = Verdict::Decided;
                Ok(match status {
                    1 => decided(IssueOutcome::Issued(record::parse_issued(&rec)?.coupon)),
                    2 => {
                        let held = record::parse_issued(&rec)?;
                        decided(IssueOutcome::for_holder(
                            held.coupon,
                            held.state,
                            &held.request_id,
                            asking,
                        ))
                    }
                    3 => decided(IssueOutcome::SoldOut),
                    4 => decided(IssueOutcome::NotStarted),
                    5 => decided(IssueOutcome::Ended),
                    6 => Verdict::NotInRedis,
                    7 => decided(IssueOutcome::Paused),
                    8 => Verdict::Offline,
                    other => return Err(RedisStoreError::Reply(format!("status {other}"))),
                })
            })
            .collect()
    }

    /// Runs a script that hands out or moves codes (`eval`: the issue
    /// script, a transfer step), and with the failover guard on,
    /// `WAIT replicas timeout` right behind it in one pipeline: the cluster
    /// client sends a pipeline to the script's slot on one connection, so
    /// the WAIT counts that connection's writes, and the script's guard
    /// key write makes them reach at least as far as the script (a retry
    /// after a lost connection writes nothing else new). Replicas that do
    /// not confirm in time make the call an error that may have run: the
    /// outcome was decided but a failover could still undo it, so its
    /// users are not told ISSUED; the batch is asked again (the script
    /// answers the same) and, if they stay behind, the callers hear that
    /// the outcome is unknown. A master without a replica answers no
    /// issuance until one is back.
    pub(super) async fn run_guarded<T: redis::FromRedisValue>(
        &self,
        c: &mut Conn,
        script: &Script,
        eval: &redis::Cmd,
        key: &str,
    ) -> Result<T, RedisStoreError> {
        let ReplicaGuard { replicas, timeout } = self.guard;
        let mut pipe = redis::pipe();
        pipe.ignore_errors().add_command(eval.clone());
        if replicas > 0 {
            pipe.cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64);
        }
        let mut replies: Vec<redis::Value> = pipe.query_async(c).await?;
        if replies.first().is_some_and(is_noscript) {
            script.prepare_invoke().load_async(c).await?;
            replies = pipe.query_async(c).await?;
        }
        let mut replies = replies.into_iter();
        let script = match replies.next().unwrap_or(redis::Value::Nil) {
            redis::Value::ServerError(e) => {
                if matches!(e.code(), "MOVED" | "ASK") {
                    // A pipeline's redirect is not followed by the cluster
                    // client; a keyed command is, and it learns the new
                    // owner of the slot for the batch's next attempt.
                    let _: Result<i64, _> = redis::cmd("EXISTS").arg(key).query_async(c).await;
                }
                return Err(RedisStoreError::Redis(e.into()));
            }
            v => redis::from_redis_value(v)?,
        };
        if let Some(wait) = replies.next() {
            // The script ran: whatever the WAIT says, the outcome may stand.
            let acked: i64 = redis::from_redis_value(wait)
                .map_err(|e| RedisStoreError::Reply(format!("WAIT after a guarded script: {e}")))?;
            if acked < i64::from(replicas) {
                crate::metrics::replica_unconfirmed();
                return Err(RedisStoreError::Unconfirmed { acked, replicas });
            }
        }
        Ok(script)
    }

    /// `cmd` (a write of one key), with the failover guard's WAIT behind it
    /// in the same pipeline, like `run_guarded` (on a cluster a WAIT sent
    /// on its own may reach another node and confirm nothing).
    pub(super) async fn write_guarded(
        &self,
        c: &mut Conn,
        cmd: &redis::Cmd,
    ) -> Result<(), RedisStoreError> {
        let ReplicaGuard { replicas, timeout } = self.guard;
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone());
        if replicas > 0 {
            pipe.cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64);
        }
        let replies: Vec<redis::Value> = pipe.query_async(c).await?;
        if let Some(acked) = replies.get(1) {
            let acked: i64 = redis::from_redis_value(acked.clone())?;
            if acked < i64::from(replicas) {
                return Err(RedisStoreError::Unconfirmed { acked, replicas });
            }
        }
        Ok(())
    }

    /// The user's issuance record, if Redis holds one.
    pub async fn issuance(
        &self,
        event: &EventId,
        shards: u32,
        user: &UserId,
    ) -> Result<Option<HeldCoupon>, RedisStoreError> {
        let shards = shards.max(1);
        let k = EventKeys::shard(event, crate::domain::shard::home(user, shards), shards);
        let mut c = self.conn().await?;
        let rec: Option<String> = redis::cmd("HGET")
            .arg(&k.issued)
            .arg(user.as_str())
            .query_async(&mut c)
            .await?;
        Ok(rec.map(|r| record::parse_issued(&r)).transpose()?)
    }
}

fn is_noscript(v: &redis::Value) -> bool {
    matches!(v, redis::Value::ServerError(e) if e.code() == "NOSCRIPT")
}
