//! `GET|PUT /v1/weights` and the weight history.

use super::{ApiError, ApiResult, reader, require_admin};
use crate::app::{App, WeightsPatch, WeightsUpdateError};
use crate::store::WeightSet;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

fn weight_json(ws: &WeightSet) -> Value {
    json!({
        "version": ws.version,
        "weights": ws.weights,
        "created_at_ms": ws.created_at_ms,
        "actor": ws.actor,
        "comment": ws.comment,
    })
}

/// Longest comment of a weight change (bytes).
pub const MAX_COMMENT: usize = 1024;

pub async fn get(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    reader(&app, &headers)?;
    Ok(Json(weight_json(&app.weights())))
}

pub async fn put(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let actor = require_admin(&app, &headers)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty body: send a JSON object such as {\"latency\": 0.4}",
        ));
    }
    let patch: WeightsPatch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid weights: {e}")))?;
    if let Some(c) = &patch.comment
        && c.len() > MAX_COMMENT
    {
        return Err(ApiError::bad_request(format!(
            "comment of {} bytes is longer than {MAX_COMMENT}",
            c.len()
        )));
    }
    super::require_store(&app)?;
    match app.update_weights(patch, &actor).await {
        Ok(ws) => Ok(Json(weight_json(&ws))),
        Err(e @ (WeightsUpdateError::Empty | WeightsUpdateError::Invalid(_))) => {
            Err(ApiError::bad_request(format!("invalid weights: {e}")))
        }
        Err(WeightsUpdateError::Store(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("weights not saved: {e}"),
        )),
    }
}

pub async fn history(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    reader(&app, &headers)?;
    let h = app
        .store
        .weight_history(100)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({
        "history": h.iter().map(weight_json).collect::<Vec<_>>()
    })))
}
