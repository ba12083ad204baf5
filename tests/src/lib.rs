//! End-to-end harness for Vantage, in the style of linkerd2-proxy's
//! `app/integration`: builders that start the *real* `vantage-scheduler` and
//! `vantage-agent` binaries on loopback, handles to stop, kill and restart
//! them, and small clients to talk to them.
//!
//! * [`Scheduler`] — `--dev` scheduler with its own data dir, fixed ports
//!   (kept across restarts) and a SQLite or PostgreSQL [`Store`].
//! * [`Agent`] — an agent enrolled with a scheduler's dev CA and token.
//! * [`http`] — JSON over HTTP; [`eventually()`]/[`assert_eventually!`] — bounded
//!   polling instead of sleeps.
//! * [`hostile`] — a QUIC client that speaks the telemetry ALPN and lies.
//! * [`impair`] — UDP/TCP impairment proxies (delay, jitter, loss, rate).
//! * [`pyclient`] — runs the Python stock gRPC client.
//! * [`rtmp`] — a raw RTMP client for hostile-input tests.
//! * [`browser`] — headless Chromium over the DevTools protocol (screenshots, clicks).
//! * [`synth`] — synthetic FLV publisher and background HTTP-FLV viewer (no ffmpeg).
//! * [`comments`] — live comment WebSocket clients and poster tokens.
//! * [`store_tests!`] — declares the `sqlite_*` and `postgres_*` variants of a test.
//!
//! Binaries are found next to the test executable (`target/debug`), or in
//! `VANTAGE_BIN_DIR`; run `cargo build --bins` first. Processes write their
//! output to `<data-dir>/logs/`; when a test panics, the handles print the
//! tail of those logs and keep the directory. `VANTAGE_TEST_KEEP=1` keeps
//! every directory and database.
#![forbid(unsafe_code)]

pub mod agent;
pub mod bins;
pub mod browser;
pub mod cluster;
pub mod comments;
pub mod datadir;
pub mod eventually;
pub mod flood;
pub mod hostile;
pub mod http;
pub mod impair;
pub mod media;
pub mod pgserver;
pub mod player;
pub mod ports;
pub mod process;
pub mod pyclient;
pub mod replicas;
pub mod rtmp;
pub mod scheduler;
pub mod store;
pub mod synth;

pub use agent::{Agent, AgentBuilder, AgentPorts};
pub use eventually::{eventually, eventually_every};
pub use scheduler::{Scheduler, SchedulerBuilder, SchedulerPorts};
pub use store::Store;

/// Wall-clock milliseconds since the Unix epoch.
pub fn clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Declares an end-to-end test in two variants, one per store:
///
/// ```ignore
/// async fn three_agents(store: Store) { /* … */ }
/// store_tests! {
///     three_agents => sqlite_three_agents, postgres_three_agents;
/// }
/// ```
///
/// The PostgreSQL variant prints `SKIPPED <test>: VANTAGE_TEST_POSTGRES_URL
/// not set (run scripts/test.sh)` and passes when the variable is unset,
/// except under `CI=true`, where it fails.
#[macro_export]
macro_rules! store_tests {
    ($( $body:ident => $sqlite:ident, $postgres:ident; )+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $body($crate::Store::sqlite()).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            if let Some(store) = $crate::Store::postgres_or_skip(stringify!($postgres)) {
                $body(store).await
            }
        }
    )+};
}
