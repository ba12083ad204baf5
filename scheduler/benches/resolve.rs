//! Viewer-resolve benchmark: `GET /v1/resolve` over real HTTP/1.1 on
//! loopback against the scheduler's own `App` and router, with N nodes
//! (default 2,000) and G client groups with learned (node, group)
//! estimates (default 50,000).
//!
//! The server runs on ONE dedicated thread (a current-thread tokio runtime:
//! the router, the resolver, and a once-a-second "reports arrived" tick
//! that rebuilds the resolver's snapshot as the liveness loop does);
//! its CPU time (`/proc/self/task/TID/stat`) gives resolves per second per
//! core. The load generator runs on another thread: C keep-alive
//! connections with a minimal HTTP/1.1 client, each sending the next
//! request when the previous answer is complete; latency is measured per
//! request at the client.
//!
//! Viewers: 80 % at the centre of a group with estimates, 20 % at random
//! places; stream `live/x` (published by one node).
//!
//! Run: `cargo bench -p vantage-scheduler --bench resolve [-- --help]`.
//! Figures are printed, never asserted; see docs/benchmarks.md.

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use vantage_proto::v1::{GroupQoe, Load, Report, StreamRole, StreamState};
use vantage_scheduler::app::App;
use vantage_scheduler::config::{Config, Settings};
use vantage_scheduler::registry::{NodeEntry, NodeInfo, Session};
use vantage_scheduler::store::Store;
use vantage_shared::group::geohash;
use vantage_shared::place::Coord;

#[derive(Debug, Parser)]
struct Args {
    /// Nodes in the registry.
    #[arg(long, default_value_t = 2_000)]
    nodes: usize,
    /// Client groups with learned estimates.
    #[arg(long, default_value_t = 50_000)]
    groups: usize,
    /// Nodes with an estimate per group.
    #[arg(long, default_value_t = 3)]
    nodes_per_group: usize,
    /// Concurrent keep-alive client connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Measured seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Ignored (cargo bench passes --bench).
    #[arg(long, hide = true)]
    bench: bool,
}

const CLOCK_TICKS_PER_S: f64 = 100.0;

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<(SocketAddr, u32, Arc<App>)>>();
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let data_dir = dir.path().to_owned();
    let (nodes, groups, per_group) = (args.nodes, args.groups, args.nodes_per_group);
    let server = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = addr_tx.send(Err(e.into()));
                return;
            }
        };
        rt.block_on(async move {
            let started = async {
                let app = build_app(&data_dir, nodes, groups, per_group).await?;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                Ok::<_, anyhow::Error>((app, listener))
            }
            .await;
            let (app, listener) = match started {
                Ok(x) => x,
                Err(e) => {
                    let _ = addr_tx.send(Err(e));
                    return;
                }
            };
            let addr = match listener.local_addr() {
                Ok(a) => a,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.into()));
                    return;
                }
            };
            let _ = addr_tx.send(Ok((addr, thread_id(), app.clone())));
            tokio::spawn(report_ticks(app.clone(), server_stop.clone()));
            let router = vantage_scheduler::api::router(app);
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(server_stop.cancelled_owned())
                .await;
        });
    });
    let (addr, tid, app) = addr_rx
        .recv()
        .context("server thread")?
        .context("server start")?;
    println!(
        "# resolve benchmark: {} nodes, {} groups known ({} (node, group) estimates), {} connections, {} s",
        args.nodes,
        app.resolver.learned_groups(),
        app.resolver.learned_pairs(),
        args.connections,
        args.seconds
    );
    println!(
        "- machine: {} CPU(s) online; server on one thread, load generator on another",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let queries = make_queries(args.groups, 20_000);
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Warm-up (connections, caches), then the measured run.
    client_rt.block_on(run_load(
        addr,
        &queries,
        args.connections,
        Duration::from_secs(1),
    ))?;
    let cpu0 = thread_cpu_s(tid)?;
    let t0 = Instant::now();
    let lat = client_rt.block_on(run_load(
        addr,
        &queries,
        args.connections,
        Duration::from_secs(args.seconds),
    ))?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu_s(tid)? - cpu0;
    stop.cancel();
    let _ = server.join();

    let n = lat.ok + lat.errors;
    let mut l = lat.latencies_us;
    l.sort_unstable();
    let q = |p: f64| -> f64 {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "- requests: {n} ({} errors) in {wall:.2} s = {:.0} resolves/s",
        lat.errors,
        n as f64 / wall
    );
    println!(
        "- server thread CPU: {cpu:.2} s = {:.2} cores → {:.0} resolves/s per core",
        cpu / wall,
        n as f64 / cpu.max(1e-9)
    );
    println!(
        "- latency at the client (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        q(1.0)
    );
    println!("- status codes: {:?}", lat.statuses);
    if lat.errors > 0 {
        bail!("{} requests failed", lat.errors);
    }
    Ok(())
}

