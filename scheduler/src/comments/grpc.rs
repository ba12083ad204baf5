//! The `vantage.v1.CommentControl` service: one server stream per agent
//! with the cluster's comment settings, sent at once and again on every
//! change. Authenticated like `RouteDiscovery` (node credential or mTLS).

use crate::app::App;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span, warn};
use vantage_proto::v1::comment_control_server::CommentControl;
use vantage_proto::v1::{CommentSettings, CommentSettingsRequest};
use vantage_shared::tls::peer_node_id;

#[derive(Debug, Clone)]
pub struct CommentService {
    app: Arc<App>,
}

impl CommentService {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

type SettingsStream = Pin<Box<dyn Stream<Item = Result<CommentSettings, Status>> + Send>>;

#[tonic::async_trait]
impl CommentControl for CommentService {
    type WatchSettingsStream = SettingsStream;

    async fn watch_settings(
        &self,
        request: Request<CommentSettingsRequest>,
    ) -> Result<Response<SettingsStream>, Status> {
        let peer_cn = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(peer_node_id));
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(|s| s.trim().to_owned());
        let req = request.into_inner();
        if let Err(refusal) =
            self.app
                .auth
                .check_subscriber(&req.node_id, bearer.as_deref(), peer_cn.as_deref())
        {
            warn!(node_id = %req.node_id, reason = ?refusal.reason, "comment settings subscription refused: {refusal}");
            return Err(match refusal.reason {
                vantage_proto::v1::RejectReason::IdentityMismatch => {
                    Status::permission_denied(refusal.detail)
                }
                _ => Status::unauthenticated(refusal.detail),
            });
        }
        let comments = self.app.comments.clone();
        let mut watch = comments.subscribe();
        let (tx, rx) = mpsc::channel(2);
        let shutdown = self.app.shutdown.clone();
        let span = info_span!("comment_settings", node_id = %req.node_id);
        tokio::spawn(
            async move {
                comments.metrics.subscribers.inc();
                loop {
                    let s = (*watch.borrow_and_update().clone()).clone();
                    debug!(version = s.version, "sending comment settings");
                    comments.metrics.settings_pushed.inc();
                    if tx.send(Ok(s)).await.is_err() {
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = tx.send(Err(Status::unavailable("scheduler shutting down"))).await;
                            break;
                        }
                        _ = tx.closed() => break,
                        r = watch.changed() => if r.is_err() { break },
                    }
                }
                comments.metrics.subscribers.dec();
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
