//! Use cases: preloading events, issuing coupons and looking them up. The
//! gRPC edge calls these with domain types; these call the stores and Kafka.

pub mod admin;
pub mod batcher;
pub mod gauges;
pub mod issuer;
pub mod preload;
pub mod readiness;
pub mod stored_answers;
pub mod sweeper;

pub use admin::AdminService;
pub use issuer::IssuerService;
pub use preload::PreloadJobs;
