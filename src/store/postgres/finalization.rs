//! Recording issuances as ISSUED in PostgreSQL: the finalizer's writes.
//!
//! On plain tokio-postgres connections (a pool of their own), because what
//! to do with a refusal depends on its SQLSTATE, which diesel-async keeps
//! only as a message: an error about the rows (a data exception such as a
//! NUL byte or a timestamp out of range, a constraint, a value too large)
//! is a verdict on those rows, which the finalizer dead-letters; any other
//! error (the connection, the server) is waited out and retried.
//!
//! One batch is one transaction with one set-based UPDATE of AVAILABLE
//! rows, so a redelivered message changes nothing. When PostgreSQL refuses
//! the batch for its rows, it is applied again one record at a time (a
//! savepoint each, one commit), which tells each record's verdict.

use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tracing::instrument;

use crate::domain::{Discount, DiscountType, EventId, IssuanceRecord, IssuedCoupon};
use crate::store::postgres::PgStoreError;
use crate::store::record::millis_to_time;

/// What PostgreSQL made of one issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// It holds exactly this (code, user) now (also when it did before).
    Done,
    /// The user holds another coupon of the event, which wins (Redis had
    /// lost the user's record and issued again). `free`: the refused code
    /// is AVAILABLE in PostgreSQL (nobody holds it), so it may be queued
    /// again.
    UserHolds {
        coupon: IssuedCoupon,
        request_id: String,
        free: bool,
    },
    /// The code is another user's, or not the event's.
    Refused,
    /// PostgreSQL refused the row itself (why): retrying changes nothing.
    Invalid(String),
}

/// Errors that are worth waiting out.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    // With their causes: a TLS handshake's says which certificate and why.
    #[error("postgres pool: {}", crate::causes::with_causes(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {}", crate::causes::with_causes(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// Handle to the finalizer's connections; cheap to clone.
#[derive(Clone)]
pub struct IssuanceWriter {
    pool: Pool,
    shard_counts: crate::store::shard_counts::ShardCounts,
}

const UPDATE: &str = "UPDATE coupons c SET state = 'ISSUED', user_id = u.user_id, \
         issued_at = timestamptz 'epoch' + u.ms * interval '1 millisecond', \
         request_id = u.request_id, finalized_at = now() \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[]) \
         WITH ORDINALITY AS u(code, event_id, user_id, ms, request_id, idx) \
     WHERE c.code = u.code AND c.event_id = u.event_id AND c.state = 'AVAILABLE' \
     RETURNING u.idx::int4";

/// The coupon each (event, user) holds, through the one-coupon-per-user
/// indexes: what tells a redelivery from a user holding another coupon.
/// An archived event's holders are in the archive, where a redelivery of
/// their issuance (a consumer re-reading old offsets) finds them.
const HELD: &str = "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[]) \
         WITH ORDINALITY AS u(event_id, user_id, idx)) \
     SELECT u.idx::int4, c.code, c.discount_type, c.discount_value, \
         (extract(epoch FROM c.issued_at) * 1000)::int8, coalesce(c.request_id, '') \
     FROM u JOIN coupons c ON c.event_id = u.event_id AND c.user_id = u.user_id \
         AND c.state = 'ISSUED' \
     UNION ALL \
     SELECT u.idx::int4, a.code, a.discount_type, a.discount_value, \
         (extract(epoch FROM a.issued_at) * 1000)::int8, coalesce(a.request_id, '') \
     FROM u JOIN archived_coupons a ON a.event_id = u.event_id AND a.user_id = u.user_id";

/// Which of the given (code, event) nobody holds: the event's own codes
/// only (an archived event's dropped codes may be another event's now).
const FREE: &str = "SELECT c.code, c.event_id FROM unnest($1::text[], $2::text[]) \
         AS u(code, event_id) \
     JOIN coupons c ON c.code = u.code AND c.event_id = u.event_id AND c.state = 'AVAILABLE'";

impl IssuanceWriter {
    pub fn connect(url: &str, pool_size: usize) -> Result<Self, PgStoreError> {
        let pool = Pool::builder(super::tls::PgTarget::parse(url)?.manager())
            .max_size(pool_size)
            .build()
            .map_err(|e| PgStoreError::Settings(format!("postgres pool: {e}")))?;
        Ok(Self {
            pool,
            shard_counts: Default::default(),
        })
    }

    /// The event's shard count (see `ShardCounts`).
    pub async fn shards(&self, event: &EventId) -> Result<u32, FinalizeError> {
        if let Some(n) = self.shard_counts.known(event) {
            return Ok(n);
        }
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT shards, state = 'LIVE' FROM events WHERE id = $1",
                &[&event.as_str()],
            )
            .await?
            .map(|r| (r.get::<_, i32>(0).max(1) as u32, r.get::<_, bool>(1)));
        Ok(self.shard_counts.read(event, row))
    }

    /// Records a batch and tells, per record, what PostgreSQL made of it.
    #[instrument(skip_all, fields(n = records.len()), err)]
    pub async fn record(&self, records: &[IssuanceRecord]) -> Result<Vec<Recorded>, FinalizeError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut verdicts = match update(&tx, records).await {
            Ok(done) => {
                tx.commit().await?;
                done
            }
            Err(e) if about_the_rows(&e) => {
                tracing::warn!(error = %e, "postgres refused the batch; recording it one by one");
                drop(tx);
                one_by_one(&mut client, records).await?
            }
            Err(e) => return Err(e.into()),
        };
        settle_the_rest(&client, records, &mut verdicts).await?;
        Ok(verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Recorded::Refused))
            .collect())
    }
}

