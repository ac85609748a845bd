//! coupond: coupon pre-generation and real-time issuance.
//!
//! Top-down: `cli` (what `main` calls) and `startup` wire it all; `grpc` is
//! the edge; `service` orchestrates the stores (`store`) and Kafka
//! (`kafka`); `consumer` finalizes issuances in PostgreSQL; `proto` holds
//! the wire types, `domain` the pure rules, `config` the settings. Imports
//! only point down.

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
