//! `GET /{app}/{stream}/comments`: the upgrade to a live comments
//! WebSocket, handed to [`crate::comments`].

use super::{Resp, error, json};
use crate::comments::{Comments, WeakComments};
use crate::relay::Relay;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use vantage_shared::stream::StreamKey;

use super::super::viewer::MediaBody;

/// `/{app}/{stream}/comments` → key.
pub(super) fn comments_path(path: &str) -> Option<Result<StreamKey, String>> {
    let rest = path.strip_prefix('/')?.strip_suffix("/comments")?;
    Some(StreamKey::parse(rest).map_err(|e| e.to_string()))
}

impl Relay {
    /// Serves `/{app}/{stream}/comments` with `comments` from now on
    /// (once; later calls are ignored).
    pub fn set_comments(&self, comments: WeakComments) {
        let _ = self.inner.comments.set(comments);
    }

    fn comments(&self) -> Option<Comments> {
        self.inner.comments.get().and_then(WeakComments::upgrade)
    }

    pub(super) async fn comments_upgrade(
        &self,
        mut req: Request<Incoming>,
        key: StreamKey,
        peer: SocketAddr,
    ) -> Resp {
        if req.method() != Method::GET {
            return super::method_not_allowed("GET, OPTIONS");
        }
        let Some(comments) = self.comments() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "live comments are not running on this agent",
            );
        };
        match comments
            .accept(&mut req, &key, peer, self.is_draining())
            .await
        {
            Ok(accept) => {
                let mut r = Response::new(MediaBody::empty());
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = r.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                if let Ok(v) = HeaderValue::from_str(&accept) {
                    h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
                }
                r
            }
            Err(refusal) if refusal.status == StatusCode::UPGRADE_REQUIRED => {
                let mut r = json(
                    refusal.status,
                    &serde_json::json!({ "error": refusal.message }),
                );
                r.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                r
            }
            Err(refusal) => error(refusal.status, refusal.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            comments_path("/live/x/comments").unwrap().unwrap().as_str(),
            "live/x"
        );
        assert!(comments_path("/live/x.flv").is_none());
        assert!(comments_path("/a/b/c/comments").unwrap().is_err());
    }
}