/// The batch's UPDATE: `Some(Done)` for the records it applied, `None`
/// for the rest (to be looked at).
async fn update(
    c: &impl GenericClient,
    records: &[IssuanceRecord],
) -> Result<Vec<Option<Recorded>>, tokio_postgres::Error> {
    let codes: Vec<&str> = records.iter().map(|r| r.coupon.code.as_str()).collect();
    let events: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
    let users: Vec<&str> = records.iter().map(|r| r.user_id.as_str()).collect();
    let ms: Vec<i64> = records
        .iter()
        .map(|r| r.coupon.issued_at.timestamp_millis())
        .collect();
    let reqs: Vec<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    let rows = c
        .query(UPDATE, &[&codes, &events, &users, &ms, &reqs])
        .await?;
    let mut out = vec![None; records.len()];
    for row in rows {
        let idx: i32 = row.get(0);
        out[(idx - 1) as usize] = Some(Recorded::Done);
    }
    Ok(out)
}

/// Applies each record under a savepoint of one transaction: a record
/// PostgreSQL refuses for itself is `Invalid`, one that would give its user
/// a second coupon is left to `settle_the_rest`.
async fn one_by_one(
    client: &mut deadpool_postgres::Client,
    records: &[IssuanceRecord],
) -> Result<Vec<Option<Recorded>>, tokio_postgres::Error> {
    let mut tx = client.transaction().await?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let sp = tx.savepoint("one").await?;
        match update(&sp, std::slice::from_ref(r)).await {
            Ok(v) => {
                sp.commit().await?;
                out.push(v[0].clone());
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                sp.rollback().await?;
                out.push(None);
            }
            Err(e) if about_the_rows(&e) => {
                sp.rollback().await?;
                let why = e.as_db_error().map_or(e.to_string(), |d| {
                    format!("{} ({})", d.message(), d.code().code())
                });
                out.push(Some(Recorded::Invalid(why)));
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// The records the UPDATE did not apply: a redelivery of what PostgreSQL
/// holds (`Done`), a user holding another coupon (`UserHolds`, saying
/// whether the refused code is free); what stays `None` is refused.
async fn settle_the_rest(
    c: &impl GenericClient,
    records: &[IssuanceRecord],
    verdicts: &mut [Option<Recorded>],
) -> Result<(), tokio_postgres::Error> {
    let rest: Vec<usize> = (0..records.len())
        .filter(|&i| verdicts[i].is_none())
        .collect();
    if rest.is_empty() {
        return Ok(());
    }
    let events: Vec<&str> = rest.iter().map(|&i| records[i].event_id.as_str()).collect();
    let users: Vec<&str> = rest.iter().map(|&i| records[i].user_id.as_str()).collect();
    for row in c.query(HELD, &[&events, &users]).await? {
        let i = rest[(row.get::<_, i32>(0) - 1) as usize];
        let code: String = row.get(1);
        verdicts[i] = Some(if code == records[i].coupon.code {
            Recorded::Done
        } else {
            held_coupon(&row, code)
        });
    }
    let refused: Vec<usize> = rest
        .iter()
        .copied()
        .filter(|&i| matches!(verdicts[i], Some(Recorded::UserHolds { .. })))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let codes: Vec<&str> = refused
        .iter()
        .map(|&i| records[i].coupon.code.as_str())
        .collect();
    let events: Vec<&str> = refused
        .iter()
        .map(|&i| records[i].event_id.as_str())
        .collect();
    let free: std::collections::HashSet<(String, String)> = c
        .query(FREE, &[&codes, &events])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for &i in &rest {
        if let Some(Recorded::UserHolds { free: f, .. }) = &mut verdicts[i] {
            let r = &records[i];
            *f = free.contains(&(r.coupon.code.clone(), r.event_id.to_string()));
        }
    }
    Ok(())
}

fn held_coupon(row: &tokio_postgres::Row, code: String) -> Recorded {
    let kind = DiscountType::from_str_opt(row.get(2));
    let discount = kind.and_then(|k| Discount::new(k, row.get(3)).ok());
    let issued_at = millis_to_time(row.get(4));
    match (discount, issued_at) {
        (Some(discount), Some(issued_at)) => Recorded::UserHolds {
            coupon: IssuedCoupon {
                code,
                discount,
                issued_at,
            },
            request_id: row.get(5),
            free: false,
        },
        // PostgreSQL's own row is unreadable: leave the issuance refused
        // (conflicted) for an operator rather than guess.
        _ => Recorded::Refused,
    }
}

/// Whether PostgreSQL refused the statement for the rows it was given,
/// which retrying cannot change: a data exception (class 22), an
/// integrity constraint (23), a value past a limit (54).
fn about_the_rows(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(&c.code()[..2], "22" | "23" | "54"))
}
