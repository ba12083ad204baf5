//! UDP path probes between agents (DESIGN §4, `docs/measurement.md`).
//!
//! One UDP socket (`--probe-listen`, default `0.0.0.0:7402`) serves both
//! roles, so replies come back to the port peers know:
//!
//! * **responder** — answers requests that carry a valid authenticator (a
//!   truncated HMAC keyed by the cluster `probe_key` of the route table,
//!   current or previous), within per-source and global rate limits
//!   ([`responder`]). Everything else is dropped and counted in
//!   `vantage_agent_probe_dropped_total{reason}`; strangers never get a
//!   byte back.
//! * **prober** — sends requests to the table's `probe_targets` at a
//!   bounded rate ([`ProbeConfig::rate_hz`] per target, [`ProbeConfig::max_pps`]
//!   in total), matches replies by sequence number and keeps per target the
//!   estimators of [`stats`]: RTT EWMA and p50/p95, loss, RFC 3550 jitter.
//!   A target that answered and then stays silent for
//!   [`ProbeConfig::silence`] raises `ALERT_KIND_PROBE_TARGET_LOST` once per
//!   episode and is reported with loss 1.0.
//!
//! Pingmesh's orphan rule: with no table, no probe key, or a table older
//! than its TTL while the scheduler is unreachable, the agent stops probing.
//!
//! The state machine ([`prober::Prober`]) and the estimators are pure and
//! driven by explicit time; [`ProbeService`] does the I/O and
//! [`ProbeStatus`] feeds reports ([`crate::telemetry::ReportSource`]) and
//! `/v1/status`.

pub mod prober;
pub mod responder;
mod service;
pub mod stats;

use crate::routes::AppliedTable;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::time::Duration;

pub use responder::ReplyLimits;
pub use service::{PathView, ProbeService, ProbeStatus, ProbeView};
pub use stats::StatsConfig;

/// Default requests per second to each target.
pub const DEFAULT_RATE_HZ: f64 = 5.0;
/// Default bound on requests per second to all targets together.
pub const DEFAULT_MAX_PPS: f64 = 500.0;
/// Default most targets probed (the scheduler sends at most 16).
pub const DEFAULT_MAX_TARGETS: usize = 64;
/// A request unanswered for this long is lost.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// A target that answered and is then silent this long is lost.
pub const DEFAULT_SILENCE: Duration = Duration::from_millis(1500);

/// Rates, windows and limits of the probe subsystem.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// Requests per second to each target.
    pub rate_hz: f64,
    /// Bound on requests per second to all targets; with more targets than
    /// `max_pps / rate_hz` each one is probed less often.
    pub max_pps: f64,
    /// Targets beyond this many (in table order) are ignored.
    pub max_targets: usize,
    /// A request unanswered this long counts as lost.
    pub timeout: Duration,
    /// Silence after which a target that answered is declared lost...
    pub silence: Duration,
    /// ...provided at least this many requests went unanswered meanwhile.
    pub min_unanswered: u32,
    /// How often the orphan rule is re-evaluated.
    pub orphan_check: Duration,
    pub stats: StatsConfig,
    pub replies: ReplyLimits,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            rate_hz: DEFAULT_RATE_HZ,
            max_pps: DEFAULT_MAX_PPS,
            max_targets: DEFAULT_MAX_TARGETS,
            timeout: DEFAULT_TIMEOUT,
            silence: DEFAULT_SILENCE,
            min_unanswered: 3,
            orphan_check: Duration::from_secs(1),
            stats: StatsConfig::default(),
            replies: ReplyLimits::default(),
        }
    }
}

