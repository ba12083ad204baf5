//! Comment connections: admitting an upgrade request ([`Comments::accept`])
//! and the task of one connection ([`run`]), which reads the client's
//! frames through tungstenite's protocol state machine (control frames,
//! fragmentation, UTF-8, size limits) and acts on its messages: `auth`,
//! `post` (checked here: token, size, the poster's rate, the blocklist;
//! then numbered by the room's sequencer), `ping`, and a link's `fwd`.
//!
//! The task holds no buffer while idle: it parks on "socket readable",
//! "socket writable" (only while bytes wait in its outbox) and its wake-up.
//! Idle and slow connections are found by the service's housekeeping.

use super::forward::{Origin, Post};
use super::frame::{self, Format, In, Out, Reason};
use super::limits::{Bucket, Flood};
use super::member::{Kind, Member};
use super::room::{Resume, Room};
use super::{Comments, NoRoom, Shared, ws};
use bytes::Bytes;
use hyper::StatusCode;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::{
    Message, Role as WsRole, WebSocketConfig, WebSocketContext,
};
use tracing::debug;
use vantage_shared::comment_token::{self, Claims, LEEWAY_S};
use vantage_shared::stream::StreamKey;

/// tungstenite's read buffer per connection (it grows for a larger frame
/// up to the message limit, never beyond).
const READ_BUFFER: usize = 512;
/// Messages handled per wake-up before the task yields to others.
const READ_BUDGET: usize = 64;
/// After a close is decided, queued bytes get this long to leave.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Why an upgrade was refused: the HTTP answer.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// What the query of an upgrade asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    since: Option<u64>,
    epoch: Option<String>,
    format: Option<Format>,
    backlog: usize,
    link: Option<String>,
}

fn parse_query(q: Option<&str>) -> Result<Query, String> {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let plain = |v: &str| {
            if v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                Ok(v.to_owned())
            } else {
                Err(format!("{k}={v:?}: only [A-Za-z0-9._-], at most 128"))
            }
        };
        match k {
            "since" => {
                out.since = Some(
                    v.parse()
                        .map_err(|_| format!("since={v:?} is not a number"))?,
                )
            }
            "epoch" => out.epoch = Some(plain(v)?),
            "format" => {
                out.format =
                    Some(Format::parse(v).ok_or_else(|| format!("format={v:?}: json or binary"))?)
            }
            "backlog" => {
                out.backlog = v
                    .parse()
                    .map_err(|_| format!("backlog={v:?} is not a number"))?
            }
            "link" => out.link = Some(plain(v)?),
            // Unknown parameters (cache busters, CMCD, lat/lon) are ignored.
            _ => {}
        }
    }
    Ok(out)
}

