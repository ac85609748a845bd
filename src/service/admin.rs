//! Preloading events (through the job service) and reading them back.

use std::time::Instant;

use tracing::instrument;

use crate::domain::{Control, CouponError, EventId, EventState, NewEvent, StoredEvent};
use crate::service::preload::PreloadJobs;
use crate::store::postgres::PgStoreError;
use crate::store::redis::{Presence, RedisCounts, Synced};
use crate::store::{PgStore, RedisStore};

/// Most events one page of `events` returns.
pub const MAX_PAGE: u32 = 1_000;

/// An event with its live counts.
#[derive(Debug, Clone)]
pub struct EventView {
    pub event: StoredEvent,
    pub redis: RedisCounts,
    pub finalized: u64,
    /// A forced rebuild has the event offline and has not finished.
    pub offline: bool,
}

pub struct AdminService {
    pg: PgStore,
    redis: RedisStore,
    jobs: PreloadJobs,
}

fn pg_unavailable(context: &'static str) -> impl FnOnce(PgStoreError) -> CouponError {
    move |e| CouponError::unavailable(context, e)
}

impl AdminService {
    pub fn new(pg: PgStore, redis: RedisStore, jobs: PreloadJobs) -> Self {
        Self { pg, redis, jobs }
    }

    /// Starts (or attaches to) the event's preload job and waits for its
    /// end until `deadline`: the LIVE event, or why not.
    #[instrument(skip_all, fields(event_id = %event.id, total = event.total_count))]
    pub async fn preload(
        &self,
        event: NewEvent,
        deadline: Instant,
    ) -> Result<StoredEvent, CouponError> {
        self.jobs.submit(&event).await?;
        self.jobs.wait(&event.id, deadline).await
    }

    /// The event with its policies, preload state and live counts.
    #[instrument(skip_all, fields(event_id = %id), err(level = "debug"))]
    pub async fn event(&self, id: &EventId) -> Result<EventView, CouponError> {
        let event = self.stored(id).await?;
        self.view(event).await
    }

    /// Up to `size` events after `after` in id order, with their counts.
    pub async fn events(&self, after: &str, size: u32) -> Result<Vec<EventView>, CouponError> {
        let events = self
            .pg
            .events_after(after, size.min(MAX_PAGE))
            .await
            .map_err(pg_unavailable("listing events"))?;
        let mut views = Vec::with_capacity(events.len());
        for e in events {
            views.push(self.view(e).await?);
        }
        Ok(views)
    }

    /// Applies an operator's control to a LIVE event: recorded in
    /// PostgreSQL first (with the reason and the next control number), then
    /// in effect in Redis. Redis takes a control only when it is newer than
    /// what it holds, so a retry, the sweeper's repair of a control whose
    /// Redis step failed, or a rebuild's copy never undo a newer one. An
    /// event whose Redis keys expired after retention is refused, changing
    /// nothing.
    #[instrument(skip_all, fields(event_id = %id, action = control.action()), err(level = "debug"))]
    pub async fn control(
        &self,
        id: &EventId,
        control: Control,
        reason: &str,
    ) -> Result<EventView, CouponError> {
        let event = self.stored(id).await?;
        let not_live = |e: &StoredEvent| CouponError::NotLive {
            id: id.clone(),
            state: e.preload.state.as_str(),
        };
        if event.preload.state != EventState::Live {
            return Err(not_live(&event));
        }
        if event.archived_at.is_some() {
            return Err(CouponError::Archived(id.clone()));
        }
        control.check_window(event.window.starts_at())?;
        if self.expired(&event).await? {
            return Err(CouponError::Expired(id.clone()));
        }
        let applied = self
            .pg
            .apply_control(id, &control, reason)
            .await
            .map_err(pg_unavailable("recording the control"))?;
        let Some(event) = applied else {
            // Archived since it was read (the archive held its row).
            return Err(match self.stored(id).await?.archived_at {
                Some(_) => CouponError::Archived(id.clone()),
                None => not_live(&event),
            });
        };
        let synced = self
            .redis
            .sync_controls(id, event.shards, &event.controls())
            .await
            .map_err(|e| {
                CouponError::unavailable(
                    "applying the control in redis (it is recorded: the sweeper applies it \
                     within a second, or call again)",
                    e,
                )
            })?;
        if synced == Synced::NotLive {
            return Err(CouponError::unavailable(
                "the event is not in redis (lost?): the control is recorded and a rebuild \
                 applies it (coupond reconcile --rebuild-redis)",
                anyhow::anyhow!("meta hash missing"),
            ));
        }
        tracing::info!(reason, "event controlled");
        self.view(event).await
    }

    /// Whether a settled event's Redis keys have expired (retention): no
    /// meta, live or parked by a rebuild.
    async fn expired(&self, event: &StoredEvent) -> Result<bool, CouponError> {
        if event.settled_at.is_none() {
            return Ok(false);
        }
        let presence = self
            .redis
            .presence(&event.id, event.shards)
            .await
            .map_err(|e| CouponError::unavailable("reading the event from redis", e))?;
        Ok(presence == Presence::Absent)
    }

    /// The event as PostgreSQL records it; NOT_FOUND when there is none.
    async fn stored(&self, id: &EventId) -> Result<StoredEvent, CouponError> {
        self.pg
            .event(id)
            .await
            .map_err(pg_unavailable("reading the event"))?
            .ok_or_else(|| CouponError::EventNotFound(id.clone()))
    }

    async fn view(&self, event: StoredEvent) -> Result<EventView, CouponError> {
        if event.preload.state != EventState::Live {
            // Not live: Redis holds nothing of it and nothing is issued.
            return Ok(EventView {
                event,
                redis: RedisCounts::default(),
                finalized: 0,
                offline: false,
            });
        }
        let (redis, presence, finalized) = tokio::join!(
            self.redis.counts(&event.id, event.shards),
            self.redis.presence(&event.id, event.shards),
            self.pg.finalized_count(&event.id)
        );
        let redis_down = |e| CouponError::unavailable("reading counts from redis", e);
        let mut redis = redis.map_err(redis_down)?;
        let presence = presence.map_err(redis_down)?;
        let finalized = finalized.map_err(pg_unavailable("counting finalized coupons"))?;
        if presence == Presence::Absent && event.settled_at.is_some() {
            // Retention removed the keys; PostgreSQL has the whole record.
            redis = RedisCounts {
                remaining: u64::from(event.total_count).saturating_sub(finalized),
                issued: finalized,
                ..Default::default()
            };
        }
        if event.archived_at.is_some() {
            // Its free codes were dropped; any left in Redis's queue are dead.
            redis.remaining = 0;
        }
        Ok(EventView {
            event,
            redis,
            finalized,
            offline: presence == Presence::Offline,
        })
    }
}
