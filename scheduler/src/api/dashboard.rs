//! The operator dashboard (DESIGN §8): a single page at `/` with a world map
//! of the nodes, the node table, per-node route tables and a weights
//! editor. Vanilla HTML/CSS/JS and an SVG basemap (Natural Earth, public
//! domain; see `scheduler/assets/ATTRIBUTION.md`), all embedded in the
//! binary: the page makes no request outside this scheduler and works
//! offline.
//!
//! The page reads `GET /ui/state` (this module: every node with the figures
//! the table shows and its serving score) every two seconds, the route table
//! of the selected node from `GET /v1/routes/{id}`, and saves weights with
//! `PUT /v1/weights` like any other client.

use super::nodes::node_json;
use crate::app::App;
use crate::registry::NodeEntry;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;
use vantage_shared::clock::now_ms;
use vantage_shared::score::{Input, Inputs, Ranges, Weights, score};

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");
const WORLD_SVG: &str = include_str!("../../assets/world.svg");
const ATTRIBUTION: &str = include_str!("../../assets/ATTRIBUTION.md");

/// The dashboard's routes, merged into the API router.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(index))
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/ui/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .route("/ui/world.svg", get(|| asset("image/svg+xml", WORLD_SVG)))
        .route(
            "/ui/ATTRIBUTION.md",
            get(|| asset("text/markdown; charset=utf-8", ATTRIBUTION)),
        )
        .route("/ui/state", get(state))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Everything the page shows but the route tables: the nodes (the
/// `/v1/nodes` view plus viewer QoE figures and a serving score), the
/// current weights and whether mutating calls need the admin token.
async fn state(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, super::ApiError> {
    let reader = super::reader(&app, &headers)?;
    let now = now_ms();
    let ws = app.weights();
    let ranges = app.config.ranges;
    let nodes: Vec<Value> = app
        .registry
        .entries()
        .iter()
        .map(|e| {
            let mut v = node_json(e, now, false, reader.authenticated);
            let (qoe, breakdown) = serving(e, &ws.weights, &ranges);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("qoe".into(), qoe);
                obj.insert("score".into(), breakdown);
                let route = app.publisher.channel(&e.id).status();
                obj.insert(
                    "route".into(),
                    json!({"version": route.version, "acked_version": route.acked_version,
                           "nacked": route.nacked.is_some()}),
                );
            }
            v
        })
        .collect();
    Ok(Json(json!({
        "now_ms": now,
        // Whether changes need no token (the page hides the token field).
        "dev": app.config.dev && app.config.admin_token.is_none(),
        "report_interval_ms": app.config.report_interval_ms,
        "weights": {
            "version": ws.version,
            "weights": ws.weights,
            "created_at_ms": ws.created_at_ms,
            "actor": ws.actor,
            "comment": ws.comment,
        },
        "nodes": nodes,
        "cluster": super::cluster::view(&app),
    })))
}

/// Viewer-weighted mean of `f` over the groups with samples.
fn weighted(e: &NodeEntry, f: impl Fn(&vantage_proto::v1::GroupQoe) -> f64) -> Option<f64> {
    let (sum, n) = e
        .groups
        .iter()
        .filter(|g| g.viewers > 0 || g.samples > 0)
        .map(|g| (f(g), f64::from(g.viewers.max(1))))
        .filter(|(x, _)| x.is_finite())
        .fold((0.0, 0.0), |(s, n), (x, w)| (s + x * w, n + w));
    (n > 0.0).then(|| sum / n)
}

/// How well a node serves viewers next to it: its viewers' TCP RTT,
/// retransmissions and buffer (CMCD, else its GOP caches) and its load, at
/// distance 0, through the QoE formula with the current weights. Returns
/// the figures and the score with its breakdown (lower is better).
fn serving(e: &NodeEntry, weights: &Weights, ranges: &Ranges) -> (Value, Value) {
    let viewer_rtt = weighted(e, |g| g.tcp_rtt_ms).filter(|r| *r > 0.0);
    let loss = weighted(e, |g| g.retransmit_rate);
    let cmcd_buffer = weighted(e, |g| if g.samples > 0 { g.buffer_ms } else { f64::NAN });
    let stall = weighted(e, |g| g.stall_rate);
    let view = e.view();
    let buffer = cmcd_buffer.or(view.buffer_ms);
    let measured: Vec<_> = view.paths.values().filter(|p| p.samples > 0).collect();
    let path_rtt = (!measured.is_empty())
        .then(|| measured.iter().map(|p| p.rtt_ms).sum::<f64>() / measured.len() as f64);
    let path_loss = (!measured.is_empty())
        .then(|| measured.iter().map(|p| p.loss).sum::<f64>() / measured.len() as f64);
    let inputs = Inputs {
        rtt_ms: viewer_rtt.map_or(Input::default_value(ranges.rtt_ms.lo), Input::measured),
        loss: loss.map_or(Input::default_value(ranges.loss.lo), Input::measured),
        buffer_ms: buffer.map_or(Input::default_value(ranges.buffer_ms.hi), Input::measured),
        utilisation: Input::measured(e.utilisation()),
        km: Input::modelled(0.0),
        throughput_ratio: Inputs::no_throughput(ranges),
    };
    let b = score(weights, ranges, &inputs);
    let viewers: u32 = e.groups.iter().map(|g| g.viewers).sum();
    (
        json!({
            "viewers": viewers,
            "viewer_rtt_ms": viewer_rtt,
            "retransmit_rate": loss,
            "buffer_ms": buffer,
            "buffer_source": if cmcd_buffer.is_some() { "cmcd" } else if buffer.is_some() { "gop_cache" } else { "none" },
            "stall_rate": stall,
            "path_rtt_ms": path_rtt,
            "path_loss": path_loss,
            "paths": measured.len(),
        }),
        serde_json::to_value(&b).unwrap_or(Value::Null),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded_and_self_contained() {
        assert!(INDEX_HTML.contains("/ui/app.js"));
        assert!(WORLD_SVG.starts_with("<svg") && WORLD_SVG.len() > 50_000);
        // Works offline: the only absolute URL is the SVG namespace name.
        for a in [INDEX_HTML, APP_JS, APP_CSS, WORLD_SVG] {
            let stripped = a.replace("http://www.w3.org/2000/svg", "");
            assert!(!stripped.contains("http://") && !stripped.contains("https://"));
            assert!(!stripped.contains("//cdn"));
        }
    }
}
