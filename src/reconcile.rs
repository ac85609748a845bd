//! Reconciliation of an event's Redis state with PostgreSQL, and the rebuild
//! of the Redis state from PostgreSQL after a Redis loss.

use std::collections::{HashMap, HashSet};
use std::fmt;

use rand::seq::SliceRandom;

use crate::domain::{EventId, EventState, IssuanceState, IssuedCoupon};
use crate::store::postgres::CouponRow;
use crate::store::record::{issued_record, queue_entry};
use crate::store::redis::{RebuiltState, RedisSnapshot};
use crate::store::{PgStore, RedisStore};

/// How many examples each list of the printed report shows.
const SHOW: usize = 10;

/// The differences between Redis and PostgreSQL for one event.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub event_id: String,
    /// The event's preload state in PostgreSQL (PREPARING events are not
    /// compared: their job owns both stores until it ends).
    pub preload_state: String,
    pub pg_total: usize,
    pub pg_available: usize,
    pub pg_issued: usize,
    pub redis_live: bool,
    pub redis_queue: usize,
    pub redis_issued: usize,
    pub redis_pending: usize,
    /// Issued in Redis, pending, not yet ISSUED in PostgreSQL: in flight, fine.
    pub in_flight: usize,
    /// Codes waiting in the queue that are also issued (Redis or PostgreSQL).
    pub queued_and_issued: Vec<String>,
    /// Codes in the queue more than once.
    pub queued_twice: Vec<String>,
    /// (user, code) issued in Redis, not pending, and not in PostgreSQL: lost.
    pub issued_in_redis_only: Vec<(String, String)>,
    /// (user, code) ISSUED in PostgreSQL that Redis does not know.
    pub issued_in_pg_only: Vec<(String, String)>,
    /// AVAILABLE codes in PostgreSQL that are neither queued nor issued in Redis.
    pub in_neither: Vec<String>,
    /// Codes Redis holds (queue or issued) that PostgreSQL has not for this event.
    pub unknown_to_pg: Vec<String>,
}

impl Report {
    /// True when nothing differs except in-flight issuances.
    pub fn consistent(&self) -> bool {
        self.queued_and_issued.is_empty()
            && self.queued_twice.is_empty()
            && self.issued_in_redis_only.is_empty()
            && self.issued_in_pg_only.is_empty()
            && self.in_neither.is_empty()
            && self.unknown_to_pg.is_empty()
    }
}

fn list<T: fmt::Debug>(f: &mut fmt::Formatter<'_>, name: &str, v: &[T]) -> fmt::Result {
    write!(f, "  {name}: {}", v.len())?;
    if !v.is_empty() {
        write!(f, "  e.g. {:?}", &v[..v.len().min(SHOW)])?;
    }
    writeln!(f)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "event {} ({})", self.event_id, self.preload_state)?;
        if self.preload_state == EventState::Preparing.as_str() {
            return write!(f, "  preload job running: not compared");
        }
        writeln!(
            f,
            "  postgres: {} coupons, {} available, {} issued",
            self.pg_total, self.pg_available, self.pg_issued
        )?;
        writeln!(
            f,
            "  redis:    live={} queue={} issued={} pending={}",
            self.redis_live, self.redis_queue, self.redis_issued, self.redis_pending
        )?;
        writeln!(
            f,
            "  in flight (pending, not yet in postgres): {}",
            self.in_flight
        )?;
        list(f, "codes both queued and issued", &self.queued_and_issued)?;
        list(f, "codes queued twice", &self.queued_twice)?;
        list(f, "issued in redis only (lost)", &self.issued_in_redis_only)?;
        list(
            f,
            "issued in postgres only (unknown to redis)",
            &self.issued_in_pg_only,
        )?;
        list(
            f,
            "available codes in neither queue nor issued",
            &self.in_neither,
        )?;
        list(f, "codes in redis unknown to postgres", &self.unknown_to_pg)?;
        write!(
            f,
            "  verdict: {}",
            if self.consistent() {
                "CONSISTENT"
            } else {
                "INCONSISTENT"
            }
        )
    }
}

