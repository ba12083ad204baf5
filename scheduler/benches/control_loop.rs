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
use vantage_proto::v1::route_discovery_client::RouteDiscoveryClient;
use vantage_proto::v1::{
    AgentControl, ControlPath, Hello, Load, PathMeasurement, Report, RouteRequest,
    SchedulerControl, StaticOrigin, StreamRole, StreamState, TelemetryFrame, agent_control,
    scheduler_control, telemetry_frame,
};
use vantage_proto::{PROTOCOL_VERSION, TELEMETRY_ALPN};
use vantage_shared::frame::{self, DEFAULT_MAX_FRAME};

/// Linux `USER_HZ`: the unit of utime/stime in `/proc/*/stat` (fixed at 100
/// in the user ABI of every mainstream architecture).
const CLOCK_TICKS_PER_S: f64 = 100.0;
/// Agents per published (origin) stream.
const AGENTS_PER_CHANNEL: usize = 250;
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
        "- phases: {:?}; agents {} at {} ms (ingest) / {} ms (fast); route agents {}, {} weight changes",
        args.phases,
        args.agents,
        args.interval_ms,
        args.fast_interval_ms,
        args.route_agents,
        args.changes
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

/// The running scheduler; killed when dropped (also while unwinding).
struct Scheduler {
    child: Child,
    dir: tempfile::TempDir,
    /// Where to copy the log when stopped (`--keep-logs`).
    keep_log: Option<PathBuf>,
    quic: SocketAddr,
    grpc: SocketAddr,
    base: String,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(to) = &self.keep_log {
            let _ = std::fs::copy(self.dir.path().join("scheduler.log"), to);
        }
    }
}

fn free_tcp_ports() -> Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Scheduler {
    fn start(bin: &Path, interval_ms: u32, keep_log: Option<PathBuf>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vantage-bench-")
            .tempdir()
            .context("temporary data dir")?;
        let (grpc_port, http_port) = free_tcp_ports().context("free TCP ports")?;
        let quic_port = free_udp_port().context("free UDP port")?;
        let quic: SocketAddr = ([127, 0, 0, 1], quic_port).into();
        let grpc: SocketAddr = ([127, 0, 0, 1], grpc_port).into();
        let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
        let log = std::fs::File::create(dir.path().join("scheduler.log"))?;
        let child = Command::new(bin)
            .arg("--dev")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--quic-listen", &quic.to_string()])
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--report-interval-ms", &interval_ms.to_string()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            dir,
            keep_log,
            quic,
            grpc,
            base: format!("http://{http}"),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last warnings and errors of the scheduler log (else its last lines).
    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default();
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        if lines.is_empty() {
            lines = text.lines().collect();
        }
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/readyz", self.base);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("scheduler exited ({status}):\n{}", self.log_tail());
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "scheduler not ready within {READY_TIMEOUT:?}:\n{}",
            self.log_tail()
        )
    }

    fn token(&self) -> Result<String> {
        let p = self.dir.path().join("dev/enroll.token");
        Ok(std::fs::read_to_string(&p)
            .with_context(|| p.display().to_string())?
            .trim()
            .to_owned())
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("dev/ca.pem")
    }

    async fn metrics(&self, http: &reqwest::Client) -> Result<Metrics> {
        let text = http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics::parse(&text))
    }

    /// Sum of the route-table versions of `ids` (`GET /v1/routes/{id}`), to
    /// measure table churn.
    async fn sample_versions(&self, http: &reqwest::Client, ids: &[String]) -> Result<u64> {
        let mut sum = 0;
        for id in ids {
            let r = http
                .get(format!("{}/v1/routes/{id}", self.base))
                .send()
                .await?;
            if r.status().is_success() {
                let v: serde_json::Value = r.json().await?;
                sum += v["version"].as_u64().unwrap_or(0);
            }
        }
        Ok(sum)
    }

    fn cpu(&self) -> Result<CpuSample> {
        CpuSample::take(self.pid())
    }
}

/// Prometheus/OpenMetrics text as `series → value`.
#[derive(Debug, Default, Clone)]
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut m = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.trim().parse::<f64>()
            {
                m.insert(series.trim().to_owned(), v);
            }
        }
        Self(m)
    }

    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Sum of every labelled series of a family.
    fn sum_family(&self, family: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(family) && k[family.len()..].starts_with('{'))
            .map(|(_, v)| *v)
            .fold(0.0, |a, b| a + b)
    }
}

fn keep_log(args: &Args, label: &str) -> Result<Option<PathBuf>> {
    match &args.keep_logs {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            Ok(Some(dir.join(format!("{label}-scheduler.log"))))
        }
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc
// ---------------------------------------------------------------------------

/// utime + stime of a process and of each of its threads.
#[derive(Debug, Clone)]
struct CpuSample {
    at: Instant,
    ticks: u64,
    /// tid → (name, ticks)
    threads: BTreeMap<u32, (String, u64)>,
    rss_kib: u64,
}

/// Where the scheduler's CPU went, in cores.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSplit {
    total: f64,
    /// The QUIC ingest thread (`quic-ingest`: every agent connection).
    quic: f64,
    /// The tokio worker threads (gRPC, HTTP, liveness, resolver, store writer).
    workers: f64,
    /// Everything else: planning (the `planner` thread and its helper
    /// threads) and the store's thread.
    rest: f64,
}

