//! Admin HTTP server (default `127.0.0.1:8081`): `/healthz`, `/readyz`
//! (200 iff a route table is held, from the scheduler or from disk, and the
//! agent is not draining),
//! `/metrics`, `/v1/status` (including the relay's streams, viewers,
//! upstreams and lags, and the live comment rooms) and `/v1/routes` (the whole route table in use, in
//! the scheduler's `GET /v1/routes/{id}` rendering).

use crate::routes::{AppliedTable, Entries, RoutesStatus, TableReceiver, TableSource};
use crate::telemetry::{TelemetrySnapshot, TelemetryStatus};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vantage_shared::table_view::table_json;

/// Everything the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub node_id: String,
    pub telemetry: Arc<TelemetryStatus>,
    pub routes: Arc<RoutesStatus>,
    pub tables: TableReceiver,
    /// `routes_max_entries`, shown next to the table's size.
    pub routes_max_entries: usize,
    pub registry: Arc<Registry>,
    pub probe: crate::probe::ProbeStatus,
    pub relay: crate::relay::Relay,
    pub comments: crate::comments::Comments,
    pub drain: crate::drain::Drain,
}

/// `/v1/status` body.
#[derive(Debug, Serialize)]
pub struct Status {
    pub node_id: String,
    pub telemetry: TelemetrySnapshot,
    pub routes: RoutesView,
    pub probe: crate::probe::ProbeView,
    /// Streams, viewers, upstreams in use, lags.
    pub relay: crate::relay::RelayStatus,
    /// Live comment rooms, connections, upstream links, rates.
    pub comments: crate::comments::report::CommentsStatus,
}

#[derive(Debug, Serialize)]
pub struct RoutesView {
    pub version: u64,
    /// Leader term of the table (0: none, or a scheduler without terms).
    pub term: u64,
    /// Route service of the scheduler replica the stream is (or was last)
    /// open to.
    pub scheduler: String,
    pub nonce: String,
    /// "scheduler", "disk" or "none".
    pub source: &'static str,
    pub applied_at_ms: Option<i64>,
    pub acked: bool,
    /// `streams` entries (patterns, or every stream in an old-format table).
    pub streams: usize,
    /// Origin routes.
    pub origins: usize,
    /// Directory entries (streams of the cluster and their origins).
    pub directory: usize,
    pub probe_targets: usize,
    pub subscribed: bool,
}

/// `/v1/routes` body: the table in use and where it came from.
#[derive(Debug, Serialize)]
pub struct RoutesTable {
    pub node_id: String,
    /// 0 when no table is held.
    pub version: u64,
    /// Leader term of the table (0: none).
    pub term: u64,
    /// Replica the route stream is (or was last) open to.
    pub scheduler: String,
    pub nonce: String,
    /// "scheduler", "disk" or "none".
    pub source: &'static str,
    pub applied_at_ms: Option<i64>,
    pub acked: bool,
    pub subscribed: bool,
    /// Entries counted against `max_entries`.
    pub entries: EntriesView,
    pub max_entries: usize,
    /// [`table_json`] of the whole table (deltas merged); `null` when none
    /// is held.
    pub table: Option<serde_json::Value>,
}

#[derive(Debug, Default, Serialize)]
pub struct EntriesView {
    pub total: usize,
    pub directory: usize,
    pub origins: usize,
    pub patterns: usize,
    pub probe_targets: usize,
}

impl From<Entries> for EntriesView {
    fn from(e: Entries) -> Self {
        Self {
            total: e.total(),
            directory: e.directory,
            origins: e.origins,
            patterns: e.patterns,
            probe_targets: e.probe_targets,
        }
    }
}

fn source_name(t: Option<&AppliedTable>) -> &'static str {
    match t.map(|t| t.source) {
        Some(TableSource::Scheduler) => "scheduler",
        Some(TableSource::Disk) => "disk",
        None => "none",
    }
}

impl AdminState {
    /// The `/v1/routes` view.
    pub fn routes_table(&self) -> RoutesTable {
        let table = self.tables.borrow().clone();
        let t = table.as_deref();
        RoutesTable {
            node_id: self.node_id.clone(),
            version: t.map_or(0, AppliedTable::version),
            term: t.map_or(0, AppliedTable::term),
            scheduler: self.routes.scheduler(),
            nonce: t.map(|t| t.table.nonce.clone()).unwrap_or_default(),
            source: source_name(t),
            applied_at_ms: t.map(|t| t.applied_at_ms),
            acked: t.is_some() && self.routes.acked(),
            subscribed: self.routes.subscribed(),
            entries: t.map(|t| Entries::of(&t.table).into()).unwrap_or_default(),
            max_entries: self.routes_max_entries,
            table: t.map(|t| table_json(&t.table)),
        }
    }

    pub fn status(&self) -> Status {
        let table = self.tables.borrow().clone();
        let routes = match table {
            Some(t) => RoutesView {
                version: t.version(),
                term: t.term(),
                scheduler: self.routes.scheduler(),
                nonce: t.table.nonce.clone(),
                source: source_name(Some(&t)),
                applied_at_ms: Some(t.applied_at_ms),
                acked: self.routes.acked(),
                streams: t.table.streams.len(),
                origins: t.table.origins.len(),
                directory: t.table.directory.len(),
                probe_targets: t.table.probe_targets.len(),
                subscribed: self.routes.subscribed(),
            },
            None => RoutesView {
                version: 0,
                term: 0,
                scheduler: self.routes.scheduler(),
                nonce: String::new(),
                source: "none",
                applied_at_ms: None,
                acked: false,
                streams: 0,
                origins: 0,
                directory: 0,
                probe_targets: 0,
                subscribed: self.routes.subscribed(),
            },
        };
        Status {
            node_id: self.node_id.clone(),
            telemetry: self.telemetry.snapshot(),
            routes,
            probe: self.probe.snapshot(),
            relay: self.relay.status(),
            comments: self.comments.status(),
        }
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/routes", get(routes))
        .with_state(state)
}

/// Serves until `cancel`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.drain.is_draining() {
        // Load balancers and Kubernetes take a draining agent out of rotation.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        )
            .into_response()
    } else if s.tables.borrow().is_some() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "no route table yet"})),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    match crate::metrics::encode(&s.registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": "metrics encoding failed"})),
        )
            .into_response(),
    }
}

async fn status(State(s): State<AdminState>) -> Json<Status> {
    Json(s.status())
}

async fn routes(State(s): State<AdminState>) -> Json<RoutesTable> {
    Json(s.routes_table())
}