/// Compares a Redis snapshot with PostgreSQL's rows. Pure.
pub fn compare(event: &EventId, pg: &[CouponRow], redis: &RedisSnapshot) -> Report {
    let mut r = Report {
        event_id: event.to_string(),
        pg_total: pg.len(),
        redis_live: redis.live,
        redis_queue: redis.queue.len(),
        redis_issued: redis.issued.len(),
        redis_pending: redis.pending.len(),
        ..Default::default()
    };
    let pg_by_code: HashMap<&str, &CouponRow> = pg.iter().map(|c| (c.code.as_str(), c)).collect();
    let pg_user_code: HashMap<&str, &str> = pg
        .iter()
        .filter_map(|c| {
            c.issued
                .as_ref()
                .map(|(u, _, _)| (u.as_str(), c.code.as_str()))
        })
        .collect();
    r.pg_issued = pg_user_code.len();
    r.pg_available = pg.len() - r.pg_issued;

    let redis_issued_codes: HashSet<&str> = redis
        .issued
        .values()
        .map(|rec| rec.coupon.code.as_str())
        .collect();
    let mut seen = HashSet::new();
    for code in &redis.queue {
        if !seen.insert(code.as_str()) {
            r.queued_twice.push(code.clone());
        }
        let issued_in_pg = pg_by_code
            .get(code.as_str())
            .is_some_and(|c| c.issued.is_some());
        if redis_issued_codes.contains(code.as_str()) || issued_in_pg {
            r.queued_and_issued.push(code.clone());
        }
        if !pg_by_code.contains_key(code.as_str()) {
            r.unknown_to_pg.push(code.clone());
        }
    }
    for (user, rec) in &redis.issued {
        let code = rec.coupon.code.as_str();
        if !pg_by_code.contains_key(code) {
            r.unknown_to_pg.push(code.to_owned());
            continue;
        }
        if pg_user_code.get(user.as_str()) == Some(&code) {
            continue;
        }
        if redis.pending.contains_key(user) && rec.state == IssuanceState::Pending {
            r.in_flight += 1;
        } else {
            r.issued_in_redis_only.push((user.clone(), code.to_owned()));
        }
    }
    for (user, code) in &pg_user_code {
        if redis.issued.get(*user).map(|rec| rec.coupon.code.as_str()) != Some(*code) {
            r.issued_in_pg_only
                .push(((*user).to_owned(), (*code).to_owned()));
        }
    }
    for c in pg.iter().filter(|c| c.issued.is_none()) {
        if !seen.contains(c.code.as_str()) && !redis_issued_codes.contains(c.code.as_str()) {
            r.in_neither.push(c.code.clone());
        }
    }
    r
}

/// Reads both sides and compares them.
pub async fn reconcile(
    pg: &PgStore,
    redis: &RedisStore,
    event: &EventId,
) -> anyhow::Result<Report> {
    let state = match pg.event(event).await? {
        Some(e) => e.preload.state,
        None => anyhow::bail!("event {event} is not in postgres"),
    };
    if state == EventState::Preparing {
        return Ok(Report {
            event_id: event.to_string(),
            preload_state: state.as_str().into(),
            ..Default::default()
        });
    }
    let rows = pg.coupons(event).await?;
    let snap = redis.snapshot(event).await?;
    let mut report = compare(event, &rows, &snap);
    report.preload_state = state.as_str().into();
    Ok(report)
}

