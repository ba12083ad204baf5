//! WebSocket plumbing around tungstenite's protocol state machine: the
//! upgrade check and `Sec-WebSocket-Accept` (RFC 6455 §4.2), server frames
//! built once and shared by every connection (server frames are not masked,
//! so the same bytes go to everyone), close codes, and the adapter that lets
//! tungstenite read straight from a shared socket while whatever it writes
//! (pongs, close replies) goes through the connection's ordered outbox.

use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{self, HeaderMap};
use std::io::{Read, Write};
use tokio::net::TcpStream;

use super::frame::Format;

/// Close codes the server uses (RFC 6455 §7.4; 4000–4999 are ours).
pub mod close {
    pub const NORMAL: u16 = 1000;
    /// Shutdown or drain of the agent.
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Flooding: kept posting into a full rate bucket.
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Nothing received for the idle timeout (no heartbeat).
    pub const IDLE: u16 = 4000;
    /// The connection did not read what was sent to it in time.
    pub const SLOW: u16 = 4001;
    /// The room's stream is gone from this agent's view.
    pub const ROOM_GONE: u16 = 4004;
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;

/// One unfragmented, unmasked server frame.
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    b.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => b.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
    b.put_slice(payload);
    b.freeze()
}

/// A data frame carrying `payload` in `format` (text for JSON).
pub fn data_frame(format: Format, payload: &[u8]) -> Bytes {
    match format {
        Format::Json => frame(OP_TEXT, payload),
        Format::Binary => frame(OP_BINARY, payload),
    }
}

/// A close frame with `code` and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut p = Vec::with_capacity(2 + reason.len().min(120));
    p.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &p)
}

/// Why an HTTP request is not a WebSocket upgrade we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotUpgrade(pub &'static str);

fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Checks an upgrade request (`Connection: upgrade`, `Upgrade: websocket`,
/// version 13, a 16-byte base64 key) and returns `Sec-WebSocket-Accept`.
pub fn accept_key(h: &HeaderMap) -> Result<String, NotUpgrade> {
    if !has_token(h, header::CONNECTION, "upgrade") || !has_token(h, header::UPGRADE, "websocket") {
        return Err(NotUpgrade(
            "comments are a WebSocket endpoint: send Connection: Upgrade, Upgrade: websocket",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(NotUpgrade("Sec-WebSocket-Version must be 13"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(NotUpgrade("Sec-WebSocket-Key missing"))?;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| NotUpgrade("Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(NotUpgrade("Sec-WebSocket-Key is not 16 bytes"));
    }
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// tungstenite's view of a connection: reads come from the socket without
/// blocking (`WouldBlock` when empty), writes (pongs, close replies) are
/// collected in `out` for the outbox.
pub struct Io<'a> {
    pub sock: &'a TcpStream,
    pub out: &'a mut Vec<u8>,
    /// Bytes read (metrics).
    pub read: usize,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.sock.try_read(buf)?;
        self.read += n;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn frame_lengths_use_the_three_forms() {
        assert_eq!(&frame(OP_TEXT, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = frame(OP_BINARY, &[0; 200]);
        assert_eq!(&f[..4], &[0x82, 126, 0, 200]);
        let f = frame(OP_TEXT, &vec![0; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
        let c = close_frame(close::SLOW, "slow");
        assert_eq!(&c[..], &[0x88, 6, 0x0f, 0xa1, b's', b'l', b'o', b'w']);
    }

    #[test]
    fn accept_key_of_rfc_6455_example() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(accept_key(&h).is_err());
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert!(accept_key(&h).is_err());
        h.remove(header::UPGRADE);
        assert!(accept_key(&h).is_err());
    }
}
