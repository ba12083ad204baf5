//! The messages of the comment protocol (docs/protocol.md, "Live
//! comments"), in their two encodings: JSON text frames (browsers) and a
//! compact binary form (`?format=binary`). Pure: bytes in, values out.
//!
//! Client → server: `auth` (a poster token), `post`, `ping`; from a
//! downstream agent's link also `fwd` (a post forwarded on a poster's
//! behalf). Server → client: `welcome`, `c` (a batch of comments), `auth`,
//! `ack`/`nack` (the decision on a post, with a reason code), `pong`, `gap`,
//! `reset`; to links also `beat`, `fack`/`fnack`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use std::sync::Arc;

/// The encoding of a connection's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Binary,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "binary" | "bin" => Some(Format::Binary),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Binary => "binary",
        }
    }
}

/// Why a post was refused: a stable code (binary form), a label (JSON
/// form, metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Unauthenticated,
    BadToken,
    ExpiredToken,
    WrongRoom,
    TooLong,
    Empty,
    RateClient,
    RateRoom,
    Blocked,
    UpstreamUnavailable,
    Invalid,
    NoKey,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Unauthenticated,
        Reason::BadToken,
        Reason::ExpiredToken,
        Reason::WrongRoom,
        Reason::TooLong,
        Reason::Empty,
        Reason::RateClient,
        Reason::RateRoom,
        Reason::Blocked,
        Reason::UpstreamUnavailable,
        Reason::Invalid,
        Reason::NoKey,
    ];

    pub fn code(self) -> u8 {
        match self {
            Reason::Unauthenticated => 1,
            Reason::BadToken => 2,
            Reason::ExpiredToken => 3,
            Reason::WrongRoom => 4,
            Reason::TooLong => 5,
            Reason::Empty => 6,
            Reason::RateClient => 7,
            Reason::RateRoom => 8,
            Reason::Blocked => 9,
            Reason::UpstreamUnavailable => 10,
            Reason::Invalid => 11,
            Reason::NoKey => 12,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::BadToken => "bad_token",
            Reason::ExpiredToken => "expired_token",
            Reason::WrongRoom => "wrong_room",
            Reason::TooLong => "too_long",
            Reason::Empty => "empty",
            Reason::RateClient => "rate_client",
            Reason::RateRoom => "rate_room",
            Reason::Blocked => "blocked",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::Invalid => "invalid",
            Reason::NoKey => "no_key",
        }
    }

    pub fn from_label(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.label() == s)
    }

    /// The reason of a token refusal.
    pub fn from_token(e: &vantage_shared::comment_token::TokenError) -> Reason {
        match e.reason() {
            "no_key" => Reason::NoKey,
            "expired_token" => Reason::ExpiredToken,
            "wrong_room" => Reason::WrongRoom,
            _ => Reason::BadToken,
        }
    }
}

/// One comment as sequenced, with both encodings made once.
#[derive(Debug)]
pub struct Comment {
    pub seq: u64,
    /// Sequencer wall clock, unix milliseconds.
    pub ts_ms: i64,
    pub user: Arc<str>,
    pub text: Arc<str>,
    /// `{"s":..,"ts":..,"u":..,"x":..}`
    json: Bytes,
    /// seq u64, ts i64, user (u8 length), text (u16 length).
    bin: Bytes,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

impl Comment {
    pub fn new(seq: u64, ts_ms: i64, user: Arc<str>, text: Arc<str>) -> Comment {
        let json = Bytes::from(format!(
            r#"{{"s":{seq},"ts":{ts_ms},"u":{},"x":{}}}"#,
            json_str(&user),
            json_str(&text)
        ));
        let u = clip(&user, usize::from(u8::MAX));
        let x = clip(&text, usize::from(u16::MAX));
        let mut b = BytesMut::with_capacity(19 + u.len() + x.len());
        b.put_u64(seq);
        b.put_i64(ts_ms);
        b.put_u8(u.len() as u8);
        b.put_slice(u.as_bytes());
        b.put_u16(x.len() as u16);
        b.put_slice(x.as_bytes());
        Comment {
            seq,
            ts_ms,
            user,
            text,
            json,
            bin: b.freeze(),
        }
    }

