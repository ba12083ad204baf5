//! Publish credentials (admin token required; docs/security.md):
//!
//! * `POST /v1/publish-tokens` `{"stream": "live/cam1" | "live/*", "ttl_s": N}`
//!   → `{"token", "stream", "key_id", "expires_at_ms"}`: a publish token
//!   for HTTP-FLV (`?token=` or `Authorization: Bearer`) and RTMP
//!   (`rtmp://edge/live/cam1?token=...`);
//! * `GET /v1/publish-keys` — the signing keys (ids and ages, no secrets);
//! * `POST /v1/publish-keys` — rotation: a new current key, returned once
//!   with its secret (base64url) for operators who mint tokens themselves;
//! * `DELETE /v1/publish-keys/{id}` — retires a key: tokens it signed stop
//!   working once agents have their next table.

use super::{ApiError, ApiResult, require_admin};
use crate::app::App;
use crate::publish_auth::KeysError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use vantage_shared::clock::now_ms;
use vantage_shared::publish_token;
use vantage_shared::stream::StreamPattern;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    stream: String,
    ttl_s: Option<u64>,
}

fn keys_error(e: KeysError) -> ApiError {
    match e {
        KeysError::Unknown(_) => ApiError::not_found(e.to_string()),
        KeysError::Last | KeysError::Full => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        KeysError::Store(_) | KeysError::Corrupt(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// `POST /v1/publish-tokens`.
pub async fn issue(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let actor = require_admin(&app, &headers)?;
    let req: IssueRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"stream\": \"app/stream or app/*\", \"ttl_s\": seconds}}: {e}"
        ))
    })?;
    let pattern = StreamPattern::parse(&req.stream)
        .map_err(|e| ApiError::bad_request(format!("stream: {e}")))?;
    let max = app.config.publish.token_max_ttl_s;
    let ttl = req.ttl_s.unwrap_or(86_400);
    if !(1..=max).contains(&ttl) {
        return Err(ApiError::bad_request(format!(
            "ttl_s {ttl} is outside 1..={max} (publish.token_max_ttl_s)"
        )));
    }
    let key = app
        .publish_keys
        .current()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no publish key"))?;
    let now = now_ms();
    let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
    let token = publish_token::issue(&key, &pattern, now / 1000, ttl);
    app.metrics.publish_tokens_issued.inc();
    app.event(
        "",
        "publish_token",
        &format!(
            "{} for {}s by {actor} (key {})",
            pattern.as_str(),
            ttl,
            key.id
        ),
    );
    Ok(Json(json!({
        "token": token,
        "stream": pattern.as_str(),
        "key_id": key.id,
        "expires_at_ms": (now / 1000 + ttl) * 1000,
    })))
}

/// `GET /v1/publish-keys`.
pub async fn list_keys(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    require_admin(&app, &headers)?;
    Ok(Json(json!({ "keys": app.publish_keys.list() })))
}

/// `POST /v1/publish-keys`: rotation.
pub async fn rotate_key(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let actor = require_admin(&app, &headers)?;
    let key = app
        .publish_keys
        .rotate(&app.store, now_ms())
        .await
        .map_err(keys_error)?;
    app.publish_policy_changed();
    app.event("", "publish_key", &format!("{} added by {actor}", key.id));
    Ok(Json(json!({
        "id": key.id,
        "secret": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key.secret),
        "keys": app.publish_keys.list(),
    })))
}

/// `DELETE /v1/publish-keys/{id}`.
pub async fn delete_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let actor = require_admin(&app, &headers)?;
    app.publish_keys
        .delete(&app.store, &id)
        .await
        .map_err(keys_error)?;
    app.publish_policy_changed();
    let id: String = id.chars().take(64).collect();
    app.event("", "publish_key", &format!("{id} deleted by {actor}"));
    Ok(Json(json!({ "keys": app.publish_keys.list() })))
}
