//! The one question the bench asks the server's database: how long each
//! issuance of the event took from ISSUED in Redis to its row being
//! committed ISSUED in PostgreSQL.

/// ISSUED-to-PostgreSQL delays of one event's issuances, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FinalizeDelays {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// From the first batch's commit to the last one's: with a backlog
    /// throughout, `count` over it is the finalizer's rows/s.
    pub span_ms: f64,
}

/// The event's delays; `None` before any issuance was finalized.
pub async fn finalize_delays(url: &str, event: &str) -> anyhow::Result<Option<FinalizeDelays>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) AS n, \
                 percentile_disc(0.5) WITHIN GROUP (ORDER BY d) AS p50, \
                 percentile_disc(0.9) WITHIN GROUP (ORDER BY d) AS p90, \
                 percentile_disc(0.99) WITHIN GROUP (ORDER BY d) AS p99, \
                 max(d) AS max, \
                 (extract(epoch FROM max(finalized_at) - min(finalized_at)) * 1000)::float8 AS span \
             FROM (SELECT finalized_at, \
                       (extract(epoch FROM finalized_at - issued_at) * 1000)::float8 AS d \
                   FROM coupons WHERE event_id = $1 AND state = 'ISSUED' \
                       AND finalized_at IS NOT NULL) x",
            &[&event],
        )
        .await?;
    drop(client);
    let _ = conn.await;
    let n: i64 = row.get("n");
    let q = |c: &str| row.get::<_, Option<f64>>(c);
    Ok(match (q("p50"), q("p90"), q("p99"), q("max")) {
        (Some(p50_ms), Some(p90_ms), Some(p99_ms), Some(max_ms)) if n > 0 => Some(FinalizeDelays {
            count: n as u64,
            p50_ms,
            p90_ms,
            p99_ms,
            max_ms,
            span_ms: q("span").unwrap_or(0.0),
        }),
        _ => None,
    })
}