/// `(comm, utime + stime)` of one `/proc/.../stat` line.
fn parse_stat(s: &str) -> Option<(String, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

impl CpuSample {
    fn take(pid: u32) -> Result<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("/proc/{pid}/stat"))?;
        let (_, ticks) = parse_stat(&stat).ok_or_else(|| anyhow!("unparsable /proc/{pid}/stat"))?;
        let mut threads = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for entry in dir.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                if let Ok(s) = std::fs::read_to_string(entry.path().join("stat"))
                    && let Some(t) = parse_stat(&s)
                {
                    threads.insert(tid, t);
                }
            }
        }
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        Ok(Self {
            at,
            ticks,
            threads,
            rss_kib,
        })
    }

    /// CPU cores used between `self` and the later sample `end`.
    fn cores_until(&self, end: &CpuSample) -> f64 {
        let secs = end.at.duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        end.ticks.saturating_sub(self.ticks) as f64 / CLOCK_TICKS_PER_S / secs
    }

    /// Splits the scheduler's CPU between the QUIC ingest thread, the tokio
    /// workers and the rest. Tokio starts its `workers` worker threads when
    /// the runtime is built, before any blocking thread, so they are the
    /// tokio threads with the lowest ids. The rest is `total` minus those:
    /// the `planner` thread and its short-lived helper threads, which have
    /// exited by the end of the window and so are only in `total`, plus the
    /// store's thread.
    fn split_until(&self, end: &CpuSample, workers: usize) -> CpuSplit {
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let mut split = CpuSplit {
            total: self.cores_until(end),
            ..CpuSplit::default()
        };
        let cores = |tid: &u32, t: u64| {
            let before = self.threads.get(tid).map_or(0, |(_, b)| *b);
            t.saturating_sub(before) as f64 / CLOCK_TICKS_PER_S / secs
        };
        for (tid, (_, t)) in end.threads.iter().filter(|(_, (n, _))| n == "quic-ingest") {
            split.quic += cores(tid, *t);
        }
        let tokio_threads = end
            .threads
            .iter()
            .filter(|(_, (name, _))| name.starts_with("tokio-r"));
        for (tid, (_, t)) in tokio_threads.take(workers) {
            split.workers += cores(tid, *t);
        }
        split.rest = (split.total - split.quic - split.workers).max(0.0);
        split
    }
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn system_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Cores busy on the whole machine between two `system_jiffies` samples.
fn system_cores(a: (u64, u64), b: (u64, u64), secs: f64) -> f64 {
    b.0.saturating_sub(a.0) as f64 / CLOCK_TICKS_PER_S / secs.max(1e-9)
}

/// Datagrams the kernel dropped on the UDP sockets bound to `ports`
/// (`drops` column of `/proc/net/udp{,6}`: receive buffer full).
fn udp_socket_drops(ports: &[u16]) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = cols
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if port.is_some_and(|p| ports.contains(&p)) {
                total += cols.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

/// Kernel UDP receive-buffer drops (this network namespace).
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Simulated agents
// ---------------------------------------------------------------------------

fn node_id(idx: usize) -> String {
    format!("bench-{idx:05}")
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Deterministic pseudo-random unit value for (idx, salt).
fn unit(idx: usize, salt: u64) -> f64 {
    (splitmix(idx as u64 ^ salt.rotate_left(32)) >> 11) as f64 / (1u64 << 53) as f64
}

/// A spread of locations over populated latitudes (never exactly 0,0).
fn coord(idx: usize) -> (f64, f64) {
    let lat = -40.0 + 100.0 * unit(idx, 1) + 0.001;
    let lon = -125.0 + 270.0 * unit(idx, 2) + 0.001;
    (lat, lon)
}

fn region(lon: f64) -> &'static str {
    if lon < -30.0 {
        "americas"
    } else if lon < 60.0 {
        "emea"
    } else {
        "apac"
    }
}

fn channels(n: usize) -> usize {
    n.div_ceil(AGENTS_PER_CHANNEL).max(1)
}

/// The agent publishing channel `c` (it is that stream's origin).
fn channel_origin(c: usize, n: usize) -> usize {
    (c * AGENTS_PER_CHANNEL + 5) % n.max(1)
}

fn hello(idx: usize, id: &str, token: &str) -> Hello {
    let (lat, lon) = coord(idx);
    Hello {
        node_id: id.to_owned(),
        protocol_version: PROTOCOL_VERSION,
        agent_version: "control-loop-bench/0".into(),
        region: region(lon).into(),
        lat,
        lon,
        capacity_mbps: 1_000.0,
        public_url: format!("http://127.0.0.1:{}/", 30_000 + idx % 30_000),
        capabilities: vec!["telemetry-v1".into(), "routes-v1".into()],
        route_version: 0,
        enrollment_token: token.into(),
        node_credential: String::new(),
        probe_addr: format!("127.0.0.1:{}", 20_000 + idx % 10_000),
        static_origins: if idx < 2 {
            vec![StaticOrigin {
                pattern: "live/*".into(),
                url: "http://127.0.0.1:9/{app}/{stream}".into(),
            }]
        } else {
            Vec::new()
        },
    }
}

fn km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6_371.0 * h.sqrt().asin()
}

/// The report an agent sends, before per-report noise: load, three path
/// measurements to peers, one or two streams.
fn report_template(idx: usize, n: usize) -> Report {
    let me = coord(idx);
    let paths = [1usize, 17, 257]
        .iter()
        .map(|d| (idx + d) % n.max(1))
        .filter(|&p| p != idx)
        .map(|p| {
            let rtt = 2.0 + km(me, coord(p)) / 100.0;
            PathMeasurement {
                target_node_id: node_id(p),
                target_addr: format!("127.0.0.1:{}", 20_000 + p % 10_000),
                rtt_ewma_ms: rtt,
                rtt_p50_ms: rtt,
                rtt_p95_ms: rtt * 1.2,
                loss: 0.001,
                jitter_ms: 1.5,
                samples: 20,
                last_success_age_ms: 500,
            }
        })
        .collect();
    let chans = channels(n);
    let mut streams = Vec::new();
    let own = (0..chans).find(|&c| channel_origin(c, n) == idx);
    if let Some(c) = own {
        streams.push(StreamState {
            key: format!("live/ch{c}"),
            role: StreamRole::Origin as i32,
            upstream: String::new(),
            bitrate_kbps: 4_000.0,
            viewers: 20,
            gop_cache_ms: 2_000.0,
            ingest_lag_ms: 150.0,
            send_lag_p95_ms: 15.0,
        });
    }
    let relayed = 1 + idx % 2;
    for k in 0..relayed {
        let c = (splitmix(idx as u64 + k as u64 * 7919) as usize) % chans;
        if Some(c) == own {
            continue;
        }
        streams.push(StreamState {
            key: format!("live/ch{c}"),
            role: StreamRole::Relay as i32,
            upstream: node_id(channel_origin(c, n)),
            bitrate_kbps: 4_000.0,
            viewers: 10 + (unit(idx, 3 + k as u64) * 190.0) as u32,
            gop_cache_ms: 2_000.0,
            ingest_lag_ms: 400.0,
            send_lag_p95_ms: 25.0,
        });
    }
    let viewers: u32 = streams.iter().map(|s| s.viewers).sum();
    Report {
        seq: 0,
        agent_time_ms: 0,
        route_version: 0,
        load: Some(Load {
            cpu: 0.2 + 0.4 * unit(idx, 4),
            mem_used_bytes: 3 << 30,
            mem_total_bytes: 8 << 30,
            egress_mbps: f64::from(viewers) * 4.0 * 0.5,
            ingress_mbps: 4.0 * streams.len() as f64,
            viewers,
            streams: streams.len() as u32,
        }),
        paths,
        streams,
        groups: Vec::new(),
        control_path: Some(ControlPath {
            rtt_ms: 0.3,
            lost_packets: 0,
            congestion_events: 0,
        }),
    }
}

