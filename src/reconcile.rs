//! Reconciliation of an event's Redis state with PostgreSQL, and the rebuild
//! of the Redis state from PostgreSQL after a Redis loss.

use std::collections::{HashMap, HashSet};
use std::fmt;

use rand::seq::SliceRandom;

use crate::config::KafkaSettings;
use crate::domain::{EventId, EventState, IssuanceState, IssuedCoupon, StoredEvent};
use crate::kafka::backlog::Backlog;
use crate::store::postgres::CouponRow;
use crate::store::record::{issued_record, queue_entry};
use crate::store::redis::{LockAction, Presence, RebuiltState, RedisSnapshot};
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
    /// Issuances PostgreSQL refused: users told ISSUED who hold nothing.
    pub conflicts: Vec<Conflict>,
    /// Users issued a second coupon after Redis lost their first, which
    /// PostgreSQL kept: they hold the first; the second went back to the
    /// queue. Resolved (not a difference), reported for the record.
    pub superseded: Vec<Superseded>,
}

/// A user told ISSUED with `told` who holds `holds` (PostgreSQL's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Superseded {
    pub user: String,
    pub told: String,
    pub holds: String,
}

/// A user whose issuance PostgreSQL refused, and who holds the code there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Conflict {
    pub user: String,
    pub code: String,
    /// The user PostgreSQL records the code for (`None`: nobody, or the
    /// code is not the event's).
    pub holder: Option<String>,
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
            && self.conflicts.is_empty()
    }

    /// Keeps only the differences `later` (a second look) shows too. Reads
    /// of a live event are not atomic: a code popped between reading the
    /// queue and the issued hash, or finalized between reading PostgreSQL
    /// and Redis, looks like a difference once, never twice.
    pub fn keep_repeated(&mut self, later: &Report) {
        fn keep<T: Eq + std::hash::Hash>(v: &mut Vec<T>, later: &[T]) {
            let later: HashSet<&T> = later.iter().collect();
            v.retain(|x| later.contains(x));
        }
        keep(&mut self.queued_and_issued, &later.queued_and_issued);
        keep(&mut self.queued_twice, &later.queued_twice);
        keep(&mut self.issued_in_redis_only, &later.issued_in_redis_only);
        keep(&mut self.issued_in_pg_only, &later.issued_in_pg_only);
        keep(&mut self.in_neither, &later.in_neither);
        keep(&mut self.unknown_to_pg, &later.unknown_to_pg);
        keep(&mut self.conflicts, &later.conflicts);
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
        writeln!(
            f,
            "  conflicts (told ISSUED, refused by postgres): {}",
            self.conflicts.len()
        )?;
        for c in self.conflicts.iter().take(SHOW) {
            writeln!(
                f,
                "    user {:?} code {} held in postgres by {}",
                c.user,
                c.code,
                c.holder
                    .as_deref()
                    .map_or("nobody".into(), |h| format!("{h:?}"))
            )?;
        }
        writeln!(
            f,
            "  superseded (resolved: told a second code, hold postgres's first): {}",
            self.superseded.len()
        )?;
        for s in self.superseded.iter().take(SHOW) {
            writeln!(f, "    user {:?} told {} holds {}", s.user, s.told, s.holds)?;
        }
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
        if rec.state == IssuanceState::Conflicted {
            r.conflicts.push(Conflict {
                user: user.clone(),
                code: code.to_owned(),
                holder: pg_by_code
                    .get(code)
                    .and_then(|c| c.issued.as_ref().map(|(u, _, _)| u.clone())),
            });
            continue;
        }
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
    r.conflicts.sort_by(|a, b| a.user.cmp(&b.user));
    r.superseded = redis
        .superseded
        .iter()
        .map(|(user, (told, holds))| Superseded {
            user: user.clone(),
            told: told.clone(),
            holds: holds.clone(),
        })
        .collect();
    r.superseded.sort_by(|a, b| a.user.cmp(&b.user));
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
    let look = || async {
        let rows = pg.coupons(event).await?;
        let snap = redis.snapshot(event).await?;
        anyhow::Ok((compare(event, &rows, &snap), snap.live))
    };
    let (mut report, live) = look().await?;
    if live && !report.consistent() {
        report.keep_repeated(&look().await?.0);
    }
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
    #[error(
        "the finalizer has {lag} unconsumed messages in kafka; wait until it caught up \
         (consumer lag 0), or rebuild with --force, which reads them and keeps the event's \
         issuances among them"
    )]
    Lagging { lag: u64 },
    #[error(
        "rebuild failed: {0:#}; the event is back online as it was before (nothing was \
         rebuilt): run the rebuild again"
    )]
    Restored(anyhow::Error),
    #[error(
        "rebuild failed: {0:#}; the event stays offline (putting it back failed too: {1:#}): \
         run the rebuild again to finish it"
    )]
    LeftOffline(anyhow::Error, anyhow::Error),
    #[error(
        "another rebuild of the event is running; if it died, its lock is gone within {}s: \
         run the rebuild again then",
        .0.as_secs() + 1
    )]
    Busy(std::time::Duration),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// What a rebuild kept besides PostgreSQL's records, and every issuance
