//! Events and their controls.

use super::*;

#[derive(QueryableByName)]
struct EventRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    total_count: i32,
    #[diesel(sql_type = Timestamptz)]
    starts_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    ends_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    code_prefix: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Text)]
    preload_id: String,
    #[diesel(sql_type = Integer)]
    written_count: i32,
    #[diesel(sql_type = Nullable<Text>)]
    failure: Option<String>,
    #[diesel(sql_type = Bool)]
    paused: bool,
    #[diesel(sql_type = BigInt)]
    control_seq: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    settled_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Integer)]
    shards: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    archived_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    generate_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    database_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    redis_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    total_ms: Option<i64>,
}
const EVENT_COLUMNS: &str = "id, name, total_count, starts_at, ends_at, code_prefix, state, \
    preload_id, written_count, failure, generate_ms, database_ms, redis_ms, total_ms, paused, \
    control_seq, settled_at, shards, archived_at";
/// An event's state as Issue needs it when Redis does not hold the event.
#[derive(Debug, Clone)]
pub struct IssueFacts {
    pub state: EventState,
    /// Ended with nothing pending, its Redis keys given their expiry.
    pub settled: bool,
}
#[derive(QueryableByName)]
struct PolicyRow {
    #[diesel(sql_type = Text)]
    discount_type: String,
    #[diesel(sql_type = BigInt)]
    discount_value: i64,
    #[diesel(sql_type = BigInt)]
    weight: i64,
    #[diesel(sql_type = Integer)]
    coupon_count: i32,
}
/// Events as the domain knows them: rows plus their policies (one query).
async fn with_policies(
    c: &mut AsyncPgConnection,
    rows: Vec<EventRow>,
) -> Result<Vec<StoredEvent>, PgStoreError> {
    #[derive(QueryableByName)]
    struct EventPolicyRow {
        #[diesel(sql_type = Text)]
        event_id: String,
        #[diesel(embed)]
        p: PolicyRow,
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let policies: Vec<EventPolicyRow> = diesel::sql_query(
        "SELECT event_id, discount_type, discount_value, weight, coupon_count FROM policies \
         WHERE event_id = ANY($1) ORDER BY event_id, position",
    )
    .bind::<Array<Text>, _>(&ids)
    .load(c)
    .await?;
    let mut by_event: std::collections::HashMap<String, Vec<PolicyRow>> = Default::default();
    for r in policies {
        by_event.entry(r.event_id).or_default().push(r.p);
    }
    rows.into_iter()
        .map(|e| {
            let p = by_event.remove(&e.id).unwrap_or_default();
            stored_event(e, p)
        })
        .collect()
}
fn stored_event(e: EventRow, policies: Vec<PolicyRow>) -> Result<StoredEvent, PgStoreError> {
    let corrupt = |what: &str| PgStoreError::Corrupt(format!("event {}: {what}", e.id));
    let policies = policies
        .into_iter()
        .map(|p| {
            Ok((
                Policy {
                    discount: discount_of(&p.discount_type, p.discount_value)?,
                    weight: u32::try_from(p.weight).map_err(|_| corrupt("weight"))?,
                },
                u32::try_from(p.coupon_count).map_err(|_| corrupt("coupon_count"))?,
            ))
        })
        .collect::<Result<Vec<_>, PgStoreError>>()?;
    let ms = |v: Option<i64>| v.map(|v| std::time::Duration::from_millis(v.max(0) as u64));
    let timings = match (
        ms(e.generate_ms),
        ms(e.database_ms),
        ms(e.redis_ms),
        ms(e.total_ms),
    ) {
        (Some(generate), Some(database), Some(redis), Some(total)) => Some(PreloadTimings {
            generate,
            database,
            redis,
            total,
        }),
        _ => None,
    };
    Ok(StoredEvent {
        id: EventId::parse(e.id.clone()).map_err(|_| corrupt("id"))?,
        name: e.name.clone(),
        total_count: u32::try_from(e.total_count).map_err(|_| corrupt("total_count"))?,
        policies,
        window: EventWindow::new(e.starts_at, e.ends_at).map_err(|_| corrupt("window"))?,
        prefix: CodePrefix::parse(e.code_prefix.clone()).map_err(|_| corrupt("prefix"))?,
        preload: PreloadStatus {
            state: EventState::from_str_opt(&e.state).ok_or_else(|| corrupt("state"))?,
            preload_id: PreloadId::from_stored(e.preload_id.clone()),
            written: u32::try_from(e.written_count).map_err(|_| corrupt("written_count"))?,
            failure: e.failure.clone(),
            timings,
        },
        paused: e.paused,
        control_seq: u64::try_from(e.control_seq).map_err(|_| corrupt("control_seq"))?,
        settled_at: e.settled_at,
        shards: u32::try_from(e.shards).map_err(|_| corrupt("shards"))?,
        archived_at: e.archived_at,
    })
}

impl PgStore {
    /// The event's shard count (1 for an event PostgreSQL does not hold;
    /// see `ShardCounts`).
    pub async fn shards(&self, id: &EventId) -> Result<u32, PgStoreError> {
        if let Some(n) = self.shard_counts.known(id) {
            return Ok(n);
        }
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Integer)]
            shards: i32,
            #[diesel(sql_type = Bool)]
            live: bool,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> =
            diesel::sql_query("SELECT shards, state = 'LIVE' AS live FROM events WHERE id = $1")
                .bind::<Text, _>(id.as_str())
                .load(&mut c)
                .await?;
        let row = <[Row]>::first(&rows).map(|r| (r.shards.max(1) as u32, r.live));
        Ok(self.shard_counts.read(id, row))
    }

    pub async fn event(&self, id: &EventId) -> Result<Option<StoredEvent>, PgStoreError> {
        let mut c = self.pool.get().await?;
        let rows: Vec<EventRow> =
            diesel::sql_query(format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
                .bind::<Text, _>(id.as_str())
                .load(&mut c)
                .await?;
        Ok(with_policies(&mut c, rows).await?.into_iter().next())
    }
    /// Up to `limit` events whose id sorts after `after`, in id order.
    pub async fn events_after(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, PgStoreError> {
        let mut c = self.pool.get().await?;
        let rows: Vec<EventRow> = diesel::sql_query(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind::<Text, _>(after)
        .bind::<BigInt, _>(i64::from(limit))
        .load(&mut c)
        .await?;
        with_policies(&mut c, rows).await
    }
    /// Applies `control` to the LIVE event `id` and records it with `reason`,
    /// in one transaction. `None` when no LIVE event has that id.
    pub async fn apply_control(
        &self,
        id: &EventId,
        control: &Control,
        reason: &str,
    ) -> Result<Option<StoredEvent>, PgStoreError> {
        let mut c = self.pool.get().await?;
        let set = match control {
            Control::Pause => "paused = true",
            Control::Resume => "paused = false",
            // An event that ended already keeps its end: moved later (a
            // server clock ahead of Redis's), it would reopen for a moment.
            Control::Close(_) => "ends_at = least(ends_at, $2)",
            // Reopens a settled event: the sweeper visits it again.
            Control::Extend(_) => "ends_at = $2, settled_at = NULL",
        };
        let changed = c
            .transaction(async |tx| {
                // $2 is bound either way (NULL for pause and resume).
                let n = diesel::sql_query(format!(
                    "UPDATE events SET {set}, control_seq = control_seq + 1 \
                     WHERE id = $1 AND state = 'LIVE' AND archived_at IS NULL \
                       AND ($2::timestamptz IS NULL OR TRUE)"
                ))
                .bind::<Text, _>(id.as_str())
                .bind::<Nullable<Timestamptz>, _>(control.ends_at())
                .execute(tx)
                .await?;
                if n == 0 {
                    return Ok::<_, PgStoreError>(false);
                }
                // The end the control left (a close keeps an earlier one).
                diesel::sql_query(
                    "INSERT INTO event_controls (event_id, action, reason, ends_at) \
                     SELECT $1, $2, $3, CASE WHEN $4::timestamptz IS NULL THEN NULL \
                         ELSE (SELECT ends_at FROM events WHERE id = $1) END",
                )
                .bind::<Text, _>(id.as_str())
                .bind::<Text, _>(control.action())
                .bind::<Text, _>(reason)
                .bind::<Nullable<Timestamptz>, _>(control.ends_at())
                .execute(tx)
                .await?;
                Ok(true)
            })
            .await?;
        drop(c);
        match changed {
            true => self.event(id).await,
            false => Ok(None),
        }
    }
    /// The controls recorded for an event, oldest first: (action, reason,
    /// ends_at set, when).
    pub async fn controls(
        &self,
        id: &EventId,
    ) -> Result<Vec<(String, String, Option<DateTime<Utc>>, DateTime<Utc>)>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            action: String,
            #[diesel(sql_type = Text)]
            reason: String,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            ends_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Timestamptz)]
            at: DateTime<Utc>,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT action, reason, ends_at, at FROM event_controls WHERE event_id = $1 ORDER BY id",
        )
        .bind::<Text, _>(id.as_str())
        .load(&mut c)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.action, r.reason, r.ends_at, r.at))
            .collect())
    }
    /// What Issue needs of an event Redis does not hold: its state and
    /// whether it is settled. `None` when there is no such event.
    pub async fn issue_facts(&self, id: &EventId) -> Result<Option<IssueFacts>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = Bool)]
            settled: bool,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT state, settled_at IS NOT NULL AS settled FROM events WHERE id = $1",
        )
        .bind::<Text, _>(id.as_str())
        .load(&mut c)
        .await?;
        rows.into_iter()
            .next()
            .map(|r| {
                Ok(IssueFacts {
                    state: EventState::from_str_opt(&r.state)
                        .ok_or_else(|| PgStoreError::Corrupt(format!("event {id} state")))?,
                    settled: r.settled,
                })
            })
            .transpose()
    }
}
