//! One RTMP connection: the handshake, then the command exchange that ends
//! in a publish ([`super::publish`]) or a play ([`super::play`]).
//!
//! ```text
//! C0 C1 → S0 S1 S2 → C2
//! connect(app) → Window Ack Size, Set Peer Bandwidth, Set Chunk Size, _result(NetConnection.Connect.Success)
//! releaseStream / FCPublish → _result        createStream → _result(stream id 1)
//! publish(name) → onStatus(NetStream.Publish.Start | .BadName | .Denied)
//! play(name)    → StreamBegin, onStatus(NetStream.Play.Reset, .Play.Start) | onStatus(.Play.StreamNotFound)
//! ```
//!
//! The stream key is `{app}/{name}`, each without its `?query` (OBS and
//! other tools append parameters to the stream key; a play name's `lat` and
//! `lon` place the viewer in a client group, as on HTTP play requests).

use super::metrics::RtmpMetrics;
use super::{RtmpConfig, play, publish};
use crate::relay::Relay;
use crate::relay::conn::{ConnShared, MeteredIo};
use crate::relay::hub::{RTMP_CHUNK_SIZE, RTMP_STREAM_ID};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};
use vantage_shared::flv::amf::Value;
use vantage_shared::rtmp::message::{self, num, object, on_status, string};
use vantage_shared::rtmp::{ChunkDecoder, Command, Message, RtmpError, handshake};
use vantage_shared::stream::StreamKey;

/// Window acknowledgement size and peer bandwidth the agent announces.
pub const WINDOW: u32 = 2_500_000;
/// Bytes read per socket read.
const READ_BUF: usize = 64 * 1024;
/// Writes of control messages and the play start must be accepted by the
/// socket within this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Protocol(#[from] RtmpError),
    #[error("no data from the peer for {0:?}")]
    Idle(Duration),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the peer closed the connection")]
    Closed,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

impl SessionError {
    /// Label for `vantage_agent_rtmp_errors_total{reason}`; `None` for a
    /// plain close.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            SessionError::Protocol(e) => Some(e.label()),
            SessionError::Idle(_) => Some("idle_timeout"),
            SessionError::HandshakeTimeout(_) => Some("handshake_timeout"),
            SessionError::Closed => None,
            SessionError::Io(_) => Some("io"),
            SessionError::Refused(_) => Some("refused"),
        }
    }
}

/// A connection past its handshake: socket, chunk decoder, what `connect`
/// said.
pub struct Conn {
    pub io: MeteredIo,
    pub shared: Arc<ConnShared>,
    pub decoder: ChunkDecoder,
    pub peer: SocketAddr,
    /// The `app` of `connect`, without its query.
    pub app: String,
    /// The chunk size of what the agent sends.
    pub out_chunk: u32,
    /// The peer's Window Acknowledgement Size: acknowledge every so many bytes.
    ack_window: Option<u32>,
    acked: u64,
    rbuf: BytesMut,
}

