//! Archiving an ended event: its issued coupons move to `archived_coupons`
//! and the codes nobody was given are dropped, in one transaction, so the
//! `coupons` table that every preload and finalizer batch writes holds
//! only the events still in play.

use super::*;

/// What an archive did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Archived {
    /// Issued coupons now in the archive.
    pub archived: u64,
    /// Codes nobody was given, deleted.
    pub dropped: u64,
    /// RFC 3339.
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// It was archived before: nothing changed now.
    pub before: bool,
}

/// Why an event may not be archived (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotArchived {
    #[error("there is no such event")]
    Unknown,
    #[error("it is {0}, not LIVE (a failed or running preload is not an event to archive)")]
    NotLive(String),
    #[error("its window has not ended (ends at {0}): close it first (coupond events close)")]
    NotEnded(DateTime<Utc>),
    #[error(
        "it is not settled yet: the sweeper settles an ended event once every issuance is \
         finalized, within seconds when the finalizer keeps up (see GetEvent's settled_at)"
    )]
    NotSettled,
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}

/// Whether an event of preload state `state`, window end `ends_at`
/// (`ended`: passed) and settled or not may be archived.
pub fn archivable(
    state: &str,
    ends_at: DateTime<Utc>,
    ended: bool,
    settled: bool,
) -> Result<(), NotArchived> {
    match (state, ended, settled) {
        ("LIVE", true, true) => Ok(()),
        ("LIVE", false, _) => Err(NotArchived::NotEnded(ends_at)),
        ("LIVE", true, false) => Err(NotArchived::NotSettled),
        (state, _, _) => Err(NotArchived::NotLive(state.to_owned())),
    }
}

#[derive(QueryableByName)]
struct Facts {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Timestamptz)]
    ends_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    ended: bool,
    #[diesel(sql_type = Bool)]
    settled: bool,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    archived_at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct At {
    #[diesel(sql_type = Timestamptz)]
    at: DateTime<Utc>,
}

impl PgStore {
    /// Archives the event if it is LIVE, ended and settled, under its row's
    /// lock: a control (an extension reopening it) waits for the archive and
    /// then finds it archived, and one committed first leaves it unsettled.
    pub async fn archive(
        &self,
        id: &EventId,
    ) -> Result<Result<Archived, NotArchived>, PgStoreError> {
        let mut c = self.pool.get().await?;
        c.transaction(async |tx| {
            let facts: Vec<Facts> = diesel::sql_query(
                "SELECT state, ends_at, ends_at <= now() AS ended, settled_at IS NOT NULL AS settled, \
                 archived_at FROM events WHERE id = $1 FOR UPDATE",
            )
            .bind::<Text, _>(id.as_str())
            .load(tx)
            .await?;
            let Some(f) = facts.into_iter().next() else {
                return Ok(Err(NotArchived::Unknown));
            };
            if let Some(at) = f.archived_at {
                let n: Count =
                    diesel::sql_query("SELECT count(*) AS n FROM archived_coupons WHERE event_id = $1")
                        .bind::<Text, _>(id.as_str())
                        .get_result(tx)
                        .await?;
                let (archived, dropped, before) = (n.n as u64, 0, true);
                return Ok(Ok(Archived { archived, dropped, at, before }));
            }
            if let Err(r) = archivable(&f.state, f.ends_at, f.ended, f.settled) {
                return Ok(Err(r));
            }
            Ok(Ok(move_coupons(tx, id).await?))
        })
        .await
    }
}

/// The move itself, one statement (one snapshot): a finalizer's UPDATE
/// committing meanwhile is waited for and its row archived, never deleted
/// unarchived. The rows go into the archive in code order, so that its
/// code index is written page after page rather than at random.
async fn move_coupons(tx: &mut AsyncPgConnection, id: &EventId) -> Result<Archived, PgStoreError> {
    #[derive(QueryableByName)]
    struct Moved {
        #[diesel(sql_type = BigInt)]
        deleted: i64,
        #[diesel(sql_type = BigInt)]
        archived: i64,
    }
    let moved: Moved = diesel::sql_query(
        "WITH d AS (DELETE FROM coupons WHERE event_id = $1 RETURNING *), \
         a AS (INSERT INTO archived_coupons (code, event_id, policy_position, discount_type, \
                 discount_value, user_id, issued_at, request_id, finalized_at) \
             SELECT code, event_id, policy_position, discount_type, discount_value, user_id, \
                 issued_at, request_id, finalized_at \
             FROM d WHERE state = 'ISSUED' ORDER BY code COLLATE \"C\" RETURNING 1) \
         SELECT (SELECT count(*) FROM d) AS deleted, (SELECT count(*) FROM a) AS archived",
    )
    .bind::<Text, _>(id.as_str())
    .get_result(tx)
    .await?;
    let at: At = diesel::sql_query(
        "UPDATE events SET archived_at = now() WHERE id = $1 RETURNING archived_at AS at",
    )
    .bind::<Text, _>(id.as_str())
    .get_result(tx)
    .await?;
    Ok(Archived {
        archived: moved.archived as u64,
        dropped: (moved.deleted - moved.archived) as u64,
        at: at.at,
        before: false,
    })
}
