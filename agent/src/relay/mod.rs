//! The media relay (DESIGN §7): HTTP-FLV publish, play, upstream pull,
//! fan-out, GOP cache, slow viewers, local failover, buffer health.
//!
//! * [`admit`] — admitting a publisher (every publish path goes through it).
//! * [`server`] — the media HTTP server (hyper, HTTP/1.1):
//!   `POST|PUT /{app}/{stream}.flv` publish (this agent becomes the stream's
//!   origin), `GET /{app}/{stream}.flv` play, `POST /v1/cmcd` beacons,
//!   `GET /healthz`.
//! * [`stream`] — one stream: ring, viewers, source generation, phase.
//! * [`hub`] — the ring: GOP cache and every viewer's queue, each tag
//!   encoded once and shared as `Bytes`.
//! * [`viewer`] — a viewer's cursor, the slow-viewer policy and the
//!   response body that writes batches with vectored writes.
//! * [`ingest`] — demux and timestamp splicing across sources (pure).
//! * [`source`] — drives a publisher's or upstream's body into a stream.
//! * [`pull`] — one upstream pull per stream with local fast failover.
//! * [`qoe`] — CMCD per client group.
//! * [`sessions`] — the viewer sessions this edge serves (ids in
//!   `X-Vantage-Session`) and which CMCD reports count.
//! * [`conn`] — the media socket wrapper that feeds the viewer `TCP_INFO`
//!   sampler ([`crate::viewer`]).
//! * [`report`] — `Report.streams`, `Report.groups`, load fields and
//!   `/v1/status`.
//!
//! Entry points: [`bind`] the media listener, [`Relay::new`], then
//! [`Relay::serve`]; register the relay as a
//! [`ReportSource`](crate::telemetry::ReportSource).

pub mod admit;
pub mod authorize;
pub mod conn;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod pull;
pub mod qoe;
pub mod report;
pub mod server;
pub mod sessions;
pub mod source;
pub mod stream;
pub mod viewer;

use crate::routes::{Interest, Lookup, TableReceiver};
use crate::telemetry::AlertSender;
use crate::viewer::ViewerStats;
use hub::CacheLimits;
use metrics::RelayMetrics;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use stream::{NodeCounters, Phase, RateMeter, Role, Stream, lock};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vantage_proto::v1::{StaticOrigin, UpstreamKind};
use vantage_shared::stream::{StreamKey, StreamPattern, origin_url};
use viewer::LagPolicy;

pub use report::RelayStatus;

/// Request header carrying the node ids a pull went through (loop guard).
pub const VIA_HEADER: &str = "x-vantage-via";
/// Request header of a pull naming the stream's origin node as the puller's
/// directory has it: a relay whose directory does not list the stream yet
/// uses that origin's route instead of waiting for its own subscription.
pub const ORIGIN_HEADER: &str = "x-vantage-origin";

/// How long a play request for a stream the directory does not list waits
/// for the scheduler's answer to the subscription (only while the route
/// stream is up).
pub const DIRECTORY_WAIT: Duration = Duration::from_secs(2);

