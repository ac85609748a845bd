//! Reconciliation: an event's Redis state compared with PostgreSQL, and
//! `coupond reconcile` (which may first rebuild, see `rebuild`).

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::config::{DatabaseSettings, KafkaSettings, RedisSettings};
use crate::domain::{EventId, EventState, IssuanceState, LiveState, RecordedCoupon};
use crate::ops::rebuild::{rebuild, RebuildReport};
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
    pub fn verdict(&self) -> &'static str {
        match self.consistent() {
            true => "CONSISTENT",
            false => "INCONSISTENT",
        }
    }

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
        self.fmt_findings(f)?;
        write!(f, "  verdict: {}", self.verdict())
    }
}

impl Report {
    /// Every kind of disagreement, each with up to `SHOW` examples.
    fn fmt_findings(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        list(f, "codes both queued and issued", &self.queued_and_issued)?;
        list(f, "codes queued twice", &self.queued_twice)?;
        list(f, "issued in redis only (lost)", &self.issued_in_redis_only)?;
        let pg_only = "issued in postgres only (unknown to redis)";
        list(f, pg_only, &self.issued_in_pg_only)?;
        let neither = "available codes in neither queue nor issued";
        list(f, neither, &self.in_neither)?;
        list(f, "codes in redis unknown to postgres", &self.unknown_to_pg)?;
        let conflicts = "conflicts (told ISSUED, refused by postgres)";
        writeln!(f, "  {conflicts}: {}", self.conflicts.len())?;
        for c in self.conflicts.iter().take(SHOW) {
            let holder = c
                .holder
                .as_deref()
                .map_or("nobody".into(), |h| format!("{h:?}"));
            writeln!(
                f,
                "    user {:?} code {} held in postgres by {holder}",
                c.user, c.code
            )?;
        }
        let superseded = "superseded (resolved: told a second code, hold postgres's first)";
        writeln!(f, "  {superseded}: {}", self.superseded.len())?;
        for s in self.superseded.iter().take(SHOW) {
            writeln!(f, "    user {:?} told {} holds {}", s.user, s.told, s.holds)?;
        }
        Ok(())
    }
}

/// Compares a Redis snapshot with PostgreSQL's rows. Pure.
pub fn compare(event: &EventId, pg: &[RecordedCoupon], redis: &LiveState) -> Report {
    let mut r = Report {
        event_id: event.to_string(),
        pg_total: pg.len(),
        redis_live: redis.live,
        redis_queue: redis.queue.len(),
        redis_issued: redis.issued.len(),
        redis_pending: redis.pending.len(),
        ..Default::default()
    };
    let both = Both::index(pg, redis);
    r.pg_issued = both.pg_user_code.len();
    r.pg_available = pg.len() - r.pg_issued;
    let queued = both.queue(&mut r);
    both.issued_in_redis(&mut r);
    both.issued_in_pg(&mut r);
    for c in pg.iter().filter(|c| c.issued.is_none()) {
        let code = c.code.as_str();
        if !queued.contains(code) && !both.redis_codes.contains(code) {
            r.in_neither.push(c.code.clone());
        }
    }
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
    r
}

/// Both sides of one event, indexed for the comparison.
struct Both<'a> {
    redis: &'a LiveState,
    pg_by_code: HashMap<&'a str, &'a RecordedCoupon>,
    /// User -> the code PostgreSQL records as theirs.
    pg_user_code: HashMap<&'a str, &'a str>,
    /// Codes Redis records as someone's.
    redis_codes: HashSet<&'a str>,
}

impl<'a> Both<'a> {
    fn index(pg: &'a [RecordedCoupon], redis: &'a LiveState) -> Self {
        Self {
            redis,
            pg_by_code: pg.iter().map(|c| (c.code.as_str(), c)).collect(),
            pg_user_code: pg
                .iter()
                .filter_map(|c| {
                    let (u, _, _) = c.issued.as_ref()?;
                    Some((u.as_str(), c.code.as_str()))
                })
                .collect(),
            redis_codes: redis
                .issued
                .values()
                .map(|rec| rec.coupon.code.as_str())
                .collect(),
        }
    }

