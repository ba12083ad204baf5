//! The media relay over real HTTP on loopback: publish with the synthetic
//! source, play, GOP cache, one pull for many viewers, slow viewers, local
//! failover, malformed input, errors, CMCD.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Buf, BytesMut};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vantage_agent::relay::metrics::RelayMetrics;
use vantage_agent::relay::{Relay, RelayConfig};
use vantage_agent::routes::{AppliedTable, TableSource};
use vantage_agent::telemetry::ReportSource;
use vantage_proto::v1::{
    Alert, AlertKind, DirectoryEntry, OriginRoute, Report, RouteTable, StaticOrigin, StreamRoute,
    Upstream, UpstreamKind,
};
use vantage_shared::flv::{Demuxer, Tag, TagKind};
use vantage_shared::synth::{Synth, SynthConfig};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- relays

struct TestRelay {
    relay: Relay,
    addr: SocketAddr,
    registry: Registry,
    tables: watch::Sender<Option<Arc<AppliedTable>>>,
    alerts: mpsc::Receiver<Alert>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    node_id: String,
}

/// The publish policy of a `--dev` scheduler: anyone may publish.
fn open_publishing() -> vantage_proto::v1::PublishPolicy {
    vantage_proto::v1::PublishPolicy {
        auth: vantage_proto::v1::PublishAuth::Open as i32,
        ..Default::default()
    }
}

impl TestRelay {
    async fn start(node_id: &str, cfg: RelayConfig) -> TestRelay {
        Self::start_with(node_id, cfg, &[]).await
    }

    async fn start_with(node_id: &str, cfg: RelayConfig, origins: &[StaticOrigin]) -> TestRelay {
        let mut registry = Registry::default();
        let metrics = RelayMetrics::register(&mut registry);
        let (tables, rx) = watch::channel(None);
        let (alerts_tx, alerts) =
            vantage_agent::telemetry::alert::channel(vantage_agent::metrics::Metrics::default());
        let relay = Relay::new(
            cfg,
            node_id,
            rx,
            Default::default(),
            origins,
            alerts_tx,
            metrics,
        );
        let listener = vantage_agent::relay::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let (r, c) = (relay.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            r.serve(listener, c).await.unwrap();
        });
        let t = TestRelay {
            relay,
            addr,
            registry,
            tables,
            alerts,
            cancel,
            task,
            node_id: node_id.to_owned(),
        };
        // A scheduler's first table: no routes, publishing open.
        t.routes(1, &[]);
        t
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Installs a route table with these (pattern, upstreams) entries.
    fn routes(&self, version: u64, routes: &[(&str, Vec<Upstream>)]) {
        let table = RouteTable {
            node_id: self.node_id.clone(),
            version,
            nonce: format!("n{version}"),
            ttl_s: 300,
            streams: routes
                .iter()
                .map(|(p, u)| StreamRoute {
                    stream: (*p).to_owned(),
                    upstreams: u.clone(),
                })
                .collect(),
            publish: Some(open_publishing()),
            ..Default::default()
        };
        let applied = AppliedTable::new(table, &self.node_id, TableSource::Scheduler, 0).unwrap();
        self.tables.send_replace(Some(Arc::new(applied)));
    }

    /// Applies `t` (a whole table or a delta on the table held) as the
    /// route client does.
    fn apply(&self, t: RouteTable) {
        let held = self.tables.borrow().clone();
        let applied = AppliedTable::update(
            held.as_deref(),
            t,
            &self.node_id,
            vantage_agent::routes::DEFAULT_MAX_ENTRIES,
            0,
        )
        .unwrap();
        self.tables.send_replace(Some(Arc::new(applied)));
    }

    /// A metric's value from the text exposition (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        let text = vantage_agent::metrics::encode(&self.registry).unwrap();
        text.lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    fn stream_viewers(&self, key: &str) -> Option<usize> {
        self.relay
            .status()
            .streams
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.viewers)
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn node(id: &str, r: &TestRelay) -> Upstream {
    Upstream {
        kind: UpstreamKind::Node as i32,
        node_id: id.into(),
        url: r.url(),
        score: 0.1,
        hops: 0,
    }
}

fn origin(url: String) -> Upstream {
    Upstream {
        kind: UpstreamKind::Origin as i32,
        url,
        ..Default::default()
    }
}

fn fast_cfg() -> RelayConfig {
    RelayConfig {
        connect_timeout: Duration::from_secs(1),
        notsent_lowat: 16 * 1024,
        ..RelayConfig::default()
    }
}

async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut check: F) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- publisher

fn synth_cfg(kbps: u32) -> SynthConfig {
    SynthConfig {
        bitrate_kbps: kbps,
        fps: 25,
        gop_frames: 25,
        audio: true,
        width: 320,
        height: 240,
    }
}

/// Publishes the synthetic stream in real time (chunked POST) until
/// stopped; returns the final status line and body.
struct Publisher {
    stop: CancellationToken,
    task: JoinHandle<(u16, String)>,
    started: Instant,
}

