//! Use cases: preloading events, issuing coupons and looking them up. The
//! gRPC edge calls these with domain types; these call the stores and Kafka.

pub mod admin;
pub mod batcher;
pub mod issuer;
pub mod sweeper;

pub use admin::{AdminService, PreloadReport};
pub use issuer::IssuerService;
