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
        let k = EventKeys::new(event);
        let mut inv = self.scripts.issue.prepare_invoke();
        inv.key(&k.queue)
            .key(&k.issued)
            .key(&k.meta)
            .key(&k.pending)
            .key(&k.meta_offline);
        inv.arg(items.len());
        for (u, r) in items {
            inv.arg(u.as_str()).arg(r.as_str());
        }
        let mut c = self.conn().await?;
        let reply: Vec<redis::Value> = inv.invoke_async(&mut c).await?;
        self.confirm_replicas(&mut c, event, &k.queue, items.len())
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
    /// Waits until the replicas the guard asks for hold what the script
    /// wrote (WAIT on the connection that wrote it), so that a failover to
    /// a replica cannot hand the batch's codes out again. A failed WAIT is
    /// an error whose batch may have run: it is asked again, and the
    /// script answers the same. Replicas that stay behind past the timeout
    /// only leave a count and a warning: the outcome was decided, and the
    /// master's append-only file (and in ack mode the Kafka message the
    /// finalizer records) still hold it. The event's batches then skip the
    /// wait for `BEHIND_PAUSE` (counted the same way).
    async fn confirm_replicas(
        &self,
        c: &mut Conn,
        event: &EventId,
        key: &str,
        users: usize,
    ) -> Result<(), RedisStoreError> {
        let g = &self.guard;
        if g.replicas == 0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let skip = {
            let mut behind = g.behind.lock().expect("replica guard lock");
            behind.retain(|_, until| *until > now);
            behind.contains_key(event)
        };
        if skip {
            crate::metrics::replica_unconfirmed(users);
            return Ok(());
        }
        let acked = c.wait_replicas(key, g.replicas, g.timeout).await?;
        if acked < g.replicas {
            crate::metrics::replica_unconfirmed(users);
            let until = std::time::Instant::now() + BEHIND_PAUSE;
            g.behind
                .lock()
                .expect("replica guard lock")
                .insert(event.clone(), until);
            tracing::warn!(event_id = %event, acked, wanted = g.replicas, users, "replicas did not confirm an issue batch in time; its users are answered all the same, and the event's batches skip the wait for 5 s");
        }
        Ok(())
    }

    /// The user's issuance record, if Redis holds one.
    pub async fn issuance(
        &self,
        event: &EventId,
        user: &UserId,
    ) -> Result<Option<HeldCoupon>, RedisStoreError> {
        let k = EventKeys::new(event);
        let mut c = self.conn().await?;
        let rec: Option<String> = redis::cmd("HGET")
            .arg(&k.issued)
            .arg(user.as_str())
            .query_async(&mut c)
            .await?;
        Ok(rec.map(|r| record::parse_issued(&r)).transpose()?)
    }
}