/// it could not keep as the user's (none is dropped without a line here).
#[derive(Debug, Default, serde::Serialize)]
pub struct RebuildReport {
    /// The finalizer's consumer lag when the rebuild started.
    pub lag: u64,
    /// This rebuild finished one that had taken the event offline and
    /// stopped before installing (killed, or unable to put it back).
    pub resumed: bool,
    pub queued: usize,
    pub finalized: usize,
    /// Pending issuances kept from Redis and from the finalizer's backlog.
    pub pending_from_redis: usize,
    pub pending_from_kafka: usize,
    /// Issuances whose code PostgreSQL or an issuance kept earlier holds:
    /// kept as conflicted (the user holds nothing; reconcile lists them).
    pub conflicted: Vec<Conflict>,
    /// (user, code) whose user holds another code in PostgreSQL, which wins.
    pub superseded: Vec<(String, String)>,
    /// (user, code) whose code is not the event's in PostgreSQL.
    pub unknown_code: Vec<(String, String)>,
    /// (user, code) of a second issuance of a user whose other one is
    /// kept, both not yet in PostgreSQL: the code stays out of the queue
    /// until the finalizer records one of them.
    pub held_out: Vec<(String, String)>,
}

impl fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resumed {
            writeln!(
                f,
                "the event was offline from a rebuild that did not finish: finished it"
            )?;
        }
        writeln!(
            f,
            "rebuilt: {} queued, {} finalized, {} pending kept from redis, {} pending from the \
             finalizer's backlog (lag was {})",
            self.queued, self.finalized, self.pending_from_redis, self.pending_from_kafka, self.lag
        )?;
        for c in &self.conflicted {
            writeln!(
                f,
                "  conflicted: user {:?} code {} (held by {})",
                c.user,
                c.code,
                c.holder.as_deref().unwrap_or("an issuance kept earlier")
            )?;
        }
        for (u, c) in &self.superseded {
            writeln!(
                f,
                "  superseded: user {u:?} code {c} (postgres records another code for the user)"
            )?;
        }
        for (u, c) in &self.unknown_code {
            writeln!(
                f,
                "  dropped: user {u:?} code {c} is not the event's in postgres"
            )?;
        }
        for (u, c) in &self.held_out {
            writeln!(
                f,
                "  held out: user {u:?} code {c} (a second issuance of the user, in flight; \
                 the finalizer settles which one the user keeps)"
            )?;
        }
        Ok(())
    }
}

/// An issuance the rebuild may keep: from Redis's leftovers or the backlog.
struct Candidate {
    user: String,
    coupon: IssuedCoupon,
    request_id: String,
    conflicted: bool,
    from_kafka: bool,
}

/// Rebuilds the event's Redis state from PostgreSQL and installs it
/// atomically. Refused while the finalizer lags unless `force`, and for a
/// live event unless `force` (which takes it offline: Issue changes nothing
/// for the moments of the rebuild; holders still get their coupons, others
/// are told UNAVAILABLE). Issuances PostgreSQL has not recorded yet, found
/// in Redis or in the finalizer's backlog, are kept pending with their
/// codes out of the queue; the report names every one that could not be
/// kept as the user's.
///
/// All or nothing: a rebuild that fails after taking the event offline
/// puts it back online as it was (`Restored`); one that could not even do
/// that (or was killed) leaves it offline, and the next rebuild of the
/// event finishes it (with or without `force`). `stop` (a signal) ends it
/// the same way as a failure: the event goes back online as it was.
pub async fn rebuild(
    pg: &PgStore,
    redis: &RedisStore,
    kafka: &KafkaSettings,
    event: &EventId,
    force: bool,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<RebuildReport, RebuildError> {
    let holder = uuid_like();
    match redis
        .rebuild_lock(event, LockAction::Take, &holder, LOCK_LIFETIME)
        .await
        .map_err(anyhow::Error::from)?
    {
        None => {}
        Some(left) => return Err(RebuildError::Busy(left)),
    }
    let renewing = async {
        loop {
            tokio::time::sleep(LOCK_LIFETIME / 3).await;
            let renewed = redis
                .rebuild_lock(event, LockAction::Renew, &holder, LOCK_LIFETIME)
                .await;
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "renewing the rebuild lock failed");
            }
        }
    };
    let result = tokio::select! {
        r = rebuild_locked(pg, redis, kafka, event, force) => r,
        _ = renewing => unreachable!("renews until the rebuild ends"),
        _ = stop.cancelled() => {
            let stopped = anyhow::anyhow!("stopped by a signal");
            Err(undo_offline(redis, event, stopped).await)
        }
    };
    let _ = redis
        .rebuild_lock(event, LockAction::Release, &holder, LOCK_LIFETIME)
        .await;
    result
}

