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

/// A part of a planning round: `views` (offering what the registry learned
/// to the planning session), `plan` (the step), `publish` (new versions
/// handed to the gRPC streams).
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
    pub plan_steps: Family<KindLabel, Counter>,
    pub plan_drift: Counter,
    pub plan_routes_changed: Counter,
    pub plans_skipped: Counter,
    pub plan_duration: Histogram,
    pub plan_stage_duration: Family<StageLabel, Histogram, fn() -> Histogram>,
    pub route_pushes: Counter,
    pub route_updates: Family<KindLabel, Counter>,
    pub route_push_bytes: Family<KindLabel, Counter>,
    pub route_acks: Counter,
    pub route_nacks: Counter,
    pub route_subscribers: Gauge,
    pub stream_subscriptions: Family<KindLabel, Counter>,
    pub stream_subscribed: Gauge,
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
            plan_steps: Family::default(),
            plan_drift: Counter::default(),
            plan_routes_changed: Counter::default(),
            plans_skipped: Counter::default(),
            plan_duration: plan_histogram(),
            plan_stage_duration: Family::new_with_constructor(plan_histogram),
            route_pushes: Counter::default(),
            route_updates: Family::default(),
            route_push_bytes: Family::default(),
            route_acks: Counter::default(),
            route_nacks: Counter::default(),
            route_subscribers: Gauge::default(),
            stream_subscriptions: Family::default(),
            stream_subscribed: Gauge::default(),
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
        r.register("plans", "Plan steps made", m.plans.clone());
        r.register(
            "plan_steps",
            "Plan steps by kind: incremental (only what changed), full (re-indexed or planned from scratch)",
            m.plan_steps.clone(),
        );
        r.register(
            "plan_drift",
            "Routes the periodic plan from scratch decided differently from the incremental state (should stay 0)",
            m.plan_drift.clone(),
        );
        r.register(
            "plan_routes_changed",
            "(node, origin or pattern) routes whose upstreams changed in a plan step",
            m.plan_routes_changed.clone(),
        );
        r.register(
            "plans_skipped",
            "Planning rounds with nothing due: no node's inputs moved beyond the deadband",
            m.plans_skipped.clone(),
        );
        r.register(
            "plan_duration_seconds",
            "Time of one planning round that stepped the plan: offers, step and publish",
            m.plan_duration.clone(),
        );
        r.register(
            "plan_stage_duration_seconds",
            "Time of each part of a planning round (stage: views, plan, publish)",
            m.plan_stage_duration.clone(),
        );
        r.register(
            "route_pushes",
            "Route tables sent to agents (whole tables and deltas)",
            m.route_pushes.clone(),
        );
        r.register(
            "route_updates",
            "Route tables sent to agents, by kind: full (whole table) or delta",
            m.route_updates.clone(),
        );
        r.register(
            "route_push_bytes",
            "Encoded bytes of the route tables sent, by kind: full or delta",
            m.route_push_bytes.clone(),
        );
        r.register("route_acks", "Route tables ACKed", m.route_acks.clone());
        r.register("route_nacks", "Route tables NACKed", m.route_nacks.clone());
        r.register(
            "route_subscribers",
            "Open RouteDiscovery streams",
            m.route_subscribers.clone(),
        );
        r.register(
            "stream_subscriptions",
            "Directory subscription changes from agents, by kind: added, removed, invalid (not a stream key), refused (over the per-node or per-request limit)",
            m.stream_subscriptions.clone(),
        );
        r.register(
            "stream_subscribed",
            "Directory subscriptions held, over every node",
            m.stream_subscribed.clone(),
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

    /// A route table went out: whole (`delta` false) or a delta.
    pub fn route_pushed(&self, delta: bool, bytes: usize) {
        let kind = KindLabel {
            kind: if delta { "delta" } else { "full" }.to_owned(),
        };
        self.route_pushes.inc();
        self.route_updates.get_or_create(&kind).inc();
        self.route_push_bytes
            .get_or_create(&kind)
            .inc_by(bytes as u64);
    }

    pub fn rejected(&self, reason: &str) {
        self.telemetry_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
