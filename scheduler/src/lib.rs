//! vantage-scheduler: the Vantage control plane.
//!
//! Data flow: agents' QUIC telemetry ([`ingest`]) updates the in-memory
//! [`registry`]; [`app`] owns liveness (up → suspect → down) and triggers the
//! pure [`planner`] on inputs smoothed and held inside a deadband
//! ([`plan_inputs`]), which scores candidates with the shared QoE formula;
//! [`publish`] versions each node's table and streams it over gRPC
//! (xDS-style ACK/NACK); [`store`] persists nodes, weights, route versions
//! and events through sqlx (SQLite or PostgreSQL); [`api`] is the HTTP API;
//! [`record`] writes optional traces of inputs and plans (`--record`) and
//! replays them through the planner.
//! [`server::run`] wires it together; `main.rs` only parses flags and waits
//! for a signal.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod plan_inputs;
pub mod planner;
pub mod publish;
pub mod record;
pub mod registry;
pub mod resolve;
pub mod server;
pub mod store;
