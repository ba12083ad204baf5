//! `GET /v1/cluster`: this replica's role and term, who leads, and every
//! replica's health from its heartbeat (several replicas on PostgreSQL; a
//! single SQLite scheduler lists itself as the leader).

use crate::app::App;
use crate::cluster::replicas::HEALTHY_WITHIN_MS;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

pub async fn get(State(app): State<Arc<App>>) -> Json<Value> {
    Json(view(&app))
}

/// The JSON of `GET /v1/cluster` (also in the dashboard's snapshot).
pub fn view(app: &App) -> Value {
    let c = &app.cluster;
    let st = c.state();
    let role = c.role();
    let lease_ms = st
        .lease_until
        .filter(|_| role == crate::cluster::Role::Leader)
        .map(|t| {
            i64::try_from(t.saturating_duration_since(Instant::now()).as_millis())
                .unwrap_or(i64::MAX)
        });
    let me = json!({
        "id": c.replica_id,
        "http_url": c.http_url,
        "role": role.as_str(),
        "term": st.term,
        "since_ms": st.since_ms,
        "lease_remaining_ms": lease_ms,
        "store": if c.store_ok() { "ok" } else { "unavailable" },
        "started_at_ms": c.started_at_ms,
    });
    let replicas: Vec<Value> = if c.replicated() {
        c.replicas()
            .into_iter()
            .map(|r| {
                let healthy = r.seen_age_ms < HEALTHY_WITHIN_MS;
                json!({
                    "id": r.id,
                    "http_url": r.http_url,
                    "role": r.role,
                    "term": r.term,
                    "healthy": healthy,
                    "seen_age_ms": r.seen_age_ms,
                    "started_at_ms": r.started_at_ms,
                    "nodes": r.nodes,
                    "nodes_up": r.nodes_up,
                    "agents_connected": r.agents_connected,
                    "route_streams": r.route_streams,
                    "agent_version": r.agent_version,
                    "self": r.id == c.replica_id,
                })
            })
            .collect()
    } else {
        let counts = app.registry.state_counts();
        vec![json!({
            "id": c.replica_id,
            "http_url": c.http_url,
            "role": "leader",
            "term": st.term,
            "healthy": true,
            "seen_age_ms": 0,
            "started_at_ms": c.started_at_ms,
            "nodes": counts.values().sum::<i64>(),
            "nodes_up": counts.get("up").copied().unwrap_or(0),
            "agents_connected": app.metrics.telemetry_sessions.get(),
            "route_streams": c.route_streams(),
            "agent_version": env!("CARGO_PKG_VERSION"),
            "self": true,
        })]
    };
    let leader = if role == crate::cluster::Role::Leader {
        json!({"id": c.replica_id, "term": st.term})
    } else if st.leader_id.is_empty() || st.leader_remaining_ms < 0 {
        // The lease lapsed: a replica is about to take over.
        Value::Null
    } else {
        json!({"id": st.leader_id, "term": st.term, "lease_remaining_ms": st.leader_remaining_ms})
    };
    json!({
        "mode": if c.replicated() { "replicated" } else { "single" },
        "lease_ms": c.lease.as_millis() as u64,
        "replica": me,
        "leader": leader,
        "replicas": replicas,
    })
}
