//! `/v1/nodes`, `/v1/routes/{id}`, drain and events.

use super::{ApiError, ApiResult, Reader, reader, require_admin};
use crate::app::App;
use crate::registry::NodeEntry;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::sync::Arc;
use vantage_shared::clock::now_ms;

/// JSON view of a node. Anonymous readers (`private` false) do not see
/// where agents connect from nor their probe addresses.
pub fn node_json(e: &NodeEntry, now: i64, detail: bool, private: bool) -> Value {
    let load = e.load.as_ref().map(|l| {
        json!({
            "cpu": l.cpu,
            "mem_used_bytes": l.mem_used_bytes,
            "mem_total_bytes": l.mem_total_bytes,
            "egress_mbps": l.egress_mbps,
            "ingress_mbps": l.ingress_mbps,
            "viewers": l.viewers,
            "streams": l.streams,
            "comment_connections": l.comment_connections,
            "comment_fanout_per_s": l.comment_fanout_per_s,
            "comment_connection_limit": l.comment_connection_limit,
            "comment_fanout_capacity_per_s": l.comment_fanout_capacity_per_s,
            "comment_posts_per_s": l.comment_posts_per_s,
            "utilisation": e.utilisation(),
        })
    });
    let paths: Vec<Value> = e
        .paths
        .values()
        .map(|p| {
            json!({
                "target": p.target_node_id,
                "addr": private.then_some(&p.target_addr),
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
    if private && let Some(obj) = v.as_object_mut() {
        obj.insert("probe_addr".into(), e.info.probe_addr.clone().into());
    }
    if detail && let Some(obj) = v.as_object_mut() {
        obj.insert(
            "session".into(),
            e.session
                .as_ref()
                .map(|s| {
                    let mut j = json!({"id": s.id, "started_ms": s.started_ms});
                    if private {
                        j["remote"] = s.remote.clone().into();
                    }
                    j
                })
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

pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let Reader { authenticated } = reader(&app, &headers)?;
    let now = now_ms();
    let nodes: Vec<Value> = app
        .registry
        .entries()
        .iter()
        .map(|e| node_json(e, now, false, authenticated))
        .collect();
    Ok(Json(json!({ "nodes": nodes })))
}

/// A node id from a path, checked before it is used or echoed.
fn node_id(id: &str) -> ApiResult<&str> {
    if vantage_shared::auth::valid_node_id(id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!(
            "unknown node (not a node id: {} bytes)",
            id.len()
        )))
    }
}

pub async fn one(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let Reader { authenticated } = reader(&app, &headers)?;
    let id = node_id(&id)?.to_owned();
    let now = now_ms();
    let mut v = app
        .registry
        .with(&id, |e| node_json(e, now, true, authenticated))
        .ok_or_else(|| ApiError::not_found(format!("unknown node {id:?}")))?;
    // A follower plans nothing: it explains from its own registry (every
    // replica receives every report).
    let scores = if app.cluster.is_leader() {
        app.read_plan(|plan| upstream_scores(&app, plan.views(), &id))
            .await
    } else {
        let mut views = Vec::new();
        app.registry.for_each(|e| views.push(e.view()));
        upstream_scores(&app, &views, &id)
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("upstream_scores".into(), scores);
    }
    Ok(Json(v))
}

/// How every eligible peer scores as this node's upstream, best first, with
/// each term's input, its source (measured / modelled / default) and its
/// contribution: the explanation behind the planner's edge costs.
fn upstream_scores(app: &App, views: &[vantage_plan::NodeView], id: &str) -> Value {
    use vantage_plan::edge::edge_inputs;
    use vantage_plan::eligible;
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
    set_drain(&app, &id, &headers, true).await
}

/// `POST /v1/nodes/{id}/undrain`: lifts a drain.
pub async fn undrain(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    set_drain(&app, &id, &headers, false).await
}

/// A drain or undrain through the API (admin token, store reachable).
async fn set_drain(
    app: &App,
    id: &str,
    headers: &HeaderMap,
    drained: bool,
) -> ApiResult<Json<Value>> {
    let actor = require_admin(app, headers)?;
    let id = node_id(id)?;
    super::require_store(app)?;
    let what = if drained { "drain" } else { "undrain" };
    let state = app
        .set_drain_persisted(id, &actor, drained)
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} not saved (nothing changed): {e}"),
            )
        })?
        .ok_or_else(|| ApiError::not_found(format!("unknown node {id:?}")))?;
    Ok(Json(
        json!({"node_id": id, "state": state, "draining": drained}),
    ))
}

