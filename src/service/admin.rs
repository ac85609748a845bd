//! Preloading events and reading them back.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tracing::instrument;

use crate::domain::{
    CodeGenerator, CouponError, EventId, NewEvent, StoredEvent, DEFAULT_CODE_LENGTH,
};
use crate::store::postgres::PgStoreError;
use crate::store::record::queue_entry;
use crate::store::redis::{MakeLiveError, RedisCounts};
use crate::store::{PgStore, RedisStore};

/// How long each phase of a preload took. The database and Redis phases run
/// concurrently, so `total` is less than their sum.
#[derive(Debug, Clone)]
pub struct PreloadReport {
    pub event_id: EventId,
    pub counts: Vec<u32>,
    pub generate: Duration,
    pub database: Duration,
    pub redis: Duration,
    pub total: Duration,
}

/// An event with its live counts.
#[derive(Debug, Clone)]
pub struct EventView {
    pub event: StoredEvent,
    pub redis: RedisCounts,
    pub finalized: u64,
}

pub struct AdminService {
    pg: PgStore,
    redis: RedisStore,
}

fn pg_unavailable(context: &'static str) -> impl FnOnce(PgStoreError) -> CouponError {
    move |e| CouponError::unavailable(context, e)
}

impl AdminService {
    pub fn new(pg: PgStore, redis: RedisStore) -> Self {
        Self { pg, redis }
    }

    /// Generates the event's codes, writes them to PostgreSQL (one
    /// transaction) while staging them in Redis, then makes the event live
    /// in Redis atomically. If the Redis half fails, the PostgreSQL rows are
    /// deleted again, so a failed preload leaves nothing behind.
    #[instrument(skip_all, fields(event_id = %event.id, total = event.total_count), err)]
    pub async fn preload(&self, event: NewEvent) -> Result<PreloadReport, CouponError> {
        let started = Instant::now();
        let id = event.id.clone();
        // Cheap early answer before generating millions of codes; the
        // primary key settles races.
        if self
            .pg
            .event_exists(&id)
            .await
            .map_err(pg_unavailable("checking the event"))?
        {
            return Err(CouponError::EventExists(id));
        }

        let t = Instant::now();
        let (event, mut coupons, mut generator) = tokio::task::spawn_blocking(move || {
            // StdRng is ChaCha12 seeded from the OS: a CSPRNG that, unlike
            // ThreadRng, can move on to the redraw closure below.
            let mut g = CodeGenerator::new(StdRng::from_os_rng(), DEFAULT_CODE_LENGTH);
            let mut taken = std::collections::HashSet::with_capacity(event.total_count as usize);
            let mut coupons: Vec<(String, i16)> = Vec::with_capacity(event.total_count as usize);
            for (pos, &n) in event.counts.iter().enumerate() {
                for code in g.unique_codes(&event.prefix, n as usize, &mut taken) {
                    coupons.push((code, pos as i16));
                }
            }
            // Policies interleave in the queue, so early users see every policy.
            coupons.shuffle(&mut rand::rng());
            (event, coupons, (g, taken))
        })
        .await
        .map_err(|e| CouponError::unavailable("generating codes", e))?;
        let generate = t.elapsed();

        let entries = |coupons: &[(String, i16)]| -> Vec<String> {
            coupons
                .iter()
                .map(|(c, pos)| queue_entry(c, &event.policies[*pos as usize].discount))
                .collect()
        };
        let staged = entries(&coupons);
        let prefix = event.prefix.clone();
        let mut redraw = move || loop {
            let c = generator.0.code(&prefix);
            if generator.1.insert(c.clone()) {
                break c;
            }
        };

        // PostgreSQL and Redis staging in parallel: staging is invisible
        // until make_live, and only runs after the database committed.
        let db = async {
            let t = Instant::now();
            let r = self
                .pg
                .insert_event(&event, &mut coupons, &mut redraw)
                .await;
            (r, t.elapsed())
        };
        let stage = async {
            let t = Instant::now();
            let r = self.redis.stage(&id, &staged).await;
            (r, t.elapsed())
        };
        let ((db_result, database), (stage_result, mut redis)) = tokio::join!(db, stage);
        let replaced = match db_result {
            Ok(n) => n,
            Err(e) => {
                let _ = self.redis.discard_staging(&id).await;
                return Err(match e {
                    PgStoreError::EventExists => CouponError::EventExists(id),
                    e => CouponError::unavailable("writing the event to postgres", e),
                });
            }
        };
        let t = Instant::now();
        let staged_ok = match stage_result {
            // A code redrawn after a collision differs from what was staged.
            Ok(()) if replaced > 0 => self.redis.stage(&id, &entries(&coupons)).await,
            other => other,
        };
        let live = match staged_ok {
            Ok(()) => {
                self.redis
                    .make_live(
                        &id,
                        event.window.starts_at().timestamp_millis(),
                        event.window.ends_at().timestamp_millis(),
                        event.total_count,
                    )
                    .await
            }
            Err(e) => Err(MakeLiveError::Store(e)),
        };
        redis += t.elapsed();
        if let Err(e) = live {
            let _ = self.redis.discard_staging(&id).await;
            if let Err(del) = self.pg.delete_event(&id).await {
                tracing::error!(error = %del, "could not remove the event after redis failed; \
                    run `coupond reconcile --event {id} --rebuild-redis` or delete it");
            }
            return Err(match e {
                MakeLiveError::Exists => CouponError::EventExists(id),
                MakeLiveError::Store(e) => {
                    CouponError::unavailable("loading the event into redis", e)
                }
            });
        }
        let report = PreloadReport {
            event_id: id,
            counts: event.counts.clone(),
            generate,
            database,
            redis,
            total: started.elapsed(),
        };
        tracing::info!(
            generate_ms = report.generate.as_millis() as u64,
            database_ms = report.database.as_millis() as u64,
            redis_ms = report.redis.as_millis() as u64,
            total_ms = report.total.as_millis() as u64,
            replaced,
            "preloaded event"
        );
        Ok(report)
    }

    /// The event with its policies and live counts.
    #[instrument(skip_all, fields(event_id = %id), err)]
    pub async fn event(&self, id: &EventId) -> Result<EventView, CouponError> {
        let event = self
            .pg
            .event(id)
            .await
            .map_err(pg_unavailable("reading the event"))?
            .ok_or_else(|| CouponError::EventNotFound(id.clone()))?;
        let (redis, finalized) = tokio::join!(self.redis.counts(id), self.pg.finalized_count(id));
        Ok(EventView {
            event,
            redis: redis.map_err(|e| CouponError::unavailable("reading counts from redis", e))?,
            finalized: finalized.map_err(pg_unavailable("counting finalized coupons"))?,
        })
    }
}
