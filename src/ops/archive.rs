//! `coupond archive`: moves an ended, settled event's coupons out of the
//! table every drop writes (`PgStore::archive`). Its holders are still
//! answered, from the archive; no control, rebuild or reconcile touches it
//! afterwards, and its Redis keys expire after the retention as before.

use crate::config::{DatabaseSettings, RedisSettings};
use crate::domain::EventId;
use crate::store::postgres::{Archived, NotArchived};
use crate::store::{PgStore, RedisStore};

/// `coupond archive` arguments.
#[derive(clap::Args)]
pub struct ArchiveArgs {
    /// The event to archive: LIVE, ended and settled.
    #[arg(long)]
    event: String,
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
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Archives `event`. Redis is asked first (while it still holds the event):
/// an issuance pending or refused there would be a user told ISSUED whom
/// the archive does not know.
pub async fn archive(
    pg: &PgStore,
    redis: &RedisStore,
    event: &EventId,
) -> Result<Archived, ArchiveError> {
    let refused = |why| ArchiveError::Refused(event.clone(), why);
    let stored = pg
        .event(event)
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| refused(NotArchived::Unknown))?;
    if stored.archived_at.is_none() {
        let counts = redis
            .counts(event, stored.shards)
            .await
            .map_err(anyhow::Error::from)?;
        if counts.pending > 0 {
            return Err(ArchiveError::Pending(event.clone(), counts.pending));
        }
        if counts.conflicted > 0 {
            return Err(ArchiveError::Conflicted(event.clone(), counts.conflicted));
        }
    }
    pg.archive(event)
        .await
        .map_err(anyhow::Error::from)?
        .map_err(refused)
}

/// `coupond archive --event E`.
pub async fn run(
    redis: &RedisSettings,
    database: &DatabaseSettings,
    args: &ArchiveArgs,
) -> anyhow::Result<()> {
    let event = EventId::parse(args.event.clone()).map_err(|e| anyhow::anyhow!("--event: {e}"))?;
    let pg = PgStore::connect(&database.url, database.pool_size)?;
    let redis = RedisStore::open(redis)?;
    let done = archive(&pg, &redis, &event).await?;
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
