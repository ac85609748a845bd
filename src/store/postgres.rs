//! PostgreSQL: the durable record of events, policies and coupons.
//!
//! Bulk statements bind whole arrays and `unnest` them. The finalizer's
//! writes are in `finalization` (tokio-postgres, for SQLSTATEs), a
//! preload's COPY in `coupon_writer`.

use chrono::{DateTime, Utc};
use diesel::result::Error as DieselError;
use diesel::sql_types::{
    Array, BigInt, Bool, Double, Integer, Nullable, SmallInt, Text, Timestamptz,
};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use tracing::instrument;

use crate::domain::{
    CodePrefix, Control, ControlState, Discount, DiscountType, EventId, EventState, EventWindow,
    IssuedCoupon, NewEvent, Policy, PreloadId, PreloadStatus, PreloadTimings, StoredEvent, UserId,
};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serializes concurrent `migrate` runs (several servers starting at once).
const MIGRATION_LOCK: i64 = 0x0063_6f75_706f_6e64; // "coupond"

#[derive(Debug, thiserror::Error)]
pub enum PgStoreError {
    #[error("postgres pool: {0}")]
    Pool(#[from] PoolError),
    #[error("postgres: {0}")]
    Db(#[from] DieselError),
    #[error("postgres: {0}")]
    Copy(#[from] tokio_postgres::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

/// One coupon as PostgreSQL records it.
#[derive(Debug, Clone)]
pub struct CouponRow {
    pub code: String,
    pub discount: Discount,
    /// (user, issued_at, request_id) when ISSUED.
    pub issued: Option<(String, DateTime<Utc>, String)>,
}

/// Handle to PostgreSQL; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    url: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct EventRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    total_count: i32,
    #[diesel(sql_type = Timestamptz)]
    starts_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    ends_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    code_prefix: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Text)]
    preload_id: String,
    #[diesel(sql_type = Integer)]
    written_count: i32,
    #[diesel(sql_type = Nullable<Text>)]
    failure: Option<String>,
    #[diesel(sql_type = Bool)]
    paused: bool,
    #[diesel(sql_type = BigInt)]
    control_seq: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    settled_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    generate_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    database_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    redis_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    total_ms: Option<i64>,
}

const EVENT_COLUMNS: &str = "id, name, total_count, starts_at, ends_at, code_prefix, state, \
    preload_id, written_count, failure, generate_ms, database_ms, redis_ms, total_ms, paused, \
    control_seq, settled_at";

/// An event's state as Issue needs it when Redis does not hold the event.
#[derive(Debug, Clone)]
pub struct IssueFacts {
    pub state: EventState,
    /// Ended with nothing pending, its Redis keys given their expiry.
    pub settled: bool,
}

/// What `begin_preload` found.
#[derive(Debug)]
pub enum Begun {
    /// The event was new: it is recorded, PREPARING, held by the job.
    Started,
    /// An event with this id exists already.
    Existing(Box<StoredEvent>),
}

/// `now() + lease`, in SQL, with the lease bound as milliseconds.
const LEASE_UNTIL: &str = "now() + $3 * interval '1 millisecond'";

fn millis(d: std::time::Duration) -> f64 {
    d.as_millis() as f64
}

#[derive(QueryableByName)]
struct PolicyRow {
    #[diesel(sql_type = Text)]
    discount_type: String,
    #[diesel(sql_type = BigInt)]
    discount_value: i64,
    #[diesel(sql_type = BigInt)]
    weight: i64,
    #[diesel(sql_type = Integer)]
    coupon_count: i32,
}

#[derive(QueryableByName)]
struct IssuedRow {
    #[diesel(sql_type = Text)]
    code: String,
    #[diesel(sql_type = Text)]
    discount_type: String,
    #[diesel(sql_type = BigInt)]
    discount_value: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    issued_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    request_id: Option<String>,
}

fn discount_of(kind: &str, value: i64) -> Result<Discount, PgStoreError> {
    let k = DiscountType::from_str_opt(kind)
        .ok_or_else(|| PgStoreError::Corrupt(format!("discount type {kind:?}")))?;
    Discount::new(k, value).map_err(PgStoreError::Corrupt)
}

impl PgStore {
    pub fn connect(url: &str, pool_size: usize) -> anyhow::Result<Self> {
        let mgr = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let pool = Pool::builder(mgr).max_size(pool_size).build()?;
        Ok(Self {
            pool,
            url: url.to_owned(),
        })
    }

