//! The `vantage.v1.RouteDiscovery` service: one bidirectional stream per
//! agent, xDS-style (see `proto/vantage/v1/routes.proto`).

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
use vantage_shared::tls::peer_node_id;

/// How long a new stream may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
        let peer_cn = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(peer_node_id));
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(|s| s.trim().to_owned());
        let remote = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
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
        // The first request's subscriptions replace what the node held
        // (before its first table is chosen, so that table lists them).
        super::interest::apply(
            &self.app,
            &node_id,
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
                info!(held = first.version_info, "route stream open");
                app.metrics.route_subscribers.inc();
                serve(&app, &node_id, first.version_info, inbound, tx).await;
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
                    if !req.node_id.is_empty() && req.node_id != node_id {
                        let _ = tx.send(Err(Status::permission_denied(
                            "node_id changed within a stream",
                        ))).await;
                        return;
                    }
                    super::interest::apply(app, node_id, &req.subscribe, &req.unsubscribe, false)
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
