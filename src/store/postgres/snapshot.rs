//! An event's every coupon: what reconcile and a rebuild compare.

use super::*;
use crate::domain::RecordedCoupon;

impl PgStore {
    /// Every coupon of the event with its state (for reconciliation).
    /// `Archived` when its coupons were archived, read in the same snapshot
    /// as the coupons: an archive committing meanwhile cannot leave a
    /// rebuild with an event of no holders.
    pub async fn coupons(&self, id: &EventId) -> Result<Vec<RecordedCoupon>, PgStoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            code: String,
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = Text)]
            discount_type: String,
            #[diesel(sql_type = BigInt)]
            discount_value: i64,
            #[diesel(sql_type = Nullable<Text>)]
            user_id: Option<String>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            issued_at: Option<DateTime<Utc>>,
            #[diesel(sql_type = Nullable<Text>)]
            request_id: Option<String>,
        }
        let mut c = self.pool.get().await?;
        let rows: Vec<Row> = c
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(async |tx| {
                let archived: Count = diesel::sql_query(
                    "SELECT count(*) AS n FROM events WHERE id = $1 AND archived_at IS NOT NULL",
                )
                .bind::<Text, _>(id.as_str())
                .get_result(tx)
                .await?;
                if archived.n > 0 {
                    return Err(PgStoreError::Archived(id.clone()));
                }
                Ok(diesel::sql_query(
                    "SELECT code, state, discount_type, discount_value, user_id, issued_at, \
                     request_id FROM coupons WHERE event_id = $1",
                )
                .bind::<Text, _>(id.as_str())
                .load(tx)
                .await?)
            })
            .await?;
        rows.into_iter()
            .map(|r| {
                let discount = discount_of(&r.discount_type, r.discount_value)?;
                let issued = match (r.state.as_str(), r.user_id, r.issued_at) {
                    ("ISSUED", Some(user), Some(at)) => {
                        Some((user, at, r.request_id.unwrap_or_default()))
                    }
                    ("AVAILABLE", None, _) => None,
                    _ => return Err(PgStoreError::Corrupt(format!("coupon {} state", r.code))),
                };
                Ok(RecordedCoupon {
                    code: r.code,
                    discount,
                    issued,
                })
            })
            .collect()
    }
}
