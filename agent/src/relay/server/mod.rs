//! The media HTTP server (HTTP/1.1, hyper).
//!
//! | request | answer |
//! |---|---|
//! | `GET /{app}/{stream}.flv` | 200 `video/x-flv` stream, `X-Vantage-Session` naming the viewer session; 404 unknown stream (after the upstreams said no); 502 no upstream reachable; 504 none answered in time; 508 loop (`X-Vantage-Via` holds this node) |
//! | `POST`/`PUT /{app}/{stream}.flv` | publish; 409 if already published here; 400 malformed FLV (after reading it); 200 when the publisher ends |
//! | `GET /{app}/{stream}/index.m3u8`, `init{v}.mp4`, `seg{n}.m4s`, `seg{n}.{p}.m4s` | LL-HLS ([`crate::hls`]): playlist with blocking reload, init segment, segments, parts |
//! | `GET /{app}/{stream}/comments` | live comments: upgrade to WebSocket ([`crate::comments`]); 426 without the upgrade headers, 404 no live stream, 503 draining or full |
//! | `GET /watch/{app}/{stream}[?via=hls\|flv]` | the watch page (hls.js or mpegts.js, vendored, served from `/watch/assets/`) |
//! | `POST /v1/cmcd` | CMCD beacon (JSON object/array, or CMCD text) of a session served here ([`crate::relay::sessions`]): 204; 403/409 not counted (JSON `reason`); 429 rate limited |
//! | `GET /healthz` | 200; 503 `{"status":"draining"}` while draining |
//! | `OPTIONS *` | CORS preflight (players sending `CMCD-*` headers) |
//!
//! While the agent drains ([`crate::drain`]), new play and publish requests
//! get 503 with `Retry-After`; viewers already playing continue.
//!
//! Errors are JSON `{"error": "..."}`. Stream keys are validated with
//! [`StreamKey`]. Play requests may carry `lat`/`lon` (client group) and
//! CMCD in the `CMCD=` query parameter or `CMCD-*` headers; it counts only
//! when the request is served ([`crate::relay::sessions`]).

mod comments;
mod hls;
mod publish;
mod viewer_cmcd;
mod watch;

pub use viewer_cmcd::SessionGuard;

use super::conn::{ConnShared, MeteredIo};
use super::hub::Wire;
use super::ingest::Session;
use super::qoe::{self, Sample, UNKNOWN_GROUP};
use super::sessions::Kind;
use super::source::{self, End, Stop, Timeouts};
use super::stream::lock;
use super::viewer::{MediaBody, ViewerBody, ViewerSlot};
use super::{ORIGIN_HEADER, Relay, VIA_HEADER};
use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};
use vantage_shared::cmcd::{self, Cmcd};
use vantage_shared::group::GroupKey;
use vantage_shared::stream::StreamKey;

/// Request heads must arrive within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After a refused publish, the rest of the body is read (and dropped) for
/// at most this long / this many bytes so the client can read the answer.
const DRAIN_TIME: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 1 << 20;
/// `Retry-After` (seconds) of requests refused while draining.
const DRAIN_RETRY_AFTER: &str = "5";
/// hyper's smallest connection buffer: keeps at most ~8 KiB plus one batch
/// queued in user space per viewer.
const CONN_BUF: usize = 8192;

type Resp = Response<MediaBody>;

