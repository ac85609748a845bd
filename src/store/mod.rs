//! Access to Redis (the live issuance state) and PostgreSQL (the record).

pub mod keys;
pub mod postgres;
pub mod record;
pub mod redis;
pub mod shard_counts;

pub use self::postgres::PgStore;
pub use self::redis::RedisStore;
