//! `vantage-demo`: a whole Vantage cluster on this machine in one command.
//!
//! Starts `vantage-scheduler --dev` (SQLite) and four `vantage-agent`s placed
//! at Paris, Frankfurt, Tokyo and São Paulo, all on loopback, prints where
//! everything listens and a few `curl` commands, and runs until Ctrl-C (or
//! `--duration`). Then it stops every child with SIGTERM, waits, and SIGKILLs
//! whatever is still running after the grace period, so nothing is left.
//!
//! The binaries are looked up next to this executable (`target/debug/`), or
//! in `VANTAGE_BIN_DIR`:
//!
//! ```text
//! cargo build --bins && target/debug/vantage-demo
//! ```

use anyhow::{Context, bail};
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vantage_tests::cluster::node_healthy;
use vantage_tests::ports::{Proto, is_free};
use vantage_tests::{Agent, Scheduler, SchedulerPorts, bins};

/// The demo's agents: node id, region, latitude, longitude.
const CITIES: [(&str, &str, f64, f64); 4] = [
    ("paris", "eu-west", 48.8566, 2.3522),
    ("frankfurt", "eu-central", 50.1109, 8.6821),
    ("tokyo", "ap-northeast", 35.6762, 139.6503),
    ("sao-paulo", "sa-east", -23.5505, -46.6333),
];

/// Default scheduler ports (DESIGN §2), used when free.
const DEFAULT_PORTS: SchedulerPorts = SchedulerPorts {
    quic: 7400,
    grpc: 7401,
    http: 7480,
};

#[derive(Debug, Parser)]
#[command(
    name = "vantage-demo",
    about = "Run a scheduler and four agents on loopback"
)]
struct Args {
    /// Data directory (scheduler in `<dir>/scheduler`, agents in `<dir>/agents/<id>`).
    /// Default: ./vantage-data/demo. Kept after exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use a temporary data directory, removed on exit.
    #[arg(long, conflicts_with = "data_dir")]
    temp: bool,
    /// Stop after this many seconds of running (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Use free random ports even when 7400/7401/7480 are free.
    #[arg(long)]
    free_ports: bool,
    /// Report interval the scheduler sets, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    report_interval_ms: u64,
    /// Grace period for SIGTERM before SIGKILL, in seconds.
    #[arg(long, default_value_t = 10)]
    grace: u64,
}

/// Under `cargo run` (which sets `CARGO`), builds the scheduler and agent
/// binaries with the demo's own profile so `cargo run --release --bin
/// vantage-demo` works from a fresh clone and never runs stale binaries.
fn build_siblings() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let release = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.ends_with("release")))
        .unwrap_or(false);
    let mut cmd = std::process::Command::new(cargo);
    // The whole workspace, so features unify as in `cargo build` and the
    // shared build cache is reused.
    cmd.args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "building vantage-scheduler and vantage-agent ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the scheduler and agent failed ({status})");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    build_siblings()?;
    for b in [bins::SCHEDULER, bins::AGENT] {
        if !bins::exists(b) {
            bail!(
                "{} not found in {}: run `cargo build --bins` first (or set VANTAGE_BIN_DIR)",
                b,
                bins::bin_dir().display()
            );
        }
    }

    let temp = if args.temp {
        Some(tempfile::tempdir().context("creating a temp dir")?)
    } else {
        None
    };
    let root = match (&temp, &args.data_dir) {
        (Some(t), _) => t.path().to_path_buf(),
        (None, Some(d)) => d.clone(),
        (None, None) => PathBuf::from("vantage-data").join("demo"),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;

    let defaults_free = is_free(DEFAULT_PORTS.quic, Proto::Udp)
        && is_free(DEFAULT_PORTS.grpc, Proto::Tcp)
        && is_free(DEFAULT_PORTS.http, Proto::Tcp);
    let ports = if defaults_free && !args.free_ports {
        DEFAULT_PORTS
    } else {
        SchedulerPorts::free()
    };

    let started = Instant::now();
    let mut sched = Scheduler::builder()
        .name("scheduler")
        .data_dir(root.join("scheduler"))
        .ports(ports)
        .report_interval_ms(args.report_interval_ms)
        .start()
        .await;
    let mut agents = Vec::new();
    for (id, region, lat, lon) in CITIES {
        let a = Agent::builder(id, &sched)
            .data_dir(root.join("agents").join(id))
            .region(region)
            .at(lat, lon)
            .capacity_mbps(1000.0)
            .start()
            .await;
        agents.push(a);
    }

    let up = wait_up(&sched, Duration::from_secs(30)).await;
    print_banner(&sched, &agents, &root, up, started.elapsed());

    let run = async {
        match args.duration {
            Some(secs) => {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                "duration elapsed"
            }
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; "Ctrl-C" }
        _ = sigterm() => "SIGTERM",
        w = run => w,
    };
    println!(
        "\n{why}: stopping agents, then the scheduler (grace {}s)…",
        args.grace
    );

    let grace = Duration::from_secs(args.grace);
    let mut graceful = 0;
    let mut killed = 0;
    let mut stop_one = |name: &str, (status, ok): (Option<std::process::ExitStatus>, bool)| {
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "not running".into());
        if ok {
            graceful += 1;
            println!("  stopped {name}: {status}");
        } else {
            killed += 1;
            println!("  {name} ignored SIGTERM for {grace:?}; killed: {status}");
        }
    };
    let mut results = Vec::new();
    for a in agents.iter_mut() {
        let name = if a.is_running() {
            a.node_id().to_owned()
        } else {
            format!("{} (had already exited)", a.node_id())
        };
        results.push((name, a.shutdown(grace).await));
    }
    let name = if sched.is_running() {
        "scheduler".to_owned()
    } else {
        "scheduler (had already exited)".to_owned()
    };
    results.push((name, sched.shutdown(grace).await));
    for (name, r) in results {
        stop_one(&name, r);
    }
    println!("all children stopped ({graceful} graceful, {killed} killed)");
    drop(agents);
    drop(sched);
    if let Some(t) = temp {
        t.close().context("removing the temp dir")?;
    } else {
        println!("data kept in {}", root.display());
    }
    Ok(())
}

