//! Rebuilding an event's Redis state from PostgreSQL (and the finalizer's
//! backlog) after a Redis loss.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rand::seq::SliceRandom;

use crate::config::KafkaSettings;
use crate::domain::shard;
use crate::domain::{
    EventId, EventState, IssuanceState, IssuedCoupon, RecordedCoupon, StoredEvent,
};
use crate::kafka::backlog::Backlog;
use crate::ops::reconcile::Conflict;
use crate::store::keys::EventKeys;
use crate::store::record::{issued_record, queue_entry};
use crate::store::redis::{LockAction, Presence, RebuiltState};
use crate::store::{PgStore, RedisStore};

/// Why a rebuild was refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("event {0} is not in postgres")]
    UnknownEvent(EventId),
    #[error(
        "event {0} is archived: PostgreSQL answers its holders from the archive, and its \
         unissued codes are gone, so there is no Redis state to rebuild"
    )]
    Archived(EventId),
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
    #[error(
        "rebuild failed: {0:#}; the event stays offline, or partly online (its shards hold \
         the states of two rebuilds, or of a rebuild and of before it: putting them back as \
         they were could hand a code out twice): run the rebuild again to finish it"
    )]
    Unfinished(anyhow::Error),
    #[error(
        "another rebuild of the event took its lock over (this one's lapsed): this one \
         stopped; the other finishes the event"
    )]
    LockLost,
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
    let offline = Offline {
        holder: holder.clone(),
        ..Default::default()
    };
    let work = async {
        tokio::select! {
            r = rebuild_locked(pg, redis, kafka, event, force, &offline) => r,
            _ = stop.cancelled() => {
                let stopped = anyhow::anyhow!("stopped by a signal");
                Err(offline.undo(redis, stopped).await)
            }
        }
    };
    match under_lock(redis, event, &holder, work).await {
        Ok(result) => result,
        Err(LockError::Busy(left)) => Err(RebuildError::Busy(left)),
        Err(LockError::Lost) => Err(RebuildError::LockLost),
        Err(LockError::Store(e)) => Err(e.into()),
    }
}

/// Why `under_lock` did not run its work to the end.
#[derive(Debug)]
pub enum LockError {
    /// Another holds the lock, for at most this long.
    Busy(std::time::Duration),
    /// Another took the lock while the work ran (it was stopped).
    Lost,
    Store(anyhow::Error),
}

/// Runs `work` holding the event's rebuild lock, renewed while it runs:
/// what keeps a rebuild from running beside another, or beside an archive.
/// A renewal that fails is only logged: should the lock lapse and another
/// rebuild start, the fence in each parked meta (the rebuild's id, see
/// take_offline.lua) refuses this one's later steps. One that finds
/// another holding the lock ends the work at once.
pub async fn under_lock<T>(
    redis: &RedisStore,
    event: &EventId,
    holder: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, LockError> {
    let lock = |action| redis.rebuild_lock(event, action, holder, LOCK_LIFETIME);
    match lock(LockAction::Take).await {
        Ok(None) => {}
        Ok(Some(left)) => return Err(LockError::Busy(left)),
        Err(e) => return Err(LockError::Store(e.into())),
    }
    let renewing = async {
        loop {
            tokio::time::sleep(LOCK_LIFETIME / 3).await;
            match lock(LockAction::Renew).await {
                Ok(None) => {}
                Ok(Some(_)) => return,
                Err(e) => tracing::warn!(error = %e, "renewing the rebuild lock failed"),
            }
        }
    };
    let result = tokio::select! {
        r = work => Ok(r),
        _ = renewing => Err(LockError::Lost),
    };
    let _ = lock(LockAction::Release).await;
    result
}

/// The shards a rebuild may have taken offline, and whether putting them
/// back as they were is still right (for a failure, and for the signal
/// that stops a rebuild midway).
#[derive(Default)]
struct Offline {
    /// The rebuild's id (its lock's holder), named in what it parks.
    holder: String,
    shards: Mutex<Vec<EventKeys>>,
    /// Set before the first shard of a sharded event gets rebuilt state,
    /// or when a rebuild finds shards of two generations left so: the old
    /// state of one shard beside the new state of another could queue a
    /// code twice.
    mixed: AtomicBool,
}

impl Offline {
    fn set_shards(&self, keys: &[EventKeys]) {
        *self.shards.lock().expect("not poisoned") = keys.to_vec();
    }

    fn set_mixed(&self) {
        self.mixed.store(true, Ordering::SeqCst);
    }

    /// After a rebuild failed with the event (maybe) offline: puts every
    /// shard back online as it was, unless that would mix states, and says
    /// which happened.
    async fn undo(&self, redis: &RedisStore, failure: anyhow::Error) -> RebuildError {
        if self.mixed.load(Ordering::SeqCst) {
            return RebuildError::Unfinished(failure);
        }
        let shards = self.shards.lock().expect("not poisoned").clone();
        let mut restored = false;
        for k in shards {
            match redis.bring_online(&k, &self.holder, "").await {
                Ok(back) => restored |= back == Some(true),
                Err(again) => return RebuildError::LeftOffline(failure, again.into()),
            }
        }
        match restored {
            true => RebuildError::Restored(failure),
            false => failure.into(),
        }
    }
}

/// How long a rebuild's lock outlives a rebuild that died (renewed every
/// third of it while one runs).
const LOCK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);