/// Why a rebuild was refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("event {0} is not in postgres")]
    UnknownEvent(EventId),
    #[error("event {0} is live in redis; rebuild with --force to take it offline first")]
    Live(EventId),
    #[error("event {0} is {1} (not LIVE): its preload job owns its Redis state")]
    NotLive(EventId, &'static str),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Rebuilds the event's Redis state from PostgreSQL and installs it
/// atomically. Issuances that Redis still holds but PostgreSQL has not
/// recorded yet (pending) are kept, pending, with their codes out of the
/// queue. A live event is refused unless `force`, which takes it offline
/// first (Issue answers EVENT_NOT_FOUND for the few moments of the rebuild).
pub async fn rebuild(
    pg: &PgStore,
    redis: &RedisStore,
    event: &EventId,
    force: bool,
) -> Result<(), RebuildError> {
    let stored = pg
        .event(event)
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| RebuildError::UnknownEvent(event.clone()))?;
    if stored.preload.state != EventState::Live {
        return Err(RebuildError::NotLive(
            event.clone(),
            stored.preload.state.as_str(),
        ));
    }
    if redis
        .event_exists(event)
        .await
        .map_err(anyhow::Error::from)?
    {
        if !force {
            return Err(RebuildError::Live(event.clone()));
        }
        redis
            .take_offline(event)
            .await
            .map_err(anyhow::Error::from)?;
    }
    let rows = pg.coupons(event).await.map_err(anyhow::Error::from)?;
    let leftover = redis.snapshot(event).await.map_err(anyhow::Error::from)?;

    let mut issued: HashMap<String, String> = HashMap::new();
    let mut taken: HashSet<String> = HashSet::new();
    for c in &rows {
        if let Some((user, at, req)) = &c.issued {
            let coupon = IssuedCoupon {
                code: c.code.clone(),
                discount: c.discount,
                issued_at: *at,
            };
            issued.insert(
                user.clone(),
                issued_record(&coupon, req, IssuanceState::Finalized),
            );
            taken.insert(c.code.clone());
        }
    }
    let pg_codes: HashSet<&str> = rows.iter().map(|c| c.code.as_str()).collect();
    let mut pending = Vec::new();
    for (user, rec) in &leftover.issued {
        let code = &rec.coupon.code;
        if issued.contains_key(user) || taken.contains(code) || !pg_codes.contains(code.as_str()) {
            continue; // PostgreSQL's record wins
        }
        issued.insert(
            user.clone(),
            issued_record(&rec.coupon, &rec.request_id, IssuanceState::Pending),
        );
        taken.insert(code.clone());
        pending.push((user.clone(), rec.coupon.issued_at.timestamp_millis()));
    }
    let mut queue: Vec<String> = rows
        .iter()
        .filter(|c| c.issued.is_none() && !taken.contains(&c.code))
        .map(|c| queue_entry(&c.code, &c.discount))
        .collect();
    queue.shuffle(&mut rand::rng());
    let issued: Vec<(String, String)> = issued.into_iter().collect();
    redis
        .install_rebuilt(
            event,
            RebuiltState {
                queue: &queue,
                issued: &issued,
                pending: &pending,
                starts_ms: stored.window.starts_at().timestamp_millis(),
                ends_ms: stored.window.ends_at().timestamp_millis(),
                total: stored.total_count,
                preload_id: &stored.preload.preload_id,
            },
        )
        .await
        .map_err(anyhow::Error::from)?;
    tracing::info!(
        event_id = %event,
        queued = queue.len(),
        issued = issued.len(),
        pending = pending.len(),
        "rebuilt redis state from postgres"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Discount, DiscountType};
    use crate::store::record::IssuedRecord;
    use chrono::Utc;

    fn row(code: &str, user: Option<&str>) -> CouponRow {
        CouponRow {
            code: code.into(),
            discount: Discount::new(DiscountType::Percent, 5).unwrap(),
            issued: user.map(|u| (u.into(), Utc::now(), String::new())),
        }
    }

    fn rec(code: &str, state: IssuanceState) -> IssuedRecord {
        IssuedRecord {
            coupon: IssuedCoupon {
                code: code.into(),
                discount: Discount::new(DiscountType::Percent, 5).unwrap(),
                issued_at: Utc::now(),
            },
            request_id: String::new(),
            state,
        }
    }

    fn event() -> EventId {
        EventId::parse("e").unwrap()
    }

    #[test]
    fn a_healthy_event_with_one_in_flight_issuance_is_consistent() {
        let pg = [row("A", Some("u1")), row("B", None), row("C", None)];
        let snap = RedisSnapshot {
            live: true,
            queue: vec!["B".into()],
            issued: [
                ("u1".to_string(), rec("A", IssuanceState::Finalized)),
                ("u2".to_string(), rec("C", IssuanceState::Pending)),
            ]
            .into(),
            pending: [("u2".to_string(), 1)].into(),
        };
        let r = compare(&event(), &pg, &snap);
        assert!(r.consistent(), "{r}");
        assert_eq!(r.in_flight, 1);
        assert_eq!((r.pg_issued, r.pg_available), (1, 2));
    }

    #[test]
    fn every_kind_of_difference_is_reported() {
        let pg = [
            row("A", Some("u1")), // issued in pg, unknown to redis
            row("B", None),       // in neither
            row("C", None),       // queued and issued in redis
            row("D", None),       // issued in redis, not pending: lost
        ];
        let snap = RedisSnapshot {
            live: true,
            queue: vec!["C".into(), "X".into(), "X".into()],
            issued: [
                ("u3".to_string(), rec("C", IssuanceState::Pending)),
                ("u4".to_string(), rec("D", IssuanceState::Finalized)),
            ]
            .into(),
            pending: [("u3".to_string(), 1)].into(),
        };
        let r = compare(&event(), &pg, &snap);
        assert!(!r.consistent());
        assert_eq!(
            r.issued_in_pg_only,
            vec![("u1".to_string(), "A".to_string())]
        );
        assert_eq!(r.in_neither, vec!["B".to_string()]);
        assert_eq!(r.queued_and_issued, vec!["C".to_string()]);
        assert_eq!(
            r.issued_in_redis_only,
            vec![("u4".to_string(), "D".to_string())]
        );
        assert_eq!(r.queued_twice, vec!["X".to_string()]);
        assert_eq!(r.unknown_to_pg, vec!["X".to_string(), "X".to_string()]);
    }

    #[test]
    fn a_lost_redis_is_inconsistent() {
        let pg = [row("A", Some("u1")), row("B", None)];
        let r = compare(&event(), &pg, &RedisSnapshot::default());
        assert!(!r.consistent());
        assert_eq!(r.issued_in_pg_only.len(), 1);
        assert_eq!(r.in_neither, vec!["B".to_string()]);
    }
}