/// Why probing is off, if it is (Pingmesh's orphan rule). `reachable` is
/// asked only when the table is past its TTL.
pub fn orphaned(
    table: Option<&AppliedTable>,
    now_ms: i64,
    reachable: impl FnOnce() -> bool,
) -> Option<&'static str> {
    let Some(t) = table else {
        return Some("no route table");
    };
    if t.table.probe_key.is_empty() {
        return Some("route table has no probe key");
    }
    let ttl_ms = i64::from(t.table.ttl_s).saturating_mul(1000);
    if now_ms >= t.applied_at_ms.saturating_add(ttl_ms) && !reachable() {
        return Some("route table expired and the scheduler is unreachable");
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Reasons a datagram is dropped, pre-registered so they show as 0.
pub const DROP_REASONS: &[&str] = &[
    "short",
    "long",
    "magic",
    "version",
    "kind",
    "auth",
    "rate",
    "unmatched",
    "late",
];

/// `vantage_agent_probe_*` metrics. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ProbeMetrics {
    pub sent: Counter,
    pub received: Counter,
    pub lost: Counter,
    pub reflected: Counter,
    pub dropped: Family<ReasonLabel, Counter>,
    pub send_errors: Counter,
    pub targets_lost: Counter,
    pub targets: Gauge,
    pub active: Gauge,
}

impl ProbeMetrics {
    pub fn register(registry: &mut Registry) -> ProbeMetrics {
        let m = ProbeMetrics::default();
        for r in DROP_REASONS {
            m.dropped
                .get_or_create(&ReasonLabel {
                    reason: (*r).to_owned(),
                })
                .inc_by(0);
        }
        let r = registry.sub_registry_with_prefix("vantage_agent");
        r.register(
            "probe_sent",
            "Probe requests sent to targets",
            m.sent.clone(),
        );
        r.register(
            "probe_received",
            "Probe replies matched to a request in time",
            m.received.clone(),
        );
        r.register(
            "probe_lost",
            "Probe requests unanswered within the timeout",
            m.lost.clone(),
        );
        r.register(
            "probe_reflected",
            "Probe replies sent to authenticated peers",
            m.reflected.clone(),
        );
        r.register(
            "probe_dropped",
            "Datagrams dropped at the probe port, by reason (short, long, magic, version, kind, auth, rate, unmatched, late)",
            m.dropped.clone(),
        );
        r.register(
            "probe_send_errors",
            "Probe datagrams the socket refused to send",
            m.send_errors.clone(),
        );
        r.register(
            "probe_targets_lost",
            "Lost-target episodes (alerts raised)",
            m.targets_lost.clone(),
        );
        r.register("probe_targets", "Targets being probed", m.targets.clone());
        r.register(
            "probe_active",
            "1 while probing, 0 when stopped by the orphan rule",
            m.active.clone(),
        );
        m
    }

    pub fn drop(&self, reason: &str) {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count of drops for `reason` (tests, status).
    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::TableSource;
    use vantage_proto::v1::RouteTable;

    fn table(ttl_s: u32, key: &[u8]) -> AppliedTable {
        let t = RouteTable {
            node_id: "edge-1".into(),
            version: 1,
            nonce: "n".into(),
            ttl_s,
            probe_key: key.to_vec(),
            ..Default::default()
        };
        AppliedTable::new(t, "edge-1", TableSource::Scheduler, 1_000).unwrap()
    }

    #[test]
    fn orphan_rule() {
        let t = table(10, b"k");
        assert_eq!(orphaned(None, 0, || true), Some("no route table"));
        assert_eq!(
            orphaned(Some(&table(10, b"")), 1_000, || true),
            Some("route table has no probe key")
        );
        assert_eq!(orphaned(Some(&t), 5_000, || panic!("not asked")), None);
        assert_eq!(orphaned(Some(&t), 11_000, || true), None, "reachable");
        assert!(orphaned(Some(&t), 11_000, || false).is_some());
    }

    #[test]
    fn metrics_are_prefixed_and_reasons_preregistered() {
        let mut reg = Registry::default();
        let m = ProbeMetrics::register(&mut reg);
        m.sent.inc();
        m.drop("auth");
        let text = crate::metrics::encode(&reg).unwrap();
        for needle in [
            "vantage_agent_probe_sent_total 1",
            "vantage_agent_probe_dropped_total{reason=\"auth\"} 1",
            "vantage_agent_probe_dropped_total{reason=\"short\"} 0",
            "vantage_agent_probe_targets 0",
            "vantage_agent_probe_active 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert_eq!(m.dropped("auth"), 1);
    }
}
