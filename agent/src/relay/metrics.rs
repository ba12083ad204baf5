//! `vantage_agent_relay_*` metrics. Labels have small fixed value sets,
//! except `stream`, which is given to at most [`MAX_STREAM_LABELS`] streams
//! at a time (the others are only counted in the node-level series).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Streams that get their own `stream` label at the same time.
pub const MAX_STREAM_LABELS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabel {
    /// `play`, `publish`, `hls`, `cmcd`, `comments`, `other`.
    pub kind: &'static str,
    /// HTTP status code.
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabel {
    /// `query`, `headers`, `beacon`.
    pub source: &'static str,
    /// `ok` (a new sample, or a report without buffer data), `merged` (into
    /// its session's sample of the same second), `rejected`, `invalid`.
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectLabel {
    /// `query`, `headers`, `beacon`.
    pub source: &'static str,
    /// [`crate::relay::sessions::Reject::label`].
    pub reason: &'static str,
}

/// Every relay metric; cheap to clone (shared handles).
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    pub requests: Family<StatusLabel, Counter>,
    pub streams: Family<RoleLabel, Gauge>,
    pub viewers: Gauge,
    pub viewers_joined: Counter,
    pub viewers_left: Family<ReasonLabel, Counter>,
    pub viewer_skips: Counter,
    pub publishes: Family<ResultLabel, Counter>,
    pub malformed_flv: Family<ReasonLabel, Counter>,
    pub pulls: Family<ResultLabel, Counter>,
    pub pulls_active: Gauge,
    pub directory_waits: Family<ResultLabel, Counter>,
    pub directory_wait_seconds: Counter<f64, AtomicU64>,
    pub failovers: Family<ReasonLabel, Counter>,
    pub loops_refused: Counter,
    pub ingress_bytes: Counter,
    pub egress_bytes: Counter,
    pub cmcd: Family<SourceLabel, Counter>,
    pub cmcd_rejected: Family<RejectLabel, Counter>,
    pub cmcd_sessions: Gauge,
    pub send_lag_p95_ms: Gauge<f64, AtomicU64>,
    pub stream_viewers: Family<StreamLabel, Gauge>,
    pub stream_bitrate_kbps: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    pub stream_ingest_lag_ms: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    pub stream_gop_cache_ms: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    pub hls_requests: Family<HlsLabel, Counter>,
    pub hls_parts: Counter,
    pub hls_segments: Counter,
    pub hls_segmenters: Gauge,
    pub header_timeouts: Counter,
    pub pending_refused: Counter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HlsLabel {
    /// `playlist`, `init`, `part`, `segment`, `other`.
    pub kind: &'static str,
    pub status: u16,
}

impl RelayMetrics {
    /// Creates the metrics and registers them under `vantage_agent_relay_`.
    pub fn register(registry: &mut Registry) -> RelayMetrics {
        let m = RelayMetrics::default();
        let r = registry.sub_registry_with_prefix("vantage_agent_relay");
        r.register(
            "requests",
            "Media HTTP requests by kind (play, publish, hls, cmcd, comments, other) and status code",
            m.requests.clone(),
        );
        r.register("streams", "Streams held, by role", m.streams.clone());
        r.register("viewers", "Viewers connected", m.viewers.clone());
        r.register(
            "viewers_joined",
            "Viewers that started playing",
            m.viewers_joined.clone(),
        );
        r.register(
            "viewers_left",
            "Viewers gone, by reason (closed, ended, overflow, stalled, shutdown)",
            m.viewers_left.clone(),
        );
        r.register(
            "viewer_skips",
            "Slow-viewer queue overflows that skipped media to a keyframe",
            m.viewer_skips.clone(),
        );
        r.register(
            "publishes",
            "Publish attempts by result (accepted, conflict, malformed, ended, closed, timeout, error)",
            m.publishes.clone(),
        );
        r.register(
            "malformed_flv",
            "FLV input refused, by error kind",
            m.malformed_flv.clone(),
        );
        r.register(
            "pulls",
            "Upstream pull attempts by result (ok, not_found, error)",
            m.pulls.clone(),
        );
        r.register(
            "directory_waits",
            "Play requests that waited for the scheduler's answer to a directory subscription, by result (answered, timeout, closed)",
            m.directory_waits.clone(),
        );
        r.register(
            "directory_wait_seconds",
            "Time play requests spent waiting for directory answers",
            m.directory_wait_seconds.clone(),
        );
        r.register(
            "pulls_active",
            "Upstream pulls running",
            m.pulls_active.clone(),
        );
        r.register(
            "failovers",
            "Switches to another upstream, by reason (error, stall, ended, malformed, table)",
            m.failovers.clone(),
        );
        r.register(
            "loops_refused",
            "Pull requests refused with 508 because they would loop",
            m.loops_refused.clone(),
        );
        r.register(
            "ingress_bytes",
            "FLV bytes received from publishers and upstreams",
            m.ingress_bytes.clone(),
        );
        r.register(
            "egress_bytes",
            "FLV bytes handed to viewer connections",
            m.egress_bytes.clone(),
        );
        r.register(
            "cmcd_reports",
            "CMCD data received, by source and result",
            m.cmcd.clone(),
        );
        r.register(
            "cmcd_rejected",
            "CMCD reports that did not count, by source and reason (no_session, unknown_session, \
             wrong_client, not_served, duplicate, session_limit, rate_limited)",
            m.cmcd_rejected.clone(),
        );
        for reason in crate::relay::sessions::Reject::ALL {
            let _ = m.cmcd_rejected.get_or_create(&RejectLabel {
                source: "beacon",
                reason: reason.label(),
            });
        }
        r.register(
            "cmcd_sessions",
            "Viewer sessions tracked for CMCD (served, within their grace, or watch pages not yet playing)",
            m.cmcd_sessions.clone(),
        );
        r.register(
            "send_lag_p95_ms",
            "95th percentile of viewer send lag over all viewers, ms",
            m.send_lag_p95_ms.clone(),
        );
        r.register(
            "stream_viewers",
            "Viewers per stream (first 100 streams)",
            m.stream_viewers.clone(),
        );
        r.register(
            "stream_bitrate_kbps",
            "Ingest bit rate per stream (first 100 streams)",
            m.stream_bitrate_kbps.clone(),
        );
        r.register(
            "stream_ingest_lag_ms",
            "Wall clock minus stream clock per stream (first 100 streams)",
            m.stream_ingest_lag_ms.clone(),
        );
        r.register(
            "stream_gop_cache_ms",
            "Media held in the GOP cache per stream (first 100 streams)",
            m.stream_gop_cache_ms.clone(),
        );
        r.register(
            "header_timeouts",
            "Media connections closed because no complete request head arrived within 10 s \
             (silent or half-sent requests, upgrades that never come)",
            m.header_timeouts.clone(),
        );
        r.register(
            "pending_refused",
            "Media connections closed at accept because relay-max-pending connections were \
             already waiting for their first request head",
            m.pending_refused.clone(),
        );
        let h = registry.sub_registry_with_prefix("vantage_agent_hls");
        h.register(
            "requests",
            "LL-HLS requests by kind (playlist, init, part, segment, other) and status code",
            m.hls_requests.clone(),
        );
        h.register(
            "parts",
            "LL-HLS parts made (once per stream, whatever the number of clients)",
            m.hls_parts.clone(),
        );
        h.register(
            "segments",
            "LL-HLS segments completed (once per stream)",
            m.hls_segments.clone(),
        );
        h.register(
            "segmenters",
            "Streams with an LL-HLS segmenter running",
            m.hls_segmenters.clone(),
        );
        m
    }

    pub fn hls_request(&self, kind: &'static str, status: u16) {
        self.hls_requests
            .get_or_create(&HlsLabel { kind, status })
            .inc();
    }

    pub fn request(&self, kind: &'static str, status: u16) {
        self.requests
            .get_or_create(&StatusLabel { kind, status })
            .inc();
    }

    pub fn publish(&self, result: &'static str) {
        self.publishes.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn directory_wait(&self, result: &'static str, waited: std::time::Duration) {
        self.directory_waits
            .get_or_create(&ResultLabel { result })
            .inc();
        self.directory_wait_seconds.inc_by(waited.as_secs_f64());
    }

    pub fn pull(&self, result: &'static str) {
        self.pulls.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn failover(&self, reason: &'static str) {
        self.failovers.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn left(&self, reason: &'static str) {
        self.viewers_left
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn malformed(&self, reason: &'static str) {
        self.malformed_flv
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn cmcd(&self, source: &'static str, result: &'static str) {
        self.cmcd
            .get_or_create(&SourceLabel { source, result })
            .inc();
    }

    pub fn cmcd_rejected(&self, source: &'static str, reason: crate::relay::sessions::Reject) {
        self.cmcd(source, "rejected");
        self.cmcd_rejected
            .get_or_create(&RejectLabel {
                source,
                reason: reason.label(),
            })
            .inc();
    }
}