/// What a request handler knows of its connection.
#[derive(Clone)]
struct Conn {
    /// Cancelling it drops the connection.
    token: CancellationToken,
    shared: Arc<ConnShared>,
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = Response::new(MediaBody::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    json(status, &serde_json::json!({ "error": msg.to_string() }))
}

/// `/{app}/{stream}.flv` → key.
fn stream_key(path: &str) -> Option<Result<StreamKey, String>> {
    let rest = path.strip_prefix('/')?.strip_suffix(".flv")?;
    Some(StreamKey::parse(rest).map_err(|e| e.to_string()))
}

/// The origin node a downstream relay named (`X-Vantage-Origin`; ignored
/// unless it is one well-formed node id).
fn origin_hint(h: &HeaderMap) -> Option<String> {
    let mut values = h.get_all(ORIGIN_HEADER).iter();
    let v = values.next()?.to_str().ok()?.trim();
    (values.next().is_none() && vantage_shared::auth::valid_node_id(v)).then(|| v.to_owned())
}

/// Node ids of the `X-Vantage-Via` header(s).
fn via_list(h: &HeaderMap) -> Vec<String> {
    h.get_all(VIA_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Counts a connection among those whose first request head has not
/// arrived, until it has or the connection ends.
struct Unfinished {
    count: Arc<AtomicUsize>,
    done: AtomicBool,
}

impl Unfinished {
    fn request_arrived(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.request_arrived();
    }
}

/// Accepts media connections until `cancel`.
pub async fn accept_loop(
    relay: Relay,
    listener: TcpListener,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let unfinished = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                warn!(error = %e, "media accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        if unfinished.load(Ordering::Relaxed) >= relay.config().max_pending {
            relay.metrics().pending_refused.inc();
            continue; // dropping `sock` closes it
        }
        unfinished.fetch_add(1, Ordering::Relaxed);
        let pending = Arc::new(Unfinished {
            count: unfinished.clone(),
            done: AtomicBool::new(false),
        });
        let relay = relay.clone();
        let token = cancel.child_token();
        tokio::spawn(async move { relay.serve_conn(sock, peer, token, pending).await });
    }
}

impl Relay {
    /// Refuse new viewers and publishers from when `drain` starts (once;
    /// later calls are ignored).
    pub fn set_drain(&self, drain: crate::drain::Drain) {
        let _ = self.inner.drain.set(drain);
    }

    /// Whether the agent is draining.
    pub fn is_draining(&self) -> bool {
        self.inner
            .drain
            .get()
            .is_some_and(crate::drain::Drain::is_draining)
    }

    /// Viewers connected now (downstream agents' pulls included).
    pub fn viewer_count(&self) -> i64 {
        self.metrics().viewers.get()
    }

    async fn serve_conn(
        self,
        sock: TcpStream,
        peer: SocketAddr,
        token: CancellationToken,
        pending: Arc<Unfinished>,
    ) {
        let _ = sock.set_nodelay(true);
        let _ = socket2::SockRef::from(&sock).set_tcp_notsent_lowat(self.config().notsent_lowat);
        let shared = Arc::new(ConnShared::default());
        let io = MeteredIo::new(sock, shared.clone(), self.viewer_stats());
        let relay = self.clone();
        let conn = Conn {
            token: token.clone(),
            shared,
        };
        let svc = service_fn(move |req| {
            pending.request_arrived();
            let relay = relay.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(relay.handle(req, peer, conn).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(CONN_BUF);
        let conn = builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        tokio::select! {
            r = conn => if let Err(e) = r {
                if e.is_timeout() {
                    self.metrics().header_timeouts.inc();
                }
                debug!(%peer, error = %e, "media connection ended");
            },
            _ = token.cancelled() => {}
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, conn: Conn) -> Resp {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let (kind, resp) = if method == Method::OPTIONS {
            ("other", preflight())
        } else if path == "/healthz" && method == Method::GET {
            let resp = if self.is_draining() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "draining"}),
                )
            } else {
                json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            };
            ("other", resp)
        } else if path == "/v1/cmcd" {
            if method == Method::POST {
                ("cmcd", self.beacon(req, peer.ip()).await)
            } else {
                ("cmcd", method_not_allowed("POST, OPTIONS"))
            }
        } else if path.starts_with("/watch/") {
            let resp = if method == Method::GET {
                self.watch(&path, req.uri().query(), peer.ip())
            } else {
                method_not_allowed("GET, OPTIONS")
            };
            ("other", resp)
        } else if let Some(key) = comments::comments_path(&path) {
            let resp = match key {
                Err(e) => error(StatusCode::BAD_REQUEST, e),
                Ok(key) => self.comments_upgrade(req, key, peer).await,
            };
            ("comments", resp)
        } else if let Some((key, file)) = hls::hls_path(&path) {
            let resp = match (key, file) {
                (Err(e), _) => error(StatusCode::BAD_REQUEST, e),
                (Ok(key), None) => error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no such HLS file {path:?} of {key}: index.m3u8, init{{v}}.mp4, seg{{n}}.m4s, seg{{n}}.{{part}}.m4s"
                    ),
                ),
                (Ok(key), Some(file)) if method == Method::GET => {
                    self.hls(req, key, file, peer.ip()).await
                }
                _ => method_not_allowed("GET, OPTIONS"),
            };
            ("hls", resp)
        } else if let Some(key) = stream_key(&path) {
            match key {
                Err(e) => ("other", error(StatusCode::BAD_REQUEST, e)),
                Ok(key)
                    if self.is_draining()
                        && matches!(method, Method::GET | Method::POST | Method::PUT) =>
                {
                    let kind = if method == Method::GET {
                        "play"
                    } else {
                        "publish"
                    };
                    (kind, draining(self.node_id(), &key))
                }
                Ok(key) => match method {
                    Method::GET => ("play", self.play(req, key, conn, peer.ip()).await),
                    Method::POST | Method::PUT => ("publish", self.publish(req, key, peer).await),
                    _ => ("other", method_not_allowed("GET, POST, PUT, OPTIONS")),
                },
            }
        } else {
            (
                "other",
                error(
                    StatusCode::NOT_FOUND,
                    format!("no such resource {path:?}: streams are /{{app}}/{{stream}}.flv"),
                ),
            )
        };
        self.metrics().request(kind, resp.status().as_u16());
        resp
    }