/// How long a rebuild's lock outlives a rebuild that died (renewed every
/// third of it while one runs).
const LOCK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);

fn uuid_like() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
}

async fn rebuild_locked(
    pg: &PgStore,
    redis: &RedisStore,
    kafka: &KafkaSettings,
    event: &EventId,
    force: bool,
) -> Result<RebuildReport, RebuildError> {
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
    let presence = redis.presence(event).await.map_err(anyhow::Error::from)?;
    // An earlier forced rebuild took the event offline and did not finish.
    let resumed = presence == Presence::Offline;
    let lag = read_backlog(kafka).await?.lag();
    if lag > 0 && !force && !resumed {
        return Err(RebuildError::Lagging { lag });
    }
    if presence == Presence::Live {
        if !force {
            return Err(RebuildError::Live(event.clone()));
        }
        if let Err(e) = redis.take_offline(event).await {
            // Its reply may be what got lost: never leave it parked unsaid.
            return Err(undo_offline(redis, event, e.into()).await);
        }
    }
    match rebuild_from_sources(pg, redis, kafka, &stored).await {
        Ok(mut report) => {
            report.lag = lag;
            report.resumed = resumed;
            tracing::info!(event_id = %event, ?report, "rebuilt redis state from postgres");
            Ok(report)
        }
        Err(e) if presence == Presence::Absent => Err(e.into()),
        Err(e) => Err(undo_offline(redis, event, e).await),
    }
}

/// After a rebuild failed with the event (maybe) offline: puts it back
/// online as it was, and says which happened.
pub async fn undo_offline(
    redis: &RedisStore,
    event: &EventId,
    failure: anyhow::Error,
) -> RebuildError {
    match redis.bring_online(event).await {
        Ok(Some(true)) => RebuildError::Restored(failure),
        Ok(_) => failure.into(),
        Err(again) => RebuildError::LeftOffline(failure, again.into()),
    }
}

/// Reads the three sources and installs what they add up to. The order
/// makes the view consistent with a finalizer running beside it: the
/// backlog is read first (the group's committed offsets, then the messages
/// after them), PostgreSQL's rows after; a batch the finalizer commits in
/// between is in the rows, never in neither.
async fn rebuild_from_sources(
    pg: &PgStore,
    redis: &RedisStore,
    kafka: &KafkaSettings,
    stored: &StoredEvent,
) -> anyhow::Result<RebuildReport> {
    let event = &stored.id;
    let candidates = candidates(redis, kafka, event).await?;
    let rows = pg.coupons(event).await?;
    let (state, report) = plan(&rows, candidates);
    // Unsettled first: the keys installed next carry no expiry, and a
    // settled event is one the sweeper no longer visits (a rebuild that
    // dies after this only makes the sweeper settle it again).
    pg.unsettle(event).await?;
    redis
        .install_rebuilt(
            event,
            RebuiltState {
                queue: &state.queue,
                issued: &state.issued,
                pending: &state.pending,
                starts_ms: stored.window.starts_at().timestamp_millis(),
                total: stored.total_count,
                preload_id: &stored.preload.preload_id,
                conflicted: &state.conflicted,
                controls: stored.controls(),
            },
        )
        .await?;
    // Controls recorded while the rebuild ran, whose own Redis step found
    // no meta (newer ones win in Redis; older ones change nothing).
    if let Some(now) = pg.event(event).await? {
        redis.sync_controls(event, &now.controls()).await?;
    }
    Ok(report)
}

