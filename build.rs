//! Compiles `proto/coupon/v1/*.proto` with protox (pure Rust), so building
//! needs no system `protoc`, and writes the descriptor set used for reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/coupon/v1/common.proto",
        "proto/coupon/v1/admin.proto",
        "proto/coupon/v1/issuer.proto",
        "proto/coupon/v1/events.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("coupon_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
