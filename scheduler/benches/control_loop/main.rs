//! Control-loop benchmark of the real `vantage-scheduler` binary.
//!
//! The scheduler runs as a child process (`--dev`, loopback ports, a fresh
//! temporary data dir per phase); this process is the load generator: one
//! tokio runtime simulating thousands of agents over real QUIC connections
//! (sharing one client `quinn::Endpoint` by default) and, for the route
//! phase, real tonic gRPC subscriptions.
//!
//! Phases (each with its own scheduler process):
//! * `ingest` — N agents (default 5,000) at the default 1 s interval: reports
//!   accepted per second (delta of `vantage_scheduler_reports_total`),
//!   scheduler CPU (`/proc/PID/stat`), reports/s per core.
//! * `fast` — the same agents at a short interval (default 200 ms; liveness
//!   marks a node down after 3 missed intervals) to load the scheduler well
//!   beyond 1 Hz and show the per-core figure under load.
//! * `routes` — M agents (default 1,000) reporting over QUIC *and* subscribed
//!   over gRPC, ACKing every table; K weight changes (`PUT /v1/weights`),
//!   each timed from just before the PUT until all M agents have received a
//!   table with the new `weights_version` and sent its ACK.
//!
//! Simulated agents enroll with the dev token (at most `--concurrency` at a
//! time, transport failures retried), report load, three path measurements
//! and one or two streams with some drift, and reconnect with their node
//! credential when the scheduler drops them, as the real agent does.
//!
//! Run: `cargo bench -p vantage-scheduler --bench control_loop [-- --help]`;
//! results and method are in `docs/benchmarks.md`.
//! Exits non-zero only when the setup fails; figures are never asserted.
//!
//! Code: `process` (the scheduler child process), `cpu` (`/proc` accounting),
//! `agent_model`, `agents` and `fleet` (the simulated agents), `ingest` and
//! `routes` (the phases); this file holds the arguments and the summary.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use quinn::crypto::rustls::QuicClientConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig};
use vantage_proto::v1::{
    AgentControl, ControlPath, Hello, Load, PathMeasurement, Report, RouteRequest, RouteTable,
    SchedulerControl, StaticOrigin, StreamRole, StreamState, TelemetryFrame, agent_control,
    scheduler_control, telemetry_frame,
};
use vantage_proto::{PROTOCOL_VERSION, TELEMETRY_ALPN};
use vantage_shared::frame::{self, DEFAULT_MAX_FRAME};

mod agent_model;
mod agents;
mod cpu;
mod fleet;
mod ingest;
mod process;
mod routes;

use agent_model::*;
use agents::*;
use cpu::*;
use fleet::*;
use ingest::*;
use process::*;
use routes::*;

/// Linux `USER_HZ`: the unit of utime/stime in `/proc/*/stat` (fixed at 100
/// in the user ABI of every mainstream architecture).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// Upper bound of any phase, whatever the arguments.
const PHASE_DEADLINE: Duration = Duration::from_secs(30 * 60);

const READY_TIMEOUT: Duration = Duration::from_secs(30);

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound of one agent's enrollment, retries included.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(60);

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Receive/send buffer asked for on each load-generator UDP socket.
const CLIENT_SOCKET_BUFFER: usize = 8 << 20;