/// What the rebuild may keep besides PostgreSQL's records: the event's
/// issuances Redis still holds, then those in the finalizer's backlog
/// (read with the event offline: nothing issues it any more).
async fn candidates(
    redis: &RedisStore,
    kafka: &KafkaSettings,
    event: &EventId,
) -> anyhow::Result<Vec<Candidate>> {
    let backlog = read_backlog(kafka).await?;
    let from_kafka = {
        let (kafka, event) = (kafka.clone(), event.clone());
        tokio::task::spawn_blocking(move || backlog.issuances_of(&kafka, &event)).await??
    };
    let leftover = redis.snapshot(event).await?;
    let mut out: Vec<Candidate> = leftover
        .issued
        .into_iter()
        .map(|(user, rec)| Candidate {
            user,
            conflicted: rec.state == IssuanceState::Conflicted,
            coupon: rec.coupon,
            request_id: rec.request_id,
            from_kafka: false,
        })
        .collect();
    out.extend(from_kafka.into_iter().map(|r| Candidate {
        user: r.user_id.to_string(),
        coupon: r.coupon,
        request_id: r.request_id,
        conflicted: false,
        from_kafka: true,
    }));
    Ok(out)
}

async fn read_backlog(kafka: &KafkaSettings) -> anyhow::Result<Backlog> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || Backlog::read(&kafka)).await?
}

/// The Redis state a rebuild installs (owned parts of `RebuiltState`).
#[derive(Debug, Default)]
struct Planned {
    queue: Vec<String>,
    issued: Vec<(String, String)>,
    pending: Vec<(String, i64)>,
    conflicted: Vec<String>,
}

