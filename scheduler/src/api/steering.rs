//! HLS Content Steering (RFC 8216bis §7, "Content Steering"): `GET
//! /v1/steering/{app}/{stream}` serves the steering manifest an LL-HLS
//! player reloads every `TTL` seconds. The agents' multivariant playlists
//! name it (`EXT-X-CONTENT-STEERING:SERVER-URI=…,PATHWAY-ID="<node id>"`)
//! with one pathway, the edge that served the playlist (`base=`); the
//! manifest clones that pathway onto other edges (`PATHWAY-CLONES`, the
//! host replaced) and orders them (`PATHWAY-PRIORITY`), so the player moves
//! to another edge mid-session, at its next part, without a new `/play`.
//!
//! Query: `base` (the playlist's pathway, a node id), `_HLS_pathway` (the
//! pathway the player uses now, added by the player; default `base`),
//! `lat`/`lon` (or the trusted header / GeoIP, as `/v1/resolve`). The
//! decision is the resolve core's steering rule (docs/viewer-routing.md):
//! stay unless the current edge is down, draining or over the hard
//! utilisation limit, or another is clearly better (the planner's
//! hysteresis, doubled).

use super::ApiError;
use super::resolve::{bad, request_for, unavailable};
use crate::app::App;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use vantage_shared::clock::now_ms;
use vantage_shared::stream::StreamKey;

/// Seconds between two reloads of the manifest.
pub const TTL_S: u64 = 30;

type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A pathway id as RFC 8216bis allows (`[a-zA-Z0-9._-]`), at most 64.
fn pathway_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `host[:port]` of a public URL.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then_some(host)
}

/// `GET /v1/steering/{app}/{stream}`.
pub async fn manifest(
    State(app): State<Arc<App>>,
    Path((app_name, name)): Path<(String, String)>,
    headers: HeaderMap,
    peer: super::resolve::Peer,
    query: Params,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return bad(&app, ApiError::bad_request(e.body_text())),
    };
    let stream = match StreamKey::parse(&format!("{app_name}/{name}")) {
        Ok(k) => k,
        Err(e) => return bad(&app, ApiError::bad_request(e.to_string())),
    };
    let Some(base) = param(&q, "base").filter(|b| pathway_ok(b)) else {
        return bad(
            &app,
            ApiError::bad_request("missing or invalid base=<pathway id> (the playlist's node id)"),
        );
    };
    let current = param(&q, "_HLS_pathway").unwrap_or(base);
    if !pathway_ok(current) {
        return bad(&app, ApiError::bad_request("invalid _HLS_pathway"));
    }
    let n = app.resolver.config().default_n.max(2);
    let req = match request_for(&app, &q, &headers, &peer, stream.clone(), n) {
        Ok(r) => r,
        Err(e) => return bad(&app, e),
    };
    let ws = app.weights();
    let out = app.resolver.steer(
        &req,
        current,
        &ws.weights,
        &app.config.ranges,
        now_ms(),
        &mut rand::rng(),
    );
    let (answer, moved) = match out {
        Ok(a) => a,
        Err(e) => return unavailable(&app, &e),
    };
    app.resolver
        .metrics
        .outcome(if moved { "steer_move" } else { "steer_stay" });
    let mut priority = Vec::new();
    let mut clones = Vec::new();
    for e in &answer.edges {
        let id: &str = &e.node_id;
        if !pathway_ok(id) {
            continue;
        }
        if id != base {
            let Some(host) = host_of(&e.public_url) else {
                continue;
            };
            clones.push(json!({
                "BASE-ID": base,
                "ID": id,
                "URI-REPLACEMENT": { "HOST": host },
            }));
        }
        priority.push(id.to_owned());
    }
    // The player's reload keeps where it is and what the playlist named.
    let mut reload = format!("/v1/steering/{stream}?base={base}");
    if let Some(c) = req.coord {
        reload.push_str(&format!("&lat={:.4}&lon={:.4}", c.lat, c.lon));
    }
    Json(json!({
        "VERSION": 1,
        "TTL": TTL_S,
        "RELOAD-URI": reload,
        "PATHWAY-PRIORITY": priority,
        "PATHWAY-CLONES": clones,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pathways_and_hosts() {
        assert!(pathway_ok("par-1") && pathway_ok("edge.a_b"));
        assert!(!pathway_ok("") && !pathway_ok("a b") && !pathway_ok("é"));
        assert!(!pathway_ok(&"x".repeat(65)));
        assert_eq!(host_of("http://10.0.0.5:8080"), Some("10.0.0.5:8080"));
        assert_eq!(host_of("https://edge.example/x"), Some("edge.example"));
        assert_eq!(host_of("nonsense"), None);
    }
}
