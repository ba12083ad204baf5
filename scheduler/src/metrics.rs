//! Scheduler metrics, registered once in one registry and shared by every
//! component. Label values are bounded sets (close-code labels, node states,
//! alert kinds); there are no per-node or per-viewer labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// A part of a planning round: `views` (the registry's snapshot), `plan`
/// (the planner), `publish` (versions and hand-off to the gRPC streams).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

fn plan_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[derive(Debug)]
pub struct Metrics {
    pub telemetry_connections: Counter,
    pub telemetry_sessions: Gauge,
    pub telemetry_rejected: Family<ReasonLabel, Counter>,
    pub reports: Counter,
    pub report_bytes: Counter,
    pub alerts: Family<KindLabel, Counter>,
    pub nodes: Family<StateLabel, Gauge>,
    pub node_transitions: Family<StateLabel, Counter>,
    pub telemetry_socket_drops: Counter,
    pub liveness_held: Gauge,
    pub plans: Counter,
    pub plans_superseded: Counter,
    pub plans_skipped: Counter,
    pub plan_duration: Histogram,
    pub plan_stage_duration: Family<StageLabel, Histogram, fn() -> Histogram>,
    pub route_pushes: Counter,
    pub route_acks: Counter,
    pub route_nacks: Counter,
    pub route_subscribers: Gauge,
    pub routes_rejected: Family<ReasonLabel, Counter>,
    pub weights_version: Gauge,
    pub weight_changes: Counter,
    pub store_ops: Counter,
    pub store_batches: Counter,
    pub store_dropped: Counter,
    pub http_errors: Family<ReasonLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under `vantage_scheduler_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            telemetry_connections: Counter::default(),
            telemetry_sessions: Gauge::default(),
            telemetry_rejected: Family::default(),
            reports: Counter::default(),
            report_bytes: Counter::default(),
            alerts: Family::default(),
            nodes: Family::default(),
            node_transitions: Family::default(),
            telemetry_socket_drops: Counter::default(),
            liveness_held: Gauge::default(),
            plans: Counter::default(),
            plans_superseded: Counter::default(),
            plans_skipped: Counter::default(),
            plan_duration: plan_histogram(),
            plan_stage_duration: Family::new_with_constructor(plan_histogram),
            route_pushes: Counter::default(),
            route_acks: Counter::default(),
            route_nacks: Counter::default(),
            route_subscribers: Gauge::default(),
            routes_rejected: Family::default(),
            weights_version: Gauge::default(),
            weight_changes: Counter::default(),
            store_ops: Counter::default(),
            store_batches: Counter::default(),
            store_dropped: Counter::default(),
            http_errors: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("vantage_scheduler");
        r.register(
            "telemetry_connections",
            "QUIC telemetry connections accepted",
            m.telemetry_connections.clone(),
        );
        r.register(
            "telemetry_sessions",
            "Agents with a live telemetry session",
            m.telemetry_sessions.clone(),
        );
        r.register(
            "telemetry_rejected",
            "Telemetry connections closed for bad input, by close-code label",
            m.telemetry_rejected.clone(),
        );
        r.register("reports", "Reports accepted", m.reports.clone());
        r.register(
            "report_bytes",
            "Bytes of accepted reports",
            m.report_bytes.clone(),
        );
        r.register("alerts", "Alerts received, by kind", m.alerts.clone());
        r.register("nodes", "Known nodes by state", m.nodes.clone());
        r.register(
            "node_transitions",
            "Node state changes, by new state",
            m.node_transitions.clone(),
        );
        r.register(
            "telemetry_socket_drops",
            "Datagrams the kernel dropped at the telemetry (QUIC) socket because its receive buffer was full",
            m.telemetry_socket_drops.clone(),
        );
        r.register(
            "liveness_held",
            "Nodes kept from going down because the scheduler itself dropped telemetry datagrams lately",
            m.liveness_held.clone(),
        );
        r.register("plans", "Plans computed", m.plans.clone());
        r.register(
            "plans_superseded",
            "Plans abandoned because a weight change arrived while they ran",
            m.plans_superseded.clone(),
        );
        r.register(
            "plans_skipped",
            "Periodic replans skipped: no node's inputs moved beyond the deadband",
            m.plans_skipped.clone(),
        );
        r.register(
            "plan_duration_seconds",
            "Time of one planning round: node views, plan and publish",
            m.plan_duration.clone(),
        );
        r.register(
            "plan_stage_duration_seconds",
            "Time of each part of a planning round (stage: views, plan, publish)",
            m.plan_stage_duration.clone(),
        );
        r.register(
            "route_pushes",
            "Route tables sent to agents",
            m.route_pushes.clone(),
        );
        r.register("route_acks", "Route tables ACKed", m.route_acks.clone());
        r.register("route_nacks", "Route tables NACKed", m.route_nacks.clone());
        r.register(
            "route_subscribers",
            "Open RouteDiscovery streams",
            m.route_subscribers.clone(),
        );
        r.register(
            "routes_rejected",
            "RouteDiscovery streams refused, by reason",
            m.routes_rejected.clone(),
        );
        r.register(
            "weights_version",
            "Version of the weight set in force",
            m.weights_version.clone(),
        );
        r.register(
            "weight_changes",
            "Weight sets accepted through the API",
            m.weight_changes.clone(),
        );
        r.register(
            "store_ops",
            "Batched store writes committed",
            m.store_ops.clone(),
        );
        r.register(
            "store_batches",
            "Store write transactions committed",
            m.store_batches.clone(),
        );
        r.register(
            "store_dropped",
            "Store writes dropped (queue full or failed batch)",
            m.store_dropped.clone(),
        );
        r.register(
            "http_errors",
            "HTTP API requests answered with an error, by reason",
            m.http_errors.clone(),
        );
        m
    }

    pub fn rejected(&self, reason: &str) {
        self.telemetry_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