impl Publisher {
    fn start(addr: SocketAddr, path: &str, cfg: SynthConfig) -> Publisher {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let path = path.to_owned();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut sock = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nContent-Type: video/x-flv\r\n\r\n"
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            let mut synth = Synth::new(cfg);
            let mut first = BytesMut::new();
            first.extend_from_slice(&synth.file_header().encode());
            for t in synth.header_tags() {
                t.encode_into(&mut first);
            }
            write_chunk(&mut sock, &first).await;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let until = started.elapsed().as_millis() as u32;
                let mut buf = BytesMut::new();
                for t in synth.next_tags(until) {
                    t.encode_into(&mut buf);
                }
                if !buf.is_empty() && sock.write_all(&chunk(&buf)).await.is_err() {
                    break;
                }
            }
            let _ = sock.write_all(b"0\r\n\r\n").await;
            read_response(&mut sock).await
        });
        Publisher {
            stop,
            task,
            started,
        }
    }

    /// Media time the publisher is at.
    fn now_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    async fn finish(self) -> (u16, String) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
    }
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

async fn write_chunk(sock: &mut TcpStream, data: &[u8]) {
    sock.write_all(&chunk(data)).await.unwrap();
}

/// Reads a whole (Content-Length) response: status and body.
async fn read_response(sock: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return (
                    status,
                    String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string(),
                );
            }
        }
        let n = tokio::time::timeout_at(deadline, sock.read(&mut tmp))
            .await
            .expect("response in time")
            .unwrap_or(0);
        if n == 0 {
            return (0, String::from_utf8_lossy(&buf).to_string());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

// ---------------------------------------------------------------- viewer

/// A raw HTTP-FLV client: status, then tags (chunked decoding + demux),
/// optionally reading no faster than `rate` bytes/s.
struct Player {
    sock: TcpStream,
    raw: BytesMut,
    chunk_left: usize,
    chunked: bool,
    demux: Demuxer,
    status: u16,
    head: String,
    rate: Option<f64>,
    read_total: u64,
    started: Instant,
    eof: bool,
}

impl Player {
    async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Player {
        Self::get_with(addr, path, headers, None).await
    }

    async fn get_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        rate: Option<f64>,
    ) -> Player {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if rate.is_some() {
            socket.set_recv_buffer_size(16 * 1024).unwrap();
        }
        let mut sock = socket.connect(addr).await.unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut p = Player {
            sock,
            raw: BytesMut::new(),
            chunk_left: 0,
            chunked: false,
            demux: Demuxer::new(1 << 24),
            status: 0,
            head: String::new(),
            rate,
            read_total: 0,
            started: Instant::now(),
            eof: false,
        };
        loop {
            if let Some(end) = find(&p.raw, b"\r\n\r\n") {
                p.head = String::from_utf8_lossy(&p.raw[..end]).to_string();
                p.status = p.head[9..12].parse().unwrap();
                p.chunked = p
                    .head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked");
                p.raw.advance(end + 4);
                break;
            }
            assert!(p.fill().await, "connection closed before the response head");
        }
        p
    }

    /// Reads more bytes from the socket (respecting the rate); false at EOF.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        let mut max = tmp.len();
        if let Some(rate) = self.rate {
            loop {
                let allowed = (self.started.elapsed().as_secs_f64() * rate) as u64;
                let budget = allowed.saturating_sub(self.read_total) as usize;
                if budget >= 1024 {
                    max = budget.min(tmp.len());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let n = tokio::time::timeout(WAIT, self.sock.read(&mut tmp[..max]))
            .await
            .expect("media in time")
            .unwrap_or(0);
        self.read_total += n as u64;
        if n == 0 {
            self.eof = true;
            return false;
        }
        self.raw.extend_from_slice(&tmp[..n]);
        true
    }

    /// Moves de-chunked body bytes into the demuxer.
    fn dechunk(&mut self) -> bool {
        let mut progressed = false;
        loop {
            if !self.chunked {
                if !self.raw.is_empty() {
                    self.demux.push(&self.raw);
                    self.raw.clear();
                    progressed = true;
                }
                return progressed;
            }
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(self.raw.len());
                if n == 0 {
                    return progressed;
                }
                self.demux.push(&self.raw[..n]);
                self.raw.advance(n);
                self.chunk_left -= n;
                progressed = true;
                if self.chunk_left == 0 {
                    // CRLF after the data, consumed with the next size line.
                }
                continue;
            }
            let start = usize::from(self.raw.starts_with(b"\r\n")) * 2;
            let Some(end) = find(&self.raw[start..], b"\r\n") else {
                return progressed;
            };
            let line = String::from_utf8_lossy(&self.raw[start..start + end]).to_string();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            self.raw.advance(start + end + 2);
            if size == 0 {
                self.eof = true;
                return progressed;
            }
            self.chunk_left = size;
        }
    }

    /// The next FLV tag; None at the end of the stream.
    async fn next_tag(&mut self) -> Option<Tag> {
        loop {
            if let Some(t) = self.demux.next_tag().unwrap() {
                return Some(t);
            }
            if self.dechunk() {
                continue;
            }
            if self.eof || !self.fill().await {
                return None;
            }
        }
    }

    /// The body of a non-streaming (Content-Length) answer.
    async fn text(&mut self) -> String {
        let len: usize = self
            .head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while self.raw.len() < len && self.fill().await {}
        String::from_utf8_lossy(&self.raw).to_string()
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_viewer_starts_with_header_config_and_a_keyframe_at_once() {
    let a = TestRelay::start("origin-a", fast_cfg()).await;
    let publisher = Publisher::start(a.addr, "/live/x.flv", synth_cfg(1000));
    // Let the stream run past a few keyframes (GOP 1 s).
    eventually(WAIT, "stream live", || a.stream_viewers("live/x").is_some()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let t0 = Instant::now();
    let mut v = Player::get(a.addr, "/live/x.flv", &[]).await;
    assert_eq!(v.status, 200, "{}", v.head);
    assert!(v.head.to_ascii_lowercase().contains("video/x-flv"));
    let mut kinds = Vec::new();
    let first_frame = loop {
        let t = v.next_tag().await.expect("tags");
        if t.kind == TagKind::Video && !t.is_sequence_header() {
            break t;
        }
        if t.is_metadata() {
            assert_eq!(t.timestamp_ms, 0, "players take onMetaData at 0 only");
        }
        kinds.push((t.kind, t.is_metadata(), t.is_sequence_header()));
    };
    let elapsed = t0.elapsed();
    assert!(v.demux.header().unwrap().has_video);
    assert_eq!(
        kinds,
        [
            (TagKind::Script, true, false),
            (TagKind::Video, false, true),
            (TagKind::Audio, false, true)
        ]
    );
    assert!(first_frame.is_coded_keyframe(), "first frame is a keyframe");
    assert!(
        elapsed < Duration::from_millis(200),
        "first keyframe after {elapsed:?}"
    );
    // It is the cached GOP, not a future keyframe: at most 1 s old.
    let lag = publisher.now_ms() - i64::from(first_frame.timestamp_ms);
    assert!((0..=1300).contains(&lag), "keyframe {lag} ms behind live");
    // Then media keeps flowing in timestamp order.
    let mut last = first_frame.timestamp_ms;
    for _ in 0..50 {
        let t = v.next_tag().await.unwrap();
        assert!(t.timestamp_ms >= last);
        last = t.timestamp_ms;
    }
    let status = a.relay.status();
    assert_eq!(
        status.streams[0].role,
        vantage_agent::relay::stream::Role::Origin
    );
    assert!(status.streams[0].gop_cache_ms <= 1100.0);
    drop(v);
    let (code, body) = publisher.finish().await;
    assert_eq!(code, 200, "{body}");
    eventually(WAIT, "stream gone", || a.stream_viewers("live/x").is_none()).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_viewers_cause_exactly_one_upstream_pull() {
    let a = TestRelay::start("origin-a", fast_cfg()).await;
    let b = TestRelay::start(
        "edge-b",
        RelayConfig {
            idle_timeout: Duration::from_millis(500),
            ..fast_cfg()
        },
    )
    .await;
    b.routes(1, &[("live/*", vec![node("origin-a", &a)])]);
    let publisher = Publisher::start(a.addr, "/live/x.flv", synth_cfg(500));
    eventually(WAIT, "stream live on A", || {
        a.stream_viewers("live/x").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut viewers = Vec::new();
    for _ in 0..200 {
        let addr = b.addr;
        viewers.push(tokio::spawn(async move {
            let mut p = Player::get(addr, "/live/x.flv", &[]).await;
            assert_eq!(p.status, 200, "{}", p.head);
            loop {
                let t = p.next_tag().await.expect("media");
                if t.kind == TagKind::Video && !t.is_sequence_header() {
                    assert!(t.is_coded_keyframe());
                    break;
                }
            }
            p
        }));
    }
    let mut players = Vec::new();
    for v in viewers {
        players.push(tokio::time::timeout(WAIT, v).await.unwrap().unwrap());
    }
    assert_eq!(b.stream_viewers("live/x"), Some(200));
    assert_eq!(
        a.stream_viewers("live/x"),
        Some(1),
        "A serves B's single pull"
    );
    assert_eq!(a.metric("vantage_agent_relay_viewers_joined_total"), 1.0);
    assert_eq!(
        b.metric("vantage_agent_relay_pulls_total{result=\"ok\"}"),
        1.0
    );
    let status = b.relay.status();
    assert_eq!(status.streams[0].upstream, "origin-a");
    assert_eq!(
        status.streams[0].role,
        vantage_agent::relay::stream::Role::Relay
    );

    // Every viewer gone: the pull stops after the idle timeout.
    drop(players);
    eventually(WAIT, "B's pull stopped", || {
        b.stream_viewers("live/x").is_none()
    })
    .await;
    eventually(WAIT, "A lost its viewer", || {
        a.stream_viewers("live/x") == Some(0)
    })
    .await;
    publisher.finish().await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_viewer_is_held_within_the_lag_bound_and_a_fast_one_is_unaffected() {
    let max_lag = Duration::from_millis(1000);
    let a = TestRelay::start(
        "origin-a",
        RelayConfig {
            max_lag,
            overflow_limit: 1000,
            ..fast_cfg()
        },
    )
    .await;
    // 2 Mbit/s = 250 kB/s; the slow viewer reads at half that.
    let publisher = Publisher::start(a.addr, "/live/x.flv", synth_cfg(2000));
    eventually(WAIT, "stream live", || a.stream_viewers("live/x").is_some()).await;
    let mut slow = Player::get_with(a.addr, "/live/x.flv", &[], Some(125_000.0)).await;
    let mut fast = Player::get(a.addr, "/live/x.flv", &[]).await;
    let (pub_started, t0) = (publisher.started, Instant::now());
    let lag_of = move |ts: u32| pub_started.elapsed().as_millis() as i64 - i64::from(ts);

    let fast_task = tokio::spawn(async move {
        let mut worst = 0;
        let mut last = 0;
        while t0.elapsed() < Duration::from_secs(6) {
            let t = fast.next_tag().await.unwrap();
            assert!(t.timestamp_ms >= last, "fast viewer timestamps monotonic");
            last = t.timestamp_ms;
            if t.kind != TagKind::Script && t0.elapsed() > Duration::from_secs(2) {
                worst = worst.max(lag_of(t.timestamp_ms));
            }
        }
        (worst, fast)
    });
    let mut worst_slow = 0;
    let mut last = 0;
    let mut jumps = 0;
    let mut last_any = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        let t = slow.next_tag().await.unwrap();
        assert!(t.timestamp_ms >= last_any, "monotonic through skips");
        last_any = t.timestamp_ms;
        if t.kind == TagKind::Video && !t.is_sequence_header() {
            if t.timestamp_ms > last + 200 && last > 0 {
                jumps += 1;
            }
            last = last.max(t.timestamp_ms);
        }
        // Media only: metadata is restamped to 0 for players.
        let media = t.kind != TagKind::Script && !t.is_sequence_header();
        if media && t0.elapsed() > Duration::from_secs(2) {
            worst_slow = worst_slow.max(lag_of(t.timestamp_ms));
        }
        if std::env::var("RELAY_DEBUG").is_ok() && t.kind == TagKind::Video {
            let st = a.relay.status();
            eprintln!(
                "t={:?} ts={} lag={} server_max={} skips={}",
                t0.elapsed(),
                t.timestamp_ms,
                lag_of(t.timestamp_ms),
                st.streams[0].send_lag_max_ms,
                st.streams[0].skips
            );
        }
    }
    let (worst_fast, _fast) = fast_task.await.unwrap();
    eprintln!("worst lag: slow {worst_slow} ms, fast {worst_fast} ms; slow viewer jumps {jumps}");
    let skips = a.metric("vantage_agent_relay_viewer_skips_total");
    assert!(skips >= 1.0, "overflows were counted ({skips})");
    assert!(jumps >= 1, "the slow viewer skipped ahead");
    // The bound plus what hyper, the kernel and the reader buffer hold
    // (about 90 kB at 125 kB/s).
    assert!(
        worst_slow <= max_lag.as_millis() as i64 + 900,
        "slow viewer lag {worst_slow} ms"
    );
    assert!(worst_fast <= 300, "fast viewer lag {worst_fast} ms");
    let status = a.relay.status();
    assert_eq!(status.streams[0].viewers, 2);
    assert!(status.streams[0].skips >= 1);
    drop(slow);
    publisher.finish().await;
    a.stop().await;
}

/// A minimal HTTP-FLV origin serving a fresh synthetic stream (from a
/// keyframe, in real time) to every request; it can be frozen (stops
/// sending, keeps the connection) and counts requests.
struct TestOrigin {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestOrigin {
    async fn start() -> TestOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (f, r) = (frozen.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (f, r) = (f.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while find(&got, b"\r\n\r\n").is_none() {
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\n";
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut synth = Synth::new(synth_cfg(500));
                    let mut first = BytesMut::new();
                    first.extend_from_slice(&synth.file_header().encode());
                    for t in synth.header_tags() {
                        t.encode_into(&mut first);
                    }
                    if sock.write_all(&chunk(&first)).await.is_err() {
                        return;
                    }
                    let started = Instant::now();
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if f.load(Ordering::SeqCst) {
                            continue;
                        }
                        let mut b = BytesMut::new();
                        for t in synth.next_tags(started.elapsed().as_millis() as u32) {
                            t.encode_into(&mut b);
                        }
                        if !b.is_empty() && sock.write_all(&chunk(&b)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TestOrigin {
            addr,
            frozen,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/{{app}}/{{stream}}.flv", self.addr)
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_reordering_the_origin_route_moves_the_pull_and_local_streams_are_not_pulled() {
    let o1 = TestOrigin::start().await;
    let o2 = TestOrigin::start().await;
    let statics = [StaticOrigin {
        pattern: "live/*".into(),
        url: o1.url(),
    }];
    let b = TestRelay::start_with("edge-b", fast_cfg(), &statics).await;
    let relay_at = |id: &str, o: &TestOrigin| Upstream {
        kind: UpstreamKind::Node as i32,
        node_id: id.into(),
        url: format!("http://{}", o.addr),
        ..Default::default()
    };
    let entry = |stream: &str, origin: &str| DirectoryEntry {
        stream: stream.into(),
        origin: origin.into(),
    };
    b.apply(RouteTable {
        node_id: "edge-b".into(),
        version: 1,
        nonce: "n1".into(),
        ttl_s: 300,
        origins: vec![OriginRoute {
            origin: "origin-o".into(),
            upstreams: vec![relay_at("relay-1", &o1), relay_at("relay-2", &o2)],
        }],
        directory: vec![entry("live/x", "origin-o"), entry("live/mine", "edge-b")],
        ..Default::default()
    });
    let mut v = Player::get(b.addr, "/live/x.flv", &[]).await;
    assert_eq!(v.status, 200);
    let mut last = 0;
    let mut read_for = async |v: &mut Player, d: Duration| {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            let t = v.next_tag().await.unwrap();
            assert!(t.timestamp_ms >= last, "monotonic");
            last = t.timestamp_ms;
        }
    };
    read_for(&mut v, Duration::from_millis(800)).await;
    assert_eq!(o1.requests.load(Ordering::SeqCst), 1);
    // The delta only names the changed origin route.
    b.apply(RouteTable {
        node_id: "edge-b".into(),
        version: 2,
        nonce: "n2".into(),
        ttl_s: 300,
        base_version: 1,
        origins: vec![OriginRoute {
            origin: "origin-o".into(),
            upstreams: vec![relay_at("relay-2", &o2), relay_at("relay-1", &o1)],
        }],
        ..Default::default()
    });
    read_for(&mut v, Duration::from_millis(800)).await;
    assert_eq!(
        o2.requests.load(Ordering::SeqCst),
        1,
        "moved to the new first"
    );
    assert_eq!(
        b.metric("vantage_agent_relay_failovers_total{reason=\"table\"}"),
        1.0
    );
    // The directory puts live/mine on this node: not pulled, not even from
    // the static origin that matches it.
    let mut p = Player::get(b.addr, "/live/mine.flv", &[]).await;
    assert_eq!(p.status, 404);
    assert!(p.text().await.contains("no upstream"));
    assert_eq!(o1.requests.load(Ordering::SeqCst), 1);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stall_fails_over_within_a_second_with_monotonic_timestamps() {
    let o1 = TestOrigin::start().await;
    let o2 = TestOrigin::start().await;
    let mut b = TestRelay::start(
        "edge-b",
        RelayConfig {
            stall_timeout: Duration::from_millis(500),
            ..fast_cfg()
        },
    )
    .await;
    b.routes(1, &[("live/x", vec![origin(o1.url()), origin(o2.url())])]);
    let mut v = Player::get(b.addr, "/live/x.flv", &[]).await;
    assert_eq!(v.status, 200, "{}", v.head);
    // Play 1.5 s from the first origin.
    let t0 = Instant::now();
    let mut last_ts = 0;
    let mut video = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        let t = v.next_tag().await.unwrap();
        assert!(t.timestamp_ms >= last_ts);
        last_ts = t.timestamp_ms;
        video += usize::from(t.kind == TagKind::Video);
    }
    assert!(video > 20);
    assert_eq!(o2.requests.load(Ordering::SeqCst), 0);

    o1.frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    // Drain what was in flight, then wait for the backup's keyframe.
    let (resumed, first) = loop {
        let t = v.next_tag().await.unwrap();
        assert!(
            t.timestamp_ms >= last_ts,
            "timestamps monotonic across the splice ({} after {last_ts})",
            t.timestamp_ms
        );
        last_ts = t.timestamp_ms;
        if o2.requests.load(Ordering::SeqCst) > 0
            && t.kind == TagKind::Video
            && !t.is_sequence_header()
        {
            break (frozen_at.elapsed(), t);
        }
    };
    assert!(first.is_coded_keyframe(), "spliced at a keyframe");
    assert!(
        resumed < Duration::from_secs(1),
        "media resumed after {resumed:?}"
    );
    // The backup's clock started at 0; the viewer's did not go back.
    let mut frames = 0;
    while frames < 25 {
        let t = v.next_tag().await.unwrap();
        assert!(t.timestamp_ms >= last_ts);
        last_ts = t.timestamp_ms;
        frames += usize::from(t.kind == TagKind::Video);
    }
    let alert = tokio::time::timeout(WAIT, b.alerts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alert.kind, AlertKind::UpstreamLost as i32);
    assert_eq!(alert.subject, "live/x");
    assert!(alert.detail.contains("no media"), "{}", alert.detail);
    assert_eq!(
        b.metric("vantage_agent_relay_failovers_total{reason=\"stall\"}"),
        1.0
    );
    let status = b.relay.status();
    assert_eq!(
        status.streams[0].upstream,
        format!("http://{}/live/x.flv", o2.addr)
    );
    assert_eq!(status.streams[0].failovers, 1);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_publish_is_refused_and_other_streams_play_on() {
    let a = TestRelay::start("origin-a", fast_cfg()).await;
    let good = Publisher::start(a.addr, "/live/good.flv", synth_cfg(300));
    eventually(WAIT, "good stream live", || {
        a.stream_viewers("live/good").is_some()
    })
    .await;
    let mut v = Player::get(a.addr, "/live/good.flv", &[]).await;
    assert_eq!(v.status, 200);
    v.next_tag().await.unwrap();

    let mut sock = TcpStream::connect(a.addr).await.unwrap();
    let mut body = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
    // A tag header announcing type 0x33 (not audio/video/script).
    body.extend_from_slice(&[0x33, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 15]);
    body.extend_from_slice(&[0u8; 4000]);
    let req = format!(
        "POST /live/bad.flv HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    sock.write_all(&body).await.unwrap();
    let (status, text) = read_response(&mut sock).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("malformed FLV"), "{text}");
    assert!(a.metric("vantage_agent_relay_publishes_total{result=\"malformed\"}") == 1.0);
    assert!(a.stream_viewers("live/bad").is_none());

    // Garbage that is not FLV at all.
    let mut sock = TcpStream::connect(a.addr).await.unwrap();
    sock.write_all(
        b"PUT /live/bad2.flv HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await
    .unwrap();
    let (status, text) = read_response(&mut sock).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("signature"), "{text}");

    // The good stream was not disturbed.
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_millis(500) {
        v.next_tag().await.unwrap();
        n += 1;
    }
    assert!(n > 10);
    good.finish().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_unknown_streams_conflicts_and_loops() {
    let a = TestRelay::start("origin-a", fast_cfg()).await;
    let o404 = {
        // An origin that has nothing.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 2048];
                    let _ = s.read(&mut b).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        addr
    };
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };

    // No route, no static origin.
    let t0 = Instant::now();
    let mut p = Player::get(a.addr, "/live/none.flv", &[]).await;
    assert_eq!(p.status, 404);
    assert!(p.text().await.contains("no upstream"));
    // Upstreams that say no, or cannot be reached.
    a.routes(
        1,
        &[
            ("live/nf", vec![origin(format!("http://{o404}"))]),
            ("live/dead", vec![origin(format!("http://{dead}"))]),
        ],
    );
    let mut p = Player::get(a.addr, "/live/nf.flv", &[]).await;
    assert_eq!(p.status, 404);
    assert!(p.text().await.contains("not found"));
    let p = Player::get(a.addr, "/live/dead.flv", &[]).await;
    assert_eq!(p.status, 502);
    assert!(t0.elapsed() < Duration::from_secs(2), "answers are fast");

    // Bad keys and paths.
    let p = Player::get(a.addr, "/live/x%20y.flv", &[]).await;
    assert_eq!(p.status, 400);
    let p = Player::get(a.addr, "/nothing", &[]).await;
    assert_eq!(p.status, 404);
    // Loops.
    let p = Player::get(
        a.addr,
        "/live/x.flv",
        &[("X-Vantage-Via", "edge-b,origin-a")],
    )
    .await;
    assert_eq!(p.status, 508);
    // Publishing twice.
    let first = Publisher::start(a.addr, "/live/x.flv", synth_cfg(200));
    eventually(WAIT, "live", || a.stream_viewers("live/x").is_some()).await;
    let second = Publisher::start(a.addr, "/live/x.flv", synth_cfg(200));
    let (status, text) = tokio::time::timeout(WAIT, second.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("already being published"));
    first.finish().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_chain_refuses_to_loop_and_static_origins_work() {
    // A's static origin is B and B's route points at A: a request for a
    // stream neither has must end with an error, not a loop.
    let b = TestRelay::start("edge-b", fast_cfg()).await;
    let a = TestRelay::start_with(
        "edge-a",
        fast_cfg(),
        &[StaticOrigin {
            pattern: "live/*".into(),
            url: b.url(),
        }],
    )
    .await;
    b.routes(1, &[("live/*", vec![node("edge-a", &a)])]);
    let t0 = Instant::now();
    let p = Player::get(b.addr, "/live/x.flv", &[]).await;
    assert_eq!(p.status, 404, "{}", p.head);
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(b.metric("vantage_agent_relay_loops_refused_total"), 1.0);

    // With a publisher on A, B plays through A (static origin on A is
    // not used since the stream is local).
    let publisher = Publisher::start(a.addr, "/live/y.flv", synth_cfg(300));
    eventually(WAIT, "live on A", || a.stream_viewers("live/y").is_some()).await;
    let mut p = Player::get(b.addr, "/live/y.flv", &[]).await;
    assert_eq!(p.status, 200);
    assert!(p.next_tag().await.is_some());
    publisher.finish().await;
    // The origin's end reaches B's viewer as the end of the stream once
    // every candidate says the stream is gone.
    let end = tokio::time::timeout(WAIT, async { while p.next_tag().await.is_some() {} }).await;
    assert!(end.is_ok(), "the viewer's stream ended");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmcd_from_queries_headers_and_beacons_reaches_the_report() {
    let a = TestRelay::start("origin-a", fast_cfg()).await;
    let publisher = Publisher::start(a.addr, "/live/x.flv", synth_cfg(300));
    eventually(WAIT, "live", || a.stream_viewers("live/x").is_some()).await;
    // Paris viewer: CMCD in the query.
    let mut p1 = Player::get(
        a.addr,
        "/live/x.flv?lat=48.8566&lon=2.3522&CMCD=bl%3D3000%2Csid%3D%22s1%22",
        &[],
    )
    .await;
    assert_eq!(p1.status, 200);
    p1.next_tag().await.unwrap();
    // Same group, CMCD in headers, with buffer starvation.
    let mut p2 = Player::get(
        a.addr,
        "/live/x.flv?lat=48.85&lon=2.35",
        &[
            ("CMCD-Status", "bs"),
            ("CMCD-Request", "bl=1000"),
            ("CMCD-Session", "sid=\"s2\""),
        ],
    )
    .await;
    assert_eq!(p2.status, 200);
    p2.next_tag().await.unwrap();
    // Both plays are served: each names its viewer session (the sid the
    // player offered) in X-Vantage-Session.
    assert!(
        p1.head
            .to_ascii_lowercase()
            .contains("x-vantage-session: s1\r\n"),
        "{}",
        p1.head
    );
    assert!(
        p2.head
            .to_ascii_lowercase()
            .contains("x-vantage-session: s2\r\n"),
        "{}",
        p2.head
    );
    // A play that is not served (404): its CMCD does not count.
    let p3 = Player::get(a.addr, "/live/nope.flv?lat=48.85&lon=2.35&CMCD=bl%3D1", &[]).await;
    assert_eq!(p3.status, 404);
    // One second later (a session adds at most one sample a second), a
    // beacon from session s1 (group known from its play request): the first
    // report is a new sample, the second of the same second merges into it
    // (its bs marks it stalled).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let post = |body: &'static str| async move {
        let mut sock = TcpStream::connect(a.addr).await.unwrap();
        let req = format!(
            "POST /v1/cmcd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        read_response(&mut sock).await
    };
    let beacon = r#"[{"bl":5000,"sid":"s1"},{"bl":3000,"sid":"s1","bs":true}]"#;
    let (status, text) = post(beacon).await;
    assert_eq!(status, 204, "{text}");
    // The same beacon again: already counted.
    let (status, text) = post(beacon).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("\"reason\":\"duplicate\""), "{text}");
    // A session this agent never served, and none at all.
    let (status, text) = post(r#"{"bl":100,"bs":true,"sid":"forged"}"#).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("unknown_session"), "{text}");
    let (status, text) = post(r#"{"bl":100,"bs":true}"#).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("no_session"), "{text}");
    // A bad beacon.
    let mut sock = TcpStream::connect(a.addr).await.unwrap();
    sock.write_all(b"POST /v1/cmcd HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n[1,2")
        .await
        .unwrap();
    let (status, _) = read_response(&mut sock).await;
    assert_eq!(status, 400);

    let mut report = Report::default();
    a.relay.fill(&mut report);
    let g = report
        .groups
        .iter()
        .find(|g| g.group == "u09t")
        .expect("group");
    assert_eq!(g.viewers, 2);
    assert_eq!(g.samples, 3);
    assert_eq!(g.buffer_ms, (3000.0 + 1000.0 + 5000.0) / 3.0);
    // 2 stall signals over 3 samples + 2 viewers.
    assert!((g.stall_rate - 2.0 / 5.0).abs() < 1e-9, "{}", g.stall_rate);
    let s = &report.streams[0];
    assert_eq!(s.key, "live/x");
    assert_eq!(s.viewers, 2);
    assert_eq!(report.load.as_ref().unwrap().viewers, 2);
    assert_eq!(report.load.as_ref().unwrap().streams, 1);
    assert_eq!(
        a.metric("vantage_agent_relay_cmcd_reports_total{source=\"headers\",result=\"ok\"}"),
        1.0
    );
    for (labels, n) in [
        ("source=\"beacon\",result=\"ok\"", 1.0),
        ("source=\"beacon\",result=\"merged\"", 1.0),
        ("source=\"beacon\",result=\"rejected\"", 4.0),
    ] {
        let m = format!("vantage_agent_relay_cmcd_reports_total{{{labels}}}");
        assert_eq!(a.metric(&m), n, "{m}");
    }
    for (labels, n) in [
        ("source=\"beacon\",reason=\"duplicate\"", 2.0),
        ("source=\"beacon\",reason=\"unknown_session\"", 1.0),
        ("source=\"beacon\",reason=\"no_session\"", 1.0),
        ("source=\"query\",reason=\"not_served\"", 1.0),
    ] {
        let m = format!("vantage_agent_relay_cmcd_rejected_total{{{labels}}}");
        assert_eq!(a.metric(&m), n, "{m}");
    }
    vantage_shared::validate::report(&report).unwrap();
    // A beacon with reports of a served session and of an unknown one: the
    // first counts, the answer says what did not.
    let (status, text) = post(r#"[{"bl":4000,"sid":"s2"},{"bl":100,"sid":"nope"}]"#).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["counted"], 1, "{v}");
    assert_eq!(v["rejected"]["unknown_session"], 1, "{v}");
    publisher.finish().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_carry_bitrate_lags_and_load() {
    let a = TestRelay::start("origin-a", fast_cfg()).await;
    let publisher = Publisher::start(a.addr, "/live/x.flv", synth_cfg(1000));
    eventually(WAIT, "live", || a.stream_viewers("live/x").is_some()).await;
    let mut p = Player::get(a.addr, "/live/x.flv", &[]).await;
    let reader = tokio::spawn(async move { while p.next_tag().await.is_some() {} });
    // Rates are measured over ≥ 1 s windows.
    let mut report = Report::default();
    a.relay.fill(&mut report);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut report = Report::default();
    a.relay.fill(&mut report);
    let s = &report.streams[0];
    assert_eq!(s.role, vantage_proto::v1::StreamRole::Origin as i32);
    assert!(
        (700.0..1500.0).contains(&s.bitrate_kbps),
        "bitrate {}",
        s.bitrate_kbps
    );
    assert!(s.gop_cache_ms <= 1100.0);
    assert!(s.ingest_lag_ms < 200.0, "ingest lag {}", s.ingest_lag_ms);
    assert!(s.send_lag_p95_ms < 200.0, "send lag {}", s.send_lag_p95_ms);
    let load = report.load.unwrap();
    assert!(
        load.ingress_mbps > 0.5 && load.egress_mbps > 0.5,
        "{load:?}"
    );
    publisher.finish().await;
    // The publisher's end ends the viewer's body.
    tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_sockets_feed_the_tcp_info_sampler_of_their_group() {
    use vantage_agent::viewer::{ViewerConfig, ViewerMetrics, ViewerStats};
    let a = TestRelay::start("origin-a", fast_cfg()).await;
    let stats = ViewerStats::new(
        ViewerConfig {
            sample_interval: Duration::from_millis(100),
            ..ViewerConfig::default()
        },
        ViewerMetrics::default(),
    );
    a.relay.set_viewer_stats(stats.clone());
    let publisher = Publisher::start(a.addr, "/live/x.flv", synth_cfg(300));
    eventually(WAIT, "live", || a.stream_viewers("live/x").is_some()).await;
    let mut p = Player::get(
        a.addr,
        "/live/x.flv?lat=48.8566&lon=2.3522",
        &[("CMCD-Request", "bl=1500")],
    )
    .await;
    assert_eq!(p.status, 200);
    let reader = tokio::spawn(async move { while p.next_tag().await.is_some() {} });
    let deadline = Instant::now() + WAIT;
    loop {
        let snap = stats.snapshot();
        if let Some(g) = snap.iter().find(|g| g.group == "u09t")
            && g.samples >= 2
        {
            assert_eq!(g.viewers, 1);
            assert!(g.tcp_rtt_ms > 0.0, "{g:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no TCP_INFO samples: {snap:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both report sources together give one entry per group.
    let mut report = Report::default();
    stats.fill(&mut report);
    a.relay.fill(&mut report);
    let groups: Vec<&str> = report.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(groups, ["u09t"]);
    assert_eq!(report.groups[0].buffer_ms, 1500.0);
    publisher.finish().await;
    tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    eventually(WAIT, "viewer unregistered", || stats.viewers() == 0).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_hangs_up_ends_the_stream_at_once() {
    let a = TestRelay::start("origin-a", fast_cfg()).await;
    for terminate in [true, false] {
        let mut sock = TcpStream::connect(a.addr).await.unwrap();
        sock.write_all(
            b"POST /live/x.flv HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        let mut synth = Synth::new(synth_cfg(300));
        write_chunk(&mut sock, &synth.stream_bytes(2000)).await;
        eventually(WAIT, "live", || a.stream_viewers("live/x").is_some()).await;
        let mut p = Player::get(a.addr, "/live/x.flv", &[]).await;
        assert_eq!(p.status, 200);
        p.next_tag().await.unwrap();
        // Like ffmpeg on exit: the end of the body (or nothing), then
        // close without reading the answer.
        if terminate {
            sock.write_all(b"0\r\n\r\n").await.unwrap();
        }
        drop(sock);
        let t0 = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            while p.next_tag().await.is_some() {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "viewer's stream ended (terminate={terminate})"
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
        eventually(WAIT, "stream forgotten", || {
            a.stream_viewers("live/x").is_none()
        })
        .await;
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_route_table_moves_the_pull_to_its_first_upstream() {
    let o1 = TestOrigin::start().await;
    let o2 = TestOrigin::start().await;
    let b = TestRelay::start("edge-b", fast_cfg()).await;
    b.routes(1, &[("live/x", vec![origin(o1.url()), origin(o2.url())])]);
    let mut v = Player::get(b.addr, "/live/x.flv", &[]).await;
    assert_eq!(v.status, 200);
    let mut last = 0;
    let mut read_for = async |v: &mut Player, d: Duration| {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            let t = v.next_tag().await.unwrap();
            assert!(t.timestamp_ms >= last, "monotonic");
            last = t.timestamp_ms;
        }
    };
    read_for(&mut v, Duration::from_millis(800)).await;
    b.routes(2, &[("live/x", vec![origin(o2.url()), origin(o1.url())])]);
    read_for(&mut v, Duration::from_millis(800)).await;
    assert_eq!(
        o2.requests.load(Ordering::SeqCst),
        1,
        "moved to the new first"
    );
    // The same order again (new version): no move.
    b.routes(3, &[("live/x", vec![origin(o2.url()), origin(o1.url())])]);
    read_for(&mut v, Duration::from_millis(500)).await;
    assert_eq!(o2.requests.load(Ordering::SeqCst), 1);
    assert_eq!(o1.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        b.metric("vantage_agent_relay_failovers_total{reason=\"table\"}"),
        1.0
    );
    assert!(b.alerts.is_empty(), "a planned move raises no alert");
    b.stop().await;
}
