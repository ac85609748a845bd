//! Preload jobs: the event row as the job's fence, its lease, and its end.

use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};

use super::*;

/// What `begin_preload` found.
#[derive(Debug)]
pub enum Begun {
    /// The event was new: it is recorded, PREPARING, held by the job.
    Started,
    /// An event with this id exists already.
    Existing(Box<StoredEvent>),
}
/// `sql` with the event's columns bound, the same way for a new event and
/// a restarted one: $1 id, $2 the job's preload id, $3 the lease (ms), $4
/// name, $5 total, $6 starts_at, $7 ends_at, $8 code prefix.
fn with_event<'a>(
    sql: String,
    event: &'a NewEvent,
    job: &'a PreloadId,
    lease: std::time::Duration,
) -> BoxedSqlQuery<'a, Pg, SqlQuery> {
    diesel::sql_query(sql)
        .into_boxed()
        .bind::<Text, _>(event.id.as_str())
        .bind::<Text, _>(job.as_str())
        .bind::<Double, _>(millis(lease))
        .bind::<Text, _>(&event.name)
        .bind::<Integer, _>(event.total_count as i32)
        .bind::<Timestamptz, _>(event.window.starts_at())
        .bind::<Timestamptz, _>(event.window.ends_at())
        .bind::<Text, _>(event.prefix.as_str())
        .bind::<Integer, _>(event.shards as i32)
}

/// `now() + lease`, in SQL, with the lease bound as milliseconds.
const LEASE_UNTIL: &str = "now() + $3 * interval '1 millisecond'";
fn millis(d: std::time::Duration) -> f64 {
    d.as_millis() as f64
}
/// `UPDATE events SET <set>` while `job` holds the event (PREPARING, its
/// preload id); `$3` in `set` is the lease in milliseconds. True when it did.
async fn fenced(
    c: &mut AsyncPgConnection,
    id: &EventId,
    job: &PreloadId,
    lease: std::time::Duration,
    set: &str,
) -> Result<bool, PgStoreError> {
    let n = diesel::sql_query(format!(
        "UPDATE events SET {set} \
         WHERE id = $1 AND preload_id = $2 AND state = 'PREPARING' AND $3::float8 >= 0"
    ))
    .bind::<Text, _>(id.as_str())
    .bind::<Text, _>(job.as_str())
    .bind::<Double, _>(millis(lease))
    .execute(c)
    .await?;
    Ok(n == 1)
}
async fn insert_policies(c: &mut AsyncPgConnection, event: &NewEvent) -> Result<(), PgStoreError> {
    let positions: Vec<i16> = (0..event.policies.len() as i16).collect();
    let kinds: Vec<&str> = event
        .policies
        .iter()
        .map(|p| p.discount.kind().as_str())
        .collect();
    let values: Vec<i64> = event.policies.iter().map(|p| p.discount.value()).collect();
    let weights: Vec<i64> = event.policies.iter().map(|p| i64::from(p.weight)).collect();
    let counts: Vec<i32> = event.counts.iter().map(|&n| n as i32).collect();
    diesel::sql_query(
        "INSERT INTO policies (event_id, position, discount_type, discount_value, weight, coupon_count) \
         SELECT $1, * FROM unnest($2::int2[], $3::text[], $4::int8[], $5::int8[], $6::int4[])",
    )
    .bind::<Text, _>(event.id.as_str())
    .bind::<Array<SmallInt>, _>(&positions)
    .bind::<Array<Text>, _>(&kinds)
    .bind::<Array<BigInt>, _>(&values)
    .bind::<Array<BigInt>, _>(&weights)
    .bind::<Array<Integer>, _>(&counts)
    .execute(c)
    .await?;
    Ok(())
}

