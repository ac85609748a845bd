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
/// How long a lookup is remembered: short, since an id unknown a moment
/// ago may be preloaded now (then it answers NOT_STARTED, not
/// EVENT_NOT_FOUND).
const CACHE_TTL: Duration = Duration::from_secs(2);
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
        let Some(facts) = self.facts(&cmd.event_id, offline).await? else {
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
    /// An event Redis has offline exists: the cache is not asked then.
    async fn facts(&self, id: &EventId, offline: bool) -> Result<Option<IssueFacts>, CouponError> {
        if !offline {
            if let Some(hit) = self.cache.lock().unwrap().get(id) {
                return Ok(hit);
            }
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

/// What a user PostgreSQL knows no coupon of is told of an event Redis
/// does not hold. Only a settled event (ended with nothing pending) can
/// say ENDED: one Redis lost while it was live may hold issuances still on
/// their way to PostgreSQL, so a user asking might hold one, and is told to
/// try again (UNAVAILABLE) rather than something untrue.
fn for_nobody(id: &EventId, facts: &IssueFacts) -> Result<IssueOutcome, CouponError> {
    Ok(match facts.state {
        // Never issued yet (a preload runs, or failed and may run again).
        EventState::Preparing | EventState::Failed => IssueOutcome::NotStarted,
        EventState::Live if facts.settled => IssueOutcome::Ended,
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
    /// A remembered lookup.
    fn get(&mut self, id: &EventId) -> Option<Option<IssueFacts>> {
        self.evict(Instant::now());
        self.entries.get(id).map(|(facts, _)| facts.clone())
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

    fn facts(state: EventState, settled: bool) -> IssueFacts {
        IssueFacts { state, settled }
    }

    #[test]
    fn a_user_holding_nothing_is_told_ended_only_of_a_settled_event() {
        let id = EventId::parse("e").unwrap();
        let told = |f: IssueFacts| for_nobody(&id, &f).map_err(|e| e.to_string());
        use EventState::*;
        assert_eq!(told(facts(Live, true)), Ok(IssueOutcome::Ended));
        assert_eq!(told(facts(Preparing, false)), Ok(IssueOutcome::NotStarted));
        assert_eq!(told(facts(Failed, false)), Ok(IssueOutcome::NotStarted));
        let lost = told(facts(Live, false)).unwrap_err();
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
        c.put(last.clone(), Some(facts(EventState::Live, false)));
        c.evict(Instant::now() + CACHE_TTL / 2);
        assert!(c.get(&last).is_some_and(|f| f.is_some()));
        c.evict(Instant::now() + CACHE_TTL * 2);
        assert!(c.entries.is_empty() && c.order.is_empty());
    }
}
