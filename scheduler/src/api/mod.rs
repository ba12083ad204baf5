//! The scheduler's HTTP API (DESIGN §8): health, metrics, nodes, routes,
//! weights, drain and undrain, publish tokens and keys, viewer routing and
//! live comments. JSON everywhere; errors are `{"error": "..."}` with a
//! fitting status. Mutating calls need `authorization: Bearer <admin token>`
//! whenever one is configured (open only with `--dev` and no token); reads
//! may need a read token; see [`guard`] for every check made before a handler.

pub mod cluster;
mod comments;
mod dashboard;
pub mod guard;
mod nodes;
mod publish;
mod resolve;
mod steering;
mod weights;

pub use guard::{Reader, reader, require_admin};

use crate::app::App;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

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

/// Refuses a write at once while this replica knows the shared database is
/// unreachable (several replicas): 503 instead of waiting out the pool's
/// timeout; the replica keeps serving its last state read-only.
pub fn require_store(app: &App) -> ApiResult<()> {
    if app.cluster.replicated() && !app.cluster.store_ok() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unreachable: writes are refused until it returns (this replica \
             serves its last state read-only)",
        ));
    }
    Ok(())
}

pub fn router(app: Arc<App>) -> Router {
    // Viewer routing: open, limited per client.
    let viewers = Router::new()
        .route("/v1/resolve", get(resolve::resolve))
        .route("/play/{app}/{file}", get(resolve::play))
        .route("/play/{app}/{stream}/comments", get(resolve::play_comments))
        .route("/v1/steering/{app}/{stream}", get(steering::manifest))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::rate_limit,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/{id}", get(nodes::one))
        .route("/v1/nodes/{id}/drain", post(nodes::drain))
        .route("/v1/nodes/{id}/undrain", post(nodes::undrain))
        .route("/v1/routes/{id}", get(nodes::routes))
        .route("/v1/events", get(nodes::events))
        .route("/v1/cluster", get(cluster::get))
        .route("/v1/weights", get(weights::get).put(weights::put))
        .route("/v1/weights/history", get(weights::history))
        .route("/v1/comments", get(comments::summary))
        .route(
            "/v1/comments/blocklist",
            get(comments::get_blocklist).put(comments::put_blocklist),
        )
        .route("/v1/comments/tokens", post(comments::token))
        .route("/v1/comments/keys/rotate", post(comments::rotate))
        .route("/v1/publish-tokens", post(publish::issue))
        .route(
            "/v1/publish-keys",
            get(publish::list_keys).post(publish::rotate_key),
        )
        .route(
            "/v1/publish-keys/{id}",
            axum::routing::delete(publish::delete_key),
        )
        .merge(viewers)
        .merge(dashboard::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::same_site,
        ))
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
    // Several replicas: a replica serves viewers and route tables from what
    // it holds while the database is away (it is ready; the body says so).
    if app.cluster.replicated() {
        // Answer within a probe's timeout: what the coordination loop knows
        // when the database is away, else a ping bounded to 500 ms.
        let ping = tokio::time::timeout(Duration::from_millis(500), app.store.ping());
        let store = if !app.cluster.store_ok() {
            "unavailable"
        } else {
            match ping.await {
                Ok(Ok(())) => "ok",
                _ => "unavailable",
            }
        };
        return axum::Json(json!({
            "status": "ready",
            "store": store,
            "role": app.cluster.role().as_str(),
            "term": app.cluster.term(),
        }))
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
