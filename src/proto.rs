//! Code generated from `proto/coupon/v1` by `build.rs`.
#![allow(clippy::all, missing_docs)]

pub mod coupon {
    pub mod v1 {
        tonic::include_proto!("coupon.v1");
    }
}

pub use coupon::v1::*;

/// Encoded descriptor set of every coupond proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/coupon_descriptor.bin"));