pub fn uuid_like() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
}

async fn rebuild_locked(
    pg: &PgStore,
    redis: &RedisStore,
    kafka: &KafkaSettings,
    event: &EventId,
    force: bool,
    offline: &Offline,
) -> Result<RebuildReport, RebuildError> {
    let stored = pg
        .event(event)
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| RebuildError::UnknownEvent(event.clone()))?;
    if stored.archived_at.is_some() {
        return Err(RebuildError::Archived(event.clone()));
    }
    if stored.preload.state != EventState::Live {
        return Err(RebuildError::NotLive(
            event.clone(),
            stored.preload.state.as_str(),
        ));
    }
    let shards = stored.shards.max(1);
    let keys: Vec<EventKeys> = (0..shards)
        .map(|s| EventKeys::shard(event, s, shards))
        .collect();
    offline.set_shards(&keys);
    let mut presence = Vec::with_capacity(keys.len());
    for k in &keys {
        presence.push(redis.presence_in(k).await.map_err(anyhow::Error::from)?);
    }
    // An earlier forced rebuild took the event offline and did not finish
    // (of a sharded event, it may have rebuilt some shards, live again).
    let resumed = presence.contains(&Presence::Offline);
    if resumed && shards > 1 && generations(redis, &keys).await? > 1 {
        offline.set_mixed();
    }
    let lag = read_backlog(kafka).await?.lag();
    if lag > 0 && !force && !resumed {
        return Err(RebuildError::Lagging { lag });
    }
    if presence.contains(&Presence::Live) && !force && !resumed {
        return Err(RebuildError::Live(event.clone()));
    }
    // Live shards are parked; parked ones (a rebuild before this one died)
    // now name this rebuild, which fences that one off.
    for k in &keys {
        if let Err(e) = redis.take_offline(k, &offline.holder).await {
            // Its reply may be what got lost: never leave it parked unsaid.
            return Err(offline.undo(redis, e.into()).await);
        }
    }
    match rebuild_from_sources(pg, redis, kafka, &stored, &keys, offline).await {
        Ok(mut report) => {
            report.lag = lag;
            report.resumed = resumed;
            tracing::info!(event_id = %event, ?report, "rebuilt redis state from postgres");
            Ok(report)
        }
        // Nothing was parked when every shard was absent: nothing goes back.
        Err(e) => Err(offline.undo(redis, e).await),
    }
}

