//! Kafka: the `coupon-issued` producer, its message codec and topic setup.
//! Nothing here is specific to a broker implementation.

pub mod message;
pub mod producer;
pub mod topics;

pub use producer::Publisher;