/// Per-report noise: load and RTT drift as they would on a real edge.
fn refresh(r: &mut Report, base: &Report, rng: &mut StdRng, seq: u64, route_version: u64) {
    r.seq = seq;
    r.agent_time_ms = vantage_shared::clock::now_ms();
    r.route_version = route_version;
    if let (Some(l), Some(b)) = (r.load.as_mut(), base.load.as_ref()) {
        l.cpu = (b.cpu * rng.random_range(0.9..1.1)).clamp(0.0, 1.0);
        l.egress_mbps = b.egress_mbps * rng.random_range(0.95..1.05);
    }
    for (p, b) in r.paths.iter_mut().zip(&base.paths) {
        let f = rng.random_range(0.95..1.05);
        p.rtt_ewma_ms = b.rtt_ewma_ms * f;
        p.rtt_p50_ms = b.rtt_p50_ms * f;
        p.rtt_p95_ms = b.rtt_p95_ms * f;
    }
}

/// Counters shared by every simulated agent.
#[derive(Debug, Default)]
struct LoadStats {
    reports_sent: AtomicU64,
    send_errors: AtomicU64,
    sessions_ended: AtomicU64,
    /// Enrollments retried (as an agent would, after a timeout or reset).
    enroll_retries: AtomicU64,
    /// Sessions re-established with the node credential after a loss.
    reconnects: AtomicU64,
}

/// One agent after Welcome.
struct Session {
    conn: quinn::Connection,
    ctl_send: quinn::SendStream,
    ctl_recv: quinn::RecvStream,
    uni: quinn::SendStream,
    /// The id the agent enrolled under.
    node_id: String,
    credential: String,
    interval_ms: u32,
}

/// Attempts per agent (handshake + Hello/Welcome) before it counts as failed.
const ENROLL_ATTEMPTS: u32 = 4;

/// How one enrollment attempt failed.
enum Refused {
    /// The scheduler answered with a rejection.
    Rejected(vantage_proto::v1::Rejection),
    /// Transport trouble (timeout, reset): worth retrying, as an agent would.
    Transport(anyhow::Error),
}

async fn try_enroll(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    hello: Hello,
) -> Result<Session, Refused> {
    let t = |e: anyhow::Error| Refused::Transport(e);
    let conn = endpoint
        .connect(server, "localhost")
        .map_err(|e| t(e.into()))?
        .await
        .map_err(|e| t(anyhow!("QUIC handshake: {e}")))?;
    let (mut ctl_send, mut ctl_recv) = conn
        .open_bi()
        .await
        .map_err(|e| t(anyhow!("control stream: {e}")))?;
    let msg = AgentControl {
        kind: Some(agent_control::Kind::Hello(hello)),
    };
    ctl_send
        .write_all(&frame::encode(&msg))
        .await
        .map_err(|e| t(anyhow!("writing Hello: {e}")))?;
    let mut buf = Vec::new();
    let reply = frame::read::<SchedulerControl, _>(&mut ctl_recv, DEFAULT_MAX_FRAME, &mut buf)
        .await
        .map_err(|e| t(anyhow!("reading Welcome: {e}")))?
        .ok_or_else(|| t(anyhow!("control stream ended before Welcome")))?;
    let welcome = match reply.kind {
        Some(scheduler_control::Kind::Welcome(w)) => w,
        Some(scheduler_control::Kind::Rejection(r)) => return Err(Refused::Rejected(r)),
        _ => return Err(t(anyhow!("unexpected first control message"))),
    };
    let uni = conn
        .open_uni()
        .await
        .map_err(|e| t(anyhow!("telemetry stream: {e}")))?;
    Ok(Session {
        conn,
        ctl_send,
        ctl_recv,
        uni,
        node_id: String::new(),
        credential: welcome.node_credential,
        interval_ms: welcome.report_interval_ms.max(1),
    })
}

/// Enrolls agent `idx`, retrying transport failures with jittered backoff.
/// If a lost Welcome left the id enrolled without us knowing the
/// credential (DUPLICATE_NODE), the retry uses a fresh id.
async fn enroll(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    idx: usize,
    token: &str,
    stats: &LoadStats,
) -> Result<Session> {
    let mut id = node_id(idx);
    let mut last = anyhow!("no attempt");
    for attempt in 1..=ENROLL_ATTEMPTS {
        if attempt > 1 {
            stats.enroll_retries.fetch_add(1, Ordering::Relaxed);
            let backoff = 250 * u64::from(attempt) + rand::rng().random_range(0..500);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        match try_enroll(endpoint, server, hello(idx, &id, token)).await {
            Ok(s) if s.credential.is_empty() => {
                bail!("Welcome without a node credential")
            }
            Ok(mut s) => {
                s.node_id = id;
                return Ok(s);
            }
            Err(Refused::Rejected(r))
                if r.reason == vantage_proto::v1::RejectReason::DuplicateNode as i32 =>
            {
                id = format!("{}-r{attempt}", node_id(idx));
                last = anyhow!("rejected as duplicate: {}", r.detail);
            }
            Err(Refused::Rejected(r)) => {
                bail!("rejected: reason {} ({})", r.reason, r.detail)
            }
            Err(Refused::Transport(e)) => last = e,
        }
    }
    Err(last.context(format!("{ENROLL_ATTEMPTS} attempts")))
}

/// Reads the control stream after Welcome; applies `Settings`. Returns when
/// the stream ends.
async fn follow_control(mut recv: quinn::RecvStream, interval_ms: &AtomicU32) {
    let mut buf = Vec::new();
    while let Ok(Some(msg)) =
        frame::read::<SchedulerControl, _>(&mut recv, DEFAULT_MAX_FRAME, &mut buf).await
    {
        if let Some(scheduler_control::Kind::Settings(s)) = msg.kind
            && s.report_interval_ms > 0
        {
            interval_ms.store(s.report_interval_ms, Ordering::Relaxed);
        }
    }
}

fn ticker(interval_ms: u32, first: tokio::time::Instant) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(first, Duration::from_millis(u64::from(interval_ms)));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Why a reporting session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The fleet stopped (or the phase deadline passed).
    Stopped,
    /// The connection ended: the scheduler closed it or it timed out.
    Lost,
}

