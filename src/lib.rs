//! coupond: coupon pre-generation and real-time issuance.
//!
//! Top-down, imports only pointing down: `cli` (what `main` calls: parses
//! settings into values and dispatches) and `startup` (wiring, the drain);
//! `ops`, the operators' wing (reconcile, rebuild, the admin commands);
//! `grpc`, the edge (convert and delegate; one outcome classification, one
//! Status mapping, one per-RPC layer); `service`, the use cases; `consumer`
//! (the finalizer), `kafka` and `store` (one file per aggregate, one
//! connection seam per store); `proto` (wire types) and `client` (the
//! client side of our own API); `domain` (pure rules and values) and
//! `config` (settings as values). Beside them: `supervisor` (the one owner
//! of every task), `backoff`, `shutdown`, `metrics`, `telemetry`.

pub mod backoff;
pub mod causes;
pub mod cli;
pub mod client;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod grpc;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod proto;
pub mod service;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod telemetry;
