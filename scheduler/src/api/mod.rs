//! The scheduler's HTTP API (DESIGN §8): health, metrics, nodes, routes,
//! weights and drain. JSON everywhere; errors are `{"error": "..."}` with a
//! fitting status. Mutating calls need `authorization: Bearer <admin token>`
//! unless the scheduler runs with `--dev`.

mod dashboard;
mod nodes;
mod resolve;
mod steering;
mod weights;

use crate::app::App;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;

/// An API error: status + message, rendered as JSON and counted.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Checks the admin token of a mutating request.
pub fn require_admin(app: &App, headers: &HeaderMap) -> ApiResult<String> {
    if app.config.dev {
        return Ok("dev".to_owned());
    }
    let Some(expected) = &app.config.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no admin token is configured on this scheduler; mutating calls are disabled",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if vantage_shared::auth::secrets_equal(t, expected) => Ok("admin".to_owned()),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "wrong admin token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `authorization: Bearer <admin token>`",
        )),
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/{id}", get(nodes::one))
        .route("/v1/nodes/{id}/drain", post(nodes::drain))
        .route("/v1/routes/{id}", get(nodes::routes))
        .route("/v1/events", get(nodes::events))
        .route("/v1/weights", get(weights::get).put(weights::put))
        .route("/v1/weights/history", get(weights::history))
        .route("/v1/resolve", get(resolve::resolve))
        .route("/play/{app}/{file}", get(resolve::play))
        .route("/v1/steering/{app}/{stream}", get(steering::manifest))
        .merge(dashboard::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_errors,
        ))
        .with_state(app)
}

async fn count_errors(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let res = next.run(req).await;
    let s = res.status();
    if s.is_client_error() || s.is_server_error() {
        app.metrics
            .http_errors
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: s.as_u16().to_string(),
            })
            .inc();
    }
    res
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if !app.is_ready() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting or shutting down")
            .into_response();
    }
    match app.store.ping().await {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")).into_response()
        }
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &app.prometheus) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