/// Decides the rebuilt state: PostgreSQL's records win; then each candidate
/// in order is kept pending if its code is free, else kept conflicted; the
/// queue is every code left, shuffled. Pure.
fn plan(rows: &[CouponRow], candidates: Vec<Candidate>) -> (Planned, RebuildReport) {
    let mut report = RebuildReport::default();
    let mut issued: HashMap<String, String> = HashMap::new();
    let mut pg_code_of: HashMap<&str, &str> = HashMap::new();
    let mut taken: HashMap<String, Option<String>> = HashMap::new();
    for c in rows {
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
            pg_code_of.insert(user.as_str(), c.code.as_str());
            taken.insert(c.code.clone(), Some(user.clone()));
        }
    }
    report.finalized = issued.len();
    let pg_codes: HashSet<&str> = rows.iter().map(|c| c.code.as_str()).collect();
    let mut out = Planned::default();
    for c in candidates {
        let code = c.coupon.code.clone();
        if let Some(pg_code) = pg_code_of.get(c.user.as_str()) {
            if *pg_code != code {
                report.superseded.push((c.user, code));
            }
            continue;
        }
        if let Some(kept) = issued.get(&c.user) {
            // The same issuance, from Redis and from the backlog; or a second
            // one of the user (Redis lost the first, the user asked again),
            // both in flight: the finalizer settles which the user keeps
            // (PostgreSQL takes the first it records; the other is
            // superseded and its code queued again then). Till then neither
            // code may be queued.
            if !kept.starts_with(&format!("{code}\t")) {
                taken.entry(code.clone()).or_insert(None);
                report.held_out.push((c.user, code));
            }
            continue;
        }
        if !pg_codes.contains(code.as_str()) {
            report.unknown_code.push((c.user, code));
            continue;
        }
        let state = match taken.get(&code) {
            Some(holder) => {
                report.conflicted.push(Conflict {
                    user: c.user.clone(),
                    code: code.clone(),
                    holder: holder.clone(),
                });
                IssuanceState::Conflicted
            }
            None if c.conflicted => IssuanceState::Conflicted,
            None => IssuanceState::Pending,
        };
        // A kept issuance's code is never queued again, conflicted or not.
        taken.entry(code.clone()).or_insert(None);
        match state {
            IssuanceState::Conflicted => out.conflicted.push(c.user.clone()),
            _ => {
                out.pending
                    .push((c.user.clone(), c.coupon.issued_at.timestamp_millis()));
                if c.from_kafka {
                    report.pending_from_kafka += 1;
                } else {
                    report.pending_from_redis += 1;
                }
            }
        }
        issued.insert(c.user, issued_record(&c.coupon, &c.request_id, state));
    }
    out.queue = rows
        .iter()
        .filter(|c| c.issued.is_none() && !taken.contains_key(&c.code))
        .map(|c| queue_entry(&c.code, &c.discount))
        .collect();
    out.queue.shuffle(&mut rand::rng());
    out.issued = issued.into_iter().collect();
    report.queued = out.queue.len();
    (out, report)
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
            ..Default::default()
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
            ..Default::default()
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

    fn candidate(user: &str, code: &str, from_kafka: bool) -> Candidate {
        Candidate {
            user: user.into(),
            coupon: rec(code, IssuanceState::Pending).coupon,
            request_id: String::new(),
            conflicted: false,
            from_kafka,
        }
    }

    #[test]
    fn a_rebuild_keeps_every_issuance_it_finds_and_names_the_ones_it_cannot() {
        let pg = [
            row("A", Some("u1")),
            row("B", None),
            row("C", None),
            row("D", None),
        ];
        let (planned, report) = plan(
            &pg,
            vec![
                candidate("u2", "C", false),
                candidate("u3", "D", true),
                candidate("u2", "C", true), // the same issuance, also in the backlog
                candidate("u4", "A", true), // A is u1's in postgres
                candidate("u5", "D", true), // D was kept for u3
                candidate("u1", "A", true), // postgres has it already
                candidate("u1", "B", true), // postgres records A for u1
                candidate("u6", "Z", true), // not the event's code
            ],
        );
        let queued: Vec<&str> = planned.queue.iter().map(|e| &e[..1]).collect();
        assert_eq!(queued, ["B"], "only codes nobody holds are queued");
        let mut pending: Vec<&str> = planned.pending.iter().map(|(u, _)| u.as_str()).collect();
        pending.sort();
        assert_eq!(pending, ["u2", "u3"]);
        let mut conflicted = planned.conflicted.clone();
        conflicted.sort();
        assert_eq!(conflicted, ["u4", "u5"]);
        assert_eq!(
            report.conflicted,
            vec![
                Conflict {
                    user: "u4".into(),
                    code: "A".into(),
                    holder: Some("u1".into())
                },
                Conflict {
                    user: "u5".into(),
                    code: "D".into(),
                    holder: None
                },
            ]
        );
        assert_eq!(report.superseded, vec![("u1".to_string(), "B".to_string())]);
        assert_eq!(
            report.unknown_code,
            vec![("u6".to_string(), "Z".to_string())]
        );
        assert_eq!(
            (
                report.finalized,
                report.pending_from_redis,
                report.pending_from_kafka
            ),
            (1, 1, 1)
        );
        let states: HashMap<String, IssuanceState> = planned
            .issued
            .iter()
            .map(|(u, r)| {
                (
                    u.clone(),
                    crate::store::record::parse_issued(r).unwrap().state,
                )
            })
            .collect();
        assert_eq!(states["u1"], IssuanceState::Finalized);
        assert_eq!(states["u4"], IssuanceState::Conflicted);
        assert_eq!(states.len(), 5, "u1..u5 hold a record, u6 none");
    }

    #[test]
    fn a_second_issuance_of_a_user_in_flight_keeps_its_code_out_of_the_queue() {
        let pg = [row("A", None), row("B", None), row("C", None)];
        // Redis lost u's first record (A, still in the backlog); u asked
        // again and got B.
        let (planned, report) = plan(
            &pg,
            vec![candidate("u", "B", false), candidate("u", "A", true)],
        );
        let queued: Vec<&str> = planned.queue.iter().map(|e| &e[..1]).collect();
        assert_eq!(queued, ["C"], "neither of u's codes is queued");
        assert_eq!(report.held_out, vec![("u".to_string(), "A".to_string())]);
        assert_eq!(planned.issued.len(), 1);
    }

    #[test]
    fn a_conflicted_issuance_is_a_difference_naming_the_holder() {
        let pg = [row("A", Some("u1")), row("B", None)];
        let snap = RedisSnapshot {
            live: true,
            queue: vec!["B".into()],
            issued: [
                ("u1".to_string(), rec("A", IssuanceState::Finalized)),
                ("u2".to_string(), rec("A", IssuanceState::Conflicted)),
            ]
            .into(),
            pending: HashMap::new(),
            ..Default::default()
        };
        let r = compare(&event(), &pg, &snap);
        assert!(!r.consistent(), "{r}");
        assert_eq!(
            r.conflicts,
            vec![Conflict {
                user: "u2".into(),
                code: "A".into(),
                holder: Some("u1".into())
            }]
        );
        assert!(
            r.to_string()
                .contains(r#"user "u2" code A held in postgres by "u1""#),
            "{r}"
        );
    }
}
