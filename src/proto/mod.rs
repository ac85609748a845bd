//! The wire types: code generated from `proto/coupon/v1` by `build.rs`,
//! and the conversions of shared values (times, discount types) that both
//! the gRPC edge and the Kafka codec need, so neither borrows the other's.

#[allow(clippy::all, missing_docs)]
pub mod coupon {
    pub mod v1 {
        tonic::include_proto!("coupon.v1");
    }
}
pub mod wire;

pub use coupon::v1::*;

/// Encoded descriptor set of every coupond proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/coupon_descriptor.bin"));