    /// The queue's codes: twice, issued too, unknown to PostgreSQL.
    /// Returns the set of them.
    fn queue(&self, r: &mut Report) -> HashSet<&'a str> {
        let mut seen = HashSet::new();
        for code in &self.redis.queue {
            if !seen.insert(code.as_str()) {
                r.queued_twice.push(code.clone());
            }
            let pg = self.pg_by_code.get(code.as_str());
            if self.redis_codes.contains(code.as_str()) || pg.is_some_and(|c| c.issued.is_some()) {
                r.queued_and_issued.push(code.clone());
            }
            if pg.is_none() {
                r.unknown_to_pg.push(code.clone());
            }
        }
        seen
    }

    /// Redis's issued users: conflicted, unknown codes, in flight or lost.
    fn issued_in_redis(&self, r: &mut Report) {
        for (user, rec) in &self.redis.issued {
            let code = rec.coupon.code.as_str();
            if rec.state == IssuanceState::Conflicted {
                let holder = self.pg_by_code.get(code).and_then(|c| c.issued.as_ref());
                r.conflicts.push(Conflict {
                    user: user.clone(),
                    code: code.to_owned(),
                    holder: holder.map(|(u, _, _)| u.clone()),
                });
            } else if !self.pg_by_code.contains_key(code) {
                r.unknown_to_pg.push(code.to_owned());
            } else if self.pg_user_code.get(user.as_str()) == Some(&code) {
                // Recorded alike on both sides.
            } else if self.redis.pending.contains_key(user) && rec.state == IssuanceState::Pending {
                r.in_flight += 1;
            } else {
                r.issued_in_redis_only.push((user.clone(), code.to_owned()));
            }
        }
        r.conflicts.sort_by(|a, b| a.user.cmp(&b.user));
    }

    /// PostgreSQL's issued users Redis does not record alike.
    fn issued_in_pg(&self, r: &mut Report) {
        for (user, code) in &self.pg_user_code {
            let in_redis = self
                .redis
                .issued
                .get(*user)
                .map(|rec| rec.coupon.code.as_str());
            if in_redis != Some(*code) {
                r.issued_in_pg_only
                    .push(((*user).to_owned(), (*code).to_owned()));
            }
        }
    }
}

/// Reads both sides and compares them.
pub async fn reconcile(
    pg: &PgStore,
    redis: &RedisStore,
    event: &EventId,
) -> anyhow::Result<Report> {
    let (state, shards) = match pg.event(event).await? {
        Some(e) if e.archived_at.is_some() => anyhow::bail!(
            "event {event} is archived: its issued coupons are in archived_coupons, its other \
             codes are gone, and what Redis holds of it until its keys expire is not compared"
        ),
        Some(e) => (e.preload.state, e.shards),
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
        let snap = redis.snapshot(event, shards).await?;
        anyhow::Ok((compare(event, &rows, &snap), snap.live))
    };
    let (mut report, live) = look().await?;
    if live && !report.consistent() {
        report.keep_repeated(&look().await?.0);
    }
    report.preload_state = state.as_str().into();
    Ok(report)
}

