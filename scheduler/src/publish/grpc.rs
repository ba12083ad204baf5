//! The `vantage.v1.RouteDiscovery` service: one bidirectional stream per
//! agent, xDS-style (see `proto/vantage/v1/routes.proto`).
//!
//! One replica ([`serve`]): tables come from the planning session, deltas
//! from its log. Several replicas ([`serve_committed`]): tables come from
//! the committed tables every replica holds (the leader's own, or read from
//! the database by a follower), deltas are computed against the whole table
//! the agent ACKed on this stream ([`vantage_shared::table_delta`]), and a
//! table goes out only when its (term, version) is newer than what the
//! agent holds.

use crate::app::App;
use prost::Message;
use rand::RngCore;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use vantage_proto::v1::route_discovery_server::RouteDiscovery;
use vantage_proto::v1::{RouteRequest, RouteTable};
use vantage_shared::clock::now_ms;

/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `RouteRequest` decoded (10,000 subscribed keys of 200 bytes fit).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Longest NACK detail taken (stored with the route version, shown by the
/// API); a longer one ends the stream, unlogged and unstored.
pub const MAX_NACK_DETAIL: usize = 1024;

#[derive(Debug, Clone)]
pub struct RouteService {
    app: Arc<App>,
}

impl RouteService {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }

    fn refuse(&self, reason: &str, status: Status) -> Status {
        self.app
            .metrics
            .routes_rejected
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
        status
    }
}

type TableStream = Pin<Box<dyn Stream<Item = Result<RouteTable, Status>> + Send>>;

#[tonic::async_trait]
impl RouteDiscovery for RouteService {
    type StreamRoutesStream = TableStream;