/// Waits until the scheduler lists every demo node up; returns how many are.
async fn wait_up(sched: &Scheduler, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let nodes = sched.nodes().await;
        let up = nodes
            .iter()
            .filter(|n| node_healthy(n, 5000).is_ok())
            .count();
        if up == CITIES.len() || Instant::now() >= deadline {
            return up;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sigterm() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn print_banner(
    sched: &Scheduler,
    agents: &[Agent],
    root: &std::path::Path,
    up: usize,
    took: Duration,
) {
    let api = sched.api_url();
    let p = sched.ports();
    println!(
        "Vantage demo: {up}/{} nodes up after {took:.1?}",
        CITIES.len()
    );
    println!();
    println!("scheduler API   {api}");
    println!("  QUIC telemetry  127.0.0.1:{}/udp", p.quic);
    println!("  gRPC routes     {}", sched.grpc_url());
    println!("  data            {}", sched.data_dir().display());
    println!("  dev CA          {}", sched.ca_path().display());
    println!("  pid             {}", sched.pid().unwrap_or(0));
    println!();
    println!("agents:");
    for a in agents {
        println!(
            "  {:<10} admin {}  (status: {}/v1/status)  media {}  pid {}",
            a.node_id(),
            a.admin_url(),
            a.admin_url(),
            a.media_url(),
            a.pid().unwrap_or(0)
        );
    }
    println!();
    println!("try:");
    println!("  curl -s {api}/v1/nodes");
    println!("  curl -s {api}/v1/nodes/{}", CITIES[0].0);
    println!("  curl -s {api}/v1/routes/{}", CITIES[2].0);
    println!("  curl -s {api}/v1/weights");
    println!(
        "  curl -s -X PUT -H 'content-type: application/json' -d '{{\"latency\":0.5}}' {api}/v1/weights"
    );
    println!("  curl -s -X POST {api}/v1/nodes/{}/drain", CITIES[3].0);
    println!(
        "  curl -s {}/v1/status",
        agents.first().map(Agent::admin_url).unwrap_or_default()
    );
    println!("  curl -s {api}/metrics");
    println!();
    let pids: Vec<String> = std::iter::once(sched.pid())
        .chain(agents.iter().map(Agent::pid))
        .flatten()
        .map(|p| p.to_string())
        .collect();
    println!("pids: {}", pids.join(" "));
    println!(
        "logs: {0}/scheduler/logs/ and {0}/agents/*/logs/",
        root.display()
    );
    println!("Ctrl-C stops everything.");
}
