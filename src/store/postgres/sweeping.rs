//! What the sweeper visits, and settling an ended event (retention).

use super::*;

impl PgStore {
    /// LIVE events not settled yet (see `settle`), with their controls:
    /// what the sweeper visits.
    pub async fn events_to_sweep(&self) -> Result<Vec<(EventId, ControlState)>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            id: String,
            #[diesel(sql_type = Timestamptz)]
            ends_at: DateTime<Utc>,
            #[diesel(sql_type = Bool)]
            paused: bool,
            #[diesel(sql_type = BigInt)]
            control_seq: i64,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT id, ends_at, paused, control_seq FROM events \
             WHERE state = 'LIVE' AND settled_at IS NULL ORDER BY created_at",
        )
        .load(&mut c)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let state = ControlState {
                    seq: u64::try_from(r.control_seq).ok()?,
                    ends_at: r.ends_at,
                    paused: r.paused,
                    settled: false,
                };
                Some((EventId::parse(r.id).ok()?, state))
            })
            .collect())
    }
    /// Records an event settled once Redis settled it (`settle.lua`) with
    /// the window's end `ends_ms`; false when it was not (already settled,
    /// or PostgreSQL records another end: a control not yet in Redis).
    pub async fn settle(&self, id: &EventId, ends_ms: i64) -> Result<bool, PgStoreError> {
        let mut c = self.pool.get().await?;
        let n = diesel::sql_query(
            "UPDATE events SET settled_at = now() \
             WHERE id = $1 AND settled_at IS NULL \
               AND date_trunc('milliseconds', ends_at) \
                   = timestamptz 'epoch' + $2 * interval '1 millisecond'",
        )
        .bind::<Text, _>(id.as_str())
        .bind::<BigInt, _>(ends_ms)
        .execute(&mut c)
        .await?;
        Ok(n == 1)
    }
    /// Whether the event is settled.
    pub async fn settled(&self, id: &EventId) -> Result<bool, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Bool)]
            settled: bool,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> =
            diesel::sql_query("SELECT settled_at IS NOT NULL AS settled FROM events WHERE id = $1")
                .bind::<Text, _>(id.as_str())
                .load(&mut c)
                .await?;
        Ok(rows.iter().any(|r| r.settled))
    }
    /// Clears `settled` (a rebuilt event's keys carry no expiry: the
    /// sweeper visits it again and settles it anew); false, changing
    /// nothing, when the event is archived (nothing may be rebuilt then).
    pub async fn unsettle(&self, id: &EventId) -> Result<bool, PgStoreError> {
        let mut c = self.pool.get().await?;
        let n = diesel::sql_query(
            "UPDATE events SET settled_at = NULL WHERE id = $1 AND archived_at IS NULL",
        )
        .bind::<Text, _>(id.as_str())
        .execute(&mut c)
        .await?;
        Ok(n == 1)
    }
}