/// Sends a report every interval (first one after a random offset within
/// the interval) until `stop` or the connection ends.
async fn report_loop(
    s: Session,
    idx: usize,
    n: usize,
    stats: &LoadStats,
    route_version: &AtomicU64,
    stop: &CancellationToken,
    deadline: tokio::time::Instant,
) -> SessionEnd {
    let Session {
        conn,
        ctl_send,
        ctl_recv,
        mut uni,
        interval_ms,
        ..
    } = s;
    let interval = AtomicU32::new(interval_ms);
    let control = follow_control(ctl_recv, &interval);
    tokio::pin!(control);
    let base = report_template(idx, n);
    let mut frame_msg = TelemetryFrame {
        kind: Some(telemetry_frame::Kind::Report(base.clone())),
    };
    let mut rng = StdRng::seed_from_u64(idx as u64 ^ rand::random::<u64>());
    let offset = Duration::from_millis(rng.random_range(0..u64::from(interval_ms)));
    let mut current = interval_ms;
    let mut tick = ticker(current, tokio::time::Instant::now() + offset);
    let mut seq = 0u64;
    let deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(deadline);
    let end = loop {
        tokio::select! {
            _ = stop.cancelled() => break SessionEnd::Stopped,
            _ = &mut deadline => break SessionEnd::Stopped,
            _ = &mut control => break SessionEnd::Lost,
            _ = tick.tick() => {
                seq += 1;
                if let Some(telemetry_frame::Kind::Report(r)) = frame_msg.kind.as_mut() {
                    refresh(r, &base, &mut rng, seq, route_version.load(Ordering::Relaxed));
                }
                if uni.write_all(&frame::encode(&frame_msg)).await.is_err() {
                    stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    break SessionEnd::Lost;
                }
                stats.reports_sent.fetch_add(1, Ordering::Relaxed);
                let wanted = interval.load(Ordering::Relaxed);
                if wanted != current {
                    current = wanted;
                    tick = ticker(current, tokio::time::Instant::now() + Duration::from_millis(u64::from(current)));
                }
            }
        }
    };
    drop(ctl_send);
    if end == SessionEnd::Stopped {
        conn.close(0u32.into(), b"shutdown");
    }
    end
}

/// What the coordinator shares with one agent task.
#[derive(Debug, Default)]
struct AgentShared {
    /// Route version held (set by the gRPC subscription), sent in reports.
    route_version: AtomicU64,
    /// The current telemetry connection.
    conn: std::sync::Mutex<Option<quinn::Connection>>,
}

impl AgentShared {
    fn set_conn(&self, c: quinn::Connection) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    fn conn(&self) -> Option<quinn::Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An agent's life after enrollment: report; when the scheduler drops the
/// session (e.g. marked down after 3 missed intervals under overload),
/// reconnect with the node credential after a jittered backoff, as the real
/// agent does, until the fleet stops.
#[allow(clippy::too_many_arguments)]
async fn agent_life(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    idx: usize,
    n: usize,
    first: Session,
    shared: Arc<AgentShared>,
    stats: Arc<LoadStats>,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + PHASE_DEADLINE;
    let id = first.node_id.clone();
    let credential = first.credential.clone();
    let mut session = first;
    loop {
        shared.set_conn(session.conn.clone());
        let end = report_loop(
            session,
            idx,
            n,
            &stats,
            &shared.route_version,
            &stop,
            deadline,
        )
        .await;
        if end == SessionEnd::Stopped {
            return;
        }
        stats.sessions_ended.fetch_add(1, Ordering::Relaxed);
        let mut attempt = 0u32;
        session = loop {
            attempt = attempt.saturating_add(1);
            let backoff = (100u64 << attempt.min(5)).min(3_000);
            let wait =
                Duration::from_millis(backoff / 2 + rand::rng().random_range(0..=backoff / 2));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Ok(_permit) = sem.acquire().await else {
                return;
            };
            let hello = Hello {
                node_credential: credential.clone(),
                ..hello(idx, &id, "")
            };
            let attempt =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, try_enroll(&endpoint, server, hello));
            if let Ok(Ok(mut s)) = attempt.await {
                s.node_id = id.clone();
                break s;
            }
        };
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// The client side: QUIC endpoints and TLS for gRPC.
struct Client {
    endpoints: Vec<quinn::Endpoint>,
    grpc_tls: ClientTlsConfig,
    token: String,
}

impl Client {
    fn new(s: &Scheduler, endpoints: usize) -> Result<Self> {
        let ca = s.ca();
        let roots = vantage_shared::tls::load_roots(&ca)?;
        let tls = vantage_shared::tls::client_config(roots, None, &[TELEMETRY_ALPN])?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| anyhow!("QUIC TLS: {e}"))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        // As the agent (agent/src/telemetry): 1 s keep-alive, 5 s idle
        // timeout, immediate ACKs requested.
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(quinn::VarInt::from_u32(0));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(1)))
            .max_idle_timeout(Some(quinn::VarInt::from_u32(5_000).into()))
            .ack_frequency_config(Some(acks));
        cfg.transport_config(Arc::new(transport));
        let mut eps = Vec::new();
        for _ in 0..endpoints.max(1) {
            // A large receive buffer, so the load generator itself does not
            // drop datagrams when its threads are briefly descheduled
            // (capped by net.core.rmem_max).
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("client UDP socket")?;
            let _ =
                rustix::net::sockopt::set_socket_recv_buffer_size(&socket, CLIENT_SOCKET_BUFFER);
            let _ =
                rustix::net::sockopt::set_socket_send_buffer_size(&socket, CLIENT_SOCKET_BUFFER);
            let mut ep = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .context("client QUIC endpoint")?;
            ep.set_default_client_config(cfg.clone());
            eps.push(ep);
        }
        let ca_pem = std::fs::read(&ca)?;
        let grpc_tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        Ok(Self {
            endpoints: eps,
            grpc_tls,
            token: s.token()?,
        })
    }

    fn ports(&self) -> Vec<u16> {
        self.endpoints
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .map(|a| a.port())
            .collect()
    }

    async fn close(&self) {
        for ep in &self.endpoints {
            ep.close(0u32.into(), b"bench done");
        }
        for ep in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
    }
}

/// An enrolled agent, as the coordinator sees it.
struct Enrolled {
    node_id: String,
    credential: String,
    shared: Arc<AgentShared>,
}

