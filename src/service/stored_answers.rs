//! Answers for issue requests Redis cannot decide: the user holds nothing
//! there, and the event is not in Redis (its keys expired after retention,
//! Redis lost them, or there is no such event) or a forced rebuild has it
//! offline. PostgreSQL decides: a holder gets their coupon back (the same
//! precedence as the issue script), everyone else is answered from the
//! event's recorded state, and EVENT_NOT_FOUND only when PostgreSQL does
//! not know the id.
//!
//! A flood of unknown ids must not become a flood of queries: what an id
//! looked like (known or not) is remembered briefly in a bounded cache, and
//! at most `LOOKUPS` queries run at once; a caller that cannot get a turn
//! within `LOOKUP_WAIT` is told UNAVAILABLE (nothing was issued).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::domain::{CouponError, EventId, EventState, IssuanceState, IssueCommand, IssueOutcome};
use crate::store::postgres::IssueFacts;
use crate::store::PgStore;

/// Event ids whose lookup is remembered (known and unknown alike).
const CACHE_ENTRIES: usize = 10_000;
/// How long a lookup is remembered.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// PostgreSQL queries of this path running at once, per server.
const LOOKUPS: usize = 8;
/// Longest wait for a turn before the caller is told UNAVAILABLE.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

pub struct StoredAnswers {
    pg: PgStore,
    cache: std::sync::Mutex<FactsCache>,
    lookups: Semaphore,
}

impl StoredAnswers {
    pub fn new(pg: PgStore) -> Self {
        Self {
            pg,
            cache: std::sync::Mutex::new(FactsCache::default()),
            lookups: Semaphore::new(LOOKUPS),
        }
    }

    /// The answer to `cmd` when Redis holds nothing for its user; `offline`
    /// when a rebuild has the event offline.
    pub async fn answer(
        &self,
        cmd: &IssueCommand,
        offline: bool,
    ) -> Result<IssueOutcome, CouponError> {
        let Some(facts) = self.facts(&cmd.event_id).await? else {
            return Ok(IssueOutcome::EventNotFound);
        };
        if facts.state == EventState::Live {
            let _turn = self.turn().await?;
            let held = self
                .pg
                .issuance(&cmd.event_id, &cmd.user_id)
                .await
                .map_err(|e| CouponError::unavailable("reading the issuance from postgres", e))?;
            if let Some((coupon, recorded)) = held {
                let state = IssuanceState::Finalized;
                return Ok(IssueOutcome::for_holder(
                    coupon,
                    state,
                    &recorded,
                    &cmd.request_id,
                ));
            }
        }
        if offline {
            return Err(CouponError::EventUnavailable {
                id: cmd.event_id.clone(),
                reason: "offline while its redis state is rebuilt",
            });
        }
        for_nobody(&cmd.event_id, &facts)
    }

    /// The event's facts, from the cache or PostgreSQL; `None`: unknown.
    async fn facts(&self, id: &EventId) -> Result<Option<IssueFacts>, CouponError> {
        if let Some(hit) = self.cache.lock().unwrap().get(id) {
            return Ok(hit);
        }
        let _turn = self.turn().await?;
        let facts = self
            .pg
            .issue_facts(id)
            .await
            .map_err(|e| CouponError::unavailable("reading the event from postgres", e))?;
        self.cache.lock().unwrap().put(id.clone(), facts.clone());
        Ok(facts)
    }

    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, CouponError> {
        match tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(CouponError::unavailable(
                "too many lookups in postgres of events redis does not hold",
                anyhow::anyhow!("no turn within {LOOKUP_WAIT:?}"),
            )),
        }
    }
}

/// What a user holding nothing is told of an event Redis does not hold.
fn for_nobody(id: &EventId, facts: &IssueFacts) -> Result<IssueOutcome, CouponError> {
    let now = facts.now;
    Ok(match facts.state {
        // Not open for issuing yet (a preload runs, or failed and may run
        // again).
        EventState::Preparing | EventState::Failed => IssueOutcome::NotStarted,
        EventState::Live if now < facts.window.starts_at() => IssueOutcome::NotStarted,
        EventState::Live if now >= facts.window.ends_at() => IssueOutcome::Ended,
        EventState::Live if facts.paused => IssueOutcome::Paused,
        EventState::Live => {
            return Err(CouponError::EventUnavailable {
                id: id.clone(),
                reason: "live, but redis does not hold it (lost?): an operator must rebuild it \
                         (coupond reconcile --rebuild-redis)",
            })
        }
    })
}