impl Conn {
    /// Sends encoded messages.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.io.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer does not read",
            ))),
        }
    }

    /// Reads once (within `idle`) and feeds the decoder; returns the bytes
    /// read. Cancel-safe (it only reads): call [`Conn::maybe_ack`] after.
    pub async fn read(&mut self, idle: Duration) -> Result<usize, SessionError> {
        self.rbuf.clear();
        self.rbuf.reserve(READ_BUF);
        let n = match tokio::time::timeout(idle, self.io.read_buf(&mut self.rbuf)).await {
            Ok(r) => r?,
            Err(_) => return Err(SessionError::Idle(idle)),
        };
        if n == 0 {
            return Err(SessionError::Closed);
        }
        self.decoder.push(&self.rbuf[..n]);
        Ok(n)
    }

    /// Acknowledges the bytes received when the peer's window is full.
    pub async fn maybe_ack(&mut self) -> Result<(), SessionError> {
        let Some(w) = self.ack_window.filter(|w| *w > 0) else {
            return Ok(());
        };
        let received = self.decoder.received();
        if received - self.acked >= u64::from(w) {
            self.acked = received;
            // The sequence number wraps at 32 bits.
            let ack = message::acknowledgement(received as u32, self.out_chunk);
            self.send(&ack).await?;
        }
        Ok(())
    }

    /// Handles the protocol messages every phase may see; returns the
    /// message back when it is for the phase itself.
    pub async fn control(&mut self, m: Message) -> Result<Option<Message>, SessionError> {
        match m.type_id {
            message::WINDOW_ACK_SIZE => {
                self.ack_window = m
                    .payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                Ok(None)
            }
            message::USER_CONTROL => {
                if let Ok((message::PING_REQUEST, Some(t))) =
                    message::parse_user_control(&m.payload)
                {
                    let pong = message::user_control(message::PING_RESPONSE, t, self.out_chunk);
                    self.send(&pong).await?;
                }
                Ok(None)
            }
            message::SET_CHUNK_SIZE
            | message::ABORT
            | message::ACKNOWLEDGEMENT
            | message::SET_PEER_BANDWIDTH => Ok(None),
            _ => Ok(Some(m)),
        }
    }

    /// Sends a command on message stream `stream_id`.
    pub async fn command(&mut self, c: &Command, stream_id: u32) -> Result<(), SessionError> {
        let bytes = c.encode(stream_id, self.out_chunk);
        self.send(&bytes).await
    }

    /// `onStatus` on the media stream.
    pub async fn status(
        &mut self,
        level: &str,
        code: &str,
        description: &str,
    ) -> Result<(), SessionError> {
        self.command(&on_status(level, code, description), RTMP_STREAM_ID)
            .await
    }
}

/// Runs one connection to its end; errors are logged and counted.
#[instrument(name = "rtmp", skip_all, fields(%peer))]
pub async fn run(
    relay: Relay,
    sock: TcpStream,
    peer: SocketAddr,
    cfg: &RtmpConfig,
    metrics: &RtmpMetrics,
    cancel: CancellationToken,
) {
    let _ = sock.set_nodelay(true);
    let _ = socket2::SockRef::from(&sock).set_tcp_notsent_lowat(relay.config().notsent_lowat);
    let shared = Arc::new(ConnShared::default());
    let mut io = MeteredIo::new(sock, shared.clone(), relay.viewer_stats());
    let work = async {
        match tokio::time::timeout(cfg.handshake_timeout, handshake(&mut io)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let label = match &e {
                    SessionError::Protocol(p) => p.label(),
                    _ => "closed",
                };
                metrics.handshake(label);
                return Err(e);
            }
            Err(_) => {
                metrics.handshake("timeout");
                return Err(SessionError::HandshakeTimeout(cfg.handshake_timeout));
            }
        };
        metrics.handshake("ok");
        let mut conn = Conn {
            io,
            shared,
            decoder: ChunkDecoder::new(cfg.command_limits()),
            peer,
            app: String::new(),
            out_chunk: vantage_shared::rtmp::chunk::DEFAULT_CHUNK_SIZE,
            ack_window: None,
            acked: 0,
            rbuf: BytesMut::with_capacity(READ_BUF),
        };
        commands(&relay, &mut conn, cfg, metrics, &cancel).await
    };
    let result = tokio::select! {
        r = work => r,
        _ = cancel.cancelled() => Ok(()),
    };
    match result {
        Ok(()) | Err(SessionError::Closed) => debug!("RTMP connection closed"),
        Err(e) => {
            if let Some(label) = e.label() {
                metrics.error(label);
            }
            match &e {
                SessionError::Protocol(_) | SessionError::Refused(_) => {
                    warn!(error = %e, "RTMP connection refused")
                }
                _ => debug!(error = %e, "RTMP connection ended"),
            }
        }
    }
}

