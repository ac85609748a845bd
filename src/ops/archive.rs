//! `coupond archive`: moves an ended, settled event's coupons out of the
//! table every drop writes (`PgStore::archive`). Its holders are still
//! answered, from the archive; no control, rebuild or reconcile touches it
//! afterwards, and its Redis keys expire after the retention as before.
//!
//! The codes nobody holds are deleted, so every issuance a user was told of
//! must be in PostgreSQL first: nothing pending or conflicted in Redis,
//! nothing of the event in the finalizer's backlog (Redis may have lost a
//! record whose message is still on its way), no dead letter of it left
//! unreplayed (a conflict whose Redis mark expired), no rebuild running or
//! left unfinished (the rebuild lock is held throughout).

use crate::config::{DatabaseSettings, KafkaSettings, RedisSettings};
use crate::domain::{EventId, StoredEvent};
use crate::kafka::backlog::Backlog;
use crate::ops::rebuild::{under_lock, uuid_like, LockError};
use crate::store::postgres::{archivable, Archived, NotArchived};
use crate::store::redis::Presence;
use crate::store::{PgStore, RedisStore};

/// `coupond archive` arguments.
#[derive(clap::Args)]
pub struct ArchiveArgs {
    /// The event to archive: LIVE, ended and settled.
    #[arg(long)]
    event: String,
    /// Archive even though dead letters of the event were not replayed
    /// (`coupond dlq list`): users told ISSUED whose issuance PostgreSQL
    /// refused keep nothing, and a code of theirs nobody held is dropped
    /// like the others (a later preload may draw it again).
    #[arg(long)]
    ignore_dead_letters: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Why an event was not archived; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("event {0} was not archived: {1}")]
    Refused(EventId, NotArchived),
    #[error(
        "event {0} was not archived: Redis holds {1} issuances not recorded in PostgreSQL yet \
         (pending); wait until the finalizer recorded them"
    )]
    Pending(EventId, u64),
    #[error(
        "event {0} was not archived: PostgreSQL refused {1} of its issuances (conflicted), \
         whose users were told ISSUED; see coupond reconcile --event {0}"
    )]
    Conflicted(EventId, u64),
    #[error(
        "event {0} was not archived: {1} of its issuances are in the finalizer's backlog, not \
         recorded yet; wait until the finalizer caught up"
    )]
    InBacklog(EventId, usize),
    #[error(
        "event {0} was not archived: {1} dead letters of it were not replayed (coupond dlq \
         list); replay them (coupond dlq replay), or archive with --ignore-dead-letters"
    )]
    DeadLetters(EventId, usize),
    #[error(
        "event {0} was not archived: a rebuild left it offline; finish the rebuild first \
         (coupond reconcile --event {0} --rebuild-redis)"
    )]
    Offline(EventId),
    #[error(
        "event {event} was not archived: a rebuild of it is running (its lock is held for {}s \
         more); archive it after",
        .left.as_secs() + 1
    )]
    Busy {
        event: EventId,
        left: std::time::Duration,
    },
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Archives `event` under its rebuild lock.
pub async fn archive(
    pg: &PgStore,
    redis: &RedisStore,
    kafka: &KafkaSettings,
    event: &EventId,
    ignore_dead_letters: bool,
) -> Result<Archived, ArchiveError> {
    let holder = uuid_like();
    let work = archive_locked(pg, redis, kafka, event, ignore_dead_letters);
    match under_lock(redis, event, &holder, work).await {
        Ok(result) => result,
        Err(LockError::Busy(left)) => Err(ArchiveError::Busy {
            event: event.clone(),
            left,
        }),
        Err(LockError::Lost) => Err(anyhow::anyhow!(
            "another took the event's rebuild lock (this one's Redis was unreachable for \
             10 s); the archive may have been made or not: run it again to see"
        )
        .into()),
        Err(LockError::Store(e)) => Err(e.into()),
    }
}