    async fn stream_routes(
        &self,
        request: Request<Streaming<RouteRequest>>,
    ) -> Result<Response<TableStream>, Status> {
        let conn = request
            .extensions()
            .get::<crate::listeners::GrpcConn>()
            .cloned();
        let peer_cn = conn.as_ref().and_then(|c| c.peer_cn.clone());
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(|s| s.trim().to_owned());
        let remote = conn.map(|c| c.remote.to_string()).unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(self.refuse(
                    "timeout",
                    Status::deadline_exceeded("no RouteRequest within 10 s"),
                ));
            }
            Ok(Err(e)) => return Err(self.refuse("protocol", e)),
            Ok(Ok(None)) => {
                return Err(self.refuse(
                    "protocol",
                    Status::invalid_argument("stream closed before the first RouteRequest"),
                ));
            }
            Ok(Ok(Some(r))) => r,
        };
        // Checked before anything logs or stores it.
        if !vantage_shared::auth::valid_node_id(&first.node_id) {
            warn!(
                %remote,
                len = first.node_id.len(),
                "route subscription refused: not a node id"
            );
            return Err(self.refuse(
                "oversized",
                Status::invalid_argument(format!(
                    "node_id of {} bytes is not a node id (1-64 of [A-Za-z0-9._-])",
                    first.node_id.len()
                )),
            ));
        }
        let node_id = first.node_id.clone();
        if let Err(refusal) =
            self.app
                .auth
                .check_subscriber(&node_id, bearer.as_deref(), peer_cn.as_deref())
        {
            warn!(%remote, node_id, reason = ?refusal.reason, "route subscription refused: {refusal}");
            let status = match refusal.reason {
                vantage_proto::v1::RejectReason::IdentityMismatch => {
                    Status::permission_denied(refusal.detail)
                }
                _ => Status::unauthenticated(refusal.detail),
            };
            return Err(self.refuse(reject_label(refusal.reason), status));
        }
        self.app.observe_agent_term(first.term);
        let stream = self.app.cluster.open_stream(&node_id);
        // The first request's subscriptions replace what the node held
        // (before its first table is chosen, so that table lists them).
        super::interest::apply(
            &self.app,
            &node_id,
            stream,
            &first.subscribe,
            &first.unsubscribe,
            true,
        )
        .await;
        let (tx, rx) = mpsc::channel(4);
        let app = self.app.clone();
        let span = info_span!("routes", node_id = %node_id, %remote);
        tokio::spawn(
            async move {
                info!(
                    held = first.version_info,
                    term = first.term,
                    "route stream open"
                );
                app.metrics.route_subscribers.inc();
                let held = (first.term, first.version_info);
                if app.cluster.replicated() {
                    serve_committed(&app, &node_id, stream, held, inbound, tx).await;
                } else {
                    serve(&app, &node_id, stream, first.version_info, inbound, tx).await;
                }
                app.cluster.close_stream(&node_id, stream);
                app.metrics.route_subscribers.dec();
                info!("route stream closed");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn reject_label(r: vantage_proto::v1::RejectReason) -> &'static str {
    vantage_shared::close::CloseCode::from_reject(r).label()
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Sends the node's table whenever its version moves — a delta on top of
/// what the agent holds when the plan's log reaches back to it, the whole
/// table otherwise — one at a time (the next goes out once the agent
/// answered), and records ACKs and NACKs. After a NACK the agent's content
/// is unknown: the next version goes out whole, and the NACKed one is
/// never resent.
async fn serve(
    app: &Arc<App>,
    node_id: &str,
    stream: u64,
    held: u64,
    mut inbound: Streaming<RouteRequest>,
    tx: mpsc::Sender<Result<RouteTable, Status>>,
) {
    let channel = app.publisher.channel(node_id);
    let mut watch = channel.subscribe();
    // The version the agent holds as far as we know (0: unknown).
    let mut base = held;
    let mut last_sent = held;
    let mut pending: Option<(String, u64)> = None;
    // A version NACKed on an earlier stream is sent once more on a new one
    // (the agent may have been fixed and restarted); within a stream a
    // NACKed version is never resent.
    let mut parked_here: Option<u64> = None;
    loop {
        let current = *watch.borrow_and_update();
        if pending.is_none() && current != 0 && current != last_sent && parked_here != Some(current)
        {
            let update = app.read_plan(|plan| plan.table_update(node_id, base)).await;
            match update {
                Some(update) => {
                    let delta = update.is_delta();
                    let mut t = update.into_table();
                    t.nonce = nonce();
                    t.generated_at_ms = now_ms();
                    let bytes = t.encoded_len();
                    app.publisher.sent(node_id, &t.nonce, delta, bytes);
                    app.metrics.route_pushed(delta, bytes);
                    pending = Some((t.nonce.clone(), t.version));
                    last_sent = t.version;
                    debug!(
                        version = t.version,
                        base = t.base_version,
                        delta,
                        bytes,
                        "sending route table"
                    );
                    if tx.send(Ok(t)).await.is_err() {
                        return;
                    }
                }
                // The agent holds the current version already.
                None => last_sent = current,
            }
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("scheduler shutting down"))).await;
                return;
            }
            _ = tx.closed() => return,
            changed = watch.changed(), if pending.is_none() => {
                if changed.is_err() {
                    return;
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if let Some(err) = &req.error_detail
                        && err.message.len() > MAX_NACK_DETAIL
                    {
                        warn!(
                            len = err.message.len(),
                            "route stream ended: NACK detail over {MAX_NACK_DETAIL} bytes"
                        );
                        app.metrics
                            .routes_rejected
                            .get_or_create(&crate::metrics::ReasonLabel {
                                reason: "oversized".to_owned(),
                            })
                            .inc();
                        let _ = tx
                            .send(Err(Status::invalid_argument(format!(
                                "NACK detail of {} bytes exceeds {MAX_NACK_DETAIL}",
                                err.message.len()
                            ))))
                            .await;
                        return;
                    }
                    if !req.node_id.is_empty() && req.node_id != node_id {
                        let _ = tx.send(Err(Status::permission_denied(
                            "node_id changed within a stream",
                        ))).await;
                        return;
                    }
                    super::interest::apply(app, node_id, stream, &req.subscribe, &req.unsubscribe, false)
                        .await;
                    let Some((nonce, version)) = pending.clone() else { continue };
                    if req.response_nonce != nonce {
                        debug!(nonce = req.response_nonce, "stale nonce ignored");
                        continue;
                    }
                    pending = None;
                    let now = now_ms();
                    match req.error_detail {
                        Some(err) => {
                            warn!(version, code = err.code, detail = err.message, "route table NACKed");
                            app.metrics.route_nacks.inc();
                            app.publisher.nack(node_id, version, &err.message, now);
                            app.event(node_id, "route_nack", &format!("v{version}: {}", err.message));
                            base = 0;
                            parked_here = Some(version);
                        }
                        None => {
                            if req.version_info == version {
                                app.metrics.route_acks.inc();
                                app.publisher.ack(node_id, version, now);
                                base = version;
                            } else {
                                base = 0;
                            }
                        }
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    debug!(%status, "route stream error");
                    return;
                }
            }
        }
    }
}