/// Linux thread id of the calling thread.
fn thread_id() -> u32 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of thread `tid` of this process, seconds.
fn thread_cpu_s(tid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .with_context(|| format!("/proc/self/task/{tid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(ticks / CLOCK_TICKS_PER_S)
}

fn coord(r: &mut StdRng) -> Coord {
    // Where people live, roughly: skip the poles.
    Coord::new(r.random_range(-55.0..70.0), r.random_range(-170.0..170.0))
        .unwrap_or(Coord { lat: 0.0, lon: 0.0 })
}

async fn build_app(
    dir: &std::path::Path,
    nodes: usize,
    groups: usize,
    per_group: usize,
) -> Result<Arc<App>> {
    let settings = Settings {
        dev: Some(true),
        data_dir: Some(dir.to_owned()),
        ..Settings::default()
    };
    let config = Config::resolve(settings, None)?;
    let store = Store::open(&Store::sqlite_url(&dir.join("vantage.db"))).await?;
    let app = App::new(
        config,
        store,
        vantage_scheduler::auth::Mode::Token {
            enrollment_token: "bench-token-0123456789".into(),
        },
        CancellationToken::new(),
    )
    .await?;
    let now = vantage_shared::clock::now_ms();
    let mut r = StdRng::seed_from_u64(42);
    let mut places = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let c = coord(&mut r);
        places.push(c);
        let id = format!("n{i:05}");
        let mut e = NodeEntry::new(
            id.clone(),
            NodeInfo {
                region: "bench".into(),
                coord: Some(c),
                capacity_mbps: 10_000.0,
                public_url: format!(
                    "http://10.{}.{}.{}:8080",
                    i / 65536,
                    (i / 256) % 256,
                    i % 256
                ),
                probe_addr: String::new(),
                agent_version: String::new(),
                static_origins: BTreeMap::new(),
            },
            now,
        );
        e.session = Some(Session {
            id: "bench".into(),
            started_ms: now,
            remote: String::new(),
            connection: None,
        });
        e.apply_report(
            Report {
                load: Some(Load {
                    egress_mbps: r.random_range(0.0..5_000.0),
                    ..Default::default()
                }),
                streams: if i == 0 {
                    vec![StreamState {
                        key: "live/x".into(),
                        role: StreamRole::Origin as i32,
                        bitrate_kbps: 2_500.0,
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
                ..Default::default()
            },
            now,
        );
        app.registry.insert(e);
    }
    app.registry.tick(now, 1000);
    // Group estimates: each group is served by `per_group` random nodes.
    let mut by_node: BTreeMap<usize, Vec<GroupQoe>> = BTreeMap::new();
    let mut r = StdRng::seed_from_u64(7);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < groups {
        let c = coord(&mut r);
        let Some(g) = geohash(c.lat, c.lon, 4) else {
            continue;
        };
        if !seen.insert(g.clone()) {
            continue;
        }
        for _ in 0..per_group {
            by_node
                .entry(r.random_range(0..nodes))
                .or_default()
                .push(GroupQoe {
                    group: g.clone(),
                    viewers: 3,
                    tcp_rtt_ms: r.random_range(5.0..150.0),
                    retransmit_rate: r.random_range(0.0..0.02),
                    stall_rate: r.random_range(0.0..0.1),
                    buffer_ms: r.random_range(500.0..3000.0),
                    samples: 20,
                    delivery_rate_mbps: 0.0,
                });
        }
    }
    for (i, gs) in by_node {
        app.resolver.observe(&format!("n{i:05}"), &gs, now);
    }
    app.resolver.refresh(&app.registry, now);
    Ok(app)
}

/// Once a second every node "reports" (its report counter moves), and the
/// resolver rebuilds its snapshot as the liveness loop does in the server.
async fn report_ticks(app: Arc<App>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = vantage_shared::clock::now_ms();
        for id in app.registry.ids() {
            app.registry.update(&id, |e| {
                e.reports += 1;
                e.last_report_ms = Some(now);
            });
        }
        app.resolver.refresh(&app.registry, now);
    }
}

fn make_queries(groups: usize, n: usize) -> Vec<String> {
    // The same generator as the groups, so 80 % of viewers land in a known group.
    let mut g = StdRng::seed_from_u64(7);
    let known: Vec<Coord> = (0..groups.min(n)).map(|_| coord(&mut g)).collect();
    let mut r = StdRng::seed_from_u64(99);
    (0..n)
        .map(|_| {
            let c = if !known.is_empty() && r.random_bool(0.8) {
                known[r.random_range(0..known.len())]
            } else {
                coord(&mut r)
            };
            format!(
                "GET /v1/resolve?stream=live/x&lat={:.4}&lon={:.4}&n=3 HTTP/1.1\r\nhost: bench\r\n\r\n",
                c.lat, c.lon
            )
        })
        .collect()
}

#[derive(Debug, Default)]
struct LoadResult {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
}

async fn run_load(
    addr: SocketAddr,
    queries: &[String],
    connections: usize,
    duration: Duration,
) -> Result<LoadResult> {
    let deadline = Instant::now() + duration;
    let done = Arc::new(AtomicBool::new(false));
    let queries: Arc<Vec<String>> = Arc::new(queries.to_vec());
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let queries = queries.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let mut out = LoadResult::default();
            let mut sock = TcpStream::connect(addr).await?;
            sock.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut i = c * 997;
            while Instant::now() < deadline && !done.load(Ordering::Relaxed) {
                let q = &queries[i % queries.len()];
                i += 1;
                let t = Instant::now();
                sock.write_all(q.as_bytes()).await?;
                match read_response(&mut sock, &mut buf).await {
                    Ok(status) => {
                        out.latencies_us.push(t.elapsed().as_micros() as u64);
                        *out.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            out.ok += 1;
                        } else {
                            out.errors += 1;
                        }
                    }
                    Err(e) => {
                        out.errors += 1;
                        return Err::<LoadResult, anyhow::Error>(e);
                    }
                }
            }
            Ok(out)
        });
    }
    let mut total = LoadResult::default();
    while let Some(r) = tasks.join_next().await {
        let r = r??;
        total.ok += r.ok;
        total.errors += r.errors;
        total.latencies_us.extend(r.latencies_us);
        for (k, v) in r.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
    }
    done.store(true, Ordering::Relaxed);
    Ok(total)
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns the status.
async fn read_response(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("bad status line"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| anyhow!("no content-length"))?;
            let want = end + 4 + len;
            while buf.len() < want {
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