    /// Bytes of the comment in a batch of `format`.
    pub fn encoded_len(&self, format: Format) -> usize {
        match format {
            Format::Json => self.json.len() + 1,
            Format::Binary => self.bin.len(),
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Binary message types (first byte).
pub mod op {
    pub const WELCOME: u8 = 0x01;
    pub const COMMENTS: u8 = 0x02;
    pub const ACK: u8 = 0x03;
    pub const NACK: u8 = 0x04;
    pub const PONG: u8 = 0x05;
    pub const GAP: u8 = 0x06;
    pub const RESET: u8 = 0x07;
    pub const AUTH_RESULT: u8 = 0x08;
    pub const AUTH: u8 = 0x81;
    pub const POST: u8 = 0x82;
    pub const PING: u8 = 0x83;
}

/// A batch of comments, in order.
pub fn batch(comments: &[Arc<Comment>], format: Format) -> Bytes {
    match format {
        Format::Json => {
            let len: usize = comments.iter().map(|c| c.json.len() + 1).sum();
            let mut b = BytesMut::with_capacity(len + 16);
            b.put_slice(br#"{"t":"c","c":["#);
            for (i, c) in comments.iter().enumerate() {
                if i > 0 {
                    b.put_u8(b',');
                }
                b.put_slice(&c.json);
            }
            b.put_slice(b"]}");
            b.freeze()
        }
        Format::Binary => {
            let len: usize = comments.iter().map(|c| c.bin.len()).sum();
            let mut b = BytesMut::with_capacity(len + 3);
            b.put_u8(op::COMMENTS);
            b.put_u16(u16::try_from(comments.len()).unwrap_or(u16::MAX));
            for c in comments.iter().take(usize::from(u16::MAX)) {
                b.put_slice(&c.bin);
            }
            b.freeze()
        }
    }
}

/// What the server sends besides comments.
#[derive(Debug, Clone, PartialEq)]
pub enum Out<'a> {
    Welcome {
        room: &'a str,
        epoch: &'a str,
        head: u64,
        heartbeat_ms: u32,
        idle_timeout_ms: u32,
        max_text_bytes: u32,
    },
    AuthOk {
        sub: &'a str,
        exp: i64,
    },
    AuthErr(Reason),
    Ack {
        id: &'a str,
        seq: u64,
    },
    Nack {
        id: &'a str,
        reason: Reason,
        retry_ms: u32,
    },
    Pong,
    /// Comments `from..=to` are no longer held and will not come.
    Gap {
        from: u64,
        to: u64,
    },
    /// The room's sequence restarted (a new sequencer): forget seen numbers.
    Reset {
        epoch: &'a str,
        head: u64,
    },
    /// Links only: the sequencer is reachable; `head` is its last number.
    Beat {
        head: u64,
    },
    /// Links only: the decision on a forwarded post.
    FwdAck {
        id: &'a str,
        seq: u64,
    },
    FwdNack {
        id: &'a str,
        reason: Reason,
        retry_ms: u32,
    },
}

fn put_short(b: &mut BytesMut, s: &str) {
    let s = clip(s, usize::from(u8::MAX));
    b.put_u8(s.len() as u8);
    b.put_slice(s.as_bytes());
}

impl Out<'_> {
    /// The payload in `format`. Link-only messages are always JSON.
    pub fn encode(&self, format: Format) -> Bytes {
        match format {
            Format::Json => Bytes::from(self.json()),
            Format::Binary => self.binary(),
        }
    }

    fn json(&self) -> String {
        match self {
            Out::Welcome {
                room,
                epoch,
                head,
                heartbeat_ms,
                idle_timeout_ms,
                max_text_bytes,
            } => format!(
                r#"{{"t":"welcome","room":{},"epoch":{},"head":{head},"heartbeat_ms":{heartbeat_ms},"idle_timeout_ms":{idle_timeout_ms},"max_text_bytes":{max_text_bytes}}}"#,
                json_str(room),
                json_str(epoch)
            ),
            Out::AuthOk { sub, exp } => {
                format!(
                    r#"{{"t":"auth","ok":true,"sub":{},"exp":{exp}}}"#,
                    json_str(sub)
                )
            }
            Out::AuthErr(r) => format!(r#"{{"t":"auth","ok":false,"r":"{}"}}"#, r.label()),
            Out::Ack { id, seq } => format!(r#"{{"t":"ack","id":{},"s":{seq}}}"#, json_str(id)),
            Out::Nack {
                id,
                reason,
                retry_ms,
            } => format!(
                r#"{{"t":"nack","id":{},"r":"{}","retry_ms":{retry_ms}}}"#,
                json_str(id),
                reason.label()
            ),
            Out::Pong => r#"{"t":"pong"}"#.to_owned(),
            Out::Gap { from, to } => format!(r#"{{"t":"gap","from":{from},"to":{to}}}"#),
            Out::Reset { epoch, head } => {
                format!(
                    r#"{{"t":"reset","epoch":{},"head":{head}}}"#,
                    json_str(epoch)
                )
            }
            Out::Beat { head } => format!(r#"{{"t":"beat","head":{head}}}"#),
            Out::FwdAck { id, seq } => {
                format!(r#"{{"t":"fack","id":{},"s":{seq}}}"#, json_str(id))
            }
            Out::FwdNack {
                id,
                reason,
                retry_ms,
            } => format!(
                r#"{{"t":"fnack","id":{},"r":"{}","retry_ms":{retry_ms}}}"#,
                json_str(id),
                reason.label()
            ),
        }
    }

    fn binary(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Out::Welcome {
                room,
                epoch,
                head,
                heartbeat_ms,
                idle_timeout_ms,
                max_text_bytes,
            } => {
                b.put_u8(op::WELCOME);
                b.put_u64(*head);
                b.put_u32(*heartbeat_ms);
                b.put_u32(*idle_timeout_ms);
                b.put_u32(*max_text_bytes);
                put_short(&mut b, epoch);
                put_short(&mut b, room);
            }
            Out::AuthOk { sub, exp } => {
                b.put_u8(op::AUTH_RESULT);
                b.put_u8(0);
                b.put_i64(*exp);
                put_short(&mut b, sub);
            }
            Out::AuthErr(r) => {
                b.put_u8(op::AUTH_RESULT);
                b.put_u8(r.code());
            }
            Out::Ack { id, seq } | Out::FwdAck { id, seq } => {
                b.put_u8(op::ACK);
                b.put_u64(*seq);
                put_short(&mut b, id);
            }
            Out::Nack {
                id,
                reason,
                retry_ms,
            }
            | Out::FwdNack {
                id,
                reason,
                retry_ms,
            } => {
                b.put_u8(op::NACK);
                b.put_u8(reason.code());
                b.put_u32(*retry_ms);
                put_short(&mut b, id);
            }
            Out::Pong | Out::Beat { .. } => b.put_u8(op::PONG),
            Out::Gap { from, to } => {
                b.put_u8(op::GAP);
                b.put_u64(*from);
                b.put_u64(*to);
            }
            Out::Reset { epoch, head } => {
                b.put_u8(op::RESET);
                b.put_u64(*head);
                put_short(&mut b, epoch);
            }
        }
        b.freeze()
    }
}

/// A message from a client (or a downstream agent's link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum In {
    Auth {
        token: String,
    },
    Post {
        /// The client's id of the post, echoed in the decision; also the
        /// key that drops a post sent twice (with the poster's `sub`).
        id: Option<String>,
        text: String,
    },
    Ping,
    /// Links only.
    Forward(Forward),
}

/// A post forwarded by a downstream agent on a poster's behalf.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Forward {
    /// Globally unique post id (dedupe key at the sequencer).
    pub id: String,
    /// The author as shown.
    pub u: String,
    /// The text (already checked at the poster's edge).
    pub x: String,
}

/// What is wrong with a client message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message: {0}")]
pub struct FrameError(pub String);

/// Longest client post id (bytes).
pub const MAX_ID_BYTES: usize = 64;

#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "lowercase", deny_unknown_fields)]
enum JsonIn {
    Auth {
        token: String,
    },
    Post {
        #[serde(default)]
        id: Option<String>,
        text: String,
    },
    Ping {
        #[serde(default)]
        #[allow(dead_code)]
        ts: Option<serde_json::Value>,
    },
    Fwd(Forward),
}

fn check_id(id: Option<String>) -> Result<Option<String>, FrameError> {
    match id {
        Some(i) if i.len() > MAX_ID_BYTES || i.chars().any(char::is_control) => Err(FrameError(
            format!("id must be at most {MAX_ID_BYTES} bytes without control characters"),
        )),
        other => Ok(other),
    }
}

/// Parses a JSON text frame.
pub fn parse_text(text: &str) -> Result<In, FrameError> {
    let m: JsonIn = serde_json::from_str(text).map_err(|e| FrameError(e.to_string()))?;
    Ok(match m {
        JsonIn::Auth { token } => In::Auth { token },
        JsonIn::Post { id, text } => In::Post {
            id: check_id(id)?,
            text,
        },
        JsonIn::Ping { .. } => In::Ping,
        JsonIn::Fwd(f) => {
            if f.id.len() > 200 {
                return Err(FrameError("fwd id longer than 200 bytes".into()));
            }
            In::Forward(f)
        }
    })
}

/// Parses a binary frame.
pub fn parse_binary(b: &[u8]) -> Result<In, FrameError> {
    let utf8 = |s: &[u8]| {
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| FrameError("text is not UTF-8".into()))
    };
    match b.split_first() {
        Some((&op::AUTH, rest)) => Ok(In::Auth { token: utf8(rest)? }),
        Some((&op::POST, rest)) => {
            let (&n, rest) = rest
                .split_first()
                .ok_or_else(|| FrameError("post without an id length".into()))?;
            let n = usize::from(n);
            if rest.len() < n {
                return Err(FrameError("post id longer than the frame".into()));
            }
            let id = if n == 0 {
                None
            } else {
                Some(utf8(&rest[..n])?)
            };
            Ok(In::Post {
                id: check_id(id)?,
                text: utf8(&rest[n..])?,
            })
        }
        Some((&op::PING, _)) => Ok(In::Ping),
        Some((t, _)) => Err(FrameError(format!("unknown message type 0x{t:02x}"))),
        None => Err(FrameError("empty binary frame".into())),
    }
}

/// A comment as a downstream link reads it from its upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommentIn {
    pub s: u64,
    pub ts: i64,
    pub u: String,
    pub x: String,
}

/// What a link reads from its upstream (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Upstream {
    Welcome {
        epoch: String,
        head: u64,
    },
    C {
        c: Vec<CommentIn>,
    },
    Gap {
        from: u64,
        to: u64,
    },
    Reset {
        epoch: String,
        head: u64,
    },
    Beat {
        head: u64,
    },
    Fack {
        id: String,
        s: u64,
    },
    Fnack {
        id: String,
        r: String,
        #[serde(default)]
        retry_ms: u32,
    },
    Pong,
}

/// Parses a message from an upstream agent.
pub fn parse_upstream(text: &str) -> Result<Upstream, FrameError> {
    serde_json::from_str(text).map_err(|e| FrameError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(seq: u64, text: &str) -> Arc<Comment> {
        Arc::new(Comment::new(
            seq,
            1700,
            Arc::from("al\"ice"),
            Arc::from(text),
        ))
    }

    #[test]
    fn json_batch_round_trips_through_the_link_parser() {
        let b = batch(
            &[comment(1, "hi"), comment(2, "ünï \n \"q\"")],
            Format::Json,
        );
        let Upstream::C { c } = parse_upstream(std::str::from_utf8(&b).unwrap()).unwrap() else {
            panic!("not a batch");
        };
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].s, c[0].ts, c[0].u.as_str()), (1, 1700, "al\"ice"));
        assert_eq!(c[1].x, "ünï \n \"q\"");
    }

