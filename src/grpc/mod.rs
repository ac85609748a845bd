//! The gRPC edge: converts proto messages into domain types, delegates to
//! `service`, converts back. Errors become `Status` in one place (`status`).

pub mod admin;
pub mod auth;
pub mod convert;
pub mod health;
pub mod http1;
pub mod issuer;
pub mod observe;
pub mod outcome;
pub mod status;

pub use admin::AdminApi;
pub use issuer::IssuerApi;