/// Relay settings. Defaults in [`RelayConfig::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Per-viewer queue bound in media time (slow-viewer policy). 2 s.
    pub max_lag: Duration,
    /// Overflows within `overflow_window` that disconnect a viewer. 3.
    pub overflow_limit: u32,
    /// 30 s.
    pub overflow_window: Duration,
    /// No media from an upstream for this long → next candidate. 1 s.
    pub stall_timeout: Duration,
    /// A pulled stream without viewers for this long is stopped. 10 s.
    pub idle_timeout: Duration,
    /// A directory subscription no stream here used for this long is
    /// dropped ([`crate::routes::interest`]). 60 s.
    pub directory_linger: Duration,
    /// Connecting to an upstream, up to its response head and first
    /// bytes. 2 s.
    pub connect_timeout: Duration,
    /// A publisher silent for this long is disconnected. 10 s.
    pub publish_timeout: Duration,
    /// Longest a play request waits for a stream to come up. 10 s.
    pub play_wait: Duration,
    /// Ring bounds per stream: 8192 tags, 16 MiB.
    pub cache_max_tags: usize,
    pub cache_max_bytes: usize,
    /// Largest FLV tag body accepted (larger = malformed). 8 MiB.
    pub max_tag_bytes: usize,
    /// `TCP_NOTSENT_LOWAT` of media connections: bytes the kernel may hold
    /// unsent per viewer (hidden from the lag bound). 32 KiB.
    pub notsent_lowat: u32,
    /// A viewer whose send lag exceeds this counts as stalling. 1 s.
    pub stall_lag: Duration,
    /// Longest `X-Vantage-Via` chain accepted. 8.
    pub max_hops: usize,
    /// LL-HLS part target (longest part). 500 ms.
    pub hls_part_target: Duration,
    /// LL-HLS complete segments kept per stream. 6.
    pub hls_window: usize,
    /// The scheduler's HTTP base URL for Content Steering (multivariant
    /// playlists name its steering manifest). None.
    pub steering_url: Option<String>,
    /// Viewers are woken at most once per this window (tags arriving in
    /// between go out together in one write). Fewer, larger writes cost
    /// far less per viewer; the window adds at most this much delay. 100 ms
    /// (whole-run fan-out CPU 0.59–0.80× `fanout.c`'s against 0.85–1.43× at
    /// 50 ms: docs/benchmarks.md).
    pub write_coalesce: Duration,
    /// Media connections whose first request head has not arrived yet;
    /// more are closed at accept (each such connection holds hyper's read
    /// buffer until its header timeout). 4096.
    pub max_pending: usize,
    /// `POST /v1/cmcd` beacons per second per client (token bucket). 10.
    pub cmcd_beacon_rate: f64,
    /// Beacon bucket size per client. 20.
    pub cmcd_beacon_burst: f64,
    /// Client = IPv4 address truncated to this prefix (beacon limit and
    /// session ownership). 32.
    pub cmcd_client_prefix_v4: u8,
    /// Client = IPv6 address truncated to this prefix. 64.
    pub cmcd_client_prefix_v6: u8,
    /// Viewer sessions tracked per client ([`sessions`]). 64.
    pub cmcd_sessions_per_client: usize,
    /// Viewer sessions tracked in all (and beacon clients). 100,000.
    pub cmcd_max_sessions: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_lag: Duration::from_secs(2),
            overflow_limit: 3,
            overflow_window: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            directory_linger: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(10),
            play_wait: Duration::from_secs(10),
            cache_max_tags: 8192,
            cache_max_bytes: 16 * 1024 * 1024,
            max_tag_bytes: vantage_shared::flv::DEFAULT_MAX_TAG_SIZE,
            notsent_lowat: 32 * 1024,
            stall_lag: Duration::from_secs(1),
            max_hops: 8,
            hls_part_target: Duration::from_millis(500),
            hls_window: 6,
            steering_url: None,
            write_coalesce: Duration::from_millis(100),
            max_pending: 4096,
            cmcd_beacon_rate: 10.0,
            cmcd_beacon_burst: 20.0,
            cmcd_client_prefix_v4: 32,
            cmcd_client_prefix_v6: 64,
            cmcd_sessions_per_client: 64,
            cmcd_max_sessions: 100_000,
        }
    }
}

impl RelayConfig {
    fn limits(&self) -> CacheLimits {
        CacheLimits {
            max_tags: self.cache_max_tags.max(16),
            max_bytes: self.cache_max_bytes.max(64 * 1024),
            retain_ms: ms(self.max_lag) + 1000,
        }
    }

    fn session_limits(&self) -> sessions::SessionLimits {
        sessions::SessionLimits {
            max_sessions: self.cmcd_max_sessions,
            per_client: self.cmcd_sessions_per_client,
            prefix_v4: self.cmcd_client_prefix_v4,
            prefix_v6: self.cmcd_client_prefix_v6,
        }
    }

