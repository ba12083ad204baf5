//! `vantage-demo`: a whole Vantage cluster on this machine in one command.
//!
//! Starts `vantage-scheduler --dev` (SQLite) and six `vantage-agent`s placed
//! at real cities (Paris, Frankfurt, London, New York, Tokyo, São Paulo), all
//! on loopback; publishes the built-in synthetic stream (`/live/demo.flv`)
//! to the Paris agent and keeps a trickle of synthetic viewers (with CMCD)
//! watching and a few synthetic chatters commenting in the stream's live
//! comment room on every agent; prints the dashboard URL, the watch page
//! (with a poster token, so the browser can comment too), a play URL and a few `curl`
//! commands, and runs until Ctrl-C, SIGTERM or SIGHUP (or `--duration`).
//! Then it stops the traffic, stops every child with SIGTERM, waits, and
//! SIGKILLs whatever is still running after the grace period, so nothing is
//! left.
//!
//! The binaries are looked up next to this executable (`target/debug/`), or
//! in `VANTAGE_BIN_DIR`:
//!
//! ```text
//! cargo build --bins && target/debug/vantage-demo
//! ```

#[path = "vantage-demo/chat.rs"]
mod chat;
#[path = "vantage-demo/traffic.rs"]
mod traffic;

use anyhow::{Context, bail};
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use vantage_tests::cluster::node_healthy;
use vantage_tests::ports::{Proto, is_free};
use vantage_tests::{Agent, Scheduler, SchedulerPorts, bins};

/// The demo's agents: node id, region, latitude, longitude. Coordinates
/// from GeoNames (`cities15000`, CC BY 4.0, geonames.org); the first city
/// is where the synthetic stream is published.
const CITIES: [(&str, &str, f64, f64); 6] = [
    ("paris", "eu-west", 48.85341, 2.3488),
    ("frankfurt", "eu-central", 50.11552, 8.68417),
    ("london", "eu-west", 51.50853, -0.12574),
    ("new-york", "us-east", 40.71427, -74.00597),
    ("tokyo", "ap-northeast", 35.6895, 139.69171),
    ("sao-paulo", "sa-east", -23.5475, -46.63611),
];

/// The agents' `--drain-grace-s`: how long a stopping agent waits for its
/// last viewers (the demo stops its own viewers first).
const AGENT_DRAIN_GRACE_S: u64 = 3;

/// At most this many synthetic viewers play at once.
const MAX_VIEWERS: usize = 6;

/// Default scheduler ports (DESIGN §2), used when free.
const DEFAULT_PORTS: SchedulerPorts = SchedulerPorts {
    quic: 7400,
    grpc: 7401,
    http: 7480,
};

#[derive(Debug, Parser)]
#[command(
    name = "vantage-demo",
    about = "Run a scheduler, six agents, a synthetic publisher and viewers on loopback"
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
    /// Publish no stream and start no viewers.
    #[arg(long)]
    no_traffic: bool,
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
    // `cargo run` gives this process the demo package's CARGO_PKG_*,
    // CARGO_MANIFEST_* and friends. Build scripts that declare
    // `rerun-if-env-changed` on them (ring does, for CARGO_PKG_NAME and
    // CARGO_MANIFEST_DIR) would see other values than in a plain `cargo
    // build` and rerun, and everything above them would be rebuilt, each
    // time the demo and a plain build alternate. The inner build gets the
    // environment of the shell instead.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            cmd.env_remove(&name);
        }
    }
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