impl PgStore {
    /// Records a new event in state PREPARING, held by `job` for `lease`,
    /// with its policies, in one transaction; or returns the event that has
    /// this id already.
    #[instrument(skip_all, fields(event_id = %event.id, preload_id = %job), err)]
    pub async fn begin_preload(
        &self,
        event: &NewEvent,
        job: &PreloadId,
        lease: std::time::Duration,
    ) -> Result<Begun, PgStoreError> {
        let mut c = self.pool.get().await?;
        let inserted = c
            .transaction(async |tx| {
                let n = with_event(
                    format!(
                        "INSERT INTO events (id, name, total_count, starts_at, ends_at, \
                             code_prefix, state, preload_id, written_count, lease_until, shards) \
                         VALUES ($1, $4, $5, $6, $7, $8, 'PREPARING', $2, 0, {LEASE_UNTIL}, $9) \
                         ON CONFLICT (id) DO NOTHING"
                    ),
                    event,
                    job,
                    lease,
                )
                .execute(tx)
                .await?;
                if n == 1 {
                    insert_policies(tx, event).await?;
                }
                Ok::<_, PgStoreError>(n == 1)
            })
            .await?;
        drop(c);
        if inserted {
            return Ok(Begun::Started);
        }
        match self.event(&event.id).await? {
            Some(e) => Ok(Begun::Existing(Box::new(e))),
            // Removed in between (not done by coupond): let the caller retry.
            None => Err(PgStoreError::Corrupt(format!(
                "event {} vanished while preloading",
                event.id
            ))),
        }
    }
    /// Starts `job` on an event whose last job FAILED (`failed`), with the
    /// content of `event`. False when the event is no longer in that state.
    #[instrument(skip_all, fields(event_id = %event.id, preload_id = %job), err)]
    pub async fn restart_failed(
        &self,
        event: &NewEvent,
        failed: &PreloadId,
        job: &PreloadId,
        lease: std::time::Duration,
    ) -> Result<bool, PgStoreError> {
        let mut c = self.pool.get().await?;
        c.transaction(async |tx| {
            let n = with_event(
                format!(
                    "UPDATE events SET name = $4, total_count = $5, starts_at = $6, ends_at = $7, \
                         code_prefix = $8, shards = $9, state = 'PREPARING', preload_id = $2, \
                         written_count = 0, failure = NULL, lease_until = {LEASE_UNTIL}, \
                         generate_ms = NULL, database_ms = NULL, redis_ms = NULL, \
                         total_ms = NULL, created_at = now() \
                     WHERE id = $1 AND state = 'FAILED' AND preload_id = $10"
                ),
                event,
                job,
                lease,
            )
            .bind::<Text, _>(failed.as_str())
            .execute(tx)
            .await?;
            if n == 1 {
                diesel::sql_query("DELETE FROM policies WHERE event_id = $1")
                    .bind::<Text, _>(event.id.as_str())
                    .execute(tx)
                    .await?;
                insert_policies(tx, event).await?;
            }
            Ok(n == 1)
        })
        .await
    }
    /// PREPARING events whose job's lease ran out, with that job's id.
    pub async fn expired_preloads(&self) -> Result<Vec<(EventId, PreloadId)>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            id: String,
            #[diesel(sql_type = Text)]
            preload_id: String,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT id, preload_id FROM events \
             WHERE state = 'PREPARING' AND lease_until < now() ORDER BY lease_until",
        )
        .load(&mut c)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let id = EventId::parse(r.id).ok()?;
                Some((id, PreloadId::from_stored(r.preload_id)))
            })
            .collect())
    }
    /// Hands a PREPARING event whose lease ran out from `expired` to `job`.
    /// False when another server took it first or its job got on.
    pub async fn take_over(
        &self,
        id: &EventId,
        expired: &PreloadId,
        job: &PreloadId,
        lease: std::time::Duration,
    ) -> Result<bool, PgStoreError> {
        let mut c = self.pool.get().await?;
        let n = diesel::sql_query(format!(
            "UPDATE events SET preload_id = $2, lease_until = {LEASE_UNTIL} \
             WHERE id = $1 AND state = 'PREPARING' AND preload_id = $4 AND lease_until < now()"
        ))
        .bind::<Text, _>(id.as_str())
        .bind::<Text, _>(job.as_str())
        .bind::<Double, _>(millis(lease))
        .bind::<Text, _>(expired.as_str())
        .execute(&mut c)
        .await?;
        Ok(n == 1)
    }
    /// Extends `job`'s lease; false when the job no longer holds the event.
    pub async fn renew_lease(
        &self,
        id: &EventId,
        job: &PreloadId,
        lease: std::time::Duration,
    ) -> Result<bool, PgStoreError> {
        self.fenced_update(id, job, lease, &format!("lease_until = {LEASE_UNTIL}"))
            .await
    }
    /// Lets the job's lease run out now, so another server (or this one,
    /// restarted) takes the job over at once.
    pub async fn release_lease(&self, id: &EventId, job: &PreloadId) -> Result<bool, PgStoreError> {
        let zero = std::time::Duration::ZERO;
        self.fenced_update(id, job, zero, "lease_until = now() - interval '1 second'")
            .await
    }
    /// Deletes what an earlier holder of the event wrote, so `job` starts
    /// from nothing.
    pub async fn reset_preload(
        &self,
        id: &EventId,
        job: &PreloadId,
        lease: std::time::Duration,
    ) -> Result<bool, PgStoreError> {
        let mut c = self.pool.get().await?;
        let job = job.clone();
        c.transaction(async |tx| {
            let held = fenced(
                tx,
                id,
                &job,
                lease,
                &format!("written_count = 0, lease_until = {LEASE_UNTIL}"),
            )
            .await?;
            if held {
                diesel::sql_query("DELETE FROM coupons WHERE event_id = $1")
                    .bind::<Text, _>(id.as_str())
                    .execute(tx)
                    .await?;
            }
            Ok(held)
        })
        .await
    }
    /// PREPARING -> LIVE for `job`, recording its timings; false when the
    /// job no longer holds the event.
    pub async fn mark_live(
        &self,
        id: &EventId,
        job: &PreloadId,
        t: &PreloadTimings,
    ) -> Result<bool, PgStoreError> {
        let ms = |d: std::time::Duration| d.as_millis() as i64;
        self.fenced_update(
            id,
            job,
            std::time::Duration::ZERO,
            &format!(
                "state = 'LIVE', written_count = total_count, lease_until = NULL, \
                 failure = NULL, generate_ms = {}, database_ms = {}, redis_ms = {}, total_ms = {}",
                ms(t.generate),
                ms(t.database),
                ms(t.redis),
                ms(t.total)
            ),
        )
        .await
    }
    /// Refreshes the coupons table's statistics after a preload. Until
    /// autovacuum gets to it, the planner believes the event's rows are not
    /// there, and the finalizer's UPDATE, which looks codes up one by one,
    /// was planned as a scan of every coupon of the event per batch
    /// (BENCHMARKS.md: most of PostgreSQL's CPU per coupon). Skipped when
    /// a vacuum or another ANALYZE holds the table: waiting for it would
    /// hold up the job, and they bring the same news.
    pub async fn refresh_statistics(&self) -> Result<(), PgStoreError> {
        let mut c = self.pool.get().await?;
        diesel::sql_query("ANALYZE (SKIP_LOCKED) coupons")
            .execute(&mut c)
            .await?;
        Ok(())
    }
    /// PREPARING -> FAILED for `job`, deleting every coupon it wrote, in
    /// one transaction. Call only once Redis can no longer make `job` live.
    pub async fn mark_failed(
        &self,
        id: &EventId,
        job: &PreloadId,
        reason: &str,
    ) -> Result<bool, PgStoreError> {
        let mut c = self.pool.get().await?;
        let job = job.clone();
        c.transaction(async |tx| {
            let n = diesel::sql_query(
                "UPDATE events SET state = 'FAILED', failure = $3, written_count = 0, \
                     lease_until = NULL \
                 WHERE id = $1 AND preload_id = $2 AND state = 'PREPARING'",
            )
            .bind::<Text, _>(id.as_str())
            .bind::<Text, _>(job.as_str())
            .bind::<Text, _>(reason)
            .execute(tx)
            .await?;
            if n == 1 {
                diesel::sql_query("DELETE FROM coupons WHERE event_id = $1")
                    .bind::<Text, _>(id.as_str())
                    .execute(tx)
                    .await?;
            }
            Ok(n == 1)
        })
        .await
    }
    async fn fenced_update(
        &self,
        id: &EventId,
        job: &PreloadId,
        lease: std::time::Duration,
        set: &str,
    ) -> Result<bool, PgStoreError> {
        let mut c = self.pool.get().await?;
        fenced(&mut c, id, job, lease, set).await
    }
}