    /// Runs pending migrations, one process at a time.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = AsyncPgConnection::establish(&self.url).await?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .execute(&mut conn)
            .await?;
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        let applied = harness
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?
            .len();
        let mut conn = harness.into_inner();
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .execute(&mut conn)
            .await?;
        tracing::info!(applied, "database migrations up to date");
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), PgStoreError> {
        let mut c = self.pool.get().await?;
        diesel::sql_query("SELECT 1").execute(&mut c).await?;
        Ok(())
    }

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
                let n = diesel::sql_query(format!(
                    "INSERT INTO events (id, name, total_count, starts_at, ends_at, code_prefix, \
                         state, preload_id, written_count, lease_until) \
                     VALUES ($1, $4, $5, $6, $7, $8, 'PREPARING', $2, 0, {LEASE_UNTIL}) \
                     ON CONFLICT (id) DO NOTHING"
                ))
                .bind::<Text, _>(event.id.as_str())
                .bind::<Text, _>(job.as_str())
                .bind::<Double, _>(millis(lease))
                .bind::<Text, _>(&event.name)
                .bind::<Integer, _>(event.total_count as i32)
                .bind::<Timestamptz, _>(event.window.starts_at())
                .bind::<Timestamptz, _>(event.window.ends_at())
                .bind::<Text, _>(event.prefix.as_str())
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
            let n = diesel::sql_query(format!(
                "UPDATE events SET name = $5, total_count = $6, starts_at = $7, ends_at = $8, \
                     code_prefix = $9, state = 'PREPARING', preload_id = $2, written_count = 0, \
                     failure = NULL, lease_until = {LEASE_UNTIL}, generate_ms = NULL, \
                     database_ms = NULL, redis_ms = NULL, total_ms = NULL, created_at = now() \
                 WHERE id = $1 AND state = 'FAILED' AND preload_id = $4"
            ))
            .bind::<Text, _>(event.id.as_str())
            .bind::<Text, _>(job.as_str())
            .bind::<Double, _>(millis(lease))
            .bind::<Text, _>(failed.as_str())
            .bind::<Text, _>(&event.name)
            .bind::<Integer, _>(event.total_count as i32)
            .bind::<Timestamptz, _>(event.window.starts_at())
            .bind::<Timestamptz, _>(event.window.ends_at())
            .bind::<Text, _>(event.prefix.as_str())
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