/// The bearer token of a request.
fn bearer(h: &hyper::HeaderMap) -> Option<&str> {
    h.get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// A poster's verified token.
struct Poster {
    claims: Claims,
    user: Arc<str>,
}

/// Per-connection state of the reading side.
struct Client {
    poster: Option<Poster>,
    bucket: Bucket,
    flood: Flood,
}

/// Why a connection's task ends.
enum End {
    /// The peer closed or went away.
    Peer,
    /// We decided to close (the reason is counted already).
    Closing,
    Io,
}

impl Comments {
    /// Admits an upgrade request to `/{key}/comments`: checks the request,
    /// the limits and the room, then hands the connection over to its task
    /// once hyper has sent `101`. Returns `Sec-WebSocket-Accept`.
    pub async fn accept(
        &self,
        req: &mut hyper::Request<Incoming>,
        key: &StreamKey,
        peer: SocketAddr,
        draining: bool,
    ) -> Result<String, Refusal> {
        let svc = self.shared();
        let m = &svc.metrics;
        let accept = ws::accept_key(req.headers()).map_err(|e| {
            m.refuse("not_websocket");
            refuse(StatusCode::UPGRADE_REQUIRED, e.0)
        })?;
        let q = parse_query(req.uri().query()).map_err(|e| {
            m.refuse("bad_request");
            refuse(StatusCode::BAD_REQUEST, e)
        })?;
        if draining {
            m.refuse("draining");
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} is draining; reconnect via the scheduler", svc.node_id),
            ));
        }
        if svc.connections.load(Ordering::Relaxed) >= svc.cfg.max_connections {
            m.refuse("max_connections");
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} holds {} comment connections already",
                    svc.node_id, svc.cfg.max_connections
                ),
            ));
        }
        let kind = match &q.link {
            None => Kind::Viewer,
            Some(node) => {
                let claims = bearer(req.headers())
                    .ok_or_else(|| "no bearer token".to_owned())
                    .and_then(|t| {
                        comment_token::verify(
                            &svc.settings().keys,
                            t,
                            vantage_shared::clock::now_ms() / 1000,
                            true,
                        )
                        .map_err(|e| e.to_string())
                    });
                match claims {
                    Ok(c) if &c.sub == node => Kind::Link { node: node.clone() },
                    Ok(c) => {
                        m.refuse("link_auth");
                        return Err(refuse(
                            StatusCode::FORBIDDEN,
                            format!("link token is for {:?}, not {node:?}", c.sub),
                        ));
                    }
                    Err(e) => {
                        m.refuse("link_auth");
                        return Err(refuse(StatusCode::UNAUTHORIZED, format!("link token: {e}")));
                    }
                }
            }
        };
        let room = self.room(key).await.map_err(|e| {
            m.refuse("no_room");
            match e {
                NoRoom::NoStream => refuse(
                    StatusCode::NOT_FOUND,
                    format!("no live stream {key} here or upstream: no comment room"),
                ),
                NoRoom::StaticOrigin => refuse(
                    StatusCode::NOT_FOUND,
                    format!("{key} comes from a static origin outside the cluster, which holds no comment room"),
                ),
            }
        })?;
        if let Kind::Link { node } = &kind
            && room
                .state()
                .upstream
                .as_ref()
                .is_some_and(|u| &u.node == node)
        {
            m.refuse("loop");
            return Err(refuse(
                StatusCode::LOOP_DETECTED,
                format!(
                    "{node} is {}'s upstream for {key}: a link back would loop",
                    svc.node_id
                ),
            ));
        }
        let format = q.format.unwrap_or(Format::Json);
        let backlog = if matches!(kind, Kind::Link { .. }) {
            svc.cfg.buffer
        } else {
            q.backlog
        };
        let resume = match q.since {
            Some(seq) => Resume::Since {
                seq,
                epoch: q.epoch,
                backlog,
            },
            None => Resume::Fresh { backlog },
        };
        let format = if matches!(kind, Kind::Link { .. }) {
            Format::Json
        } else {
            format
        };
        let upgrade = hyper::upgrade::on(req);
        let this = self.clone();
        let timeout = svc.cfg.handshake_timeout;
        svc.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let svc = this.shared().clone();
            let upgraded = match tokio::time::timeout(timeout, upgrade).await {
                Ok(Ok(u)) => u,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "comment upgrade failed");
                    svc.metrics.refuse("upgrade_failed");
                    svc.connections.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    svc.metrics.refuse("handshake_timeout");
                    svc.connections.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            };
            let parts = match upgraded
                .downcast::<hyper_util::rt::TokioIo<crate::relay::conn::MeteredIo>>()
            {
                Ok(p) => p,
                Err(_) => {
                    svc.metrics.refuse("upgrade_failed");
                    svc.connections.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            };
            let sock = parts.io.into_inner().into_inner();
            run(svc, room, sock, parts.read_buf, format, kind, resume).await;
        });
        Ok(accept)
    }
}