/// How many generations the shards that hold a meta are of: more than one
/// when a rebuild stopped with some shards installed and others not.
async fn generations(redis: &RedisStore, keys: &[EventKeys]) -> anyhow::Result<usize> {
    let mut gens = HashSet::new();
    for k in keys {
        if let Some(gen) = redis.gen_in(k).await? {
            gens.insert(gen);
        }
    }
    Ok(gens.len())
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
    keys: &[EventKeys],
    offline: &Offline,
) -> anyhow::Result<RebuildReport> {
    let event = &stored.id;
    let shards = keys.len() as u32;
    let candidates = candidates(redis, kafka, event, shards).await?;
    let rows = pg.coupons(event).await?;
    let (state, report) = plan(&rows, candidates);
    // Unsettled first: the keys installed next carry no expiry, and a
    // settled event is one the sweeper no longer visits (a rebuild that
    // dies after this only makes the sweeper settle it again).
    if !pg.unsettle(event).await? {
        anyhow::bail!("event {event} was archived while it was being rebuilt; nothing installed");
    }
    let gen = uuid_like();
    if shards > 1 {
        offline.set_mixed();
    }
    // A sharded event's shards are installed offline, then brought online
    // (shard 0 last: the event reads as offline till every shard is in).
    for (s, part) in state.split(shards).iter().enumerate() {
        let rebuilt = RebuiltState {
            queue: &part.queue,
            issued: &part.issued,
            pending: &part.pending,
            starts_ms: stored.window.starts_at().timestamp_millis(),
            total: stored.total_count,
            preload_id: &stored.preload.preload_id,
            conflicted: &part.conflicted,
            controls: stored.controls(),
            gen: &gen,
            shards_made: s == 0 && shards > 1,
            parked: shards > 1,
            holder: &offline.holder,
        };
        redis.install_rebuilt(&keys[s], rebuilt).await?;
    }
    if shards > 1 {
        // A control recorded while the rebuild ran reached shard 0's parked
        // meta only: every shard gets PostgreSQL's latest before going live.
        if let Some(now) = pg.event(event).await? {
            redis.sync_controls_each(keys, &now.controls()).await?;
        }
        for (s, k) in keys.iter().enumerate().rev() {
            if redis.bring_online(k, &offline.holder, &gen).await? != Some(true) {
                anyhow::bail!(
                    "shard {s} was not parked with the rebuilt state when brought online"
                );
            }
        }
    }
    // Controls recorded while the rebuild ran, whose own Redis step found
    // no meta (newer ones win in Redis; older ones change nothing). The
    // event is live by now: a failure here is the sweeper's to repair.
    let synced = match pg.event(event).await {
        Ok(Some(now)) => redis
            .sync_controls(event, shards, &now.controls())
            .await
            .map(drop)
            .map_err(anyhow::Error::from),
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = synced {
        tracing::warn!(event_id = %event, error = %e, "the rebuilt event is live; bringing its controls up to date failed (the sweeper repairs them)");
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
    shards: u32,
) -> anyhow::Result<Vec<Candidate>> {
    let backlog = read_backlog(kafka).await?;
    let from_kafka = {
        let (kafka, event) = (kafka.clone(), event.clone());
        tokio::task::spawn_blocking(move || backlog.issuances_of(&kafka, &event)).await??
    };
    let leftover = redis.snapshot(event, shards).await?;
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

impl Planned {
    /// The state of each of `shards` shards: each user's records at their
    /// home shard, the queue dealt out in turn. Pure.
    fn split(self, shards: u32) -> Vec<Planned> {
        let mut parts: Vec<Planned> = (0..shards).map(|_| Planned::default()).collect();
        let home = |user: &str| shard::home_of(user, shards) as usize;
        for (i, entry) in self.queue.into_iter().enumerate() {
            parts[i % shards as usize].queue.push(entry);
        }
        for (user, record) in self.issued {
            parts[home(&user)].issued.push((user, record));
        }
        for (user, at) in self.pending {
            parts[home(&user)].pending.push((user, at));
        }
        for user in self.conflicted {
            parts[home(&user)].conflicted.push(user);
        }
        parts
    }
}

/// Decides the rebuilt state: PostgreSQL's records win; then each candidate
/// in order is kept pending if its code is free, else kept conflicted; the
/// queue is every code left, shuffled. Pure.
fn plan(rows: &[RecordedCoupon], candidates: Vec<Candidate>) -> (Planned, RebuildReport) {
    let mut p = Planner::recorded(rows);
    for c in candidates {
        p.consider(c);
    }
    p.finish(rows)
}

/// A rebuild's plan while it is made.
#[derive(Default)]
struct Planner<'a> {
    report: RebuildReport,
    out: Planned,
    /// User -> the record Redis gets.
    issued: HashMap<String, String>,
    /// User -> the code PostgreSQL records as theirs.
    pg_code_of: HashMap<&'a str, &'a str>,
    /// Codes someone holds (with PostgreSQL's holder), never queued again.
    taken: HashMap<String, Option<String>>,
    pg_codes: HashSet<&'a str>,
}

impl<'a> Planner<'a> {
    /// Starts from PostgreSQL's records: each finalized.
    fn recorded(rows: &'a [RecordedCoupon]) -> Self {
        let mut p = Self {
            pg_codes: rows.iter().map(|c| c.code.as_str()).collect(),
            ..Default::default()
        };
        for c in rows {
            let Some((user, at, req)) = &c.issued else {
                continue;
            };
            let coupon = IssuedCoupon {
                code: c.code.clone(),
                discount: c.discount,
                issued_at: *at,
            };
            let record = issued_record(&coupon, req, IssuanceState::Finalized);
            p.issued.insert(user.clone(), record);
            p.pg_code_of.insert(user.as_str(), c.code.as_str());
            p.taken.insert(c.code.clone(), Some(user.clone()));
        }
        p.report.finalized = p.issued.len();
        p
    }

    /// Keeps a candidate (pending, or conflicted when its code is taken), or
    /// reports why not.
    fn consider(&mut self, c: Candidate) {
        let code = c.coupon.code.clone();
        if let Some(pg_code) = self.pg_code_of.get(c.user.as_str()) {
            if *pg_code != code {
                self.report.superseded.push((c.user, code));
            }
            return;
        }
        if let Some(kept) = self.issued.get(&c.user) {
            // The same issuance, from Redis and from the backlog; or a second
            // one of the user (Redis lost the first, the user asked again),
            // both in flight: the finalizer settles which the user keeps
            // (PostgreSQL takes the first it records; the other is
            // superseded and its code queued again then). Till then neither
            // code may be queued.
            if !kept.starts_with(&format!("{code}\t")) {
                self.taken.entry(code.clone()).or_insert(None);
                self.report.held_out.push((c.user, code));
            }
            return;
        }
        if !self.pg_codes.contains(code.as_str()) {
            self.report.unknown_code.push((c.user, code));
            return;
        }
        let state = self.state_of(&c);
        // A kept issuance's code is never queued again, conflicted or not.
        self.taken.entry(code).or_insert(None);
        self.keep(c, state);
    }

    /// Pending, or conflicted: its code is taken, or it was already.
    fn state_of(&mut self, c: &Candidate) -> IssuanceState {
        match self.taken.get(&c.coupon.code) {
            Some(holder) => {
                self.report.conflicted.push(Conflict {
                    user: c.user.clone(),
                    code: c.coupon.code.clone(),
                    holder: holder.clone(),
                });
                IssuanceState::Conflicted
            }
            None if c.conflicted => IssuanceState::Conflicted,
            None => IssuanceState::Pending,
        }
    }

    fn keep(&mut self, c: Candidate, state: IssuanceState) {
        if state == IssuanceState::Conflicted {
            self.out.conflicted.push(c.user.clone());
        } else {
            let at = c.coupon.issued_at.timestamp_millis();
            self.out.pending.push((c.user.clone(), at));
            match c.from_kafka {
                true => self.report.pending_from_kafka += 1,
                false => self.report.pending_from_redis += 1,
            }
        }
        let record = issued_record(&c.coupon, &c.request_id, state);
        self.issued.insert(c.user, record);
    }

    /// The queue: every code nobody holds, shuffled.
    fn finish(mut self, rows: &[RecordedCoupon]) -> (Planned, RebuildReport) {
        self.out.queue = rows
            .iter()
            .filter(|c| c.issued.is_none() && !self.taken.contains_key(&c.code))
            .map(|c| queue_entry(&c.code, &c.discount))
            .collect();
        self.out.queue.shuffle(&mut rand::rng());
        self.out.issued = self.issued.into_iter().collect();
        self.report.queued = self.out.queue.len();
        (self.out, self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Discount, DiscountType};
    use chrono::Utc;

    fn row(code: &str, user: Option<&str>) -> RecordedCoupon {
        RecordedCoupon::sample(code, user)
    }

    fn candidate(user: &str, code: &str, from_kafka: bool) -> Candidate {
        Candidate {
            user: user.into(),
            coupon: IssuedCoupon {
                code: code.into(),
                discount: Discount::new(DiscountType::Percent, 5).unwrap(),
                issued_at: Utc::now(),
            },
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
    fn a_split_puts_each_users_records_at_their_home_and_deals_the_queue_out() {
        let planned = Planned {
            queue: (0..7).map(|i| format!("Q{i}")).collect(),
            issued: (0..20)
                .map(|i| (format!("u{i}"), format!("r{i}")))
                .collect(),
            pending: (0..20).map(|i| (format!("u{i}"), i)).collect(),
            conflicted: vec!["u3".into(), "u4".into()],
        };
        let parts = planned.split(3);
        let lens: Vec<usize> = parts.iter().map(|p| p.queue.len()).collect();
        assert_eq!(lens, [3, 2, 2]);
        for (s, p) in parts.iter().enumerate() {
            let users = p.issued.iter().map(|(u, _)| u);
            let users = users.chain(p.pending.iter().map(|(u, _)| u));
            for u in users.chain(&p.conflicted) {
                assert_eq!(shard::home_of(u, 3) as usize, s, "{u}");
            }
        }
        let issued: usize = parts.iter().map(|p| p.issued.len()).sum();
        assert_eq!(issued, 20);
        assert!(
            parts.iter().all(|p| !p.issued.is_empty()),
            "20 users over 3 homes"
        );
    }
}