/// Agents connected and reporting.
struct Fleet {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// By index; `None` for the (at most 1 %) agents that could not enroll.
    agents: Vec<Option<Enrolled>>,
    failures: Vec<String>,
    stats: Arc<LoadStats>,
    enroll_time: Duration,
}

impl Fleet {
    /// Enrolls `n` agents (at most `concurrency` enrollments at a time);
    /// each then reports until the fleet stops. More than 1 % failed
    /// enrollments is a setup failure.
    async fn enroll(
        client: &Client,
        server: SocketAddr,
        n: usize,
        concurrency: usize,
    ) -> Result<Self> {
        let started = Instant::now();
        let stop = CancellationToken::new();
        let stats = Arc::new(LoadStats::default());
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<Enrolled>)>();
        let mut tasks = JoinSet::new();
        for idx in 0..n {
            let endpoint = client.endpoints[idx % client.endpoints.len()].clone();
            let token = client.token.clone();
            let (sem, tx, stats, stop) = (sem.clone(), tx.clone(), stats.clone(), stop.clone());
            tasks.spawn(async move {
                let session = {
                    let Ok(_permit) = sem.acquire().await else {
                        return;
                    };
                    match tokio::time::timeout(
                        ENROLL_TIMEOUT,
                        enroll(&endpoint, server, idx, &token, &stats),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(anyhow!("enrollment timed out after {ENROLL_TIMEOUT:?}")),
                    }
                };
                match session {
                    Ok(s) => {
                        let shared = Arc::new(AgentShared::default());
                        shared.set_conn(s.conn.clone());
                        let _ = tx.send((
                            idx,
                            Ok(Enrolled {
                                node_id: s.node_id.clone(),
                                credential: s.credential.clone(),
                                shared: shared.clone(),
                            }),
                        ));
                        agent_life(endpoint, server, idx, n, s, shared, stats, sem, stop).await;
                    }
                    Err(e) => {
                        let _ = tx.send((idx, Err(e)));
                    }
                }
            });
        }
        drop(tx);
        let mut agents: Vec<Option<Enrolled>> = (0..n).map(|_| None).collect();
        let mut failures = Vec::new();
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(120)
            + Duration::from_millis(20 * n as u64);
        let mut answered = 0;
        while answered < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((idx, Ok(a)))) => agents[idx] = Some(a),
                Ok(Some((idx, Err(e)))) => failures.push(format!("{}: {e:#}", node_id(idx))),
                Ok(None) => break,
                Err(_) => {
                    failures.push("enrollment deadline passed".into());
                    break;
                }
            }
            answered += 1;
        }
        let fleet = Self {
            stop,
            tasks,
            agents,
            failures,
            stats,
            enroll_time: started.elapsed(),
        };
        let enrolled = fleet.enrolled();
        if enrolled * 100 < n * 99 || enrolled == 0 {
            let shown: Vec<String> = fleet.failures.iter().take(5).cloned().collect();
            let failed = fleet.failures.len();
            fleet.shutdown().await;
            bail!("only {enrolled} of {n} agents enrolled; {failed} failures, e.g. {shown:?}");
        }
        Ok(fleet)
    }

    /// Up to `ROUTE_SAMPLE` enrolled node ids spread over the fleet.
    fn sample_ids(&self) -> Vec<String> {
        let ids: Vec<&Enrolled> = self.agents.iter().flatten().collect();
        ids.iter()
            .step_by((ids.len() / ROUTE_SAMPLE).max(1))
            .take(ROUTE_SAMPLE)
            .map(|a| a.node_id.clone())
            .collect()
    }

    fn enrolled(&self) -> usize {
        self.agents.iter().flatten().count()
    }

    fn conns(&self) -> impl Iterator<Item = quinn::Connection> + '_ {
        self.agents.iter().flatten().filter_map(|a| a.shared.conn())
    }

    fn lost_packets(&self) -> u64 {
        self.conns().map(|c| c.stats().path.lost_packets).sum()
    }

    fn open_sessions(&self) -> usize {
        self.conns().filter(|c| c.close_reason().is_none()).count()
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await {}
        self.tasks.abort_all();
    }
}

// ---------------------------------------------------------------------------
// Ingest phases
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct IngestResult {
    label: &'static str,
    agents: usize,
    interval_ms: u32,
    enroll_s: f64,
    window_s: f64,
    offered_per_s: f64,
    accepted_per_s: f64,
    cpu: CpuSplit,
    plans_in_window: f64,
    mean_plan_ms: f64,
    versions_per_s: f64,
    store_ops_per_s: f64,
    loadgen_cores: f64,
    /// Whole machine, busy cores (scheduler + load generator + anything else).
    machine_cores: f64,
    nodes_up: f64,
    open_sessions: usize,
    rejected: f64,
    sessions_ended: u64,
    reconnects: u64,
    lost_in_window: u64,
    enroll_retries: u64,
    enroll_failures: usize,
    lost_packets: u64,
    udp_drops: u64,
    sched_socket_drops: u64,
    client_socket_drops: u64,
    rss_mib: f64,
}

impl IngestResult {
    fn per_core(&self) -> f64 {
        if self.cpu.total > 0.0 {
            self.accepted_per_s / self.cpu.total
        } else {
            0.0
        }
    }

    /// Reports/s per core of the ingest path alone: the QUIC thread, where
    /// every report is received, decoded and applied.
    fn per_ingest_core(&self) -> f64 {
        if self.cpu.quic > 0.0 {
            self.accepted_per_s / self.cpu.quic
        } else {
            0.0
        }
    }

