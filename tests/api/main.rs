//! Integration tests against the real Redis, PostgreSQL and Kafka-protocol
//! broker (see scripts/stack.sh). Each test spawns its own server on a
//! port-0 listener with its own database, topics, consumer group and event
//! ids, so tests run in parallel without seeing each other's state.

mod archive;
mod auth;
mod batch;
mod clients;
#[path = "../common/mod.rs"]
mod common;
mod controls;
mod dlq;
mod examples;
mod finalize;
mod gateway;
mod ghz;
mod helpers;
mod hostile;
mod issue;
mod kafka_security;
mod operator;
mod poison;
mod precedence;
mod preload;
mod rebuild;
mod reconcile;
mod retention;
mod server;
mod settings;
mod sharded;
mod stream;
mod sweeper;
mod tls;
mod transfer;
mod truths;
mod twice;
mod validation;
mod web;
