//! One stream held by the relay: its ring, its viewers, its source (a
//! publisher or an upstream pull, identified by a generation number so a
//! replaced source can never write again), its phase and its statistics.

use super::hub::{CacheLimits, Outgoing, Ring};
use super::ingest::Timeline;
use super::metrics::RelayMetrics;
use super::viewer::{LeaveReason, ViewerSlot};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vantage_proto::v1::StreamRole;
use vantage_shared::flv::FileHeader;
use vantage_shared::stream::StreamKey;

/// Locks a mutex; a poisoned lock only means a panic elsewhere and the
/// data (plain counters and buffers) is still consistent enough to use.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a stream comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Published to this agent.
    Origin,
    /// Pulled from an upstream.
    Relay,
}

impl Role {
    pub fn proto(self) -> StreamRole {
        match self {
            Role::Origin => StreamRole::Origin,
            Role::Relay => StreamRole::Relay,
        }
    }
}

/// What a play request waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Looking for a source (pull starting).
    Connecting,
    /// The FLV header arrived: viewers may attach.
    Live,
    /// Every upstream said it does not have the stream.
    NotFound(String),
    /// No upstream could be reached.
    Failed(String),
    /// The source ended.
    Ended,
}

#[derive(Debug)]
struct Source {
    generation: u64,
    role: Role,
    upstream: String,
    cancel: CancellationToken,
}

/// Relay-wide byte counters (node load).
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub ingress: AtomicU64,
    pub egress: AtomicU64,
}

/// Bytes per second over at least one second, computed when read.
#[derive(Debug)]
pub struct RateMeter {
    state: Mutex<(Instant, u64, f64)>,
}

impl RateMeter {
    pub fn new(now: Instant) -> RateMeter {
        RateMeter {
            state: Mutex::new((now, 0, 0.0)),
        }
    }

    /// Rate in bytes/s given the running total.
    pub fn rate(&self, total: u64, now: Instant) -> f64 {
        let mut s = lock(&self.state);
        let dt = now.duration_since(s.0).as_secs_f64();
        if dt >= 1.0 {
            s.2 = total.saturating_sub(s.1) as f64 / dt;
            s.0 = now;
            s.1 = total;
        }
        s.2
    }
}

/// A stream's figures at one moment (reports, `/v1/status`, metrics).
#[derive(Debug, Clone, Serialize)]
pub struct StreamSnapshot {
    pub key: String,
    pub role: Role,
    /// Node id or URL pulled from ("" for an origin).
    pub upstream: String,
    pub live: bool,
    pub viewers: usize,
    pub bitrate_kbps: f64,
    pub egress_mbps: f64,
    pub gop_cache_ms: f64,
    pub cache_tags: usize,
    pub cache_bytes: usize,
    pub ingest_lag_ms: f64,
    pub send_lag_p95_ms: f64,
    pub send_lag_max_ms: f64,
    pub skips: u64,
    pub failovers: u64,
    /// Viewers per client group and how many of them lag past the stall
    /// threshold.
    #[serde(skip)]
    pub groups: Vec<(Arc<str>, u32, u32)>,
    #[serde(skip)]
    pub lags: Vec<i64>,
}

pub struct Stream {
    pub key: StreamKey,
    ring: Mutex<Ring>,
    viewers: Mutex<HashMap<u64, Arc<ViewerSlot>>>,
    viewer_count: AtomicUsize,
    /// Relay clock (ms) when the last viewer left (or the stream began).
    idle_since_ms: AtomicU64,
    source: Mutex<Source>,
    pub phase: watch::Sender<Phase>,
    pub timeline: Mutex<Timeline>,
    ingress: AtomicU64,
    egress: AtomicU64,
    skips: AtomicU64,
    failovers: AtomicU64,
    /// Smallest (wall clock − stream clock) seen: the live edge.
    lag_base: Mutex<Option<i64>>,
    in_rate: RateMeter,
    out_rate: RateMeter,
    node: Arc<NodeCounters>,
    metrics: RelayMetrics,
    epoch: Instant,
}

