//! Live comments benchmark (docs/benchmarks.md, "Live comments"): the real
//! `vantage-agent` (release build) holding one room with N WebSocket
//! connections, against a minimal fan-out reference written for the
//! benchmark (`reference.rs`), in the same run, on the same clients.
//!
//! Phases, each for the agent and then the reference:
//! * **idle** — N connections (default 19,000: this machine caps a process
//!   near 20,000 descriptors) that only send heartbeats at the agent's
//!   default interval (20 s): resident memory per connection (RSS delta
//!   over the empty room), kernel slab and TCP buffer memory per socket
//!   pair, and the agent's CPU over a window (heartbeats and housekeeping).
//! * **one** — one comment at a time (each after a quiet window, so it is
//!   not held for coalescing): time from the post leaving the poster to its
//!   arrival at each of the N clients, p50/p99/max over clients and rounds.
//! * **sustained** — R comments/s (default 200) for S seconds: the agent's
//!   CPU per delivered comment (deliveries counted by the agent and by the
//!   clients), writes per second, and the same for the reference fanning
//!   out the same batches (one per coalescing window); the ratio.
//!
//! Clients, poster and reference talk the binary comment format. The
//! scheduler runs too (`--dev`) for the agent's keys and routes. Every
//! process is stopped at the end; only 127.0.0.1 is used; every loop is
//! bounded in count and time. Figures are printed, never asserted.
//!
//! Run: `cargo build --release --bins && cargo bench -p vantage-tests --bench comments [-- --help]`

mod fleet;
mod procfs;
mod reference;

use clap::Parser;
use fleet::{Fleet, Poster};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, Scheduler};

const ROOM: &str = "live/bench";

