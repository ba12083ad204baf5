//! Route tables from the scheduler (DESIGN §6).
//!
//! [`RouteClient`] keeps one `RouteDiscovery/StreamRoutes` subscription open
//! to one scheduler replica at a time (`--routes`, repeatable; a DNS name
//! counts once per address). When the stream fails it moves to the next
//! replica after a short random pause (agents do not all land on the same
//! replica at once), starting from a random one; only after every replica
//! failed in a row does it back off (jittered, capped). HTTP/2 keep-alives
//! notice a frozen replica within seconds. The persisted table stays in
//! force throughout. A received table
//! is a whole table or a delta on the version held; either way it becomes a
//! whole table ([`AppliedTable::update`]) that is [validated](table::validate)
//! in full. A valid one is published as an `Arc<AppliedTable>` on a `watch`
//! channel (atomic for every reader), persisted to `<data-dir>/routes.pb`,
//! then ACKed; an invalid one (or a delta on a version not held, or a table
//! of more than `routes_max_entries` entries once merged) is NACKed with
//! code 3 and the last good table stays in force. A table of an older
//! leader term than the one held (a stale replica's) is NACKed with code 9,
//! counted, and the client moves to another replica.
//!
//! Other modules read the table in use through a [`TableReceiver`] and look
//! streams up with [`AppliedTable::route_for`] (the table model and lookup
//! order are in [`table`]). The table's directory lists the streams this
//! agent subscribed to ([`interest`]): the client sends the [`Interest`]
//! set's changes as they come, and the whole set on every new stream.

pub mod interest;
pub mod persist;
pub mod table;

use crate::config::RouteTarget;
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
/// HTTP/2 pings on an idle stream: a replica that stops answering (frozen,
/// partitioned) is left within about their sum.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before trying the next replica after a failure: random within
/// these bounds.
const FAILOVER_MIN: Duration = Duration::from_millis(50);
/// How long the NACK of a stale replica's table may take to reach it
/// before the agent leaves for another replica.
const STALE_GOODBYE: Duration = Duration::from_secs(1);
const FAILOVER_MAX: Duration = Duration::from_millis(500);

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
    #[error("the replica sent a table of an older term (term {got} < {held})")]
    StaleReplica { got: u64, held: u64 },
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
    /// The replica the stream is (or was last) open to.
    scheduler: std::sync::Mutex<String>,
}