    pub async fn event(&self, id: &EventId) -> Result<Option<StoredEvent>, PgStoreError> {
        let mut c = self.pool.get().await?;
        let rows: Vec<EventRow> =
            diesel::sql_query(format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
                .bind::<Text, _>(id.as_str())
                .load(&mut c)
                .await?;
        Ok(with_policies(&mut c, rows).await?.into_iter().next())
    }

    /// Up to `limit` events whose id sorts after `after`, in id order.
    pub async fn events_after(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, PgStoreError> {
        let mut c = self.pool.get().await?;
        let rows: Vec<EventRow> = diesel::sql_query(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind::<Text, _>(after)
        .bind::<BigInt, _>(i64::from(limit))
        .load(&mut c)
        .await?;
        with_policies(&mut c, rows).await
    }

    /// Applies `control` to the LIVE event `id` and records it with `reason`,
    /// in one transaction. `None` when no LIVE event has that id.
    pub async fn apply_control(
        &self,
        id: &EventId,
        control: &Control,
        reason: &str,
    ) -> Result<Option<StoredEvent>, PgStoreError> {
        let mut c = self.pool.get().await?;
        let set = match control {
            Control::Pause => "paused = true",
            Control::Resume => "paused = false",
            Control::Close(_) => "ends_at = $2",
            // Reopens a settled event: the sweeper visits it again.
            Control::Extend(_) => "ends_at = $2, settled_at = NULL",
        };
        let changed = c
            .transaction(async |tx| {
                // $2 is bound either way (NULL for pause and resume).
                let n = diesel::sql_query(format!(
                    "UPDATE events SET {set}, control_seq = control_seq + 1 \
                     WHERE id = $1 AND state = 'LIVE' AND ($2::timestamptz IS NULL OR TRUE)"
                ))
                .bind::<Text, _>(id.as_str())
                .bind::<Nullable<Timestamptz>, _>(control.ends_at())
                .execute(tx)
                .await?;
                if n == 0 {
                    return Ok::<_, PgStoreError>(false);
                }
                diesel::sql_query(
                    "INSERT INTO event_controls (event_id, action, reason, ends_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind::<Text, _>(id.as_str())
                .bind::<Text, _>(control.action())
                .bind::<Text, _>(reason)
                .bind::<Nullable<Timestamptz>, _>(control.ends_at())
                .execute(tx)
                .await?;
                Ok(true)
            })
            .await?;
        drop(c);
        match changed {
            true => self.event(id).await,
            false => Ok(None),
        }
    }

    /// The controls recorded for an event, oldest first: (action, reason,
    /// ends_at set, when).
    pub async fn controls(
        &self,
        id: &EventId,
    ) -> Result<Vec<(String, String, Option<DateTime<Utc>>, DateTime<Utc>)>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            action: String,
            #[diesel(sql_type = Text)]
            reason: String,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            ends_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Timestamptz)]
            at: DateTime<Utc>,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT action, reason, ends_at, at FROM event_controls WHERE event_id = $1 ORDER BY id",
        )
        .bind::<Text, _>(id.as_str())
        .load(&mut c)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.action, r.reason, r.ends_at, r.at))
            .collect())
    }

    /// LIVE events not settled yet (see `settle`), with their controls:
    /// what the sweeper visits.
    pub async fn events_to_sweep(&self) -> Result<Vec<(EventId, ControlState)>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            id: String,
            #[diesel(sql_type = Timestamptz)]
            ends_at: DateTime<Utc>,
            #[diesel(sql_type = Bool)]
            paused: bool,
            #[diesel(sql_type = BigInt)]
            control_seq: i64,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT id, ends_at, paused, control_seq FROM events \
             WHERE state = 'LIVE' AND settled_at IS NULL ORDER BY created_at",
        )
        .load(&mut c)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let state = ControlState {
                    seq: u64::try_from(r.control_seq).ok()?,
                    ends_at: r.ends_at,
                    paused: r.paused,
                    settled: false,
                };
                Some((EventId::parse(r.id).ok()?, state))
            })
            .collect())
    }

    /// Records an event settled once Redis settled it (`settle.lua`) with
    /// the window's end `ends_ms`; false when it was not (already settled,
    /// or PostgreSQL records another end: a control not yet in Redis).
    pub async fn settle(&self, id: &EventId, ends_ms: i64) -> Result<bool, PgStoreError> {
        let mut c = self.pool.get().await?;
        let n = diesel::sql_query(
            "UPDATE events SET settled_at = now() \
             WHERE id = $1 AND settled_at IS NULL \
               AND date_trunc('milliseconds', ends_at) \
                   = timestamptz 'epoch' + $2 * interval '1 millisecond'",
        )
        .bind::<Text, _>(id.as_str())
        .bind::<BigInt, _>(ends_ms)
        .execute(&mut c)
        .await?;
        Ok(n == 1)
    }

    /// What Issue needs of an event Redis does not hold: its state and
    /// whether it is settled. `None` when there is no such event.
    pub async fn issue_facts(&self, id: &EventId) -> Result<Option<IssueFacts>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = Bool)]
            settled: bool,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT state, settled_at IS NOT NULL AS settled FROM events WHERE id = $1",
        )
        .bind::<Text, _>(id.as_str())
        .load(&mut c)
        .await?;
        rows.into_iter()
            .next()
            .map(|r| {
                Ok(IssueFacts {
                    state: EventState::from_str_opt(&r.state)
                        .ok_or_else(|| PgStoreError::Corrupt(format!("event {id} state")))?,
                    settled: r.settled,
                })
            })
            .transpose()
    }

    /// Whether the event is settled.
    pub async fn settled(&self, id: &EventId) -> Result<bool, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Bool)]
            settled: bool,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> =
            diesel::sql_query("SELECT settled_at IS NOT NULL AS settled FROM events WHERE id = $1")
                .bind::<Text, _>(id.as_str())
                .load(&mut c)
                .await?;
        Ok(rows.iter().any(|r| r.settled))
    }

    /// Clears `settled` (a rebuilt event's keys carry no expiry: the
    /// sweeper visits it again and settles it anew).
    pub async fn unsettle(&self, id: &EventId) -> Result<(), PgStoreError> {
        let mut c = self.pool.get().await?;
        diesel::sql_query("UPDATE events SET settled_at = NULL WHERE id = $1")
            .bind::<Text, _>(id.as_str())
            .execute(&mut c)
            .await?;
        Ok(())
    }

    /// Coupons of the event recorded as ISSUED.
    pub async fn finalized_count(&self, id: &EventId) -> Result<u64, PgStoreError> {
        let mut c = self.pool.get().await?;
        let r: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM coupons WHERE event_id = $1 AND state = 'ISSUED'",
        )
        .bind::<Text, _>(id.as_str())
        .get_result(&mut c)
        .await?;
        Ok(r.n as u64)
    }

    /// Every (code, user) recorded as ISSUED for the event.
    pub async fn issued_pairs(&self, id: &EventId) -> Result<Vec<(String, String)>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Pair {
            #[diesel(sql_type = Text)]
            code: String,
            #[diesel(sql_type = Text)]
            user_id: String,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Pair> = diesel::sql_query(
            "SELECT code, user_id FROM coupons WHERE event_id = $1 AND state = 'ISSUED'",
        )
        .bind::<Text, _>(id.as_str())
        .load(&mut c)
        .await?;
        Ok(rows.into_iter().map(|p| (p.code, p.user_id)).collect())
    }

    /// Every coupon of the event with its state (for reconciliation).
    pub async fn coupons(&self, id: &EventId) -> Result<Vec<CouponRow>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            code: String,
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = Text)]
            discount_type: String,
            #[diesel(sql_type = BigInt)]
            discount_value: i64,
            #[diesel(sql_type = Nullable<Text>)]
            user_id: Option<String>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            issued_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Nullable<Text>)]
            request_id: Option<String>,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT code, state, discount_type, discount_value, user_id, issued_at, request_id \
             FROM coupons WHERE event_id = $1",
        )
        .bind::<Text, _>(id.as_str())
        .load(&mut c)
        .await?;
        rows.into_iter()
            .map(|r| {
                let discount = discount_of(&r.discount_type, r.discount_value)?;
                let issued = match (r.state.as_str(), r.user_id, r.issued_at) {
                    ("ISSUED", Some(user), Some(at)) => {
                        Some((user, at, r.request_id.unwrap_or_default()))
                    }
                    ("AVAILABLE", None, _) => None,
                    _ => return Err(PgStoreError::Corrupt(format!("coupon {} state", r.code))),
                };
                Ok(CouponRow {
                    code: r.code,
                    discount,
                    issued,
                })
            })
            .collect()
    }

    /// Number of coupon rows of the event, in any state.
    pub async fn coupon_count(&self, id: &EventId) -> Result<u64, PgStoreError> {
        let mut c = self.pool.get().await?;
        let r: Count = diesel::sql_query("SELECT count(*) AS n FROM coupons WHERE event_id = $1")
            .bind::<Text, _>(id.as_str())
            .get_result(&mut c)
            .await?;
        Ok(r.n as u64)
    }

    /// The coupon recorded as ISSUED to `user`, if any, with its request id.
    pub async fn issuance(
        &self,
        event: &EventId,
        user: &UserId,
    ) -> Result<Option<(IssuedCoupon, String)>, PgStoreError> {
        let mut c = self.pool.get().await?;
        let rows: Vec<IssuedRow> = diesel::sql_query(
            "SELECT code, discount_type, discount_value, issued_at, request_id FROM coupons \
             WHERE event_id = $1 AND user_id = $2 AND state = 'ISSUED'",
        )
        .bind::<Text, _>(event.as_str())
        .bind::<Text, _>(user.as_str())
        .load(&mut c)
        .await?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some((
            IssuedCoupon {
                discount: discount_of(&r.discount_type, r.discount_value)?,
                code: r.code,
                issued_at: r
                    .issued_at
                    .ok_or_else(|| PgStoreError::Corrupt("ISSUED without issued_at".into()))?,
            },
            r.request_id.unwrap_or_default(),
        )))
    }
}

