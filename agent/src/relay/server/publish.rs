//! `POST`/`PUT /{app}/{stream}.flv`: a publisher feeding a stream on this
//! node, admitted by [`Relay::admit_publisher`] like every publisher.

use super::*;
use crate::relay::admit::Refused;
use crate::relay::authorize::{Credential, Denied};

impl Relay {
    #[instrument(name = "publish", skip_all, fields(stream = %key, %peer))]
    pub(super) async fn publish(
        &self,
        req: Request<Incoming>,
        key: StreamKey,
        peer: SocketAddr,
    ) -> Resp {
        let bearer = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cred = Credential::from_query(req.uri().query(), bearer, Some(peer));
        match self.authorize_publish(&key, &cred, "http-flv").await {
            Ok(()) => {}
            Err(d @ Denied::Unauthenticated(_)) => {
                return error(StatusCode::UNAUTHORIZED, d.message().to_owned());
            }
            Err(d @ Denied::Forbidden(_)) => {
                return error(StatusCode::FORBIDDEN, d.message().to_owned());
            }
        }
        let publishing = match self.admit_publisher(&key, "http-flv") {
            Ok(p) => p,
            Err(r @ (Refused::Conflict | Refused::NotOrigin { .. })) => {
                return error(StatusCode::CONFLICT, r.message(self.node_id(), &key));
            }
            Err(Refused::Draining) => return draining(self.node_id(), &key),
        };
        let (stream, generation) = (publishing.stream.clone(), publishing.generation);
        let cancel = publishing.cancel.clone();
        let mut body = req.into_body();
        let mut session = Session::new(self.config().max_tag_bytes);
        let timeouts = Timeouts {
            first: self.config().publish_timeout,
            stall: self.config().publish_timeout,
            coalesce: self.config().write_coalesce,
        };
        let stop = async {
            cancel.cancelled().await;
            Stop::Cancelled
        };
        // hyper drops this future when the publisher closes its connection
        // without waiting for the answer: `publishing` still ends the stream.
        let end = source::drive(&stream, generation, &mut session, &mut body, timeouts, stop).await;
        publishing.finish();
        let tags = session.tags;
        let (status, result, msg) = match end {
            End::Eof => match session.finish() {
                Ok(()) => (StatusCode::OK, "ended", "publish ended".to_owned()),
                Err(e) => (
                    StatusCode::OK,
                    "ended",
                    format!("publish ended inside a tag ({e})"),
                ),
            },
            End::Malformed(e) => {
                self.metrics().malformed(e.label());
                warn!(error = %e, "malformed FLV from publisher: publish refused");
                drain(&mut body).await;
                (
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("malformed FLV from publisher after {tags} tags: {e}"),
                )
            }
            End::Body(e) => (
                StatusCode::BAD_REQUEST,
                "error",
                format!("publish connection failed: {e}"),
            ),
            End::Stall(d) => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("no data from the publisher for {} ms", d.as_millis()),
            ),
            End::Stopped(_) | End::Replaced if let Some(origin) = self.origin_elsewhere(&key) => (
                StatusCode::CONFLICT,
                "conflict",
                Refused::NotOrigin { origin }.message(self.node_id(), &key),
            ),
            End::Stopped(_) | End::Replaced => (
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                "the relay is shutting down".to_owned(),
            ),
        };
        self.metrics().publish(result);
        info!(tags, result, "publish finished");
        if status == StatusCode::OK {
            json(status, &serde_json::json!({ "status": msg, "tags": tags }))
        } else {
            error(status, msg)
        }
    }
}
