//! Prometheus metrics of the agent, all prefixed `vantage_agent_`.
//!
//! One [`Registry`] is built by the caller (the binary's `main`) and handed
//! to [`Metrics::register`]; the admin server encodes it on `/metrics`.
//! Labels have small fixed value sets (results, update kinds and close-code
//! labels).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartLabel {
    pub part: String,
}

/// Every agent metric. Cheap to clone (shared handles).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub reports_sent: Counter,
    pub alerts_sent: Counter,
    pub alerts_dropped: Counter,
    pub report_trimmed: Family<PartLabel, Counter>,
    pub telemetry_connected: Gauge,
    pub telemetry_connects: Family<ResultLabel, Counter>,
    pub telemetry_closed: Family<CodeLabel, Counter>,
    pub route_version: Gauge,
    pub route_tables: Family<ResultLabel, Counter>,
    pub route_updates: Family<KindLabel, Counter>,
    pub routes_subscribed: Gauge,
    pub route_term: Gauge,
    pub route_tables_refused: Family<ReasonLabel, Counter>,
    pub routes_failovers: Counter,
    pub cpu_ratio: Gauge<f64, AtomicU64>,
    pub memory_used_bytes: Gauge,
    pub memory_total_bytes: Gauge,
}

impl Metrics {
    /// A route table refused for `reason`.
    pub fn route_tables_refused(&self, reason: &str) {
        self.route_tables_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Creates the metrics and registers them under `vantage_agent_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("vantage_agent");
        r.register(
            "reports_sent",
            "Telemetry reports written to the scheduler",
            m.reports_sent.clone(),
        );
        r.register(
            "alerts_sent",
            "Alerts written to the scheduler",
            m.alerts_sent.clone(),
        );
        r.register(
            "alerts_dropped",
            "Alerts dropped (queue full or too old to matter)",
            m.alerts_dropped.clone(),
        );
        r.register(
            "report_trimmed",
            "Entries left out of reports to fit the frame limit, by part (streams, groups, paths)",
            m.report_trimmed.clone(),
        );
        for part in ["streams", "groups", "paths"] {
            let _ = m.report_trimmed.get_or_create(&PartLabel {
                part: part.to_owned(),
            });
        }
        r.register(
            "telemetry_connected",
            "Telemetry sessions established, one per scheduler replica reached (1 with a single scheduler)",
            m.telemetry_connected.clone(),
        );
        r.register(
            "telemetry_connects",
            "Telemetry connection attempts by result (welcomed, rejected, error)",
            m.telemetry_connects.clone(),
        );
        r.register(
            "telemetry_closed",
            "Telemetry connections closed, by QUIC close code label",
            m.telemetry_closed.clone(),
        );
        r.register(
            "route_version",
            "Version of the route table in use (0 = none)",
            m.route_version.clone(),
        );
        r.register(
            "route_tables",
            "Route tables received, by result (ack, nack)",
            m.route_tables.clone(),
        );
        r.register(
            "route_updates",
            "Route tables applied, by how they were sent (full, delta)",
            m.route_updates.clone(),
        );
        // Both kinds show from the start (as 0).
        for kind in ["full", "delta"] {
            let _ = m.route_updates.get_or_create(&KindLabel {
                kind: kind.to_owned(),
            });
        }
        r.register(
            "routes_subscribed",
            "1 while the route stream to the scheduler is open",
            m.routes_subscribed.clone(),
        );
        r.register(
            "route_term",
            "Leader term of the route table in use (0 = none, or a scheduler without terms)",
            m.route_term.clone(),
        );
        r.register(
            "route_tables_refused",
            "Route tables refused because the table held is of a newer leader term, by reason (older_term)",
            m.route_tables_refused.clone(),
        );
        let _ = m.route_tables_refused.get_or_create(&ReasonLabel {
            reason: "older_term".to_owned(),
        });
        r.register(
            "routes_failovers",
            "Route streams moved to another scheduler replica after a failure",
            m.routes_failovers.clone(),
        );
        r.register(
            "cpu_ratio",
            "CPU busy share of the machine, 0..1",
            m.cpu_ratio.clone(),
        );
        r.register(
            "memory_used_bytes",
            "Memory in use (MemTotal - MemAvailable)",
            m.memory_used_bytes.clone(),
        );
        r.register(
            "memory_total_bytes",
            "Memory of the machine (MemTotal)",
            m.memory_total_bytes.clone(),
        );
        m
    }

    pub fn connect_result(&self, result: &str) {
        self.telemetry_connects
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts what [`crate::telemetry::trim::fit`] left out of a report.
    pub fn report_trimmed(&self, t: &crate::telemetry::trim::Trimmed) {
        for (part, n) in [
            ("streams", t.streams),
            ("groups", t.groups),
            ("paths", t.paths),
        ] {
            self.report_trimmed
                .get_or_create(&PartLabel {
                    part: part.to_owned(),
                })
                .inc_by(n as u64);
        }
    }

    pub fn closed(&self, code: &str) {
        self.telemetry_closed
            .get_or_create(&CodeLabel {
                code: code.to_owned(),
            })
            .inc();
    }

    pub fn table_result(&self, result: &str) {
        self.route_tables
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// A table applied (ACKed), by how it was sent: `full` or `delta`.
    pub fn route_update(&self, kind: &str) {
        self.route_updates
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Sets the load gauges: CPU share (0–1) and memory in bytes.
    pub fn record_load(&self, cpu: f64, mem_used_bytes: u64, mem_total_bytes: u64) {
        self.cpu_ratio.set(cpu);
        self.memory_used_bytes
            .set(i64::try_from(mem_used_bytes).unwrap_or(i64::MAX));
        self.memory_total_bytes
            .set(i64::try_from(mem_total_bytes).unwrap_or(i64::MAX));
    }
}

/// Encodes the registry in the Prometheus/OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_counters_end_in_total() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.reports_sent.inc();
        m.connect_result("welcomed");
        m.closed("shutting_down");
        m.table_result("ack");
        m.route_update("delta");
        m.record_load(0.25, 10, 20);
        let text = encode(&reg).unwrap();
        for needle in [
            "vantage_agent_reports_sent_total 1",
            "vantage_agent_telemetry_connects_total{result=\"welcomed\"} 1",
            "vantage_agent_telemetry_closed_total{code=\"shutting_down\"} 1",
            "vantage_agent_route_tables_total{result=\"ack\"} 1",
            "vantage_agent_route_updates_total{kind=\"delta\"} 1",
            "vantage_agent_route_updates_total{kind=\"full\"} 0",
            "vantage_agent_cpu_ratio 0.25",
            "vantage_agent_memory_used_bytes 10",
            "vantage_agent_route_version 0",
            "vantage_agent_routes_subscribed 0",
            "vantage_agent_telemetry_connected 0",
            "vantage_agent_alerts_sent_total 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
