//! Route tables from the scheduler (DESIGN §6).
//!
//! [`RouteClient`] keeps one `RouteDiscovery/StreamRoutes` subscription open
//! (resubscribing with jittered backoff after any error). A received table
//! is a whole table or a delta on the version held; either way it becomes a
//! whole table ([`AppliedTable::update`]) that is [validated](table::validate)
//! in full. A valid one is published as an `Arc<AppliedTable>` on a `watch`
//! channel (atomic for every reader), persisted to `<data-dir>/routes.pb`,
//! then ACKed; an invalid one (or a delta on a version not held, or a table
//! of more than `routes_max_entries` entries once merged) is NACKed with
//! code 3 and the last good table stays in force.
//!
//! Other modules read the table in use through a [`TableReceiver`] and look
//! streams up with [`AppliedTable::route_for`] (the table model and lookup
//! order are in [`table`]). The table's directory lists the streams this
//! agent subscribed to ([`interest`]): the client sends the [`Interest`]
//! set's changes as they come, and the whole set on every new stream.

pub mod interest;
pub mod persist;
pub mod table;

use crate::identity::Identity;
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tracing::{debug, error, info, instrument, warn};
use vantage_proto::v1::route_discovery_client::RouteDiscoveryClient;
use vantage_proto::v1::{ErrorDetail, RouteRequest, RouteTable};
use vantage_shared::backoff::Backoff;
use vantage_shared::clock::now_ms;

pub use interest::Interest;
pub use table::{
    AppliedTable, DEFAULT_MAX_ENTRIES, Entries, Lookup, Route, TableError, TableSource, UpdateKind,
};

/// The table in use (`None` before the first table), shared with the relay
/// and probe modules.
pub type TableReceiver = watch::Receiver<Option<Arc<AppliedTable>>>;

/// A subscription that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest route-table message accepted (tonic's default is 4 MiB, about
/// 160,000 short directory entries; `routes_max_entries` bounds the entries).
pub const MAX_TABLE_BYTES: usize = 64 << 20;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("route service URL: {0}")]
    Url(String),
    #[error("connecting to the route service: {0}")]
    Connect(String),
    #[error("route stream: {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("credential is not valid as gRPC metadata")]
    Metadata,
    #[error("route stream request side closed")]
    RequestClosed,
}