    fn print(&self) {
        println!(
            "## Phase `{}`: {} agents × every {} ms",
            self.label, self.agents, self.interval_ms
        );
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!(
            "| enrollment (QUIC handshake + Hello/Welcome) | {} agents in {:.1} s ({:.0}/s) |",
            self.agents,
            self.enroll_s,
            self.agents as f64 / self.enroll_s.max(1e-9)
        );
        println!("| window | {:.1} s |", self.window_s);
        println!(
            "| reports offered (load generator) | {:.0}/s |",
            self.offered_per_s
        );
        println!(
            "| reports accepted (scheduler, `reports_total`) | {:.0}/s |",
            self.accepted_per_s
        );
        println!(
            "| scheduler CPU: total / QUIC ingest thread / tokio workers / planner and the rest | {:.2} / {:.2} / {:.2} / {:.2} cores |",
            self.cpu.total, self.cpu.quic, self.cpu.workers, self.cpu.rest
        );
        println!(
            "| **reports/s per scheduler core (total CPU)** | **{:.0}** |",
            self.per_core()
        );
        println!(
            "| reports/s per QUIC-ingest-thread core (ingest path alone) | {:.0} |",
            self.per_ingest_core()
        );
        let mean = if self.mean_plan_ms > 0.0 {
            format!("{:.0} ms", self.mean_plan_ms)
        } else {
            "n/a".to_owned()
        };
        println!(
            "| plans finished in the window / their mean duration | {:.0} / {mean} |",
            self.plans_in_window
        );
        println!(
            "| new route-table versions / store ops | {:.0}/s / {:.0}/s |",
            self.versions_per_s, self.store_ops_per_s
        );
        println!(
            "| load generator CPU / whole machine busy (other processes) | {:.2} / {:.2} ({:.2}) cores |",
            self.loadgen_cores,
            self.machine_cores,
            (self.machine_cores - self.cpu.total - self.loadgen_cores).max(0.0)
        );
        println!(
            "| nodes up / client sessions open at the end | {:.0} / {} |",
            self.nodes_up, self.open_sessions
        );
        println!(
            "| sessions dropped by the scheduler: in the window / whole run (reconnected) | {} / {} ({}) |",
            self.lost_in_window, self.sessions_ended, self.reconnects
        );
        println!(
            "| rejections / enrollment retries / failed enrollments | {:.0} / {} / {} |",
            self.rejected, self.enroll_retries, self.enroll_failures
        );
        println!(
            "| in the window: QUIC packets declared lost (client view) | {} |",
            self.lost_packets
        );
        println!(
            "| in the window: UDP datagrams dropped, receive buffer full: scheduler socket / load-generator sockets (all UDP) | {} / {} ({}) |",
            self.sched_socket_drops, self.client_socket_drops, self.udp_drops
        );
        println!("| scheduler RSS | {:.0} MiB |", self.rss_mib);
        println!();
    }
}

async fn ingest_phase(
    args: &Args,
    bin: &Path,
    http: &reqwest::Client,
    label: &'static str,
    interval_ms: u32,
) -> Result<IngestResult> {
    eprintln!("[{label}] starting the scheduler (report interval {interval_ms} ms)");
    let mut sched = Scheduler::start(bin, interval_ms, keep_log(args, label)?)?;
    sched.wait_ready(http).await?;
    let client = Client::new(&sched, args.client_endpoints)?;
    eprintln!("[{label}] enrolling {} agents", args.agents);
    let fleet = match Fleet::enroll(&client, sched.quic, args.agents, args.concurrency).await {
        Ok(f) => f,
        Err(e) => bail!(
            "[{label}] enrollment: {e:#}\nscheduler log:\n{}",
            sched.log_tail()
        ),
    };
    eprintln!(
        "[{label}] enrolled in {:.1} s; warming up {} s",
        fleet.enroll_time.as_secs_f64(),
        args.warmup_s
    );
    let warmup =
        Duration::from_secs(args.warmup_s).max(Duration::from_millis(u64::from(interval_ms) * 2));
    tokio::time::sleep(warmup).await;

    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let m0 = sched.metrics(http).await?;
    let c0 = sched.cpu()?;
    let l0 = CpuSample::take(std::process::id())?;
    let s0 = fleet.stats.reports_sent.load(Ordering::Relaxed);
    let sample = fleet.sample_ids();
    let v0 = sched.sample_versions(http, &sample).await?;
    let lost0 = fleet.lost_packets();
    let e0 = fleet.stats.sessions_ended.load(Ordering::Relaxed);
    let udp0 = udp_rcvbuf_errors();
    let client_ports = client.ports();
    let sd0 = udp_socket_drops(&[sched.quic.port()]);
    let cd0 = udp_socket_drops(&client_ports);
    let sys0 = system_jiffies();
    tokio::time::sleep(Duration::from_secs(args.window_s.max(1))).await;
    let m1 = sched.metrics(http).await?;
    let c1 = sched.cpu()?;
    let l1 = CpuSample::take(std::process::id())?;
    let s1 = fleet.stats.reports_sent.load(Ordering::Relaxed);
    let v1 = sched.sample_versions(http, &sample).await?;
    let lost1 = fleet.lost_packets();
    let e1 = fleet.stats.sessions_ended.load(Ordering::Relaxed);
    let udp1 = udp_rcvbuf_errors();
    let sd1 = udp_socket_drops(&[sched.quic.port()]);
    let cd1 = udp_socket_drops(&client_ports);
    let sys1 = system_jiffies();
    let window_s = c1.at.duration_since(c0.at).as_secs_f64();

    let d = |k: &str| m1.get(k) - m0.get(k);
    let plans = d("vantage_scheduler_plan_duration_seconds_count");
    let result = IngestResult {
        label,
        agents: fleet.enrolled(),
        interval_ms,
        enroll_s: fleet.enroll_time.as_secs_f64(),
        window_s,
        offered_per_s: (s1 - s0) as f64 / window_s,
        accepted_per_s: d("vantage_scheduler_reports_total") / window_s,
        cpu: c0.split_until(&c1, workers),
        plans_in_window: d("vantage_scheduler_plan_duration_seconds_count"),
        mean_plan_ms: if plans > 0.0 {
            d("vantage_scheduler_plan_duration_seconds_sum") / plans * 1e3
        } else {
            0.0
        },
        versions_per_s: v1.saturating_sub(v0) as f64 / window_s * fleet.enrolled() as f64
            / sample.len().max(1) as f64,
        store_ops_per_s: d("vantage_scheduler_store_ops_total") / window_s,
        loadgen_cores: l0.cores_until(&l1),
        machine_cores: system_cores(sys0, sys1, window_s),
        nodes_up: m1.get("vantage_scheduler_nodes{state=\"up\"}"),
        open_sessions: fleet.open_sessions(),
        rejected: m1.sum_family("vantage_scheduler_telemetry_rejected_total"),
        sessions_ended: fleet.stats.sessions_ended.load(Ordering::Relaxed),
        reconnects: fleet.stats.reconnects.load(Ordering::Relaxed),
        lost_in_window: e1.saturating_sub(e0),
        enroll_retries: fleet.stats.enroll_retries.load(Ordering::Relaxed),
        enroll_failures: fleet.failures.len(),
        lost_packets: lost1.saturating_sub(lost0),
        udp_drops: udp1.saturating_sub(udp0),
        sched_socket_drops: sd1.saturating_sub(sd0),
        client_socket_drops: cd1.saturating_sub(cd0),
        rss_mib: c1.rss_kib as f64 / 1024.0,
    };
    fleet.shutdown().await;
    drop(sched);
    client.close().await;
    Ok(result)
}