impl RoutesStatus {
    /// The route service of the replica the stream is (or was last) open to.
    pub fn scheduler(&self) -> String {
        self.scheduler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

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
    targets: Vec<RouteTarget>,
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

/// One replica to connect to: the URL (maybe an address a name resolved
/// to) and the TLS name of its certificate.
#[derive(Debug, Clone)]
struct Endpoint_ {
    url: String,
    host: String,
}

impl RouteClient {
    pub fn new(
        targets: Vec<RouteTarget>,
        tls: ClientTlsConfig,
        identity: Arc<Identity>,
        path: PathBuf,
        max_entries: usize,
        tables: watch::Sender<Option<Arc<AppliedTable>>>,
        metrics: Metrics,
    ) -> Self {
        let (version, term) = tables
            .borrow()
            .as_ref()
            .map_or((0, 0), |t| (t.version(), t.term()));
        metrics
            .route_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        metrics
            .route_term
            .set(i64::try_from(term).unwrap_or(i64::MAX));
        Self {
            node_id: identity.node_id().to_owned(),
            targets,
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

    fn held_term(&self) -> u64 {
        self.tables.borrow().as_ref().map_or(0, |t| t.term())
    }

    /// The replicas to try, in order: every configured URL, a name's
    /// addresses each (looked up now; a name that does not resolve is tried
    /// as it is).
    async fn endpoints(&self) -> Vec<Endpoint_> {
        let mut out = Vec::new();
        for t in &self.targets {
            let url: axum::http::Uri = match t.url.parse() {
                Ok(u) => u,
                Err(_) => continue,
            };
            let port = url.port_u16().unwrap_or(443);
            let literal = t.host.parse::<std::net::IpAddr>().is_ok();
            let resolved = if literal {
                None
            } else {
                tokio::net::lookup_host((t.host.as_str(), port))
                    .await
                    .ok()
                    .map(|a| a.collect::<Vec<_>>())
                    .filter(|a| !a.is_empty())
            };
            match resolved {
                Some(addrs) => out.extend(addrs.into_iter().map(|a| Endpoint_ {
                    url: format!("https://{a}"),
                    host: t.host.clone(),
                })),
                None => out.push(Endpoint_ {
                    url: t.url.clone(),
                    host: t.host.clone(),
                }),
            }
        }
        out
    }

    /// Subscribes until `cancel`: to one replica at a time, moving to the
    /// next after a failure (a short random pause), backing off once every
    /// replica failed in a row.
    #[instrument(name = "routes", skip_all)]
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut credentials = self.identity.subscribe();
        let mut endpoints = self.endpoints().await;
        // Agents start at different replicas.
        let mut next = rand::random_range(0..endpoints.len().max(1));
        let mut failed_in_row = 0usize;
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
            if endpoints.is_empty() {
                endpoints = self.endpoints().await;
            }
            let Some(ep) = endpoints.get(next % endpoints.len().max(1)).cloned() else {
                error!("no route service to subscribe to");
                return;
            };
            *self
                .status
                .scheduler
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = ep.url.clone();
            let started = Instant::now();
            let end = self.subscribe(&ep, credential, &cancel).await;
            self.interest.set_connected(false);
            self.status.subscribed.store(false, Ordering::Relaxed);
            self.metrics.routes_subscribed.set(0);
            match end {
                Ok(End::Cancelled) => return,
                Ok(End::Closed) => {
                    info!(scheduler = %ep.url, "route stream ended by the scheduler")
                }
                Err(e) => warn!(scheduler = %ep.url, error = %e, "route stream failed"),
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff.reset();
                failed_in_row = 0;
            }
            failed_in_row += 1;
            next += 1;
            let delay = if endpoints.len() > 1 && failed_in_row < endpoints.len() {
                // Another replica at once (jittered, so agents spread).
                self.metrics.routes_failovers.inc();
                rand::random_range(FAILOVER_MIN..=FAILOVER_MAX)
            } else {
                failed_in_row = 0;
                // A full round failed: look names up again, and back off.
                endpoints = self.endpoints().await;
                backoff.next_delay(&mut rand::rng())
            };
            debug!(?delay, "resubscribing");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn subscribe(
        &self,
        ep: &Endpoint_,
        credential: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<End, RoutesError> {
        let endpoint = Endpoint::from_shared(ep.url.clone())
            .map_err(|e| RoutesError::Url(error_chain(&e)))?
            .tls_config(self.tls.clone().domain_name(ep.host.clone()))
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
        let held_term = self.held_term();
        // The first request carries every stream wanted (it replaces what
        // the scheduler held); a large set continues in the next requests.
        let mut chunks = self.interest.take_all().into_iter();
        tx.send(RouteRequest {
            node_id: self.node_id.clone(),
            version_info: held,
            term: held_term,
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
            scheduler = %ep.url,
            held_version = held,
            held_term,
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
                        let (reply, stale) = self.handle(table).await;
                        tx.send(reply).await.map_err(|_| RoutesError::RequestClosed)?;
                        if let Some((got, held)) = stale {
                            // This replica is behind (a stale ex-leader):
                            // get tables from another one. Half-close first
                            // so the NACK reaches it (its answers meanwhile
                            // are ignored), for at most a second.
                            drop(tx);
                            let _ = tokio::time::timeout(STALE_GOODBYE, async {
                                while let Ok(Some(_)) = stream.message().await {}
                            })
                            .await;
                            return Err(RoutesError::StaleReplica { got, held });
                        }
                    }
                    None => return Ok(End::Closed),
                },
            }
        }
    }

    /// Validates, applies (merging a delta), persists and answers one
    /// table; also says whether it came from an older term (got, held).
    async fn handle(&self, table: RouteTable) -> (RouteRequest, Option<(u64, u64)>) {
        let version = table.version;
        let term = table.term;
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
                self.metrics
                    .route_term
                    .set(i64::try_from(term).unwrap_or(i64::MAX));
                info!(version, term, base_version, nonce = %nonce, kind = kind.as_str(),
                    "applied route table");
                let reply = RouteRequest {
                    node_id: self.node_id.clone(),
                    version_info: version,
                    term,
                    response_nonce: nonce,
                    ..RouteRequest::default()
                };
                (reply, None)
            }
            Err(e) => {
                self.metrics.table_result("nack");
                let stale = match &e {
                    TableError::OlderTerm { got, held } => {
                        self.metrics.route_tables_refused("older_term");
                        Some((*got, *held))
                    }
                    _ => None,
                };
                let held = self.held_version();
                warn!(version, term, base_version, nonce = %nonce, error = %e, kept_version = held,
                    "rejected route table (NACK)");
                let reply = RouteRequest {
                    node_id: self.node_id.clone(),
                    version_info: held,
                    term: self.held_term(),
                    response_nonce: nonce,
                    error_detail: Some(ErrorDetail {
                        code: e.nack_code(),
                        message: e.to_string(),
                    }),
                    ..RouteRequest::default()
                };
                (reply, stale)
            }
        }
    }
}