impl From<tonic::Status> for RoutesError {
    fn from(s: tonic::Status) -> Self {
        RoutesError::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// "a: b: c" from an error and its sources (tonic's transport errors say
/// little at the top level).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

/// Route state for `/v1/status`.
#[derive(Debug, Default)]
pub struct RoutesStatus {
    subscribed: AtomicBool,
    acked: AtomicBool,
}

impl RoutesStatus {
    /// Whether a route stream is open.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Whether the scheduler knows we hold the table in use: we ACKed it, or
    /// (for a table from disk) subscribed announcing its version.
    pub fn acked(&self) -> bool {
        self.acked.load(Ordering::Relaxed)
    }
}

/// Keeps the route subscription alive and applies tables.
pub struct RouteClient {
    node_id: String,
    url: String,
    tls: ClientTlsConfig,
    identity: Arc<Identity>,
    path: PathBuf,
    /// `routes_max_entries`.
    max_entries: usize,
    tables: watch::Sender<Option<Arc<AppliedTable>>>,
    interest: Interest,
    status: Arc<RoutesStatus>,
    metrics: Metrics,
}

enum End {
    Cancelled,
    Closed,
}

impl RouteClient {
    pub fn new(
        url: String,
        tls: ClientTlsConfig,
        identity: Arc<Identity>,
        path: PathBuf,
        max_entries: usize,
        tables: watch::Sender<Option<Arc<AppliedTable>>>,
        metrics: Metrics,
    ) -> Self {
        let version = tables.borrow().as_ref().map_or(0, |t| t.version());
        metrics
            .route_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        Self {
            node_id: identity.node_id().to_owned(),
            url,
            tls,
            identity,
            path,
            max_entries,
            tables,
            interest: Interest::default(),
            status: Arc::new(RoutesStatus::default()),
            metrics,
        }
    }

    /// Subscribes to the directory entries of `interest`'s streams (the
    /// relay's; by default a set of its own that stays empty).
    pub fn with_interest(mut self, interest: Interest) -> Self {
        // The streams a table from disk lists are wanted until swept.
        if let Some(t) = self.tables.borrow().as_ref() {
            interest.adopt(t.table.directory.iter().map(|d| d.stream.as_str()));
        }
        self.interest = interest;
        self
    }

    pub fn status(&self) -> Arc<RoutesStatus> {
        self.status.clone()
    }

    fn held_version(&self) -> u64 {
        self.tables.borrow().as_ref().map_or(0, |t| t.version())
    }

    /// Subscribes until `cancel`, resubscribing with backoff.
    #[instrument(name = "routes", skip_all, fields(url = %self.url))]
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut credentials = self.identity.subscribe();
        loop {
            let credential = if self.identity.is_mtls() {
                self.identity.credential()
            } else {
                if credentials.borrow().is_none() {
                    info!("waiting for the node credential (first Welcome) before subscribing");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    c = credentials.wait_for(Option::is_some) => match c {
                        Ok(c) => c.clone(),
                        Err(_) => return,
                    },
                }
            };
            let started = Instant::now();
            let end = self.subscribe(credential, &cancel).await;
            self.interest.set_connected(false);
            self.status.subscribed.store(false, Ordering::Relaxed);
            self.metrics.routes_subscribed.set(0);
            match end {
                Ok(End::Cancelled) => return,
                Ok(End::Closed) => info!("route stream ended by the scheduler"),
                Err(e) => warn!(error = %e, "route stream failed"),
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff.reset();
            }
            let delay = backoff.next_delay(&mut rand::rng());
            debug!(?delay, "resubscribing after backoff");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn subscribe(
        &self,
        credential: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<End, RoutesError> {
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| RoutesError::Url(error_chain(&e)))?
            .tls_config(self.tls.clone())
            .map_err(|e| RoutesError::Url(error_chain(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = tokio::select! {
            _ = cancel.cancelled() => return Ok(End::Cancelled),
            c = endpoint.connect() => c.map_err(|e| RoutesError::Connect(error_chain(&e)))?,
        };
        let mut client =
            RouteDiscoveryClient::new(channel).max_decoding_message_size(MAX_TABLE_BYTES);

        let (tx, rx) = mpsc::channel::<RouteRequest>(8);
        let held = self.held_version();
        // The first request carries every stream wanted (it replaces what
        // the scheduler held); a large set continues in the next requests.
        let mut chunks = self.interest.take_all().into_iter();
        tx.send(RouteRequest {
            node_id: self.node_id.clone(),
            version_info: held,
            subscribe: chunks.next().unwrap_or_default(),
            ..RouteRequest::default()
        })
        .await
        .map_err(|_| RoutesError::RequestClosed)?;
        let rest: Vec<Vec<String>> = chunks.collect();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(c) = credential {
            let value = MetadataValue::try_from(format!("Bearer {c}"))
                .map_err(|_| RoutesError::Metadata)?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut stream = tokio::select! {
            _ = cancel.cancelled() => return Ok(End::Cancelled),
            r = client.stream_routes(request) => r?.into_inner(),
        };
        self.status.subscribed.store(true, Ordering::Relaxed);
        self.metrics.routes_subscribed.set(1);
        if held != 0 {
            self.status.acked.store(true, Ordering::Relaxed);
        }
        info!(
            held_version = held,
            streams = self.interest.len(),
            "subscribed to route tables"
        );
        for subscribe in rest {
            tx.send(RouteRequest {
                node_id: self.node_id.clone(),
                subscribe,
                ..RouteRequest::default()
            })
            .await
            .map_err(|_| RoutesError::RequestClosed)?;
        }
        self.interest.set_connected(true);

        loop {
            // Subscription changes go out as they come (a request that is
            // neither an ACK nor a NACK: no nonce).
            while self.interest.has_changes() {
                let (subscribe, unsubscribe) = self.interest.take_changes();
                debug!(
                    subscribe = subscribe.len(),
                    unsubscribe = unsubscribe.len(),
                    "directory subscriptions"
                );
                tx.send(RouteRequest {
                    node_id: self.node_id.clone(),
                    subscribe,
                    unsubscribe,
                    ..RouteRequest::default()
                })
                .await
                .map_err(|_| RoutesError::RequestClosed)?;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(End::Cancelled),
                _ = self.interest.changed() => {}
                msg = stream.message() => match msg? {
                    Some(table) => {
                        let reply = self.handle(table).await;
                        tx.send(reply).await.map_err(|_| RoutesError::RequestClosed)?;
                    }
                    None => return Ok(End::Closed),
                },
            }
        }
    }

    /// Validates, applies (merging a delta), persists and answers one table.
    async fn handle(&self, table: RouteTable) -> RouteRequest {
        let version = table.version;
        let base_version = table.base_version;
        let nonce = table.nonce.clone();
        let kind = UpdateKind::of(&table);
        let current = self.tables.borrow().clone();
        let applied = AppliedTable::update(
            current.as_deref(),
            table,
            &self.node_id,
            self.max_entries,
            now_ms(),
        );
        match applied {
            Ok(applied) => {
                self.interest
                    .adopt(applied.table.directory.iter().map(|d| d.stream.as_str()));
                let applied = Arc::new(applied);
                self.tables.send_replace(Some(applied.clone()));
                self.status.acked.store(false, Ordering::Relaxed);
                self.metrics
                    .route_version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                let path = self.path.clone();
                let saved =
                    tokio::task::spawn_blocking(move || persist::save(&path, &applied.table)).await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!(error = %e, "could not persist the route table"),
                    Err(e) => error!(error = %e, "route table persistence task failed"),
                }
                self.metrics.table_result("ack");
                self.metrics.route_update(kind.as_str());
                self.status.acked.store(true, Ordering::Relaxed);
                info!(version, base_version, nonce = %nonce, kind = kind.as_str(),
                    "applied route table");
                RouteRequest {
                    node_id: self.node_id.clone(),
                    version_info: version,
                    response_nonce: nonce,
                    ..RouteRequest::default()
                }
            }
            Err(e) => {
                self.metrics.table_result("nack");
                let held = self.held_version();
                warn!(version, base_version, nonce = %nonce, error = %e, kept_version = held,
                    "rejected route table (NACK)");
                RouteRequest {
                    node_id: self.node_id.clone(),
                    version_info: held,
                    response_nonce: nonce,
                    error_detail: Some(ErrorDetail {
                        code: TableError::NACK_CODE,
                        message: e.to_string(),
                    }),
                    ..RouteRequest::default()
                }
            }
        }
    }
}