/// `coupond reconcile` arguments.
#[derive(clap::Args)]
pub struct ReconcileArgs {
    /// The event to check.
    #[arg(long, required_unless_present = "live", conflicts_with = "live")]
    event: Option<String>,
    /// Check every LIVE event not yet settled (after a Redis or master
    /// loss: which events need a rebuild). Exit 1 when any differs.
    #[arg(long)]
    live: bool,
    /// Rebuild the event's Redis state from PostgreSQL (after a Redis loss).
    #[arg(long, conflicts_with = "live")]
    rebuild_redis: bool,
    /// With --rebuild-redis: also when the event is live (takes it offline
    /// for the moments of the rebuild), and while the finalizer lags
    /// (keeps the event's issuances found in its backlog, pending).
    #[arg(long, requires = "rebuild_redis")]
    force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Reconcile found differences (exit status 1, not an error).
#[derive(Debug, thiserror::Error)]
#[error("redis and postgres differ")]
pub struct Inconsistent;

/// `coupond reconcile`: rebuilds first when asked, then reports; an
/// inconsistent report is `Inconsistent`.
pub async fn run(
    redis: &RedisSettings,
    database: &DatabaseSettings,
    kafka: &KafkaSettings,
    args: &ReconcileArgs,
) -> anyhow::Result<()> {
    let (pg, redis) = (
        &PgStore::connect(&database.url, database.pool_size)?,
        &RedisStore::open(redis)?,
    );
    let Some(event) = &args.event else {
        return reconcile_live(pg, redis, args.json).await;
    };
    let event = &EventId::parse(event.clone()).map_err(|e| anyhow::anyhow!("--event: {e}"))?;
    let rebuilt = match args.rebuild_redis {
        true => Some(
            crate::shutdown::until_signalled(|stop| async move {
                rebuild(pg, redis, kafka, event, args.force, &stop).await
            })
            .await?,
        ),
        false => None,
    };
    let report = reconcile(pg, redis, event).await?;
    print(&report, rebuilt.as_ref(), args.json)?;
    match report.consistent() {
        true => Ok(()),
        false => Err(Inconsistent.into()),
    }
}

/// `--live`: a report for each LIVE event not settled yet (those the
/// sweeper visits), then the events that differ.
async fn reconcile_live(pg: &PgStore, redis: &RedisStore, json: bool) -> anyhow::Result<()> {
    let (mut reports, mut unchecked) = (Vec::new(), Vec::new());
    // One event that cannot be read (its master down) must not hide the rest.
    for (event, _) in pg.events_to_sweep().await? {
        match reconcile(pg, redis, &event).await {
            Ok(r) => reports.push(r),
            Err(e) => unchecked.push((event.as_str().to_owned(), format!("{e:#}"))),
        }
    }
    let differ: Vec<&str> = reports
        .iter()
        .filter(|r| !r.consistent())
        .map(|r| r.event_id.as_str())
        .chain(unchecked.iter().map(|(e, _)| e.as_str()))
        .collect();
    match json {
        true => print_live_json(&reports, &unchecked)?,
        false => {
            reports.iter().for_each(|r| println!("{r}"));
            for (event, error) in &unchecked {
                println!("event {event}\n  could not be checked: {error}\n  verdict: UNCHECKED");
            }
            println!(
                "{} live events, {} differ or could not be checked{}{}",
                reports.len() + unchecked.len(),
                differ.len(),
                if differ.is_empty() { "" } else { ": " },
                differ.join(" ")
            );
        }
    }
    match differ.is_empty() {
        true => Ok(()),
        false => Err(Inconsistent.into()),
    }
}

fn print_live_json(reports: &[Report], unchecked: &[(String, String)]) -> anyhow::Result<()> {
    let mut all = reports
        .iter()
        .map(with_verdict)
        .collect::<Result<Vec<_>, _>>()?;
    all.extend(unchecked.iter().map(|(event, error)| {
        serde_json::json!({ "event_id": event, "verdict": "UNCHECKED", "error": error })
    }));
    println!("{}", serde_json::to_string_pretty(&all)?);
    Ok(())
}

fn print(report: &Report, rebuilt: Option<&RebuildReport>, json: bool) -> anyhow::Result<()> {
    match (json, rebuilt) {
        (true, None) => println!("{}", serde_json::to_string_pretty(&with_verdict(report)?)?),
        (true, Some(r)) => {
            let both = serde_json::json!({ "rebuild": r, "reconcile": with_verdict(report)? });
            println!("{}", serde_json::to_string_pretty(&both)?)
        }
        (false, r) => {
            if let Some(r) = r {
                println!("{r}");
            }
            println!("{report}");
        }
    }
    Ok(())
}

/// The report as JSON with its verdict, as the text report ends with it.
fn with_verdict(report: &Report) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(report)?;
    v["verdict"] = report.verdict().into();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Discount, DiscountType};
    use crate::domain::{HeldCoupon, IssuedCoupon};
    use chrono::Utc;

    fn row(code: &str, user: Option<&str>) -> RecordedCoupon {
        RecordedCoupon::sample(code, user)
    }

    fn rec(code: &str, state: IssuanceState) -> HeldCoupon {
        HeldCoupon {
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
        let snap = LiveState {
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
        let snap = LiveState {
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
        let r = compare(&event(), &pg, &LiveState::default());
        assert!(!r.consistent());
        assert_eq!(r.issued_in_pg_only.len(), 1);
        assert_eq!(r.in_neither, vec!["B".to_string()]);
    }

    #[test]
    fn a_conflicted_issuance_is_a_difference_naming_the_holder() {
        let pg = [row("A", Some("u1")), row("B", None)];
        let snap = LiveState {
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