/// Variables `cargo run` sets for the program it runs (besides `CARGO`,
/// which the inner build needs, and the dynamic library path).
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
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

    // Signals first: from here on Ctrl-C, SIGTERM and SIGHUP lead to the
    // orderly shutdown below, even in the middle of starting up.
    let mut signals = Signals::install().context("installing signal handlers")?;
    let mut sched: Option<Scheduler> = None;
    let mut agents: Vec<Agent> = Vec::new();
    let stop_traffic = CancellationToken::new();
    let mut traffic = tokio::task::JoinSet::new();
    let why = tokio::select! {
        why = signals.recv() => why,
        why = async {
            bring_up(&args, ports, &root, &mut sched, &mut agents, &mut traffic, &stop_traffic).await;
            match args.duration {
                Some(secs) => {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    "duration elapsed"
                }
                None => std::future::pending().await,
            }
        } => why,
    };
    println!(
        "\n{why}: stopping viewers and the publisher, then agents, then the scheduler (grace {}s)…",
        args.grace
    );
    stop_traffic.cancel();
    if tokio::time::timeout(Duration::from_secs(5), async {
        while traffic.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        traffic.abort_all();
    }

    if why == "Ctrl-C" {
        // A terminal's Ctrl-C reaches the children too (same process
        // group): let them finish their own shutdown rather than cut it
        // short with a second signal.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && (agents.iter_mut().any(|a| a.is_running())
                || sched.as_mut().is_some_and(|s| s.is_running()))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

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
    // All agents at once: an agent relaying to another counts it as a
    // viewer and would otherwise wait for it to leave.
    let mut results = futures::future::join_all(agents.iter_mut().map(|a| async move {
        let name = if a.is_running() {
            a.node_id().to_owned()
        } else {
            format!("{} (had already exited)", a.node_id())
        };
        (name, a.shutdown(grace).await)
    }))
    .await;
    if let Some(sched) = sched.as_mut() {
        let name = if sched.is_running() {
            "scheduler".to_owned()
        } else {
            "scheduler (had already exited)".to_owned()
        };
        results.push((name, sched.shutdown(grace).await));
    }
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

/// Starts the scheduler, the agents and the traffic, and prints the banner.
/// What it started is left in `sched`, `agents` and `traffic` so that the
/// caller stops it, also when a signal interrupts this half-way.
async fn bring_up(
    args: &Args,
    ports: SchedulerPorts,
    root: &std::path::Path,
    sched: &mut Option<Scheduler>,
    agents: &mut Vec<Agent>,
    traffic: &mut tokio::task::JoinSet<()>,
    stop_traffic: &CancellationToken,
) {
    let started = Instant::now();
    let s = sched.insert(
        Scheduler::builder()
            .name("scheduler")
            .data_dir(root.join("scheduler"))
            .ports(ports)
            .report_interval_ms(args.report_interval_ms)
            .build()
            .await,
    );
    s.start().await;
    let s = &*s;
    for (id, region, lat, lon) in CITIES {
        let mut a = Agent::builder(id, s)
            .data_dir(root.join("agents").join(id))
            .region(region)
            .at(lat, lon)
            .capacity_mbps(1000.0)
            // Viewers are stopped before the agents; don't wait long for stragglers.
            .arg("--drain-grace-s")
            .arg(AGENT_DRAIN_GRACE_S.to_string())
            .build();
        a.start().await;
        agents.push(a);
    }
    let up = wait_up(s, Duration::from_secs(30)).await;

    // Media: the synthetic publisher on the first agent, viewers on all.
    let mut play = None;
    if !args.no_traffic
        && let Some(origin) = agents.first()
    {
        let rtmp = vantage_tests::ports::loopback(origin.ports().rtmp);
        traffic.spawn(traffic::publish(rtmp, stop_traffic.clone()));
        let url = format!("{}{}", origin.media_url(), traffic::STREAM_PATH);
        if !traffic::wait_playable(&url, Duration::from_secs(20)).await {
            eprintln!("warning: {url} is not playable yet; see the agents' logs");
        }
        let edges = agents
            .iter()
            .zip(CITIES)
            .map(|(a, (_, _, lat, lon))| traffic::Edge {
                media_url: a.media_url(),
                lat,
                lon,
            })
            .collect();
        traffic.spawn(traffic::viewers(edges, MAX_VIEWERS, stop_traffic.clone()));
        let (app_stream, _) = traffic::STREAM_PATH
            .trim_start_matches('/')
            .split_once('.')
            .unwrap_or(("live/demo", ""));
        let mut rooms = Vec::new();
        for (a, (city, ..)) in agents.iter().zip(CITIES) {
            rooms.push(chat::Room {
                url: vantage_tests::comments::comments_url(a, app_stream),
                city: city.to_owned(),
                token: poster_token(&s.api_url(), &format!("{city}-viewer"), Some(city)).await,
            });
        }
        traffic.spawn(chat::run(rooms, CHAT_READERS, stop_traffic.clone()));
        let you = poster_token(&s.api_url(), "you", None).await;
        play = Some(Play {
            watch: format!(
                "{}/watch/{app_stream}{}",
                origin.media_url(),
                you.map(|t| format!("#token={t}")).unwrap_or_default()
            ),
            rtmp: format!("{}/{app_stream}", origin.rtmp_url()),
            hls: format!("{}/{app_stream}/index.m3u8", origin.media_url()),
            url,
            origin: origin.node_id().to_owned(),
            redirect: play_redirect(&s.api_url()).await,
        });
    }
    print_banner(s, agents, root, up, started.elapsed(), play.as_ref());
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP, listened to from the start.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "Ctrl-C",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
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

/// Silent comment readers per agent (besides one chatter).
const CHAT_READERS: usize = 3;

/// A poster token from the scheduler (`--dev`: no admin token needed).
async fn poster_token(api: &str, sub: &str, name: Option<&str>) -> Option<String> {
    let mut body = serde_json::json!({"sub": sub, "ttl_s": 86_400});
    if let Some(n) = name {
        body["name"] = serde_json::json!(n);
    }
    let (status, v) = vantage_tests::http::Http::new()
        .post_json(&format!("{api}/v1/comments/tokens"), &body)
        .await;
    if status != 200 {
        eprintln!("warning: no poster token ({status} {v}); comments are read-only");
        return None;
    }
    v["token"].as_str().map(str::to_owned)
}

/// Where to watch the demo stream.
struct Play {
    /// On the origin agent.
    url: String,
    /// The watch page, LL-HLS playlist and RTMP URL on the origin agent.
    watch: String,
    hls: String,
    rtmp: String,
    origin: String,
    /// The scheduler's `/play/...` redirect to the best edge, when it has one.
    redirect: Option<String>,
}

/// `<api>/play/live/demo.flv` if the scheduler answers it with a redirect
/// within a few seconds.
async fn play_redirect(api: &str) -> Option<String> {
    let url = format!("{api}/play{}", traffic::STREAM_PATH);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    // The scheduler learns of the stream from the next reports; a scheduler
    // without the endpoint answers 404 every time.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_redirection()
        {
            return Some(url);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

fn print_banner(
    sched: &Scheduler,
    agents: &[Agent],
    root: &std::path::Path,
    up: usize,
    took: Duration,
    play: Option<&Play>,
) {
    let api = sched.api_url();
    let p = sched.ports();
    println!(
        "Vantage demo: {up}/{} nodes up after {took:.1?}",
        CITIES.len()
    );
    println!();
    println!("dashboard       {api}/");
    if let Some(play) = play {
        println!(
            "watch           {}\n                (in a browser: LL-HLS with hls.js and live comments beside and over \
             the video; the #token lets you comment too)",
            play.watch
        );
        println!(
            "play            {}   (synthetic stream published over RTMP to {}; try ffplay, mpv or VLC)",
            play.url, play.origin
        );
        println!("  LL-HLS        {}", play.hls);
        println!("  RTMP          {}", play.rtmp);
        if let Some(r) = &play.redirect {
            println!("play via edge   {r}   (the scheduler redirects to the best edge)");
        }
        println!("viewers         up to {MAX_VIEWERS} synthetic viewers with CMCD, 5-20 s each");
        println!(
            "comments        {CHAT_READERS} readers and a chatter per agent in the live/demo room \
             (ws://…/live/demo/comments; rates on the dashboard)"
        );
    }
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
    println!("  curl -s {api}/v1/routes/{}", CITIES[4].0);
    println!("  curl -s {api}/v1/weights");
    println!(
        "  curl -s -X PUT -H 'content-type: application/json' -d '{{\"latency\":0.5}}' {api}/v1/weights"
    );
    println!("  curl -s -X POST {api}/v1/nodes/{}/drain", CITIES[5].0);
    println!(
        "  curl -s {}/v1/status",
        agents.first().map(Agent::admin_url).unwrap_or_default()
    );
    println!("  curl -s {api}/v1/comments");
    println!("  curl -s {api}/metrics");
    if let Some(play) = play {
        println!("  ffprobe -hide_banner {}", play.url);
    }
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