/// What an agent holds on a stream served from committed tables.
struct Held {
    /// (term, version) the agent holds (0, 0: nothing).
    key: (u64, u64),
    /// The whole table behind `key`, when known (sent and ACKed on this
    /// stream, or the committed one the agent announced): deltas are
    /// computed against it.
    table: Option<Arc<crate::cluster::StoredTable>>,
}

/// [`serve`] for several replicas: sends the node's committed table
/// whenever one newer than what the agent holds is taken — a delta on top
/// of the table the agent ACKed here, the whole table otherwise — one at a
/// time, and records ACKs and NACKs. A NACKed version is not resent on this
/// stream.
async fn serve_committed(
    app: &Arc<App>,
    node_id: &str,
    stream: u64,
    held: (u64, u64),
    mut inbound: Streaming<RouteRequest>,
    tx: mpsc::Sender<Result<RouteTable, Status>>,
) {
    let channel = app.publisher.channel(node_id);
    let mut watch = channel.subscribe();
    let mut holds = Held {
        key: held,
        table: None,
    };
    let mut pending: Option<(String, Arc<crate::cluster::StoredTable>)> = None;
    let mut parked: Option<(u64, u64)> = None;
    loop {
        watch.borrow_and_update();
        if pending.is_none()
            && let Some(cur) = app.publisher.table(node_id)
        {
            // An agent of a scheduler without terms announces term 0: the
            // same version is the same table.
            if holds.key.0 == 0 && holds.key.1 == cur.version {
                holds.key = cur.key();
            }
            if holds.key == cur.key() && holds.table.is_none() {
                holds.table = Some(cur.clone());
            }
            if cur.key() > holds.key && parked != Some(cur.key()) {
                let delta = holds
                    .table
                    .as_ref()
                    .filter(|b| b.key() == holds.key)
                    .and_then(|b| vantage_shared::table_delta::delta(&b.table, &cur.table));
                let is_delta = delta.is_some();
                let mut t = delta.unwrap_or_else(|| (*cur.table).clone());
                t.nonce = nonce();
                t.generated_at_ms = now_ms();
                let bytes = t.encoded_len();
                app.publisher.sent(node_id, &t.nonce, is_delta, bytes);
                app.metrics.route_pushed(is_delta, bytes);
                debug!(
                    version = t.version,
                    term = t.term,
                    base = t.base_version,
                    delta = is_delta,
                    bytes,
                    "sending route table"
                );
                pending = Some((t.nonce.clone(), cur));
                if tx.send(Ok(t)).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("scheduler shutting down"))).await;
                return;
            }
            _ = tx.closed() => return,
            changed = watch.changed(), if pending.is_none() => {
                if changed.is_err() {
                    return;
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if !req.node_id.is_empty() && req.node_id != node_id {
                        let _ = tx.send(Err(Status::permission_denied(
                            "node_id changed within a stream",
                        ))).await;
                        return;
                    }
                    app.observe_agent_term(req.term);
                    super::interest::apply(app, node_id, stream, &req.subscribe, &req.unsubscribe, false)
                        .await;
                    let Some((nonce, sent)) = pending.clone() else { continue };
                    if req.response_nonce != nonce {
                        debug!(nonce = req.response_nonce, "stale nonce ignored");
                        continue;
                    }
                    pending = None;
                    let now = now_ms();
                    let version = sent.version;
                    match req.error_detail {
                        Some(err) => {
                            warn!(version, term = sent.term, code = err.code, detail = err.message, "route table NACKed");
                            app.metrics.route_nacks.inc();
                            app.publisher.nack(node_id, version, &err.message, now);
                            app.event(node_id, "route_nack", &format!("v{version}: {}", err.message));
                            // What the agent holds now is what it says (its
                            // last good table), content unknown here.
                            holds = Held { key: (req.term, req.version_info), table: None };
                            parked = Some(sent.key());
                        }
                        None => {
                            app.metrics.route_acks.inc();
                            if req.version_info == version {
                                app.publisher.ack(node_id, version, now);
                                holds = Held { key: sent.key(), table: Some(sent) };
                            } else {
                                holds = Held { key: (req.term, req.version_info), table: None };
                            }
                        }
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    debug!(%status, "route stream error");
                    return;
                }
            }
        }
    }
}
