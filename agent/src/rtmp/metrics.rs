//! `vantage_agent_rtmp_*` metrics. Labels have small fixed value sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Every RTMP listener metric; cheap to clone (shared handles).
#[derive(Debug, Clone, Default)]
pub struct RtmpMetrics {
    pub connections: Gauge,
    pub connections_total: Family<ResultLabel, Counter>,
    pub handshakes: Family<ResultLabel, Counter>,
    pub errors: Family<ReasonLabel, Counter>,
    pub plays: Family<ResultLabel, Counter>,
}

impl RtmpMetrics {
    /// Creates the metrics and registers them under `vantage_agent_rtmp_`.
    pub fn register(registry: &mut Registry) -> RtmpMetrics {
        let m = RtmpMetrics::default();
        let r = registry.sub_registry_with_prefix("vantage_agent_rtmp");
        r.register(
            "connections",
            "RTMP connections open (handshaking, publishing, playing)",
            m.connections.clone(),
        );
        r.register(
            "connection_attempts",
            "RTMP connections by result (accepted, refused_limit: over --rtmp-max-connections)",
            m.connections_total.clone(),
        );
        r.register(
            "handshakes",
            "RTMP handshakes by result (ok, bad_version, timeout, closed)",
            m.handshakes.clone(),
        );
        r.register(
            "errors",
            "RTMP connections closed for bad input or silence, by reason",
            m.errors.clone(),
        );
        r.register(
            "plays",
            "RTMP play requests by result (ok, not_found, failed, timeout, bad_name, draining)",
            m.plays.clone(),
        );
        m
    }

    pub fn connection(&self, result: &'static str) {
        self.connections_total
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn handshake(&self, result: &'static str) {
        self.handshakes.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn play(&self, result: &'static str) {
        self.plays.get_or_create(&ResultLabel { result }).inc();
    }
}
