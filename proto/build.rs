//! Compiles `vantage/v1/*.proto` with protox (a pure-Rust protobuf compiler,
//! so no system `protoc` is needed) and generates prost messages plus (feature `grpc`)
//! tonic client and server code. The encoded file descriptor set is kept for gRPC
//! server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "vantage/v1/telemetry.proto",
        "vantage/v1/routes.proto",
        "vantage/v1/comments.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("vantage_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Messages always; the gRPC client and server only with feature `grpc`.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(fds)?;
    Ok(())
}
