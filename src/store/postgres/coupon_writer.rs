//! The bulk writer of a preload job: a plain tokio-postgres connection of
//! its own, because a chunk goes in with `COPY`, which diesel-async does not
//! offer, at about twice the rate of a bulk INSERT.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use crate::domain::{EventId, Policy, PreloadId};
use crate::store::postgres::PgStoreError;

/// Why a chunk was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another job holds the event now; nothing of the chunk was written.
    #[error("another preload job holds the event")]
    Fenced,
    #[error(transparent)]
    Store(#[from] PgStoreError),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(PgStoreError::Copy(e))
    }
}

/// One connection, owned by one job (a pool of one: deadpool drives the
/// connection and gives it back when the job ends).
pub struct CouponWriter {
    client: deadpool_postgres::Object,
}

impl CouponWriter {
    pub async fn connect(url: &str) -> Result<Self, PgStoreError> {
        let manager = super::tls::PgTarget::parse(url)?.manager();
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(1)
            .build()
            .map_err(|e| PgStoreError::Settings(format!("postgres pool: {e}")))?;
        let client = pool
            .get()
            .await
            .map_err(|e| PgStoreError::Connect(crate::causes::with_causes(&e)))?;
        Ok(Self { client })
    }

    /// Writes one chunk of (code, policy position) rows and adds it to the
    /// job's progress, in one transaction that also renews the job's lease
    /// and commits only while `job` holds the event. A code that is taken
    /// already (by another event, this event's earlier chunks, or an
    /// archived event) is replaced in `chunk` with `redraw()`; returns how
    /// many were.
    pub async fn write_chunk(
        &mut self,
        event: &EventId,
        job: &PreloadId,
        lease: Duration,
        policies: &[Policy],
        chunk: &mut [(String, i16)],
        redraw: &mut (dyn FnMut() -> String + Send),
    ) -> Result<usize, WriteError> {
        let tx = self.client.transaction().await?;
        match copy_rows(&tx, event, policies, chunk).await {
            Ok(()) => {
                let replaced = clear_of_archive(&tx, event, chunk, redraw).await?;
                commit_fenced(tx, event, job, lease, chunk.len()).await?;
                return Ok(replaced);
            }
            // Rare (59-bit codes): redo this chunk row by row of conflict.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => drop(tx),
            Err(e) => return Err(e.into()),
        };
        let tx = self.client.transaction().await?;
        let mut replaced = insert_redrawing(&tx, event, chunk, redraw).await?;
        replaced += clear_of_archive(&tx, event, chunk, redraw).await?;
        commit_fenced(tx, event, job, lease, chunk.len()).await?;
        Ok(replaced)
    }
}

/// Adds `rows` to the job's progress and renews its lease, then commits;
/// rolls back (the transaction is dropped) when `job` no longer holds the
/// event.
async fn commit_fenced(
    tx: deadpool_postgres::Transaction<'_>,
    event: &EventId,
    job: &PreloadId,
    lease: Duration,
    rows: usize,
) -> Result<(), WriteError> {
    let n = tx
        .execute(
            "UPDATE events SET written_count = written_count + $3, \
                 lease_until = now() + $4 * interval '1 millisecond' \
             WHERE id = $1 AND preload_id = $2 AND state = 'PREPARING'",
            &[
                &event.as_str(),
                &job.as_str(),
                &(rows as i32),
                &(lease.as_millis() as f64),
            ],
        )
        .await?;
    if n != 1 {
        return Err(WriteError::Fenced);
    }
    tx.commit().await?;
    Ok(())
}

