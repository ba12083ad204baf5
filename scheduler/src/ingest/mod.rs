//! Telemetry ingest over QUIC (DESIGN §3).
//!
//! One thread runs the whole QUIC side (`driver`): it owns the UDP socket
//! and the quinn protocol state machines (`quinn-proto`) of every agent
//! connection, reads datagrams in batches (`recvmmsg`, GRO), feeds them to
//! their connections, sends what the connections have to send (ACKs,
//! Welcome, close frames) and fires their timers — no task, channel or
//! wake-up per datagram. At 1 Hz an agent's report is one lone datagram, so
//! those per-datagram costs were most of the scheduler's ingest CPU when each
//! connection had its own tokio task (docs/benchmarks.md).
//!
//! `session` is the protocol of one connection on top of that: the
//! control-stream handshake (Hello → Welcome or a typed rejection), then
//! reports and alerts on one unidirectional stream, applied to the
//! [`crate::registry`]. Any bad input closes only that connection, with the
//! [`CloseCode`] that names the problem, a log line and a
//! `telemetry_rejected{reason}` count.
//!
//! The rest of the scheduler reaches a connection only through its
//! [`SessionLink`] (kept in the registry): closing it when a newer session
//! supersedes it or liveness gives up on a silent node.

mod apply;
mod driver;
mod session;

pub use crate::app::SocketDrops;
pub use crate::config::TELEMETRY_IDLE_TIMEOUT as IDLE_TIMEOUT;

use crate::app::App;
use quinn_proto::crypto::rustls::QuicServerConfig;
use std::net::SocketAddr;
use std::sync::{Arc, mpsc};

use tracing::{info, warn};
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

/// The bound QUIC listener, not yet serving.
pub struct Ingest {
    driver: driver::Driver,
    local_addr: SocketAddr,
    drops: SocketDrops,
}

impl Ingest {
    /// Binds the UDP socket and prepares the QUIC server side.
    pub fn bind(addr: SocketAddr, tls: rustls::ServerConfig) -> Result<Self, IngestError> {
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| IngestError::Tls(e.to_string()))?;
        let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn_proto::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(2u32.into())
            .max_concurrent_uni_streams(2u32.into())
            .max_idle_timeout(Some(
                quinn_proto::IdleTimeout::try_from(IDLE_TIMEOUT)
                    .map_err(|e| IngestError::Tls(e.to_string()))?,
            ))
            // No server-side keep-alive: agents send a PING after a second
            // without traffic and a report every interval, which keeps both
            // idle timers fresh. PINGs from here too would cost a datagram
            // and an ACK per agent for nothing.
            .keep_alive_interval(None);
        server.transport_config(Arc::new(transport));
        let socket = udp_socket(addr).map_err(|source| IngestError::Bind { addr, source })?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| IngestError::Bind { addr, source })?;
        let drops = SocketDrops::of(&socket);
        let driver = driver::Driver::new(socket, Arc::new(server))
            .map_err(|source| IngestError::Bind { addr, source })?;
        Ok(Self {
            driver,
            local_addr,
            drops,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The kernel's drop count of the telemetry socket.
    pub fn socket_drops(&self) -> SocketDrops {
        self.drops.clone()
    }
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
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serves telemetry until shutdown: the event loop runs on its own thread
/// (inside this tokio runtime's context, for the store's async work); this
/// future ends when that thread has closed every connection.
pub async fn serve(app: Arc<App>, ingest: Ingest) {
    info!(addr = %ingest.local_addr, "telemetry (QUIC) listening");
    let links = ingest.driver.links();
    let shutdown = app.shutdown.clone();
    let on_shutdown = tokio::spawn(async move {
        shutdown.cancelled().await;
        links.send(Command::Shutdown);
    });
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let mut driver = ingest.driver;
    let spawned = std::thread::Builder::new()
        .name("quic-ingest".to_owned())
        .spawn(move || {
            let _runtime = runtime.enter();
            driver.run(&app);
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = done_rx.await;
        }
        Err(e) => tracing::error!("cannot start the QUIC ingest thread: {e}"),
    }
    on_shutdown.abort();
}

/// What other threads ask of the event loop.
#[derive(Debug)]
enum Command {
    /// Close one connection (superseded session, silent node).
    Close {
        conn: u64,
        code: CloseCode,
        reason: String,
    },
    /// The store answered an enrollment: go on with the Welcome or close.
    Admitted { conn: u64, result: Enrolled },
    /// The store answered a lookup of a node this replica does not know
    /// (several replicas: enrolled through another one, maybe).
    LookedUp {
        conn: u64,
        result: Result<Option<crate::store::NodeRecord>, String>,
    },
    /// Close everything and stop.
    Shutdown,
}

/// What the store said to an enrollment.
#[derive(Debug)]
enum Enrolled {
    Done,
    /// Another replica enrolled the node first: its record as stored.
    Duplicate(Option<crate::store::NodeRecord>),
    Failed(String),
}

/// The command queue of the event loop and the waker that interrupts its
/// `epoll_wait`.
#[derive(Debug)]
struct Links {
    tx: mpsc::Sender<Command>,
    waker: mio::Waker,
}

impl Links {
    fn send(&self, cmd: Command) {
        // After shutdown the loop is gone and there is nothing to close.
        if self.tx.send(cmd).is_ok()
            && let Err(e) = self.waker.wake()
        {
            warn!("cannot wake the QUIC ingest loop: {e}");
        }
    }
}

/// Handle on one agent's telemetry connection, held by the registry.
#[derive(Debug, Clone)]
pub struct SessionLink {
    conn: u64,
    links: Arc<Links>,
}

impl crate::registry::Connection for SessionLink {
    fn id(&self) -> u64 {
        self.conn
    }

    /// Closes the connection with `code`; the agent sees the code and the
    /// reason. Returns at once; the event loop does the closing.
    fn close(&self, code: CloseCode, reason: &str) {
        self.links.send(Command::Close {
            conn: self.conn,
            code,
            reason: reason.to_owned(),
        });
    }
}