// ---------------------------------------------------------------------------
// Route push latency
// ---------------------------------------------------------------------------

/// A table received (and ACKed) by a subscribed agent.
#[derive(Debug, Clone, Copy)]
struct AckEvent {
    idx: usize,
    weights_version: u64,
    at: Instant,
}

/// One agent's RouteDiscovery stream: ACK every table, report each ACK.
#[allow(clippy::too_many_arguments)]
async fn subscribe(
    grpc: SocketAddr,
    tls: ClientTlsConfig,
    idx: usize,
    node: String,
    credential: String,
    agent: Arc<AgentShared>,
    events: mpsc::UnboundedSender<AckEvent>,
    connected: tokio::sync::oneshot::Sender<Result<()>>,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let setup = async {
        let _permit = sem.acquire().await?;
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))?
            .tls_config(tls)?
            .connect_timeout(HANDSHAKE_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .context("gRPC connect")?;
        let mut client = RouteDiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel::<RouteRequest>(8);
        tx.send(RouteRequest {
            node_id: node.clone(),
            version_info: 0,
            response_nonce: String::new(),
            error_detail: None,
        })
        .await?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::try_from(format!("Bearer {credential}"))?,
        );
        let stream = client
            .stream_routes(request)
            .await
            .context("StreamRoutes")?
            .into_inner();
        anyhow::Ok((tx, stream))
    };
    let (tx, mut stream) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, setup).await {
        Ok(Ok(s)) => {
            let _ = connected.send(Ok(()));
            s
        }
        Ok(Err(e)) => {
            let _ = connected.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = connected.send(Err(anyhow!("subscription timed out")));
            return;
        }
    };
    let deadline = tokio::time::sleep(PHASE_DEADLINE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = &mut deadline => return,
            msg = stream.message() => match msg {
                Ok(Some(table)) => {
                    let ack = RouteRequest {
                        node_id: node.clone(),
                        version_info: table.version,
                        response_nonce: table.nonce.clone(),
                        error_detail: None,
                    };
                    if tx.send(ack).await.is_err() {
                        return;
                    }
                    agent.route_version.store(table.version, Ordering::Relaxed);
                    let _ = events.send(AckEvent {
                        idx,
                        weights_version: table.weights_version,
                        at: Instant::now(),
                    });
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}

#[derive(Debug, Clone)]
struct RoutesResult {
    agents: usize,
    changes: usize,
    /// Per change: PUT → all agents ACKed, ms.
    all_acked_ms: Vec<f64>,
    /// Per change: PUT round trip, ms.
    put_ms: Vec<f64>,
    /// Per (change, agent): PUT → that agent ACKed, ms.
    per_agent_ms: Vec<f64>,
    confirmed: usize,
    sampled: usize,
    cpu: CpuSplit,
    loadgen_cores: f64,
    machine_cores: f64,
    mean_plan_ms: f64,
    pushes: f64,
    acks: f64,
    nacks: f64,
    subscribe_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

impl RoutesResult {
    fn all_acked(&self) -> Vec<f64> {
        sorted(&self.all_acked_ms)
    }

    fn print(&self) {
        let all = self.all_acked();
        let per = sorted(&self.per_agent_ms);
        let put = sorted(&self.put_ms);
        println!(
            "## Phase `routes`: {} agents (QUIC reports at 1 s + gRPC subscription), {} weight changes",
            self.agents, self.changes
        );
        println!();
        println!("| measure | p50 | p95 | p99 | max |");
        println!("|---|---|---|---|---|");
        let row = |name: &str, v: &[f64]| {
            println!(
                "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
                percentile(v, 50.0),
                percentile(v, 95.0),
                percentile(v, 99.0),
                v.last().copied().unwrap_or(f64::NAN)
            );
        };
        row("**PUT /v1/weights → all agents ACKed**", &all);
        row("PUT → one agent ACKed (all agents × changes)", &per);
        row("PUT /v1/weights round trip", &put);
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!(
            "| subscription setup ({} gRPC/TLS streams, first table ACKed) | {:.1} s |",
            self.agents, self.subscribe_s
        );
        println!(
            "| GET /v1/routes/{{id}} acked_version == version (sample) | {}/{} |",
            self.confirmed, self.sampled
        );
        println!(
            "| tables pushed / ACKs / NACKs during the changes | {:.0} / {:.0} / {:.0} |",
            self.pushes, self.acks, self.nacks
        );
        println!("| mean plan duration | {:.0} ms |", self.mean_plan_ms);
        println!(
            "| CPU during the changes: scheduler total / QUIC ingest thread / tokio workers / planner and the rest | {:.2} / {:.2} / {:.2} / {:.2} cores |",
            self.cpu.total, self.cpu.quic, self.cpu.workers, self.cpu.rest
        );
        println!(
            "| CPU during the changes: load generator / whole machine busy | {:.2} / {:.2} cores |",
            self.loadgen_cores, self.machine_cores
        );
        println!();
    }
}

/// Waits until every agent has ACKed a table with `weights_version >= v`;
/// returns per-agent times from `t0`, ms.
async fn wait_all_acked(
    rx: &mut mpsc::UnboundedReceiver<AckEvent>,
    acked: &mut [u64],
    v: u64,
    t0: Instant,
    deadline: tokio::time::Instant,
) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(acked.len());
    let mut missing = acked.iter().filter(|&&w| w < v).count();
    while missing > 0 {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow!("{missing} agents did not ACK weights version {v} in time"))?
            .ok_or_else(|| anyhow!("every subscription ended"))?;
        let slot = &mut acked[ev.idx];
        if *slot < v && ev.weights_version >= v {
            missing -= 1;
            times.push(ev.at.duration_since(t0).as_secs_f64() * 1e3);
        }
        *slot = (*slot).max(ev.weights_version);
    }
    Ok(times)
}

async fn routes_phase(args: &Args, bin: &Path, http: &reqwest::Client) -> Result<RoutesResult> {
    let m = args.route_agents.max(1);
    eprintln!("[routes] starting the scheduler");
    let mut sched = Scheduler::start(bin, 1_000, keep_log(args, "routes")?)?;
    sched.wait_ready(http).await?;
    let client = Client::new(&sched, args.client_endpoints)?;
    eprintln!("[routes] enrolling {m} agents over QUIC");
    let fleet = Fleet::enroll(&client, sched.quic, m, args.concurrency)
        .await
        .with_context(|| format!("[routes] enrollment; scheduler log:\n{}", sched.log_tail()))?;

    eprintln!("[routes] subscribing {m} agents over gRPC");
    let started = Instant::now();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<AckEvent>();
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut subs = JoinSet::new();
    let mut connected = Vec::with_capacity(m);
    for (idx, a) in fleet.agents.iter().enumerate() {
        let Some(a) = a else { continue };
        let (ctx, crx) = tokio::sync::oneshot::channel();
        connected.push((a.node_id.clone(), crx));
        subs.spawn(subscribe(
            sched.grpc,
            client.grpc_tls.clone(),
            idx,
            a.node_id.clone(),
            a.credential.clone(),
            a.shared.clone(),
            ev_tx.clone(),
            ctx,
            sem.clone(),
            fleet.stop.clone(),
        ));
    }
    drop(ev_tx);
    let setup_deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for (id, c) in connected {
        match tokio::time::timeout_at(setup_deadline, c).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("{id} could not subscribe: {e:#}"),
            Ok(Err(_)) => bail!("{id} subscription task ended"),
            Err(_) => bail!("gRPC subscriptions not set up within 120 s"),
        }
    }
    // Every agent holds and has ACKed a first table. Agents that could not
    // enroll (at most 1 %) count as done throughout.
    let mut acked: Vec<u64> = fleet
        .agents
        .iter()
        .map(|a| if a.is_some() { 0 } else { u64::MAX })
        .collect();
    let mut first: Vec<bool> = fleet.agents.iter().map(Option::is_none).collect();
    let mut have = first.iter().filter(|f| **f).count();
    let m = fleet.enrolled();
    while have < first.len() {
        let ev = tokio::time::timeout_at(setup_deadline, ev_rx.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} agents got no first table within 120 s",
                    first.len() - have
                )
            })?
            .ok_or_else(|| anyhow!("subscriptions ended"))?;
        if !first[ev.idx] {
            first[ev.idx] = true;
            have += 1;
        }
        acked[ev.idx] = acked[ev.idx].max(ev.weights_version);
    }
    let subscribe_s = started.elapsed().as_secs_f64();
    eprintln!("[routes] all subscribed in {subscribe_s:.1} s; settling 3 s");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let m0 = sched.metrics(http).await?;
    let c0 = sched.cpu()?;
    let l0 = CpuSample::take(std::process::id())?;
    let sys0 = system_jiffies();
    let mut all_acked_ms = Vec::new();
    let mut put_ms = Vec::new();
    let mut per_agent_ms = Vec::new();
    let mut rng = StdRng::seed_from_u64(42);
    let mut last_version = 0;
    let weights_url = format!("{}/v1/weights", sched.base);
    for k in 0..args.changes {
        while let Ok(ev) = ev_rx.try_recv() {
            acked[ev.idx] = acked[ev.idx].max(ev.weights_version);
        }
        let latency = if k % 2 == 0 { 0.45 } else { 0.35 };
        let t0 = Instant::now();
        let resp = http
            .put(&weights_url)
            .json(
                &serde_json::json!({ "latency": latency, "comment": format!("bench change {k}") }),
            )
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        put_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            bail!("PUT /v1/weights: {status} {body}");
        }
        let v = body["version"]
            .as_u64()
            .ok_or_else(|| anyhow!("PUT /v1/weights answered without a version: {body}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let times = wait_all_acked(&mut ev_rx, &mut acked, v, t0, deadline)
            .await
            .with_context(|| format!("weight change {k} (version {v})"))?;
        let all = times.iter().copied().fold(0.0, f64::max);
        eprintln!("[routes] change {k}: weights v{v} ACKed by all {m} agents in {all:.1} ms");
        all_acked_ms.push(all);
        per_agent_ms.extend(times);
        last_version = v;
        // Let the system settle, then change again at a random phase of the
        // periodic replan.
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..800))).await;
    }
    let m1 = sched.metrics(http).await?;
    let c1 = sched.cpu()?;
    let l1 = CpuSample::take(std::process::id())?;
    let sys1 = system_jiffies();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Cross-check with the API: the agents' ACKs are recorded.
    let sample = fleet.sample_ids();
    let mut confirmed = 0;
    for id in &sample {
        let url = format!("{}/v1/routes/{id}", sched.base);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let r: serde_json::Value = http.get(&url).send().await?.json().await?;
            let version = r["version"].as_u64();
            let ok = version.is_some()
                && r["acked_version"].as_u64() == version
                && r["table"]["weights_version"].as_u64() >= Some(last_version);
            if ok {
                confirmed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let d = |k: &str| m1.get(k) - m0.get(k);
    let plans = d("vantage_scheduler_plan_duration_seconds_count");
    let result = RoutesResult {
        agents: m,
        changes: args.changes,
        all_acked_ms,
        put_ms,
        per_agent_ms,
        confirmed,
        sampled: sample.len(),
        cpu: c0.split_until(&c1, workers),
        loadgen_cores: l0.cores_until(&l1),
        machine_cores: system_cores(sys0, sys1, c1.at.duration_since(c0.at).as_secs_f64()),
        mean_plan_ms: if plans > 0.0 {
            d("vantage_scheduler_plan_duration_seconds_sum") / plans * 1e3
        } else {
            0.0
        },
        pushes: d("vantage_scheduler_route_pushes_total"),
        acks: d("vantage_scheduler_route_acks_total"),
        nacks: d("vantage_scheduler_route_nacks_total"),
        subscribe_s,
    };
    fleet.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, subs.join_next()).await {}
    subs.abort_all();
    drop(sched);
    client.close().await;
    Ok(result)
}

fn print_summary(ingest: &[IngestResult], routes: Option<&RoutesResult>) {
    println!("## Summary against the targets");
    println!();
    println!("| scenario | figure | target |");
    println!("|---|---|---|");
    for r in ingest {
        println!(
            "| {} agents × {} ms: reports/s per scheduler core | {:.0} ({:.0} reports/s on {:.2} cores; {:.0} per QUIC-ingest-thread core) | ≥ 50,000 |",
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
            "| {} agents: weight change → all ACKed, p99 of {} | {:.1} ms (p50 {:.1} ms) | ≤ 100 ms |",
            r.agents,
            r.changes,
            percentile(&all, 99.0),
            percentile(&all, 50.0)
        );
    }
    println!();
}