async fn archive_locked(
    pg: &PgStore,
    redis: &RedisStore,
    kafka: &KafkaSettings,
    event: &EventId,
    ignore_dead_letters: bool,
) -> Result<Archived, ArchiveError> {
    let refused = |why| ArchiveError::Refused(event.clone(), why);
    let stored = pg
        .event(event)
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| refused(NotArchived::Unknown))?;
    if stored.archived_at.is_none() {
        let end = stored.window.ends_at();
        let settled = stored.settled_at.is_some();
        archivable(
            stored.preload.state.as_str(),
            end,
            end <= chrono::Utc::now(),
            settled,
        )
        .map_err(refused)?;
        all_recorded(redis, kafka, &stored, ignore_dead_letters).await?;
    }
    // PostgreSQL decides again, under the event row's lock.
    pg.archive(event)
        .await
        .map_err(anyhow::Error::from)?
        .map_err(refused)
}

/// Every issuance of the event users were told of is in PostgreSQL.
async fn all_recorded(
    redis: &RedisStore,
    kafka: &KafkaSettings,
    stored: &StoredEvent,
    ignore_dead_letters: bool,
) -> Result<(), ArchiveError> {
    let event = &stored.id;
    let redis_down = |e: crate::store::redis::RedisStoreError| anyhow::Error::from(e);
    let presence = redis
        .presence(event, stored.shards)
        .await
        .map_err(redis_down)?;
    if presence == Presence::Offline {
        return Err(ArchiveError::Offline(event.clone()));
    }
    // Dead letters first, then the backlog, then Redis's marks: a replay
    // publishes a letter onto the topic before it records it replayed, and
    // the finalizer marks a refusal in Redis before it dead-letters it, so
    // a letter on its way is seen at one of the three.
    if !ignore_dead_letters {
        let letters = blocking(kafka, event, |k, e| {
            Ok(crate::ops::dead_letters::unreplayed(k)?
                .iter()
                .filter(|l| l.record.as_ref().is_some_and(|r| r.event_id == *e))
                .count())
        })
        .await?;
        if letters > 0 {
            return Err(ArchiveError::DeadLetters(event.clone(), letters));
        }
    }
    let in_backlog = blocking(kafka, event, |k, e| {
        Ok(Backlog::read(k)?.issuances_of(k, e)?.len())
    })
    .await?;
    if in_backlog > 0 {
        return Err(ArchiveError::InBacklog(event.clone(), in_backlog));
    }
    let counts = redis
        .counts(event, stored.shards)
        .await
        .map_err(redis_down)?;
    if counts.pending > 0 {
        return Err(ArchiveError::Pending(event.clone(), counts.pending));
    }
    if counts.conflicted > 0 {
        return Err(ArchiveError::Conflicted(event.clone(), counts.conflicted));
    }
    Ok(())
}

/// Runs a blocking Kafka read off the runtime.
async fn blocking<T: Send + 'static>(
    kafka: &KafkaSettings,
    event: &EventId,
    read: impl FnOnce(&KafkaSettings, &EventId) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ArchiveError> {
    let (k, e) = (kafka.clone(), event.clone());
    let r = tokio::task::spawn_blocking(move || read(&k, &e)).await;
    Ok(r.map_err(anyhow::Error::from)??)
}

/// `coupond archive --event E`.
pub async fn run(
    redis: &RedisSettings,
    database: &DatabaseSettings,
    kafka: &KafkaSettings,
    args: &ArchiveArgs,
) -> anyhow::Result<()> {
    let event = EventId::parse(args.event.clone()).map_err(|e| anyhow::anyhow!("--event: {e}"))?;
    let pg = PgStore::connect(&database.url, database.pool_size)?;
    let redis = RedisStore::open(redis)?;
    let done = archive(&pg, &redis, kafka, &event, args.ignore_dead_letters).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if done.before {
        println!(
            "event {event} was archived at {}: {} issued coupons in the archive; nothing changed",
            done.at, done.archived
        );
    } else {
        println!(
            "event {event} archived at {}: {} issued coupons moved to the archive, {} codes \
             nobody was given dropped",
            done.at, done.archived, done.dropped
        );
    }
    Ok(())
}