    pub(crate) fn policy(&self) -> LagPolicy {
        LagPolicy {
            max_lag_ms: ms(self.max_lag),
            overflow_limit: self.overflow_limit.max(1),
            overflow_window: self.overflow_window,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Binds the media listener (accepted sockets get `TCP_NODELAY` and
/// `TCP_NOTSENT_LOWAT` in [`Relay::serve`]).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// An upstream to pull a stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node id, or the URL of a static origin.
    pub label: String,
    /// The stream's URL there.
    pub url: String,
}

struct Shared {
    cfg: RelayConfig,
    node_id: String,
    tables: TableReceiver,
    /// Streams whose directory entries this agent subscribes to.
    interest: Interest,
    static_origins: Vec<(StreamPattern, String)>,
    alerts: AlertSender,
    metrics: RelayMetrics,
    streams: Mutex<HashMap<StreamKey, Arc<Stream>>>,
    qoe: Mutex<qoe::Qoe>,
    /// Viewer sessions (lock before `qoe` when both are held).
    sessions: Mutex<sessions::Sessions>,
    /// `POST /v1/cmcd` token buckets per client.
    beacons: Mutex<vantage_shared::ratelimit::Limiter>,
    node: Arc<NodeCounters>,
    in_rate: RateMeter,
    out_rate: RateMeter,
    epoch: Instant,
    next_viewer: AtomicU64,
    cancel: CancellationToken,
    viewer_stats: OnceLock<ViewerStats>,
    /// Set by the agent; while draining, new viewers are refused (`server`).
    drain: OnceLock<crate::drain::Drain>,
    /// LL-HLS output per stream.
    hls: crate::hls::Hub,
    /// Live comments (`/{app}/{stream}/comments`), set by the agent.
    comments: OnceLock<crate::comments::WeakComments>,
}

/// The relay; cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

/// Why a play request found no stream to wait for.
#[derive(Debug)]
pub(crate) struct NoSource;

impl Relay {
    /// `static_origins` serve streams the route table has no route for.
    pub fn new(
        cfg: RelayConfig,
        node_id: impl Into<String>,
        tables: TableReceiver,
        interest: Interest,
        static_origins: &[StaticOrigin],
        alerts: AlertSender,
        metrics: RelayMetrics,
    ) -> Relay {
        let mut origins: Vec<(StreamPattern, String)> = static_origins
            .iter()
            .filter_map(|o| Some((StreamPattern::parse(&o.pattern).ok()?, o.url.clone())))
            .collect();
        origins.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        let now = Instant::now();
        let sessions = sessions::Sessions::new(cfg.session_limits());
        let beacons = vantage_shared::ratelimit::Limiter::new(
            vantage_shared::ratelimit::Rate {
                per_s: cfg.cmcd_beacon_rate,
                burst: cfg.cmcd_beacon_burst,
            },
            cfg.cmcd_max_sessions,
            now,
        );
        Relay {
            inner: Arc::new(Shared {
                cfg,
                node_id: node_id.into(),
                tables,
                interest,
                static_origins: origins,
                alerts,
                metrics,
                streams: Mutex::new(HashMap::new()),
                qoe: Mutex::new(qoe::Qoe::default()),
                sessions: Mutex::new(sessions),
                beacons: Mutex::new(beacons),
                node: Arc::new(NodeCounters::default()),
                in_rate: RateMeter::new(now),
                out_rate: RateMeter::new(now),
                epoch: now,
                next_viewer: AtomicU64::new(1),
                cancel: CancellationToken::new(),
                viewer_stats: OnceLock::new(),
                drain: OnceLock::new(),
                hls: crate::hls::Hub::default(),
                comments: OnceLock::new(),
            }),
        }
    }

    /// Registers viewer sockets with this `TCP_INFO` sampler from now on
    /// (once; later calls are ignored).
    pub fn set_viewer_stats(&self, stats: ViewerStats) {
        let _ = self.inner.viewer_stats.set(stats);
    }

    pub(crate) fn viewer_stats(&self) -> Option<ViewerStats> {
        self.inner.viewer_stats.get().cloned()
    }

    pub fn config(&self) -> &RelayConfig {
        &self.inner.cfg
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub(crate) fn metrics(&self) -> &RelayMetrics {
        &self.inner.metrics
    }

    pub(crate) fn hls_hub(&self) -> &crate::hls::Hub {
        &self.inner.hls
    }

    /// Serves media on `listener` until `cancel`; then every pull and media
    /// connection is dropped.
    pub async fn serve(
        &self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let inner = self.inner.cancel.clone();
        let _stop = inner.clone().drop_guard();
        let housekeeping = tokio::spawn(report::housekeeping(self.clone(), inner.clone()));
        let r = tokio::select! {
            r = server::accept_loop(self.clone(), listener, inner.clone()) => r,
            _ = cancel.cancelled() => Ok(()),
        };
        inner.cancel();
        housekeeping.abort();
        r
    }

    /// Upstream candidates of `key`, best first: the route table's
    /// ([`AppliedTable::route_for`](crate::routes::AppliedTable::route_for):
    /// directory and origin route, else `streams` patterns), else the most
    /// specific static origin. None for a stream the table says is
    /// published here.
    pub fn candidates(&self, key: &StreamKey) -> Vec<Candidate> {
        self.candidates_hinted(key, None)
    }

    /// [`candidates`](Self::candidates), with `hint` as the origin while
    /// the directory names none
    /// ([`AppliedTable::route_hinted`](crate::routes::AppliedTable::route_hinted)).
    pub fn candidates_hinted(&self, key: &StreamKey, hint: Option<&str>) -> Vec<Candidate> {
        if let Some(t) = self.inner.tables.borrow().as_ref() {
            let lookup = t.route_hinted(key, hint);
            if lookup == Lookup::Local {
                return Vec::new();
            }
            if let Some(upstreams) = lookup.upstreams() {
                return upstreams
                    .iter()
                    .map(|u| Candidate {
                        label: if u.kind == UpstreamKind::Node as i32 {
                            u.node_id.clone()
                        } else {
                            origin_url(&u.url, key)
                        },
                        url: origin_url(&u.url, key),
                    })
                    .collect();
            }
        }
        self.inner
            .static_origins
            .iter()
            .find(|(p, _)| p.matches(key))
            .map(|(_, url)| {
                let url = origin_url(url, key);
                vec![Candidate {
                    label: url.clone(),
                    url,
                }]
            })
            .unwrap_or_default()
    }

    /// The origin node to name in a pull of `key` upstream: the
    /// directory's, else `hint`.
    pub(crate) fn origin_for(&self, key: &StreamKey, hint: Option<&str>) -> Option<String> {
        let t = self.inner.tables.borrow();
        t.as_ref()
            .and_then(|t| t.origin_of(key).map(str::to_owned))
            .or_else(|| hint.map(str::to_owned))
    }

    /// The streams this agent subscribes to.
    pub fn interest(&self) -> &Interest {
        &self.inner.interest
    }

    /// Before a play of `key`: subscribes to its directory entry when not
    /// yet (or refreshes its use) and, when the table does not list it and
    /// nothing else can route it (a stream held here, a usable `hint`),
    /// waits up to [`DIRECTORY_WAIT`] for the scheduler's answer — only
    /// while the route stream is up (without a scheduler the table in use
    /// is all there is).
    pub(crate) async fn await_directory(&self, key: &StreamKey, hint: Option<&str>) {
        // Held here: published here (nothing to ask), or relayed (wanted
        // since its pull started, and kept by the sweep while held).
        if lock(&self.inner.streams).contains_key(key) {
            return;
        }
        let interest = &self.inner.interest;
        interest.want(key);
        let listed =
            |t: &Option<Arc<crate::routes::AppliedTable>>| t.as_ref().is_some_and(|t| t.lists(key));
        if listed(&self.inner.tables.borrow()) {
            return;
        }
        if hint.is_some() && !self.candidates_hinted(key, hint).is_empty() {
            return;
        }
        if !interest.connected() {
            return;
        }
        let mut tables = self.inner.tables.clone();
        let started = Instant::now();
        let answered = tokio::time::timeout(DIRECTORY_WAIT, tables.wait_for(listed)).await;
        let outcome = match answered {
            Ok(Ok(_)) => "answered",
            Ok(Err(_)) => "closed",
            Err(_) => "timeout",
        };
        self.inner
            .metrics
            .directory_wait(outcome, started.elapsed());
    }

    fn new_stream(&self, key: &StreamKey, role: Role) -> Arc<Stream> {
        Stream::new(
            key.clone(),
            role,
            self.inner.cfg.limits(),
            self.inner.node.clone(),
            self.inner.metrics.clone(),
            self.inner.epoch,
        )
    }

    /// The stream to play `key` from: held here, or a new one with a pull
    /// started (`via` is sent upstream as the loop guard; `hint` is the
    /// origin a downstream relay named).
    pub(crate) fn stream_for_play(
        &self,
        key: &StreamKey,
        via: &str,
        hint: Option<&str>,
    ) -> Result<Arc<Stream>, NoSource> {
        let mut map = lock(&self.inner.streams);
        if let Some(s) = map.get(key) {
            s.touch();
            return Ok(s.clone());
        }
        if self.candidates_hinted(key, hint).is_empty() {
            return Err(NoSource);
        }
        let s = self.new_stream(key, Role::Relay);
        let (generation, cancel) = s.begin_source(Role::Relay, "", &self.inner.cancel);
        map.insert(key.clone(), s.clone());
        drop(map);
        tokio::spawn(pull::run(
            self.clone(),
            s.clone(),
            generation,
            cancel,
            via.to_owned(),
            hint.map(str::to_owned),
        ));
        Ok(s)
    }

    /// The directory's origin for `key` when it is another node: a
    /// publisher of `key` here is refused (or ended once the scheduler
    /// names another origin: the first publisher of a key stays its
    /// origin).
    pub(crate) fn origin_elsewhere(&self, key: &StreamKey) -> Option<String> {
        let t = self.inner.tables.borrow();
        t.as_ref()
            .and_then(|t| t.origin_of(key))
            .filter(|o| !o.is_empty() && *o != self.inner.node_id)
            .map(str::to_owned)
    }

    /// The stream a publisher of `key` writes to, with its source
    /// generation and cancellation. A stream already published here is a
    /// conflict; one the directory names another origin for, or one
    /// relayed live from an upstream, is refused with that origin; a pull
    /// still connecting with no origin known (viewers came first) is taken
    /// over.
    pub(crate) fn stream_for_publish(
        &self,
        key: &StreamKey,
    ) -> Result<(Arc<Stream>, u64, CancellationToken), admit::Refused> {
        let elsewhere = || self.origin_elsewhere(key);
        let mut map = lock(&self.inner.streams);
        let held = map
            .get(key)
            .filter(|s| matches!(*s.phase.borrow(), Phase::Connecting | Phase::Live));
        if held.is_some_and(|s| s.role() == Role::Origin) {
            return Err(admit::Refused::Conflict);
        }
        if let Some(origin) = elsewhere() {
            return Err(admit::Refused::NotOrigin { origin });
        }
        let stream = match held {
            // Relayed media flows from somewhere: that is the origin.
            Some(s) if *s.phase.borrow() == Phase::Live => {
                return Err(admit::Refused::NotOrigin {
                    origin: s.upstream(),
                });
            }
            // Viewers waiting for a stream published nowhere yet: this
            // publisher feeds them.
            Some(s) => s.clone(),
            None => {
                let s = self.new_stream(key, Role::Origin);
                map.insert(key.clone(), s.clone());
                s
            }
        };
        let (generation, cancel) = stream.begin_source(Role::Origin, "", &self.inner.cancel);
        Ok((stream, generation, cancel))
    }

    /// Forgets `stream` if it is still the one held for its key.
    pub(crate) fn remove(&self, stream: &Arc<Stream>) {
        let mut map = lock(&self.inner.streams);
        if map.get(&stream.key).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            map.remove(&stream.key);
        }
    }

    pub(crate) fn streams(&self) -> Vec<Arc<Stream>> {
        lock(&self.inner.streams).values().cloned().collect()
    }

    pub(crate) fn next_viewer_id(&self) -> u64 {
        self.inner
            .next_viewer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn clock_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests;