/// Nodes sampled through the API (table churn, ACK cross-check).
const ROUTE_SAMPLE: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// N agents at the default report interval.
    Ingest,
    /// N agents at --fast-interval-ms.
    Fast,
    /// M agents subscribed over gRPC; weight change → all-ACK latency.
    Routes,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "control_loop",
    about = "Control-loop benchmark of the real vantage-scheduler binary over loopback QUIC and gRPC"
)]
struct Args {
    /// Simulated agents in the ingest phases.
    #[arg(long, default_value_t = 5_000)]
    agents: usize,
    /// Report interval of the `ingest` phase (scheduler --report-interval-ms).
    #[arg(long, default_value_t = 1_000)]
    interval_ms: u32,
    /// Report interval of the `fast` phase.
    #[arg(long, default_value_t = 200)]
    fast_interval_ms: u32,
    /// Measurement window of the ingest phases, seconds.
    #[arg(long, default_value_t = 10)]
    window_s: u64,
    /// Time between the last enrollment and the window, seconds.
    #[arg(long, default_value_t = 5)]
    warmup_s: u64,
    /// Concurrent enrollments (QUIC handshake + Hello/Welcome) and gRPC connects.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Client QUIC endpoints (UDP sockets) the agents are spread over.
    #[arg(long, default_value_t = 1)]
    client_endpoints: usize,
    /// Agents of the `routes` phase (QUIC + gRPC).
    #[arg(long, default_value_t = 1_000)]
    route_agents: usize,
    /// Weight changes timed in the `routes` phase.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Stream changes timed in the `routes` phase (an origin starts a new
    /// stream; until every subscriber ACKed its directory entry).
    #[arg(long, default_value_t = 20)]
    stream_changes: usize,
    /// Agents subscribed to each new stream before it starts (edges with
    /// viewers waiting for it).
    #[arg(long, default_value_t = 50)]
    stream_subscribers: usize,
    /// Live streams of the simulated world, published on `--origins` agents.
    #[arg(long, default_value_t = 500)]
    streams: usize,
    /// Origin agents the streams are published on.
    #[arg(long, default_value_t = 50)]
    origins: usize,
    /// How the `routes` phase's agents decode a route table before the ACK:
    /// `head` reads only version, nonce and weights version (prost skips
    /// the rest), `full` decodes the whole table as the real agent does.
    #[arg(long, value_enum, default_value = "head")]
    table_decode: TableDecode,
    /// Phases to run, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ingest,fast,routes"
    )]
    phases: Vec<Phase>,
    /// Scheduler binary (default: $VANTAGE_SCHEDULER_BIN, else the one cargo
    /// built next to this bench, else target/release/vantage-scheduler).
    #[arg(long)]
    scheduler_bin: Option<PathBuf>,
    /// Copy each phase's scheduler log into this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("control_loop: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("control_loop: setup failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn scheduler_bin(args: &Args) -> Result<PathBuf> {
    let candidates = [
        args.scheduler_bin.clone(),
        std::env::var_os("VANTAGE_SCHEDULER_BIN").map(PathBuf::from),
        option_env!("CARGO_BIN_EXE_vantage-scheduler").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/vantage-scheduler")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!(
        "vantage-scheduler binary not found: run `cargo build --release -p vantage-scheduler` \
         or set VANTAGE_SCHEDULER_BIN"
    )
}

async fn run(args: Args) -> Result<()> {
    vantage_shared::tls::install_crypto_provider();
    let _ = WORLD.set(World {
        streams: args.streams.max(1),
        origins: args.origins.max(1),
    });
    let bin = scheduler_bin(&args)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("HTTP client")?;
    println!("# Vantage control-loop benchmark");
    println!();
    println!("- scheduler binary: {}", bin.display());
    println!(
        "- machine: {} CPU(s) online, shared by the scheduler and this load generator ({} client UDP socket(s))",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.client_endpoints
    );
    println!(
        "- phases: {:?}; agents {} at {} ms (ingest) / {} ms (fast); route agents {}, {} weight changes, {} stream changes; {} streams on {} origins",
        args.phases,
        args.agents,
        args.interval_ms,
        args.fast_interval_ms,
        args.route_agents,
        args.changes,
        args.stream_changes,
        args.streams,
        args.origins
    );
    println!();
    let mut ingest = Vec::new();
    let mut routes = None;
    for phase in args.phases.clone() {
        match phase {
            Phase::Ingest => {
                let r = ingest_phase(&args, &bin, &http, "ingest", args.interval_ms).await?;
                r.print();
                ingest.push(r);
            }
            Phase::Fast => {
                let r = ingest_phase(&args, &bin, &http, "fast", args.fast_interval_ms).await?;
                r.print();
                ingest.push(r);
            }
            Phase::Routes => {
                let r = routes_phase(&args, &bin, &http).await?;
                r.print();
                routes = Some(r);
            }
        }
    }
    print_summary(&ingest, routes.as_ref());
    Ok(())
}

// ---------------------------------------------------------------------------
// The scheduler process
// ---------------------------------------------------------------------------

fn print_summary(ingest: &[IngestResult], routes: Option<&RoutesResult>) {
    println!("## Summary against the targets");
    println!();
    println!("| scenario | figure | target |");
    println!("|---|---|---|");
    for r in ingest {
        println!(
            "| {} agents × {} ms: reports/s per scheduler core (µs of scheduler CPU per report) | {:.0} ({:.0} reports/s on {:.2} cores; {:.0} per QUIC-ingest-thread core) | ≥ 50,000 (≤ 20 µs) |",
            r.agents,
            r.interval_ms,
            r.per_core(),
            r.accepted_per_s,
            r.cpu.total,
            r.per_ingest_core()
        );
    }
    if let Some(r) = routes {
        let all = r.all_acked();
        println!(
            "| {} agents: weight change → all ACKed, p99 of {} | {:.1} ms (p50 {:.1} ms) | ≤ 80 ms |",
            r.agents,
            r.changes,
            percentile(&all, 99.0),
            percentile(&all, 50.0)
        );
        let streams = sorted(&r.stream_acked_ms);
        if !streams.is_empty() {
            println!(
                "| {} agents: one stream's change → its {} subscribers ACKed, p99 of {} | {:.1} ms (p50 {:.1} ms) | ≤ 20 ms |",
                r.agents,
                r.stream_subscribers,
                streams.len(),
                percentile(&streams, 99.0),
                percentile(&streams, 50.0)
            );
        }
    }
    println!();
}
