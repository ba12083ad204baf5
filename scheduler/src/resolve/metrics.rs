//! `vantage_scheduler_resolve*` metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// `vantage_scheduler_resolve*` metrics.
#[derive(Debug, Clone)]
pub struct ResolveMetrics {
    pub resolves: Family<OutcomeLabel, Counter>,
    pub duration: Histogram,
    pub learned_groups: Gauge,
    pub learned_pairs: Gauge,
}

impl ResolveMetrics {
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            resolves: Family::default(),
            duration: Histogram::new(exponential_buckets(0.000_01, 2.0, 16)),
            learned_groups: Gauge::default(),
            learned_pairs: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("vantage_scheduler");
        r.register(
            "resolves",
            "Viewer resolves (/v1/resolve and /play), by outcome: best, spread, explore, unavailable, unknown_stream, bad_request",
            m.resolves.clone(),
        );
        r.register(
            "resolve_duration_seconds",
            "Time to rank edges for one viewer",
            m.duration.clone(),
        );
        r.register(
            "resolve_learned_groups",
            "Client groups with a learned (node, group) estimate",
            m.learned_groups.clone(),
        );
        r.register(
            "resolve_learned_pairs",
            "Learned (node, group) estimates",
            m.learned_pairs.clone(),
        );
        m
    }

    pub fn outcome(&self, outcome: &'static str) {
        self.resolves.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