#[derive(Debug, Clone, Parser)]
#[command(about = "Live comments benchmark: the agent against a minimal fan-out reference")]
struct Args {
    /// WebSocket connections in the room.
    #[arg(long, default_value_t = 19_000)]
    connections: usize,
    /// Upgrades in flight at once while connecting.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Client heartbeat interval, ms (the agent's default announced one).
    #[arg(long, default_value_t = 20_000)]
    heartbeat_ms: u64,
    /// Idle phase: CPU window, seconds.
    #[arg(long, default_value_t = 60)]
    idle_s: u64,
    /// One-comment rounds.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Sustained phase: comments per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Sustained phase: seconds of posting (the CPU window skips the first 2).
    #[arg(long, default_value_t = 20)]
    sustain_s: u64,
    /// The agent's coalescing window (and the reference's batch window), ms.
    #[arg(long, default_value_t = 100)]
    coalesce_ms: u64,
    /// Worker threads of this process's clients.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Only the agent.
    #[arg(long)]
    no_reference: bool,
    /// Only the reference.
    #[arg(long)]
    no_agent: bool,
    /// Internal: run as the reference server on this address.
    #[arg(long, hide = true)]
    reference_server: Option<SocketAddr>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One target's figures.
#[derive(Debug, Default, Clone)]
struct Figures {
    name: String,
    conns: usize,
    rss_empty_kib: u64,
    rss_full_kib: u64,
    slab_per_pair_b: f64,
    tcp_mem_pages: i64,
    idle_cores: f64,
    /// Share of the idle CPU spent in user space (the rest is the kernel:
    /// on loopback, both ends' TCP processing of a heartbeat).
    idle_user_share: f64,
    base_cores: f64,
    one_p50_ms: f64,
    one_p99_ms: f64,
    one_max_ms: f64,
    one_rounds: usize,
    sustained_cpu_s: f64,
    sustained_wall_s: f64,
    delivered: f64,
    client_received: u64,
    writes: f64,
    machine_cores: f64,
}

impl Figures {
    fn per_conn_kib(&self) -> f64 {
        (self.rss_full_kib.saturating_sub(self.rss_empty_kib)) as f64 / self.conns.max(1) as f64
    }
    /// CPU per heartbeat over the empty room's baseline, µs.
    fn us_per_heartbeat(&self, heartbeat_ms: u64) -> f64 {
        let per_s = self.conns as f64 * 1000.0 / heartbeat_ms.max(1) as f64;
        (self.idle_cores - self.base_cores).max(0.0) / per_s.max(1e-9) * 1e6
    }
    fn ns_per_delivery(&self) -> f64 {
        self.sustained_cpu_s / self.delivered.max(1.0) * 1e9
    }
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn main() {
    let args = Args::parse();
    if let Some(listen) = args.reference_server {
        if let Err(e) = reference::serve(listen) {
            eprintln!("reference: {e}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let deadline = Duration::from_secs(30 * 60);
    let result = rt.block_on(async {
        tokio::time::timeout(deadline, run(&args))
            .await
            .unwrap_or_else(|_| Err("the benchmark ran over 30 minutes".into()))
    });
    if let Err(e) = result {
        eprintln!("comments bench: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    eprintln!(
        "open file limit of this process: {:?} (the agent raises its own soft limit to its hard limit)",
        nofile.current
    );
    fleet::parser_self_check()?;
    let mut all = Vec::new();
    if !args.no_agent {
        all.push(agent_phases(args).await?);
    }
    if !args.no_reference {
        all.push(reference_phases(args).await?);
    }
    report(args, &all);
    Ok(())
}

/// Connects the fleet to `path` at `addr` and waits for every welcome.
async fn connect(args: &Args, addr: SocketAddr, path: &str) -> Result<Fleet, String> {
    let started = Instant::now();
    let fleet = Fleet::connect(
        addr,
        path,
        args.connections,
        args.concurrency,
        Duration::from_millis(args.heartbeat_ms),
    )
    .await?;
    let wait = Instant::now();
    while fleet.welcomed() < args.connections {
        if wait.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "{} of {} welcomed",
                fleet.welcomed(),
                args.connections
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "  {} connections upgraded and welcomed in {:.1?} ({} upgrades tried again)",
        args.connections,
        started.elapsed(),
        fleet::RETRIES.swap(0, Ordering::Relaxed)
    );
    Ok(fleet)
}

/// Memory and idle CPU with the fleet connected (`fill` already holds the
/// empty-room figures).
async fn idle(args: &Args, pid: u32, fleet: &Fleet, f: &mut Figures, slab0: u64, tcp0: u64) {
    tokio::time::sleep(Duration::from_secs(5)).await;
    f.rss_full_kib = procfs::rss_kib(pid);
    f.slab_per_pair_b =
        (procfs::slab_kib().saturating_sub(slab0) * 1024) as f64 / args.connections as f64;
    f.tcp_mem_pages = procfs::tcp_mem_pages() as i64 - tcp0 as i64;
    eprintln!(
        "  RSS {} KiB -> {} KiB: {:.2} KiB per connection",
        f.rss_empty_kib,
        f.rss_full_kib,
        f.per_conn_kib()
    );
    let w = procfs::Window::start(pid);
    let (u0, _) = procfs::cpu_split_s(pid);
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let (cpu, wall) = w.end();
    let (u1, _) = procfs::cpu_split_s(pid);
    f.idle_cores = cpu / wall;
    f.idle_user_share = (u1 - u0) / cpu.max(1e-9);
    eprintln!(
        "  idle with heartbeats every {} ms: {:.2} % of a core ({:.2} % without connections, \
         {:.1} µs of CPU per heartbeat, {:.0} % of it in user space); {} closed",
        args.heartbeat_ms,
        f.idle_cores * 100.0,
        f.base_cores * 100.0,
        f.us_per_heartbeat(args.heartbeat_ms),
        f.idle_user_share * 100.0,
        fleet.closed()
    );
}

/// Waits until every client holds `seq`; returns the latencies (ms) from `t0_ns`.
async fn arrivals(fleet: &Fleet, seq: u64, t0_ns: u64) -> Vec<f64> {
    let start = Instant::now();
    while fleet
        .stats
        .iter()
        .any(|s| s.last_seq.load(Ordering::Relaxed) < seq)
        && start.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    fleet
        .stats
        .iter()
        .filter(|s| s.last_seq.load(Ordering::Relaxed) >= seq)
        .map(|s| s.last_at_ns.load(Ordering::Relaxed).saturating_sub(t0_ns) as f64 / 1e6)
        .collect()
}

async fn agent_phases(args: &Args) -> Result<Figures, String> {
    eprintln!("== agent ({})", vantage_tests::bins::bin_dir().display());
    let s = Scheduler::builder().report_interval_ms(1000).start().await;
    let mut a = Agent::builder("bench", &s)
        .arg("--comments-client-rate")
        .arg("1000")
        .arg("--comments-client-burst")
        .arg("5000")
        .arg("--comments-room-rate")
        .arg("5000")
        .arg("--comments-room-burst")
        .arg("10000")
        .arg("--comments-coalesce-ms")
        .arg(args.coalesce_ms.to_string())
        .arg("--comments-max-connections")
        .arg("1000000")
        .start()
        .await;
    let media: SocketAddr = a
        .media_url()
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let publisher = SynthPublisher::start(media, &format!("/{ROOM}.flv"), 100);
    vantage_tests::comments::wait_keys(&a, Duration::from_secs(20)).await;
    let token = vantage_tests::comments::poster_token(&s, "bench", None).await;
    let path = format!("/{ROOM}/comments?format=binary&backlog=0");
    let mut poster = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match Poster::connect(media, &path, &token).await {
                Ok(p) => return p,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .map_err(|_| "the room never opened".to_owned())?;
    let pid = a.pid().ok_or("agent not running")?;
    let mut f = Figures {
        name: "vantage-agent".into(),
        conns: args.connections,
        ..Default::default()
    };
    // The empty room (the poster is in it), settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w = procfs::Window::start(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu, wall) = w.end();
    f.base_cores = cpu / wall;
    f.rss_empty_kib = procfs::rss_kib(pid);
    let (slab0, tcp0) = (procfs::slab_kib(), procfs::tcp_mem_pages());
    let fleet = connect(args, media, &path).await?;
    idle(args, pid, &fleet, &mut f, slab0, tcp0).await;

    // One comment at a time.
    let mut lat = Vec::new();
    for r in 0..args.rounds {
        let t0 = fleet.now_ns();
        poster
            .post(&format!("one{r}"), &format!("one comment, round {r}"))
            .await
            .map_err(|e| e.to_string())?;
        let seq = tokio::time::timeout(Duration::from_secs(5), poster.acks.recv())
            .await
            .map_err(|_| "no ack".to_owned())?
            .ok_or("poster closed")?;
        let got = arrivals(&fleet, seq, t0).await;
        if got.len() < args.connections {
            eprintln!(
                "  round {r}: only {} of {} clients got it",
                got.len(),
                args.connections
            );
        }
        lat.extend(got);
        tokio::time::sleep(Duration::from_millis(300 + args.coalesce_ms)).await;
    }
    f.one_rounds = args.rounds;
    f.one_p50_ms = quantile(&mut lat, 0.5);
    f.one_p99_ms = quantile(&mut lat, 0.99);
    f.one_max_ms = quantile(&mut lat, 1.0);
    eprintln!(
        "  one comment to {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} rounds",
        args.connections, f.one_p50_ms, f.one_p99_ms, f.one_max_ms, args.rounds
    );

    // Sustained rate.
    let started = Instant::now();
    let mut sent = 0u64;
    let mut window: Option<(procfs::Window, procfs::MachineCpu, (f64, f64), u64)> = None;
    let mut measured = None;
    let text = "x".repeat(40);
    while started.elapsed() < Duration::from_secs(args.sustain_s) {
        let due = (started.elapsed().as_secs_f64() * args.rate) as u64;
        let posts: Vec<(String, String)> = (sent..due)
            .map(|i| (format!("s{i}"), format!("{text} {i}")))
            .collect();
        sent = due;
        if !posts.is_empty() {
            poster.post_many(&posts).await.map_err(|e| e.to_string())?;
        }
        while poster.acks.try_recv().is_ok() {}
        let t = started.elapsed();
        if window.is_none() && t >= Duration::from_secs(2) {
            window = Some((
                procfs::Window::start(pid),
                procfs::MachineCpu::read(),
                delivered(&a).await,
                fleet.comments(),
            ));
        }
        if measured.is_none()
            && t >= Duration::from_secs(args.sustain_s.saturating_sub(1).max(3))
            && let Some((w, m, d0, c0)) = &window
        {
            let (cpu, wall) = w.end();
            let d1 = delivered(&a).await;
            measured = Some((
                cpu,
                wall,
                d1.0 - d0.0,
                fleet.comments() - c0,
                d1.1 - d0.1,
                m.cores_until(&procfs::MachineCpu::read(), num_cpus()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some((cpu, wall, d, c, writes, machine)) = measured {
        f.sustained_cpu_s = cpu;
        f.sustained_wall_s = wall;
        f.delivered = d;
        f.client_received = c;
        f.writes = writes;
        f.machine_cores = machine;
        eprintln!(
            "  {} comments/s: {:.2} cores, {:.0} deliveries/s (clients counted {:.0}/s), {:.0} writes/s, \
             {:.0} ns of CPU per delivery; machine {:.2} cores busy",
            args.rate,
            cpu / wall,
            d / wall,
            c as f64 / wall,
            writes / wall,
            f.ns_per_delivery(),
            machine
        );
    }
    fleet.stop().await;
    drop(poster);
    publisher.stop();
    a.stop().await;
    drop(s);
    Ok(f)
}

/// The agent's (deliveries, writes) counters.
async fn delivered(a: &Agent) -> (f64, f64) {
    (
        a.metric("vantage_agent_comments_delivered_total", &[])
            .await,
        a.metric("vantage_agent_comments_writes_total", &[]).await,
    )
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The reference child process and its stdin/stdout.
struct RefProc {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl RefProc {
    fn start() -> Result<(RefProc, u16), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(["--reference-server", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning the reference: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("reference said {line:?}"))?;
        Ok((
            RefProc {
                child,
                stdin,
                stdout,
            },
            port,
        ))
    }

    /// Sends a command; returns its `DONE` line (blocking: run off the runtime).
    fn command(&mut self, cmd: &str) -> Result<String, String> {
        writeln!(self.stdin, "{cmd}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_owned())
    }
}

impl Drop for RefProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(done: &str, name: &str) -> f64 {
    done.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn reference_phases(args: &Args) -> Result<Figures, String> {
    eprintln!("== minimal fan-out reference");
    let (rp, port) = RefProc::start()?;
    let pid = rp.child.id();
    let rp = std::sync::Arc::new(std::sync::Mutex::new(rp));
    let cmd = |c: String| {
        let rp = rp.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                rp.lock().unwrap_or_else(|p| p.into_inner()).command(&c)
            })
            .await
            .map_err(|e| e.to_string())?
        }
    };
    let mut f = Figures {
        name: "minimal fan-out reference".into(),
        conns: args.connections,
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.rss_empty_kib = procfs::rss_kib(pid);
    let (slab0, tcp0) = (procfs::slab_kib(), procfs::tcp_mem_pages());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let fleet = connect(args, addr, "/").await?;
    // The reference reads nothing: no idle CPU to speak of; its memory is
    // the sockets' only.
    let mut short = args.clone();
    short.idle_s = 5;
    idle(&short, pid, &fleet, &mut f, slab0, tcp0).await;

    let mut lat = Vec::new();
    for r in 0..args.rounds {
        let t0 = fleet.now_ns();
        // The reference numbers its comments 1, 2, 3... like a fresh room.
        cmd("one".into()).await?;
        lat.extend(arrivals(&fleet, r as u64 + 1, t0).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    f.one_rounds = args.rounds;
    f.one_p50_ms = quantile(&mut lat, 0.5);
    f.one_p99_ms = quantile(&mut lat, 0.99);
    f.one_max_ms = quantile(&mut lat, 1.0);
    eprintln!(
        "  one comment to {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.connections, f.one_p50_ms, f.one_p99_ms, f.one_max_ms
    );

    let secs = args.sustain_s.saturating_sub(3).max(3);
    let c0 = fleet.comments();
    let w = procfs::Window::start(pid);
    let m = procfs::MachineCpu::read();
    let done = cmd(format!("rate {} {secs} {}", args.rate, args.coalesce_ms)).await?;
    let (cpu, wall) = w.end();
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.sustained_cpu_s = cpu;
    f.sustained_wall_s = wall;
    f.delivered = field(&done, "delivered");
    f.client_received = fleet.comments() - c0;
    f.writes = field(&done, "writes");
    f.machine_cores = m.cores_until(&procfs::MachineCpu::read(), num_cpus());
    eprintln!(
        "  {} comments/s: {:.2} cores, {:.0} deliveries/s (clients counted {:.0}/s), skipped {}, \
         {:.0} ns of CPU per delivery",
        args.rate,
        cpu / wall,
        f.delivered / wall,
        f.client_received as f64 / wall,
        field(&done, "skipped"),
        f.ns_per_delivery()
    );
    fleet.stop().await;
    drop(rp);
    Ok(f)
}

fn report(args: &Args, all: &[Figures]) {
    println!();
    println!(
        "Live comments, {} connections, one room; {} comments/s sustained, {} ms batches; {} CPUs",
        args.connections,
        args.rate,
        args.coalesce_ms,
        num_cpus()
    );
    println!();
    println!(
        "| target | RSS per connection | kernel slab per socket pair | idle CPU (heartbeats every {} s) | one comment to all: p50 / p99 / max | sustained: cores | deliveries/s | writes/s | CPU per delivery |",
        args.heartbeat_ms / 1000
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let wall = f.sustained_wall_s.max(1e-9);
        println!(
            "| {} | {:.2} KiB | {:.0} B | {:.2} % of a core ({:.2} % without connections; {:.1} µs per heartbeat) | {:.1} / {:.1} / {:.1} ms | {:.2} | {:.0} (clients: {:.0}) | {:.0} | {:.0} ns |",
            f.name,
            f.per_conn_kib(),
            f.slab_per_pair_b,
            f.idle_cores * 100.0,
            f.base_cores * 100.0,
            f.us_per_heartbeat(args.heartbeat_ms),
            f.one_p50_ms,
            f.one_p99_ms,
            f.one_max_ms,
            f.sustained_cpu_s / wall,
            f.delivered / wall,
            f.client_received as f64 / wall,
            f.writes / wall,
            f.ns_per_delivery(),
        );
    }
    if let [a, r] = all {
        println!();
        println!(
            "CPU per delivered comment, agent / reference: {:.2}x; one comment p99, agent / reference: {:.2}x",
            a.ns_per_delivery() / r.ns_per_delivery().max(1e-9),
            a.one_p99_ms / r.one_p99_ms.max(1e-9)
        );
        println!(
            "Extrapolated to 1,000,000 idle connections: {:.1} GiB of agent memory ({:.2} KiB each) \
             plus about {:.1} GiB of kernel socket memory (half a socket pair's slab each); \
             heartbeats {:.1} cores",
            a.per_conn_kib() * 1e6 / 1024.0 / 1024.0,
            a.per_conn_kib(),
            a.slab_per_pair_b / 2.0 * 1e6 / 1024.0 / 1024.0 / 1024.0,
            (a.idle_cores - a.base_cores).max(0.0) * 1e6 / args.connections as f64
        );
    }
    println!(
        "json: {}",
        serde_json::json!(all.iter().map(|f| serde_json::json!({
            "target": f.name,
            "connections": f.conns,
            "rss_per_connection_kib": f.per_conn_kib(),
            "slab_per_socket_pair_bytes": f.slab_per_pair_b,
            "tcp_mem_pages": f.tcp_mem_pages,
            "idle_cores": f.idle_cores,
            "idle_user_share": f.idle_user_share,
            "base_cores": f.base_cores,
            "us_per_heartbeat": f.us_per_heartbeat(args.heartbeat_ms),
            "one_p50_ms": f.one_p50_ms,
            "one_p99_ms": f.one_p99_ms,
            "one_max_ms": f.one_max_ms,
            "sustained_cores": f.sustained_cpu_s / f.sustained_wall_s.max(1e-9),
            "deliveries_per_s": f.delivered / f.sustained_wall_s.max(1e-9),
            "client_deliveries_per_s": f.client_received as f64 / f.sustained_wall_s.max(1e-9),
            "writes_per_s": f.writes / f.sustained_wall_s.max(1e-9),
            "ns_per_delivery": f.ns_per_delivery(),
            "machine_cores_busy": f.machine_cores,
        })).collect::<Vec<_>>())
    );
}
