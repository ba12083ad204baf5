//! vantage-scheduler: the Vantage control plane.
//!
//! Data flow: agents' QUIC telemetry ([`ingest`]) updates the in-memory
//! [`registry`]; [`app`] owns liveness (up → suspect → down) and steps the
//! planning session of `vantage-plan` (the planning core shared with the
//! simulator) with what the registry learned; [`publish`] tells each node's
//! route stream when its table version moves and streams whole tables or
//! deltas over gRPC (xDS-style ACK/NACK); [`store`] persists nodes, weights, route versions
//! and events through sqlx (SQLite or PostgreSQL); [`api`] is the HTTP API;
//! [`record`] writes optional traces of inputs and plans (`--record`) and
//! replays them through the planner; [`comments`] keeps the live comments'
//! signing keys and blocklist and pushes them to agents.
//! [`cluster`] makes several replicas on one PostgreSQL database work as one
//! (a fenced leader lease, committed tables served by every replica).
//! [`server::run`] wires it together; `main.rs` only parses flags and waits
//! for a signal.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod comments;
pub mod config;
pub mod ingest;
pub mod listeners;
pub mod metrics;
pub mod publish;
pub mod publish_auth;
pub mod record;
pub mod registry;
pub mod resolve;
pub mod server;
pub mod store;
