//! coupond: coupon pre-generation and real-time issuance.
//!
//! `domain` is pure; `grpc` is the edge; `service` orchestrates the stores
//! (`store`) and Kafka (`kafka`); `consumer` finalizes issuances in
//! PostgreSQL; `startup` wires it all and `cli` is what `main` calls.

pub mod cli;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod grpc;
pub mod kafka;
pub mod operator;
pub mod proto;
pub mod reconcile;
pub mod service;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