    #[test]
    fn binary_batch_layout() {
        let b = batch(&[comment(7, "hey")], Format::Binary);
        assert_eq!(b[0], op::COMMENTS);
        assert_eq!(u16::from_be_bytes([b[1], b[2]]), 1);
        assert_eq!(u64::from_be_bytes(b[3..11].try_into().unwrap()), 7);
        assert_eq!(i64::from_be_bytes(b[11..19].try_into().unwrap()), 1700);
        assert_eq!(b[19], 6);
        assert_eq!(&b[20..26], b"al\"ice");
        assert_eq!(u16::from_be_bytes([b[26], b[27]]), 3);
        assert_eq!(&b[28..], b"hey");
        assert_eq!(comment(7, "hey").encoded_len(Format::Binary), b.len() - 3);
    }

    #[test]
    fn parses_client_messages_in_both_forms() {
        assert_eq!(
            parse_text(r#"{"t":"post","text":"hello","id":"c1"}"#).unwrap(),
            In::Post {
                id: Some("c1".into()),
                text: "hello".into()
            }
        );
        assert_eq!(parse_text(r#"{"t":"ping"}"#).unwrap(), In::Ping);
        assert!(parse_text(r#"{"t":"post"}"#).is_err());
        assert!(parse_text(r#"{"t":"post","text":"x","extra":1}"#).is_err());
        assert!(parse_text(r#"{"t":"nope"}"#).is_err());
        assert!(parse_text("not json").is_err());
        let long_id = format!(r#"{{"t":"post","text":"x","id":"{}"}}"#, "i".repeat(65));
        assert!(parse_text(&long_id).is_err());
        assert_eq!(
            parse_binary(&[op::POST, 2, b'c', b'1', b'h', b'i']).unwrap(),
            In::Post {
                id: Some("c1".into()),
                text: "hi".into()
            }
        );
        assert_eq!(
            parse_binary(&[op::POST, 0, b'h']).unwrap(),
            In::Post {
                id: None,
                text: "h".into()
            }
        );
        assert!(parse_binary(&[op::POST, 5, b'c']).is_err());
        assert!(parse_binary(&[op::POST, 0, 0xff, 0xfe]).is_err());
        assert!(parse_binary(&[]).is_err());
        assert!(parse_binary(&[0x42]).is_err());
        assert_eq!(parse_binary(&[op::PING]).unwrap(), In::Ping);
        assert_eq!(
            parse_binary(&[op::AUTH, b'a', b'.', b'b']).unwrap(),
            In::Auth {
                token: "a.b".into()
            }
        );
    }

    #[test]
    fn server_messages_are_valid_json_and_parse_back_for_links() {
        let w = Out::Welcome {
            room: "live/x",
            epoch: "a-1",
            head: 9,
            heartbeat_ms: 20_000,
            idle_timeout_ms: 60_000,
            max_text_bytes: 500,
        }
        .encode(Format::Json);
        assert_eq!(
            parse_upstream(std::str::from_utf8(&w).unwrap()).unwrap(),
            Upstream::Welcome {
                epoch: "a-1".into(),
                head: 9
            }
        );
        let n = Out::FwdNack {
            id: "e:1",
            reason: Reason::RateRoom,
            retry_ms: 100,
        }
        .encode(Format::Json);
        assert_eq!(
            parse_upstream(std::str::from_utf8(&n).unwrap()).unwrap(),
            Upstream::Fnack {
                id: "e:1".into(),
                r: "rate_room".into(),
                retry_ms: 100
            }
        );
        for r in Reason::ALL {
            assert_eq!(Reason::from_label(r.label()), Some(r));
            let v: serde_json::Value = serde_json::from_slice(
                &Out::Nack {
                    id: "\"",
                    reason: r,
                    retry_ms: 0,
                }
                .encode(Format::Json),
            )
            .unwrap();
            assert_eq!(v["r"], r.label());
        }
        let a = Out::Ack { id: "c1", seq: 5 }.encode(Format::Binary);
        assert_eq!(a[0], op::ACK);
        assert_eq!(u64::from_be_bytes(a[1..9].try_into().unwrap()), 5);
    }
}