/// Events as the domain knows them: rows plus their policies (one query).
async fn with_policies(
    c: &mut AsyncPgConnection,
    rows: Vec<EventRow>,
) -> Result<Vec<StoredEvent>, PgStoreError> {
    #[derive(QueryableByName)]
    struct EventPolicyRow {
        #[diesel(sql_type = Text)]
        event_id: String,
        #[diesel(embed)]
        p: PolicyRow,
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let policies: Vec<EventPolicyRow> = diesel::sql_query(
        "SELECT event_id, discount_type, discount_value, weight, coupon_count FROM policies \
         WHERE event_id = ANY($1) ORDER BY event_id, position",
    )
    .bind::<Array<Text>, _>(&ids)
    .load(c)
    .await?;
    let mut by_event: std::collections::HashMap<String, Vec<PolicyRow>> = Default::default();
    for r in policies {
        by_event.entry(r.event_id).or_default().push(r.p);
    }
    rows.into_iter()
        .map(|e| {
            let p = by_event.remove(&e.id).unwrap_or_default();
            stored_event(e, p)
        })
        .collect()
}

fn stored_event(e: EventRow, policies: Vec<PolicyRow>) -> Result<StoredEvent, PgStoreError> {
    let corrupt = |what: &str| PgStoreError::Corrupt(format!("event {}: {what}", e.id));
    let policies = policies
        .into_iter()
        .map(|p| {
            Ok((
                Policy {
                    discount: discount_of(&p.discount_type, p.discount_value)?,
                    weight: u32::try_from(p.weight).map_err(|_| corrupt("weight"))?,
                },
                u32::try_from(p.coupon_count).map_err(|_| corrupt("coupon_count"))?,
            ))
        })
        .collect::<Result<Vec<_>, PgStoreError>>()?;
    let ms = |v: Option<i64>| v.map(|v| std::time::Duration::from_millis(v.max(0) as u64));
    let timings = match (
        ms(e.generate_ms),
        ms(e.database_ms),
        ms(e.redis_ms),
        ms(e.total_ms),
    ) {
        (Some(generate), Some(database), Some(redis), Some(total)) => Some(PreloadTimings {
            generate,
            database,
            redis,
            total,
        }),
        _ => None,
    };
    Ok(StoredEvent {
        id: EventId::parse(e.id.clone()).map_err(|_| corrupt("id"))?,
        name: e.name.clone(),
        total_count: u32::try_from(e.total_count).map_err(|_| corrupt("total_count"))?,
        policies,
        window: EventWindow::new(e.starts_at, e.ends_at).map_err(|_| corrupt("window"))?,
        prefix: CodePrefix::parse(e.code_prefix.clone()).map_err(|_| corrupt("prefix"))?,
        preload: PreloadStatus {
            state: EventState::from_str_opt(&e.state).ok_or_else(|| corrupt("state"))?,
            preload_id: PreloadId::from_stored(e.preload_id.clone()),
            written: u32::try_from(e.written_count).map_err(|_| corrupt("written_count"))?,
            failure: e.failure.clone(),
            timings,
        },
        paused: e.paused,
        control_seq: u64::try_from(e.control_seq).map_err(|_| corrupt("control_seq"))?,
        settled_at: e.settled_at,
    })
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