impl Stream {
    pub fn new(
        key: StreamKey,
        role: Role,
        limits: CacheLimits,
        node: Arc<NodeCounters>,
        metrics: RelayMetrics,
        epoch: Instant,
    ) -> Arc<Stream> {
        let now = Instant::now();
        let s = Arc::new(Stream {
            key,
            ring: Mutex::new(Ring::new(limits)),
            viewers: Mutex::new(HashMap::new()),
            viewer_count: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            source: Mutex::new(Source {
                generation: 0,
                role,
                upstream: String::new(),
                cancel: CancellationToken::new(),
            }),
            phase: watch::Sender::new(Phase::Connecting),
            timeline: Mutex::new(Timeline::default()),
            ingress: AtomicU64::new(0),
            egress: AtomicU64::new(0),
            skips: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            lag_base: Mutex::new(None),
            in_rate: RateMeter::new(now),
            out_rate: RateMeter::new(now),
            node,
            metrics,
            epoch,
        });
        s.idle_since_ms.store(s.clock_ms(), Ordering::Relaxed);
        s
    }

    pub fn lock_ring(&self) -> MutexGuard<'_, Ring> {
        lock(&self.ring)
    }

    /// Milliseconds since the relay started (monotonic).
    pub fn clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn role(&self) -> Role {
        lock(&self.source).role
    }

    pub fn upstream(&self) -> String {
        lock(&self.source).upstream.clone()
    }

    /// Makes a new source the only writer: the previous one is cancelled
    /// and its generation refused from now on.
    pub fn begin_source(
        &self,
        role: Role,
        upstream: &str,
        parent: &CancellationToken,
    ) -> (u64, CancellationToken) {
        let mut src = lock(&self.source);
        src.cancel.cancel();
        src.generation += 1;
        src.role = role;
        src.upstream = upstream.to_owned();
        src.cancel = parent.child_token();
        self.lock_ring().generation = src.generation;
        (src.generation, src.cancel.clone())
    }

    /// Stops the current source (its publisher or pull ends; the stream
    /// ends with it unless another source begins).
    pub fn cancel_source(&self) {
        lock(&self.source).cancel.cancel();
    }

    /// Whether `generation` is still the stream's source.
    pub fn is_current(&self, generation: u64) -> bool {
        lock(&self.source).generation == generation
    }

    pub fn set_upstream(&self, generation: u64, upstream: &str) {
        let mut src = lock(&self.source);
        if src.generation == generation {
            src.upstream = upstream.to_owned();
        }
    }

    pub fn count_failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes tags from source `generation`; wakes viewers when `wake`.
    /// Returns false (and publishes nothing) if `generation` was replaced.
    pub fn deliver(
        &self,
        generation: u64,
        header: Option<FileHeader>,
        out: &mut Vec<Outgoing>,
        wake: bool,
    ) -> bool {
        let now_wall = vantage_shared::clock::now_ms();
        let mut base = None::<i64>;
        for o in out.iter().filter(|o| o.config.is_none()) {
            let d = now_wall - o.ts;
            base = Some(base.map_or(d, |b: i64| b.min(d)));
        }
        let waiters = {
            let mut ring = self.lock_ring();
            if ring.generation != generation {
                out.clear();
                return false;
            }
            if let Some(h) = header {
                ring.set_header(h);
            }
            for o in out.drain(..) {
                ring.push(o);
            }
            if wake {
                ring.take_waiters()
            } else {
                Vec::new()
            }
        };
        if let Some(b) = base {
            let mut lb = lock(&self.lag_base);
            *lb = Some(lb.map_or(b, |x| x.min(b)));
        }
        if header.is_some() {
            self.phase.send_if_modified(|p| {
                let change = *p != Phase::Live;
                *p = Phase::Live;
                change
            });
        }
        for w in waiters {
            w.wake();
        }
        true
    }

    /// Wakes every waiting viewer.
    pub fn flush(&self) {
        let waiters = self.lock_ring().take_waiters();
        for w in waiters {
            w.wake();
        }
    }

    /// Ends the stream if `generation` is still its source: viewers drain and
    /// finish, play requests still waiting get `phase`.
    pub fn end_source(&self, generation: u64, phase: Phase) -> bool {
        let src = lock(&self.source);
        if src.generation != generation {
            return false;
        }
        src.cancel.cancel();
        let waiters = {
            let mut ring = self.lock_ring();
            ring.end();
            ring.take_waiters()
        };
        drop(src);
        self.phase.send_replace(phase);
        for w in waiters {
            w.wake();
        }
        true
    }

    /// Adds a viewer; false if the stream already ended.
    pub fn attach(&self, slot: Arc<ViewerSlot>) -> bool {
        if self.lock_ring().ended() {
            return false;
        }
        lock(&self.viewers).insert(slot.id, slot);
        self.viewer_count.fetch_add(1, Ordering::Relaxed);
        self.metrics.viewers.inc();
        self.metrics.viewers_joined.inc();
        true
    }

    /// Removes a viewer (its body was dropped).
    pub fn detach(&self, slot: &ViewerSlot) {
        if lock(&self.viewers).remove(&slot.id).is_some() {
            if self.viewer_count.fetch_sub(1, Ordering::Relaxed) == 1 {
                self.idle_since_ms.store(self.clock_ms(), Ordering::Relaxed);
            }
            self.metrics.viewers.dec();
            let reason = match slot.reason() {
                LeaveReason::Closed if slot.kill.is_cancelled() => LeaveReason::Shutdown,
                r => r,
            };
            self.metrics.left(reason.label());
        }
    }

    /// A play request is interested: restarts the idle clock of a stream
    /// without viewers.
    pub fn touch(&self) {
        self.idle_since_ms.store(self.clock_ms(), Ordering::Relaxed);
    }

    pub fn viewer_count(&self) -> usize {
        self.viewer_count.load(Ordering::Relaxed)
    }

    /// How long the stream has had no viewer (zero while it has some).
    pub fn idle_ms(&self) -> u64 {
        if self.viewer_count() > 0 {
            0
        } else {
            self.clock_ms()
                .saturating_sub(self.idle_since_ms.load(Ordering::Relaxed))
        }
    }

    pub fn slots(&self) -> Vec<Arc<ViewerSlot>> {
        lock(&self.viewers).values().cloned().collect()
    }

    pub fn count_ingress(&self, bytes: usize) {
        self.ingress.fetch_add(bytes as u64, Ordering::Relaxed);
        self.node.ingress.fetch_add(bytes as u64, Ordering::Relaxed);
        self.metrics.ingress_bytes.inc_by(bytes as u64);
    }

    pub fn count_egress(&self, bytes: usize) {
        self.egress.fetch_add(bytes as u64, Ordering::Relaxed);
        self.node.egress.fetch_add(bytes as u64, Ordering::Relaxed);
        self.metrics.egress_bytes.inc_by(bytes as u64);
    }

    pub fn count_skips(&self, n: u64) {
        self.skips.fetch_add(n, Ordering::Relaxed);
        self.metrics.viewer_skips.inc_by(n);
    }

    /// Current figures; `stall_lag_ms` is the send lag from which a viewer
    /// counts as stalling.
    pub fn snapshot(&self, now: Instant, stall_lag_ms: i64) -> StreamSnapshot {
        let (head, gop, tags, bytes, live) = {
            let ring = self.lock_ring();
            (
                ring.head_ts(),
                ring.gop_ms(),
                ring.len(),
                ring.bytes(),
                ring.header().is_some() && !ring.ended(),
            )
        };
        let (role, upstream) = {
            let s = lock(&self.source);
            (s.role, s.upstream.clone())
        };
        let mut lags = Vec::new();
        let mut groups: HashMap<Arc<str>, (u32, u32)> = HashMap::new();
        for slot in lock(&self.viewers).values() {
            let lag = head.map_or(0, |h| slot.lag_ms(h));
            lags.push(lag);
            let g = groups.entry(slot.group.clone()).or_default();
            g.0 += 1;
            if lag > stall_lag_ms {
                g.1 += 1;
            }
        }
        lags.sort_unstable();
        let p95 = percentile(&lags, 0.95);
        let ingest_lag = match (head, *lock(&self.lag_base)) {
            (Some(h), Some(b)) if live => (vantage_shared::clock::now_ms() - h - b).max(0),
            _ => 0,
        };
        StreamSnapshot {
            key: self.key.to_string(),
            role,
            upstream,
            live,
            viewers: lags.len(),
            bitrate_kbps: self.in_rate.rate(self.ingress.load(Ordering::Relaxed), now) * 8.0
                / 1000.0,
            egress_mbps: self.out_rate.rate(self.egress.load(Ordering::Relaxed), now) * 8.0 / 1e6,
            gop_cache_ms: gop as f64,
            cache_tags: tags,
            cache_bytes: bytes,
            ingest_lag_ms: ingest_lag as f64,
            send_lag_p95_ms: p95 as f64,
            send_lag_max_ms: lags.last().copied().unwrap_or(0) as f64,
            skips: self.skips.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            groups: groups.into_iter().map(|(g, (n, s))| (g, n, s)).collect(),
            lags,
        }
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 0.95), 0);
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.95), 95);
        assert_eq!(percentile(&[7], 0.95), 7);
    }
}