/// Most live streams listed in `stream_routes` of `GET /v1/routes/{id}`.
const STREAM_ROUTES_MAX: usize = 10_000;

pub async fn routes(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let Reader { authenticated } = reader(&app, &headers)?;
    let id = node_id(&id)?.to_owned();
    if !app.registry.contains(&id) {
        return Err(ApiError::not_found(format!("unknown node {id:?}")));
    }
    let st = app.publisher.channel(&id).status();
    if !app.cluster.is_leader() {
        return Ok(Json(committed_routes(&app, &id, &st)));
    }
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
    let redact = |mut j: Value| {
        if !authenticated
            && let Some(targets) = j.get_mut("probe_targets").and_then(Value::as_array_mut)
        {
            for p in targets {
                if let Some(o) = p.as_object_mut() {
                    o.remove("addr");
                }
            }
        }
        j
    };
    // Several replicas: the table streams serve is the committed one.
    let table = match app.publisher.table(&id) {
        Some(t) if app.cluster.replicated() => {
            Some(redact(vantage_shared::table_view::table_json(&t.table)))
        }
        _ => table.map(|t| redact(vantage_shared::table_view::table_json(&t))),
    };
    Ok(Json(json!({
        "stream_routes": stream_routes,
        "stream_routes_truncated": truncated,
        "node_id": id,
        "version": st.version,
        "term": app.publisher.table(&id).map_or_else(|| app.cluster.term(), |t| t.term),
        "nonce": st.last_nonce,
        "acked_version": st.acked_version,
        "acked_at_ms": st.acked_at_ms,
        "nacked": st.nacked,
        "sent": {"full": st.sent_full, "delta": st.sent_delta, "bytes": st.sent_bytes},
        "table": table,
    })))
}

/// `GET /v1/routes/{id}` on a follower: the committed table it serves,
/// and the routes of the streams that table lists (a follower plans
/// nothing; the leader lists every live stream).
fn committed_routes(app: &App, id: &str, st: &crate::publish::Status) -> Value {
    let committed = app.publisher.table(id);
    let stream_routes: Vec<Value> = committed
        .as_ref()
        .map(|t| {
            t.table
                .directory
                .iter()
                .map(|d| {
                    let ups: Vec<Value> = t
                        .table
                        .origins
                        .iter()
                        .find(|o| o.origin == d.origin)
                        .map(|o| {
                            o.upstreams
                                .iter()
                                .map(|u| json!({"node_id": u.node_id, "hops": u.hops}))
                                .collect()
                        })
                        .unwrap_or_default();
                    json!({"stream": d.stream, "origin": d.origin, "upstreams": ups})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "stream_routes": stream_routes,
        "stream_routes_truncated": false,
        "node_id": id,
        "version": st.version,
        "term": committed.as_ref().map(|t| t.term),
        "nonce": st.last_nonce,
        "acked_version": st.acked_version,
        "acked_at_ms": st.acked_at_ms,
        "nacked": st.nacked,
        "sent": {"full": st.sent_full, "delta": st.sent_delta, "bytes": st.sent_bytes},
        "planned_by": "leader",
        "table": committed.map(|t| vantage_shared::table_view::table_json(&t.table)),
    })
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
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    reader(&app, &headers)?;
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