    #[instrument(name = "play", skip_all, fields(stream = %key))]
    async fn play(
        &self,
        req: Request<Incoming>,
        key: StreamKey,
        conn: Conn,
        peer: std::net::IpAddr,
    ) -> Resp {
        let mut via = via_list(req.headers());
        if via.iter().any(|v| v == self.node_id()) || via.len() >= self.config().max_hops {
            self.metrics().loops_refused.inc();
            return error(
                StatusCode::LOOP_DETECTED,
                format!(
                    "pull of {key} would loop (via {}); refusing at {}",
                    via.join(","),
                    self.node_id()
                ),
            );
        }
        via.push(self.node_id().to_owned());
        let via = via.join(",");
        let hint = origin_hint(req.headers());
        let cmcd = self.request_cmcd(&req);
        let located: Option<Arc<str>> = qoe::group_from_query(req.uri().query()).map(Arc::from);
        drop(req);
        // The viewer's group: its location, else that of the session it
        // continues (a watch page's), else unknown.
        let group: Arc<str> = located
            .clone()
            .or_else(|| self.session_group(cmcd.as_ref().and_then(|c| c.sid()), peer))
            .unwrap_or_else(|| Arc::from(UNKNOWN_GROUP));

        let attached = self
            .attach_viewer(&key, &via, hint.as_deref(), |stream| {
                Arc::new(ViewerSlot::new(
                    self.next_viewer_id(),
                    group.clone(),
                    conn.token.clone(),
                    stream.clock_ms(),
                ))
            })
            .await;
        let (stream, slot) = match attached {
            Ok(a) => a,
            Err(r) => {
                self.unserved_cmcd(cmcd.as_ref());
                let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::NOT_FOUND);
                return error(status, r.message(&key, self.config().play_wait));
            }
        };
        // Served: the connection is a viewer session; its CMCD counts.
        let session = self.open_session(peer, located, cmcd.as_ref(), Kind::Flv);
        if let Some(s) = &session {
            let _ = slot.session.set(self.session_guard(s.id.clone()));
        }
        let group_key = group.parse().unwrap_or_else(|_| GroupKey::unknown());
        let bl = cmcd.as_ref().and_then(|c| c.cmcd.bl).map(|b| b as f64);
        conn.shared.register(group_key, bl);
        let body = ViewerBody::new(
            stream,
            slot,
            conn.shared.clone(),
            self.config().policy(),
            Wire::Flv,
        );
        let mut r = Response::new(MediaBody::Viewer(Box::new(body)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("video/x-flv"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        if let Ok(v) = HeaderValue::from_str(self.node_id()) {
            h.insert("x-vantage-node", v);
        }
        if let Some(s) = &session {
            viewer_cmcd::session_header(&mut r, &s.id);
        }
        r
    }
}

/// 503 for a request that would start a new viewer or publish while the
/// agent drains.
fn draining(node_id: &str, key: &StreamKey) -> Resp {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{node_id} is draining and accepts no new viewers or publishers of {key}; retry via the scheduler"
        ),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(DRAIN_RETRY_AFTER),
    );
    r
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn preflight() -> Resp {
    let mut r = Response::new(MediaBody::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "CMCD-Request, CMCD-Object, CMCD-Status, CMCD-Session, Content-Type",
        ),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// Reads a whole body of at most `max` bytes (5 s at most).
async fn read_limited(mut body: Incoming, max: usize) -> Result<Bytes, String> {
    let work = async {
        let mut buf = BytesMut::new();
        while let Some(frame) = source::next_data(&mut body).await {
            let Some(data) = frame.map_err(|e| format!("reading the body: {e}"))? else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(format!("body larger than {max} bytes"));
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err("body not received within 5 s".to_owned()))
}

/// Reads and drops what the client still sends, briefly.
async fn drain(body: &mut Incoming) {
    let work = async {
        let mut n = 0;
        while let Some(Ok(frame)) = source::next_data(body).await {
            n += frame.map_or(0, |d| d.len());
            if n > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, work).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_via() {
        assert!(stream_key("/live/x.flv").unwrap().is_ok());
        assert!(stream_key("/live/x y.flv").unwrap().is_err());
        assert!(stream_key("/a/b/c.flv").unwrap().is_err());
        assert!(stream_key("/live/x").is_none());
        let mut h = HeaderMap::new();
        h.append(VIA_HEADER, HeaderValue::from_static("a, b"));
        h.append(VIA_HEADER, HeaderValue::from_static("c"));
        assert_eq!(via_list(&h), ["a", "b", "c"]);
    }
}