/// Runs one connection until it ends.
async fn run(
    svc: Arc<Shared>,
    room: Arc<Room>,
    sock: TcpStream,
    leftover: Bytes,
    format: Format,
    kind: Kind,
    resume: Resume,
) {
    let kind_label = match kind {
        Kind::Viewer => "viewer",
        Kind::Link { .. } => "link",
    };
    let labels = super::metrics::KindLabel { kind: kind_label };
    svc.metrics.accepted.get_or_create(&labels).inc();
    svc.metrics.connections.get_or_create(&labels).inc();
    let now = svc.now_ms();
    let member = Arc::new(Member::new(
        svc.next_member_id(),
        sock,
        format,
        kind,
        svc.cfg.queue_bytes,
        now,
    ));
    let max = svc.cfg.max_message_bytes();
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(max * 4)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ctx = if leftover.is_empty() {
        WebSocketContext::new(WsRole::Server, Some(config))
    } else {
        WebSocketContext::from_partially_read(leftover.to_vec(), WsRole::Server, Some(config))
    };
    // The leftover is a slice of hyper's request read buffer (8 KiB): kept,
    // it would hold that buffer for the connection's whole life.
    drop(leftover);
    room.join(member.clone(), &resume);
    let mut client = Client {
        poster: None,
        bucket: Bucket::new(svc.cfg.client_rate, now),
        flood: Flood::new(
            svc.cfg.flood_refusals,
            u64::try_from(svc.cfg.flood_window.as_millis()).unwrap_or(u64::MAX),
            now,
        ),
    };
    let mut scratch = Vec::new();
    let end = loop {
        let want_write = member.pending();
        tokio::select! {
            biased;
            r = member.sock.readable() => {
                if r.is_err() {
                    break End::Io;
                }
                if let Err(end) = read_some(&svc, &room, &member, &mut ctx, &mut client, &mut scratch) {
                    break end;
                }
            }
            r = member.sock.writable(), if want_write => {
                if r.is_err() || member.flush(svc.now_ms(), &svc.io).is_err() {
                    break End::Io;
                }
            }
            () = member.notify.notified() => {}
        }
        if member.closing().is_some() {
            break End::Closing;
        }
    };
    match end {
        End::Peer => svc.metrics.close("peer"),
        End::Io => svc.metrics.close("io"),
        End::Closing if member.closing() != Some(ws::close::SLOW) => {
            // A lingering close: the close frame (and what was queued before
            // it) leaves, the write side is shut, and what the client still
            // sends is read and dropped for a moment, so that its data does
            // not meet a reset that would destroy the close frame on its way.
            room.leave(&member);
            let linger = async {
                while member.pending() {
                    if member.sock.writable().await.is_err()
                        || member.flush(svc.now_ms(), &svc.io).is_err()
                    {
                        return;
                    }
                }
                let _ = socket2::SockRef::from(&member.sock).shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 512];
                loop {
                    if member.sock.readable().await.is_err() {
                        return;
                    }
                    match member.sock.try_read(&mut sink) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, linger).await;
        }
        End::Closing => {}
    }
    room.leave(&member);
    let _ = socket2::SockRef::from(&member.sock).shutdown(std::net::Shutdown::Both);
    svc.metrics.connections.get_or_create(&labels).dec();
    svc.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Reads and handles what has arrived.
fn read_some(
    svc: &Arc<Shared>,
    room: &Arc<Room>,
    member: &Arc<Member>,
    ctx: &mut WebSocketContext,
    client: &mut Client,
    scratch: &mut Vec<u8>,
) -> Result<(), End> {
    let m = &svc.metrics;
    for _ in 0..READ_BUDGET {
        let mut io = ws::Io {
            sock: &member.sock,
            out: scratch,
            read: 0,
        };
        let r = ctx.read(&mut io);
        let now = svc.now_ms();
        if !scratch.is_empty() {
            member.send(Bytes::from(std::mem::take(scratch)), now, &svc.io);
        }
        let close = |code, reason: &'static str, text: &str| {
            m.close(reason);
            member.request_close(code, text, true, &svc.io);
            Err(End::Closing)
        };
        match r {
            Ok(msg) => {
                member.received(now);
                handle(svc, room, member, client, msg, now)?;
            }
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return Err(End::Peer),
            Err(WsError::Capacity(_) | WsError::WriteBufferFull(_)) => {
                return close(ws::close::TOO_BIG, "oversized", "message too big");
            }
            Err(WsError::Utf8(_)) => {
                return close(ws::close::INVALID_DATA, "invalid_utf8", "text is not UTF-8");
            }
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                return Err(End::Peer);
            }
            Err(WsError::Protocol(p)) => {
                return close(ws::close::PROTOCOL, "protocol", &p.to_string());
            }
            Err(_) => return Err(End::Io),
        }
    }
    Ok(())
}

fn send_out(svc: &Shared, member: &Member, out: &Out<'_>, now: u64) {
    let f = ws::data_frame(member.format, &out.encode(member.format));
    member.send(f, now, &svc.io);
}

/// Refuses a post (or an auth) with `reason`; a poster refused too often
/// is flooding and is disconnected.
fn refuse_post(
    svc: &Shared,
    member: &Member,
    client: &mut Client,
    id: &str,
    reason: Reason,
    retry_ms: u32,
    now: u64,
) -> Result<(), End> {
    svc.metrics.reject(reason);
    send_out(
        svc,
        member,
        &Out::Nack {
            id,
            reason,
            retry_ms,
        },
        now,
    );
    if client.flood.refused(now) {
        svc.metrics.close("flood");
        member.request_close(ws::close::POLICY, "flooding", true, &svc.io);
        return Err(End::Closing);
    }
    Ok(())
}

