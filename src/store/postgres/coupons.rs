//! Coupons and issuances, read one at a time or counted.

use super::*;

#[derive(QueryableByName)]
struct IssuedRow {
    #[diesel(sql_type = Text)]
    code: String,
    #[diesel(sql_type = Text)]
    discount_type: String,
    #[diesel(sql_type = BigInt)]
    discount_value: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    issued_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    request_id: Option<String>,
}

impl PgStore {
    /// Coupons of the event recorded as ISSUED (archived ones included).
    pub async fn finalized_count(&self, id: &EventId) -> Result<u64, PgStoreError> {
        let mut c = self.pool.get().await?;
        let r: Count = diesel::sql_query(
            "SELECT (SELECT count(*) FROM coupons WHERE event_id = $1 AND state = 'ISSUED') \
                  + (SELECT count(*) FROM archived_coupons WHERE event_id = $1) AS n",
        )
        .bind::<Text, _>(id.as_str())
        .get_result(&mut c)
        .await?;
        Ok(r.n as u64)
    }
    /// Every (code, user) recorded as ISSUED for the event (archived ones
    /// included).
    pub async fn issued_pairs(&self, id: &EventId) -> Result<Vec<(String, String)>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Pair {
            #[diesel(sql_type = Text)]
            code: String,
            #[diesel(sql_type = Text)]
            user_id: String,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Pair> = diesel::sql_query(
            "SELECT code, user_id FROM coupons WHERE event_id = $1 AND state = 'ISSUED' \
             UNION ALL SELECT code, user_id FROM archived_coupons WHERE event_id = $1",
        )
        .bind::<Text, _>(id.as_str())
        .load(&mut c)
        .await?;
        Ok(rows.into_iter().map(|p| (p.code, p.user_id)).collect())
    }
    /// Number of coupon rows of the event, in any state.
    pub async fn coupon_count(&self, id: &EventId) -> Result<u64, PgStoreError> {
        let mut c = self.pool.get().await?;
        let r: Count = diesel::sql_query("SELECT count(*) AS n FROM coupons WHERE event_id = $1")
            .bind::<Text, _>(id.as_str())
            .get_result(&mut c)
            .await?;
        Ok(r.n as u64)
    }
    /// The coupon recorded as ISSUED to `user`, if any, with its request id,
    /// archived or not (one statement: an archive moving the row between
    /// two reads cannot hide it).
    pub async fn issuance(
        &self,
        event: &EventId,
        user: &UserId,
    ) -> Result<Option<(IssuedCoupon, String)>, PgStoreError> {
        let mut c = self.pool.get().await?;
        let rows: Vec<IssuedRow> = diesel::sql_query(
            "SELECT code, discount_type, discount_value, issued_at, request_id FROM coupons \
             WHERE event_id = $1 AND user_id = $2 AND state = 'ISSUED' \
             UNION ALL SELECT code, discount_type, discount_value, issued_at, request_id \
             FROM archived_coupons WHERE event_id = $1 AND user_id = $2",
        )
        .bind::<Text, _>(event.as_str())
        .bind::<Text, _>(user.as_str())
        .load(&mut c)
        .await?;
        let Some(r) = rows.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some((
            IssuedCoupon {
                discount: discount_of(&r.discount_type, r.discount_value)?,
                code: r.code,
                issued_at: r
                    .issued_at
                    .ok_or_else(|| PgStoreError::Corrupt("ISSUED without issued_at".into()))?,
            },
            r.request_id.unwrap_or_default(),
        )))
    }
}