async fn copy_rows(
    tx: &Transaction<'_>,
    event: &EventId,
    policies: &[Policy],
    chunk: &[(String, i16)],
) -> Result<(), tokio_postgres::Error> {
    // Text COPY needs no escaping here: codes, event ids and discount types
    // hold no tab, newline or backslash.
    let mut buf = String::with_capacity(chunk.len() * 48);
    for (code, pos) in chunk {
        let d = &policies[*pos as usize].discount;
        buf.push_str(code);
        buf.push('\t');
        buf.push_str(event.as_str());
        buf.push('\t');
        buf.push_str(&format!("{pos}\t{}\t{}\n", d.kind().as_str(), d.value()));
    }
    let sink = tx
        .copy_in(
            "COPY coupons (code, event_id, policy_position, discount_type, discount_value) \
             FROM STDIN",
        )
        .await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(buf)).await?;
    sink.finish().await?;
    Ok(())
}

/// Replaces the codes of `chunk` that an archived event holds: the
/// archive keeps its codes out of `coupons`' unique index, so uniqueness
/// across the database is checked here, once the rows are in, in
/// statements of their own. An archive moving a code out of `coupons`
/// while the chunk went in has committed by then (the insert waited for it
/// on the unique index), so the check sees the code in the archive.
async fn clear_of_archive(
    tx: &Transaction<'_>,
    event: &EventId,
    chunk: &mut [(String, i16)],
    redraw: &mut (dyn FnMut() -> String + Send),
) -> Result<usize, WriteError> {
    let mut check: Vec<usize> = (0..chunk.len()).collect();
    let mut replaced = 0;
    loop {
        let codes: Vec<&str> = check.iter().map(|&i| chunk[i].0.as_str()).collect();
        let taken: Vec<String> = tx
            .query(
                "SELECT code FROM archived_coupons WHERE code = ANY($1)",
                &[&codes],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if taken.is_empty() {
            return Ok(replaced);
        }
        tx.execute(
            "DELETE FROM coupons WHERE event_id = $1 AND code = ANY($2)",
            &[&event.as_str(), &taken],
        )
        .await?;
        check.retain(|&i| taken.contains(&chunk[i].0));
        let mut again: Vec<(String, i16)> = check.iter().map(|&i| (redraw(), chunk[i].1)).collect();
        replaced += check.len() + insert_redrawing(tx, event, &mut again, redraw).await?;
        for (&i, row) in check.iter().zip(again) {
            chunk[i] = row;
        }
    }
}

/// INSERT … ON CONFLICT DO NOTHING, drawing new codes for the rows that did
/// not go in, until all have.
async fn insert_redrawing(
    tx: &Transaction<'_>,
    event: &EventId,
    chunk: &mut [(String, i16)],
    redraw: &mut (dyn FnMut() -> String + Send),
) -> Result<usize, WriteError> {
    let mut todo: Vec<usize> = (0..chunk.len()).collect();
    let mut replaced = 0;
    while !todo.is_empty() {
        let codes: Vec<&str> = todo.iter().map(|&i| chunk[i].0.as_str()).collect();
        let positions: Vec<i16> = todo.iter().map(|&i| chunk[i].1).collect();
        let rows = tx
            .query(
                "INSERT INTO coupons (code, event_id, policy_position, discount_type, discount_value) \
                 SELECT u.code, $1, u.pos, p.discount_type, p.discount_value \
                 FROM unnest($2::text[], $3::int2[]) AS u(code, pos) \
                 JOIN policies p ON p.event_id = $1 AND p.position = u.pos \
                 ON CONFLICT (code) DO NOTHING RETURNING code",
                &[&event.as_str(), &codes, &positions],
            )
            .await?;
        // A code twice in one chunk goes in once: count, don't just look up.
        let mut inserted: HashMap<String, usize> = HashMap::new();
        for r in rows {
            *inserted.entry(r.get::<_, String>(0)).or_default() += 1;
        }
        let mut next = Vec::new();
        for &i in &todo {
            match inserted.get_mut(&chunk[i].0) {
                Some(n) if *n > 0 => *n -= 1,
                _ => {
                    chunk[i].0 = redraw();
                    replaced += 1;
                    next.push(i);
                }
            }
        }
        todo = next;
    }
    Ok(replaced)
}
