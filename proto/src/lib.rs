//! Vantage wire protocol.
//!
//! * [`v1`] — telemetry messages carried over QUIC (agent → scheduler) and the
//!   `RouteDiscovery` bidirectional gRPC service (scheduler → agent).
//! * [`FILE_DESCRIPTOR_SET`] — encoded descriptors for gRPC server reflection.
//!
//! The `.proto` sources live in `proto/vantage/v1/`; stock gRPC tooling
//! (grpcurl, Python `grpcio-tools`) can use them directly.

/// Generated code for package `vantage.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/vantage.v1.rs"));
}

/// Encoded `FileDescriptorSet` of every `vantage.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vantage_descriptor.bin"));

/// Current telemetry protocol version (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = v1::ProtocolVersion::ProtocolVersion1 as u32;

/// ALPN token of the telemetry QUIC connection.
pub const TELEMETRY_ALPN: &[u8] = b"vantage-telemetry/1";