fn handle(
    svc: &Arc<Shared>,
    room: &Arc<Room>,
    member: &Arc<Member>,
    client: &mut Client,
    msg: Message,
    now: u64,
) -> Result<(), End> {
    let parsed = match &msg {
        Message::Text(t) => frame::parse_text(t.as_str()),
        Message::Binary(b) => frame::parse_binary(b),
        Message::Close(_) => return Err(End::Peer),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
    };
    let input = match parsed {
        Ok(i) => i,
        Err(e) => {
            debug!(error = %e, "comment client sent an invalid message");
            return refuse_post(svc, member, client, "", Reason::Invalid, 0, now);
        }
    };
    match input {
        In::Ping => {
            send_out(svc, member, &Out::Pong, now);
            Ok(())
        }
        In::Auth { token } => {
            let now_s = vantage_shared::clock::now_ms() / 1000;
            let verified = comment_token::verify(&svc.settings().keys, &token, now_s, false)
                .and_then(|c| {
                    if c.allows_room(room.key.as_str()) {
                        Ok(c)
                    } else {
                        Err(comment_token::TokenError::WrongRoom)
                    }
                });
            match verified {
                Ok(claims) => {
                    send_out(
                        svc,
                        member,
                        &Out::AuthOk {
                            sub: &claims.sub,
                            exp: claims.exp,
                        },
                        now,
                    );
                    let user = Arc::from(claims.display());
                    client.poster = Some(Poster { claims, user });
                    Ok(())
                }
                Err(e) => {
                    let reason = Reason::from_token(&e);
                    svc.metrics.reject(reason);
                    send_out(svc, member, &Out::AuthErr(reason), now);
                    if client.flood.refused(now) {
                        svc.metrics.close("flood");
                        member.request_close(ws::close::POLICY, "flooding", true, &svc.io);
                        return Err(End::Closing);
                    }
                    Ok(())
                }
            }
        }
        In::Post { id, text } => post(svc, room, member, client, id, text, now),
        In::Forward(f) => {
            if !member.is_link() {
                return refuse_post(svc, member, client, "", Reason::Invalid, 0, now);
            }
            if f.u.is_empty() || f.u.chars().count() > comment_token::MAX_SUB_CHARS {
                send_out(
                    svc,
                    member,
                    &Out::FwdNack {
                        id: &f.id,
                        reason: Reason::Invalid,
                        retry_ms: 0,
                    },
                    now,
                );
                return Ok(());
            }
            room.submit(Post {
                origin: Origin::Link {
                    member: Arc::downgrade(member),
                    id: f.id.clone(),
                },
                id: f.id,
                user: Arc::from(f.u),
                text: Arc::from(f.x),
            });
            Ok(())
        }
    }
}

/// The checks of a post at the poster's edge, then the room.
fn post(
    svc: &Arc<Shared>,
    room: &Arc<Room>,
    member: &Arc<Member>,
    client: &mut Client,
    id: Option<String>,
    text: String,
    now: u64,
) -> Result<(), End> {
    let cid = id.as_deref().unwrap_or("");
    let now_s = vantage_shared::clock::now_ms() / 1000;
    let refusal = match &client.poster {
        None => Some((Reason::Unauthenticated, 0)),
        Some(p) if p.claims.exp + LEEWAY_S < now_s => Some((Reason::ExpiredToken, 0)),
        Some(_) if text.trim().is_empty() => Some((Reason::Empty, 0)),
        Some(_) if text.len() > svc.cfg.max_text_bytes => Some((Reason::TooLong, 0)),
        Some(_) => match client.bucket.take(now) {
            Err(wait) => Some((Reason::RateClient, wait)),
            Ok(()) if svc.settings().blocklist.blocks(&text) => Some((Reason::Blocked, 0)),
            Ok(()) => None,
        },
    };
    if let Some((reason, retry)) = refusal {
        return refuse_post(svc, member, client, cid, reason, retry, now);
    }
    let Some(poster) = &client.poster else {
        return Ok(());
    };
    svc.metrics.posts.inc();
    svc.posts.fetch_add(1, Ordering::Relaxed);
    let global = match &id {
        Some(cid) => format!("u/{}/{cid}", poster.claims.sub),
        None => svc.post_id(),
    };
    room.submit(Post {
        id: global,
        user: poster.user.clone(),
        text: Arc::from(text),
        origin: Origin::Local {
            member: Arc::downgrade(member),
            client_id: id,
        },
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let q = parse_query(Some("since=12&epoch=a-1&format=binary&backlog=5&x=%20")).unwrap();
        assert_eq!(
            q,
            Query {
                since: Some(12),
                epoch: Some("a-1".into()),
                format: Some(Format::Binary),
                backlog: 5,
                link: None,
            }
        );
        assert!(parse_query(Some("since=-1")).is_err());
        assert!(parse_query(Some("epoch=a%20b")).is_err());
        assert!(parse_query(Some("format=xml")).is_err());
        assert_eq!(parse_query(None).unwrap(), Query::default());
    }
}
