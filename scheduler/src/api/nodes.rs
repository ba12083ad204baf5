//! `/v1/nodes`, `/v1/routes/{id}`, drain and events.

use super::{ApiError, ApiResult, require_admin};
use crate::app::App;
use crate::registry::NodeEntry;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::sync::Arc;
use vantage_shared::clock::now_ms;

/// JSON view of a node.
pub fn node_json(e: &NodeEntry, now: i64, detail: bool) -> Value {
    let load = e.load.as_ref().map(|l| {
        json!({
            "cpu": l.cpu,
            "mem_used_bytes": l.mem_used_bytes,
            "mem_total_bytes": l.mem_total_bytes,
            "egress_mbps": l.egress_mbps,
            "ingress_mbps": l.ingress_mbps,
            "viewers": l.viewers,
            "streams": l.streams,
            "utilisation": e.utilisation(),
        })
    });
    let paths: Vec<Value> = e
        .paths
        .values()
        .map(|p| {
            json!({
                "target": p.target_node_id,
                "addr": p.target_addr,
                "rtt_ewma_ms": p.rtt_ewma_ms,
                "rtt_p50_ms": p.rtt_p50_ms,
                "rtt_p95_ms": p.rtt_p95_ms,
                "loss": p.loss,
                "jitter_ms": p.jitter_ms,
                "samples": p.samples,
                "last_success_age_ms": p.last_success_age_ms,
            })
        })
        .collect();
    let streams: Vec<Value> = e
        .streams
        .iter()
        .map(|s| {
            json!({
                "key": s.key,
                "role": vantage_proto::v1::StreamRole::try_from(s.role)
                    .map(|r| r.as_str_name().trim_start_matches("STREAM_ROLE_").to_ascii_lowercase())
                    .unwrap_or_default(),
                "upstream": s.upstream,
                "bitrate_kbps": s.bitrate_kbps,
                "viewers": s.viewers,
                "gop_cache_ms": s.gop_cache_ms,
                "ingest_lag_ms": s.ingest_lag_ms,
                "send_lag_p95_ms": s.send_lag_p95_ms,
            })
        })
        .collect();
    let mut v = json!({
        "id": e.id,
        "state": e.state,
        "connected": e.session.is_some(),
        "draining": e.draining,
        "region": e.info.region,
        "lat": e.info.coord.map(|c| c.lat),
        "lon": e.info.coord.map(|c| c.lon),
        "capacity_mbps": e.info.capacity_mbps,
        "public_url": e.info.public_url,
        "probe_addr": e.info.probe_addr,
        "agent_version": e.info.agent_version,
        "last_report_age_ms": e.last_report_ms.map(|t| (now - t).max(0)),
        "state_since_ms": e.state_since_ms,
        "reports": e.reports,
        "alerts": e.alerts,
        "route_version_in_use": e.route_version_in_use,
        "load": load,
        "paths": paths,
        "streams": streams,
    });
    if detail && let Some(obj) = v.as_object_mut() {
        obj.insert(
            "session".into(),
            e.session
                .as_ref()
                .map(|s| json!({"id": s.id, "started_ms": s.started_ms, "remote": s.remote}))
                .unwrap_or(Value::Null),
        );
        obj.insert(
            "control_path".into(),
            e.control_path
                .as_ref()
                .map(|c| {
                    json!({"rtt_ms": c.rtt_ms, "lost_packets": c.lost_packets, "congestion_events": c.congestion_events})
                })
                .unwrap_or(Value::Null),
        );
        obj.insert(
            "groups".into(),
            Value::Array(
                e.groups
                    .iter()
                    .map(|g| {
                        json!({"group": g.group, "viewers": g.viewers, "tcp_rtt_ms": g.tcp_rtt_ms,
                               "retransmit_rate": g.retransmit_rate, "stall_rate": g.stall_rate,
                               "buffer_ms": g.buffer_ms, "samples": g.samples})
                    })
                    .collect(),
            ),
        );
        obj.insert(
            "static_origins".into(),
            e.info
                .static_origins
                .iter()
                .map(|(p, u)| (p.to_string(), Value::String(u.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }
    v
}

pub async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let now = now_ms();
    let nodes: Vec<Value> = app
        .registry
        .entries()
        .iter()
        .map(|e| node_json(e, now, false))
        .collect();
    Json(json!({ "nodes": nodes }))
}

pub async fn one(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let now = now_ms();
    let mut v = app
        .registry
        .with(&id, |e| node_json(e, now, true))
        .ok_or_else(|| ApiError::not_found(format!("unknown node {id:?}")))?;
    let scores = { app.read_plan(|plan| upstream_scores(&app, plan, &id)).await };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("upstream_scores".into(), scores);
    }
    Ok(Json(v))
}

/// How every eligible peer scores as this node's upstream, best first, with
/// each term's input, its source (measured / modelled / default) and its
/// contribution: the explanation behind the planner's edge costs.
fn upstream_scores(app: &App, plan: &vantage_plan::PlanSession, id: &str) -> Value {
    use vantage_plan::edge::edge_inputs;
    use vantage_plan::eligible;
    let views = plan.views();
    let Some(me) = views.iter().find(|v| v.id == id) else {
        return Value::Array(Vec::new());
    };
    let ws = app.weights();
    let ranges = &app.config.ranges;
    let mut scored: Vec<(f64, Value)> = views
        .iter()
        .filter(|u| u.id != id && eligible(u, ranges))
        .map(|u| {
            let inputs = edge_inputs(u, me, ranges, &app.config.limits, u.utilisation());
            let b = vantage_shared::score::score(&ws.weights, ranges, &inputs);
            (
                b.score,
                json!({"node_id": u.id, "score": b.score, "terms": b.terms}),
            )
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    Value::Array(scored.into_iter().take(32).map(|(_, v)| v).collect())
}

pub async fn drain(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let actor = require_admin(&app, &headers)?;
    let state = app
        .drain(&id, &actor)
        .ok_or_else(|| ApiError::not_found(format!("unknown node {id:?}")))?;
    Ok(Json(
        json!({"node_id": id, "state": state, "draining": true}),
    ))
}

/// Most live streams listed in `stream_routes` of `GET /v1/routes/{id}`.
const STREAM_ROUTES_MAX: usize = 10_000;

pub async fn routes(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if !app.registry.contains(&id) {
        return Err(ApiError::not_found(format!("unknown node {id:?}")));
    }
    let st = app.publisher.channel(&id).status();
    let (table, stream_routes, truncated) = app
        .read_plan(|plan| {
            let table = plan.table(&id);
            // Every live stream as this node would pull it, whether or not
            // its table lists the stream (tables list the streams the
            // agent subscribed to).
            let streams: Vec<Value> = plan
                .directory()
                .take(STREAM_ROUTES_MAX)
                .map(|(key, origin)| {
                    let ups: Vec<Value> = plan
                        .route_for(&id, key)
                        .into_iter()
                        .map(|(node, hops)| json!({"node_id": node, "hops": hops}))
                        .collect();
                    json!({"stream": key.as_str(), "origin": origin, "upstreams": ups})
                })
                .collect();
            let truncated = plan.directory().nth(STREAM_ROUTES_MAX).is_some();
            (table, streams, truncated)
        })
        .await;
    let table = table.map(|t| vantage_shared::table_view::table_json(&t));
    Ok(Json(json!({
        "stream_routes": stream_routes,
        "stream_routes_truncated": truncated,
        "node_id": id,
        "version": st.version,
        "nonce": st.last_nonce,
        "acked_version": st.acked_version,
        "acked_at_ms": st.acked_at_ms,
        "nacked": st.nacked,
        "sent": {"full": st.sent_full, "delta": st.sent_delta, "bytes": st.sent_bytes},
        "table": table,
    })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    node: Option<String>,
    limit: Option<u32>,
}

pub async fn events(
    State(app): State<Arc<App>>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    app.store
        .flush()
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let events = app
        .store
        .events(q.node.as_deref(), limit)
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({ "events": events })))
}
