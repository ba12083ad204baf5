//! Live comments on the HTTP API:
//!
//! * `GET /v1/comments` — the cluster's comment load (connections, posts/s,
//!   deliveries/s per node and in total, from the agents' reports) and the
//!   settings in force (version, key ids, blocklist size). Open, like the
//!   other read endpoints.
//! * `GET /v1/comments/blocklist`, `PUT /v1/comments/blocklist`
//!   `{"patterns": [...]}` — read and replace the blocklist (admin token);
//!   agents have the new list within a second.
//! * `POST /v1/comments/tokens` `{"sub", "name"?, "room"?, "ttl_s"?}` — a
//!   poster token (admin token: the platform's login service calls it).
//! * `POST /v1/comments/keys/rotate` — a new signing key; the previous one
//!   stays valid (admin token).

use super::{ApiError, ApiResult, require_admin};
use crate::app::App;
use crate::comments::CommentsError;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

fn api_error(e: CommentsError) -> ApiError {
    match e {
        CommentsError::Invalid(m) => ApiError::bad_request(m),
        CommentsError::Store(s) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {s}"),
        ),
    }
}

/// `GET /v1/comments`.
pub async fn summary(State(app): State<Arc<App>>) -> Json<Value> {
    let s = app.comments.current();
    let mut nodes = Vec::new();
    let (mut conns, mut fanout, mut posts) = (0u64, 0.0, 0.0);
    app.registry.for_each(|e| {
        // A node that stopped reporting holds no connections we know of.
        let Some(l) = e.load.as_ref().filter(|_| e.session.is_some()) else {
            return;
        };
        conns += u64::from(l.comment_connections);
        fanout += l.comment_fanout_per_s;
        posts += l.comment_posts_per_s;
        nodes.push(json!({
            "id": e.id,
            "connections": l.comment_connections,
            "fanout_per_s": l.comment_fanout_per_s,
            "posts_per_s": l.comment_posts_per_s,
        }));
    });
    nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({
        "settings_version": s.version,
        "keys": s.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        "blocklist_version": s.blocklist_version,
        "blocklist_patterns": s.blocklist.len(),
        "connections": conns,
        "fanout_per_s": fanout,
        "posts_per_s": posts,
        "nodes": nodes,
    }))
}

/// `GET /v1/comments/blocklist`.
pub async fn get_blocklist(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    require_admin(&app, &headers)?;
    let list = app.comments.blocklist().await.map_err(api_error)?;
    Ok(Json(json!(list)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklistBody {
    patterns: Vec<String>,
}

/// `PUT /v1/comments/blocklist`.
pub async fn put_blocklist(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<BlocklistBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    require_admin(&app, &headers)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let list = app
        .comments
        .set_blocklist(body.patterns)
        .await
        .map_err(api_error)?;
    Ok(Json(json!({
        "version": list.version,
        "patterns": list.patterns.len(),
        "settings_version": app.comments.current().version,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default = "default_ttl")]
    ttl_s: i64,
}

fn default_ttl() -> i64 {
    3600
}

/// `POST /v1/comments/tokens`.
pub async fn token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<TokenBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    require_admin(&app, &headers)?;
    let Json(b) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (token, exp, kid) = app
        .comments
        .mint(&b.sub, b.name.as_deref(), b.room.as_deref(), b.ttl_s)
        .map_err(api_error)?;
    Ok(Json(json!({ "token": token, "exp": exp, "kid": kid })))
}

/// `POST /v1/comments/keys/rotate`.
pub async fn rotate(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    require_admin(&app, &headers)?;
    let kids = app.comments.rotate().await.map_err(api_error)?;
    Ok(Json(json!({
        "keys": kids,
        "settings_version": app.comments.current().version,
    })))
}