/// Server side of the handshake (reads exactly C0, C1 and C2).
async fn handshake(io: &mut MeteredIo) -> Result<(), SessionError> {
    let mut c0 = [0u8; 1];
    read_exact(io, &mut c0).await?;
    handshake::check_c0(c0[0])?;
    let mut c0c1 = vec![0u8; handshake::C0C1_LEN];
    c0c1[0] = c0[0];
    read_exact(io, &mut c0c1[1..]).await?;
    let time = u32::try_from(vantage_shared::clock::now_ms() % (1 << 32)).unwrap_or(0);
    let random: [u8; 32] = rand::random();
    let reply = handshake::server_reply(&c0c1, time, &random)?;
    io.write_all(&reply).await?;
    let mut c2 = vec![0u8; handshake::PACKET_LEN];
    read_exact(io, &mut c2).await
}

async fn read_exact(io: &mut MeteredIo, buf: &mut [u8]) -> Result<(), SessionError> {
    match io.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(SessionError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// `app` and stream names lose their `?query`; returns (name, query).
pub fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (s, None),
    }
}

/// The stream key of `name` in `app`.
pub fn stream_key(app: &str, name: &str) -> Result<StreamKey, String> {
    let (name, _) = split_query(name);
    StreamKey::parse(&format!("{app}/{name}")).map_err(|e| e.to_string())
}

/// The command phase: answers until a publish or play takes over.
async fn commands(
    relay: &Relay,
    conn: &mut Conn,
    cfg: &RtmpConfig,
    metrics: &RtmpMetrics,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    loop {
        while let Some(m) = conn.decoder.next_message()? {
            let Some(m) = conn.control(m).await? else {
                continue;
            };
            if !matches!(m.type_id, message::COMMAND_AMF0 | message::COMMAND_AMF3) {
                continue;
            }
            let c = Command::parse(&m.payload, m.type_id)?;
            match c.name.as_str() {
                "connect" => connect(conn, &c).await?,
                "createStream" => {
                    let r = result(
                        c.transaction,
                        Value::Null,
                        vec![num(f64::from(RTMP_STREAM_ID))],
                    );
                    conn.command(&r, 0).await?;
                }
                "releaseStream" | "FCPublish" | "getStreamLength" => {
                    let r = result(c.transaction, Value::Null, vec![Value::Undefined]);
                    conn.command(&r, 0).await?;
                }
                "publish" => {
                    let name = c.string_arg(0).unwrap_or_default().to_owned();
                    return publish::run(relay, conn, cfg, &name, cancel).await;
                }
                "play" => {
                    let name = c.string_arg(0).unwrap_or_default().to_owned();
                    return play::run(relay, conn, metrics, &name, cancel).await;
                }
                other => debug!(command = other, "RTMP command ignored"),
            }
        }
        conn.read(cfg.idle_timeout).await?;
        conn.maybe_ack().await?;
    }
}

fn result(transaction: f64, object: Value, args: Vec<Value>) -> Command {
    Command {
        name: "_result".into(),
        transaction,
        object,
        args,
    }
}

async fn connect(conn: &mut Conn, c: &Command) -> Result<(), SessionError> {
    let app = c
        .property("app")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (app, _) = split_query(app);
    conn.app = app.trim_matches('/').to_owned();
    info!(app = %conn.app, "RTMP connect");
    let mut out = BytesMut::new();
    out.extend_from_slice(&message::window_ack_size(WINDOW, conn.out_chunk));
    out.extend_from_slice(&message::set_peer_bandwidth(WINDOW, conn.out_chunk));
    out.extend_from_slice(&message::set_chunk_size(RTMP_CHUNK_SIZE, conn.out_chunk));
    conn.out_chunk = RTMP_CHUNK_SIZE;
    // Enhanced RTMP: the codecs this server relays (it passes payloads
    // through, so every FourCC the client offers is fine).
    let mut props = vec![
        ("fmsVer", string("FMS/3,0,1,123")),
        ("capabilities", num(31.0)),
    ];
    if let Some(list) = c.property("fourCcList") {
        props.push(("fourCcList", list.clone()));
    }
    let info = object(&[
        ("level", string("status")),
        ("code", string("NetConnection.Connect.Success")),
        ("description", string("Connection succeeded.")),
        ("objectEncoding", num(0.0)),
    ]);
    let r = result(c.transaction, object(&props), vec![info]);
    out.extend_from_slice(&r.encode(0, conn.out_chunk));
    conn.send(&out).await
}
