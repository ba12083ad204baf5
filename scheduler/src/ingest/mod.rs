//! Telemetry ingest over QUIC (DESIGN §3).
//!
//! One task per connection ([`session`]): control-stream handshake
//! (Hello → Welcome or a typed rejection), then reports and alerts on one
//! unidirectional stream, applied to the [`crate::registry`]. Any bad input
//! closes only that connection, with the [`CloseCode`] that names the
//! problem, a log line and a `telemetry_rejected{reason}` count.

mod session;

use crate::app::App;
use quinn::crypto::rustls::QuicServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument, info, info_span, warn};
use vantage_shared::close::CloseCode;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("QUIC TLS configuration: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}/udp: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Builds the QUIC endpoint (bound, not yet accepting).
pub fn endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
) -> Result<quinn::Endpoint, IngestError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| IngestError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(2u32.into())
        .max_concurrent_uni_streams(2u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(10))
                .map_err(|e| IngestError::Tls(e.to_string()))?,
        ))
        // No server-side keep-alive: agents send a PING every second and a
        // report every interval, which keeps both idle timers fresh. PINGs
        // from here too cost a datagram and an ACK per agent every 2 s
        // (2,500 datagrams/s at 5,000 agents) for nothing.
        .keep_alive_interval(None);
    server.transport_config(Arc::new(transport));
    let socket = udp_socket(addr).map_err(|source| IngestError::Bind { addr, source })?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| IngestError::Tls("no async runtime for QUIC".to_owned()))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|source| IngestError::Bind { addr, source })
}

/// Socket buffers for thousands of agents: the kernel default (~200 KiB)
/// holds only milliseconds of report bursts; drops there turn into late
/// reports and false `suspect` states. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max` (raise them on large deployments).
const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too when listening on [::].
        let _ = socket.set_only_v6(false);
    }
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        warn!("cannot enlarge the QUIC receive buffer: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        warn!("cannot enlarge the QUIC send buffer: {e}");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Accepts connections until shutdown; each gets its own task.
pub async fn serve(app: Arc<App>, endpoint: quinn::Endpoint) {
    info!(addr = ?endpoint.local_addr().ok(), "telemetry (QUIC) listening");
    loop {
        let incoming = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let remote = incoming.remote_address();
        let app = app.clone();
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => {
                        app.metrics.telemetry_connections.inc();
                        session::run(app, conn).await;
                    }
                    Err(e) => {
                        app.metrics.rejected("handshake");
                        warn!("QUIC handshake failed: {e}");
                    }
                }
            }
            .instrument(info_span!("telemetry", %remote, node_id = tracing::field::Empty)),
        );
    }
    endpoint.close(
        quinn::VarInt::from_u32(CloseCode::ShuttingDown.code()),
        b"scheduler shutting down",
    );
    // Let close frames go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}
