//! RTMP on the agent (`--rtmp-listen`, default `0.0.0.0:1935`): publish
//! (OBS, ffmpeg) and play (`rtmp://agent/{app}/{stream}`) through the same
//! relay as HTTP-FLV.
//!
//! * [`session`] — one connection: handshake, chunk stream, commands
//!   (`connect`, `createStream`, `publish`, `play`, ...).
//! * [`publish`] — a publisher admitted by
//!   [`Relay::admit_publisher`](crate::relay::Relay) feeding the stream's
//!   ring exactly like an HTTP-FLV publisher (same splice, GOP cache,
//!   wake-up coalescing).
//! * [`play`] — an RTMP viewer: a cursor into the same ring, each tag framed
//!   as RTMP chunks once and shared by every RTMP viewer.
//! * [`metrics`] — `vantage_agent_rtmp_*`.
//!
//! The protocol itself (handshake, chunk decoder with limits, AMF0
//! commands) is pure code in [`vantage_shared::rtmp`].
//!
//! Limits: at most `max_connections` connections (more are closed at once,
//! counted); the handshake must finish within `handshake_timeout`; a
//! connection that sends nothing for `idle_timeout` before playing (or while
//! publishing) is closed; chunk sizes above `max_chunk_size` and messages
//! above `max_message_bytes` are refused; before a publish is admitted,
//! messages are limited to [`COMMAND_MESSAGE_LIMIT`]. Every refusal closes
//! that connection only and is counted in `vantage_agent_rtmp_errors_total`.

pub mod metrics;
pub mod play;
pub mod publish;
pub mod session;

use crate::relay::Relay;
use metrics::RtmpMetrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use vantage_shared::rtmp::Limits;

/// Default `--rtmp-listen`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:1935";
/// Largest message before a publish or play starts (commands are small).
pub const COMMAND_MESSAGE_LIMIT: u32 = 64 * 1024;

/// RTMP listener settings (`rtmp_*` keys). Defaults in
/// [`RtmpConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpConfig {
    /// Connections open at once; more are closed at accept. 1000.
    pub max_connections: usize,
    /// C0/C1 in, S0/S1/S2 out, C2 in, all within this. 5 s.
    pub handshake_timeout: Duration,
    /// No bytes from the peer for this long (before playing, or while
    /// publishing) closes the connection. 10 s.
    pub idle_timeout: Duration,
    /// Largest chunk size a peer may set. 65,536.
    pub max_chunk_size: u32,
    /// Largest message (one video frame) accepted. 8 MiB.
    pub max_message_bytes: u32,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            max_connections: 1000,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_chunk_size: 65_536,
            max_message_bytes: 8 * 1024 * 1024,
        }
    }
}

impl RtmpConfig {
    /// Decoder limits while a connection only exchanges commands.
    pub fn command_limits(&self) -> Limits {
        Limits {
            max_chunk_size: self.max_chunk_size,
            max_message_len: COMMAND_MESSAGE_LIMIT.min(self.max_message_bytes),
            max_chunk_streams: 16,
            max_buffered: 2 * COMMAND_MESSAGE_LIMIT as usize,
        }
    }

    /// Decoder limits of an admitted publisher.
    pub fn media_limits(&self) -> Limits {
        Limits {
            max_chunk_size: self.max_chunk_size,
            max_message_len: self.max_message_bytes,
            max_chunk_streams: 64,
            max_buffered: 2 * self.max_message_bytes as usize,
        }
    }
}

/// Binds the RTMP listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::relay::bind(addr).await
}

/// Accepts RTMP connections until `cancel`; each runs in its own task.
pub async fn serve(
    relay: Relay,
    listener: TcpListener,
    cfg: RtmpConfig,
    metrics: RtmpMetrics,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let cfg = Arc::new(cfg);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "RTMP accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the limit: closed at once (dropping the socket).
            metrics.connection("refused_limit");
            continue;
        };
        metrics.connection("accepted");
        let (relay, cfg, metrics) = (relay.clone(), cfg.clone(), metrics.clone());
        let token = cancel.child_token();
        tokio::spawn(async move {
            metrics.connections.inc();
            session::run(relay, sock, peer, &cfg, &metrics, token).await;
            metrics.connections.dec();
            drop(permit);
        });
    }
}
