//! PostgreSQL: the durable record of events, policies and coupons, one
//! file per aggregate, each with its own `impl PgStore`: events and their
//! controls (`events`), preload jobs (`preload`), coupons and issuances
//! (`coupons`), sweeping and retention (`sweeping`), an event's every
//! coupon for reconcile and rebuild (`snapshot`), moving an ended event's
//! coupons to the archive (`archive`). Bulk statements bind
//! whole arrays and `unnest` them. Two writers have connections of their
//! own (tokio-postgres): a preload's COPY (`coupon_writer`) and the
//! finalizer's records (`finalization`, which needs SQLSTATEs).

mod archive;
pub mod coupon_writer;
mod coupons;
mod events;
pub mod finalization;
mod preload;
mod snapshot;
mod sweeping;
pub mod tls;

pub use archive::{archivable, Archived, NotArchived};
pub use events::IssueFacts;
pub use preload::Begun;

use chrono::{DateTime, Utc};
use diesel::result::Error as DieselError;
use diesel::sql_types::{
    Array, BigInt, Bool, Double, Integer, Nullable, SmallInt, Text, Timestamptz,
};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use tracing::instrument;

use crate::domain::{
    CodePrefix, Control, ControlState, Discount, DiscountType, EventId, EventState, EventWindow,
    IssuedCoupon, NewEvent, Policy, PreloadId, PreloadStatus, PreloadTimings, StoredEvent, UserId,
};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serializes concurrent `migrate` runs (several servers starting at once).
const MIGRATION_LOCK: i64 = 0x0063_6f75_706f_6e64; // "coupond"

#[derive(Debug, thiserror::Error)]
pub enum PgStoreError {
    #[error("postgres pool: {0}")]
    Pool(#[from] PoolError),
    #[error("postgres: {0}")]
    Db(#[from] DieselError),
    #[error("postgres: {}", crate::causes::with_causes(.0))]
    Copy(#[from] tokio_postgres::Error),
    #[error("postgres connection: {0}")]
    Connect(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("postgres settings: {0}")]
    Settings(String),
    #[error("event {0} is archived: its issued coupons are in archived_coupons, the rest dropped")]
    Archived(EventId),
}

/// Handle to PostgreSQL; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    target: std::sync::Arc<tls::PgTarget>,
    shard_counts: crate::store::shard_counts::ShardCounts,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn discount_of(kind: &str, value: i64) -> Result<Discount, PgStoreError> {
    let k = DiscountType::from_str_opt(kind)
        .ok_or_else(|| PgStoreError::Corrupt(format!("discount type {kind:?}")))?;
    Discount::new(k, value).map_err(PgStoreError::Corrupt)
}

impl PgStore {
    pub fn connect(url: &str, pool_size: usize) -> anyhow::Result<Self> {
        let target = std::sync::Arc::new(tls::PgTarget::parse(url)?);
        let mut config = ManagerConfig::default();
        let setup = target.clone();
        config.custom_setup = Box::new(move |_| {
            let target = setup.clone();
            Box::pin(async move { target.diesel().await })
        });
        let mgr = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        let pool = Pool::builder(mgr).max_size(pool_size).build()?;
        Ok(Self {
            pool,
            target,
            shard_counts: Default::default(),
        })
    }

    /// Runs pending migrations, one process at a time.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.target.diesel().await?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .execute(&mut conn)
            .await?;
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        let applied = harness
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?
            .len();
        let mut conn = harness.into_inner();
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .execute(&mut conn)
            .await?;
        tracing::info!(applied, "database migrations up to date");
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), PgStoreError> {
        let mut c = self.pool.get().await?;
        diesel::sql_query("SELECT 1").execute(&mut c).await?;
        Ok(())
    }
}