/// Recent lookups, oldest first; every entry lives `CACHE_TTL`, so the
/// oldest is also the first to expire.
#[derive(Default)]
struct FactsCache {
    entries: HashMap<EventId, (Option<IssueFacts>, Instant)>,
    order: VecDeque<(EventId, Instant)>,
}

impl FactsCache {
    /// A remembered lookup, its clock moved on by the time since.
    fn get(&mut self, id: &EventId) -> Option<Option<IssueFacts>> {
        self.evict(Instant::now());
        let (facts, at) = self.entries.get(id)?;
        Some(facts.clone().map(|mut f| {
            f.now += chrono::Duration::from_std(at.elapsed()).unwrap_or_default();
            f
        }))
    }

    fn put(&mut self, id: EventId, facts: Option<IssueFacts>) {
        let now = Instant::now();
        self.entries.insert(id.clone(), (facts, now));
        self.order.push_back((id, now));
        self.evict(now);
    }

    fn evict(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            if self.order.len() <= CACHE_ENTRIES && now.duration_since(*at) < CACHE_TTL {
                break;
            }
            // Only the entry this slot inserted (a newer one may replace it).
            if self.entries.get(id).is_some_and(|(_, t)| t == at) {
                self.entries.remove(id);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventWindow;
    use chrono::Utc;

    fn facts(state: EventState, paused: bool, starts: i64, ends: i64) -> IssueFacts {
        let now = Utc::now();
        IssueFacts {
            state,
            window: EventWindow::new(
                now + chrono::Duration::seconds(starts),
                now + chrono::Duration::seconds(ends),
            )
            .unwrap(),
            paused,
            now,
        }
    }

    #[test]
    fn a_user_holding_nothing_is_told_the_recorded_state() {
        let id = EventId::parse("e").unwrap();
        let told = |f: IssueFacts| for_nobody(&id, &f).map_err(|e| e.to_string());
        use EventState::*;
        assert_eq!(told(facts(Live, false, -20, -10)), Ok(IssueOutcome::Ended));
        assert_eq!(told(facts(Live, true, -20, -10)), Ok(IssueOutcome::Ended));
        assert_eq!(
            told(facts(Live, false, 10, 20)),
            Ok(IssueOutcome::NotStarted)
        );
        assert_eq!(told(facts(Live, true, -10, 10)), Ok(IssueOutcome::Paused));
        assert_eq!(
            told(facts(Preparing, false, -10, 10)),
            Ok(IssueOutcome::NotStarted)
        );
        assert_eq!(
            told(facts(Failed, false, -10, 10)),
            Ok(IssueOutcome::NotStarted)
        );
        let lost = told(facts(Live, false, -10, 10)).unwrap_err();
        assert!(lost.contains("rebuild"), "{lost}");
    }

    #[test]
    fn the_cache_is_bounded_and_forgets() {
        let mut c = FactsCache::default();
        for i in 0..CACHE_ENTRIES + 10 {
            c.put(EventId::parse(format!("e{i}")).unwrap(), None);
        }
        assert_eq!(c.entries.len(), CACHE_ENTRIES);
        assert_eq!(c.order.len(), CACHE_ENTRIES);
        assert!(
            c.get(&EventId::parse("e0").unwrap()).is_none(),
            "oldest gone"
        );
        let last = EventId::parse(format!("e{}", CACHE_ENTRIES + 9)).unwrap();
        assert_eq!(c.get(&last).map(|f| f.is_none()), Some(true));
        // A newer lookup of the same id outlives the older slot's eviction.
        c.put(last.clone(), Some(facts(EventState::Live, false, -1, 1)));
        c.evict(Instant::now() + CACHE_TTL / 2);
        assert!(c.get(&last).is_some_and(|f| f.is_some()));
        c.evict(Instant::now() + CACHE_TTL * 2);
        assert!(c.entries.is_empty() && c.order.is_empty());
    }
}
