//! Telemetry to the scheduler over QUIC (DESIGN §3).
//!
//! [`Telemetry`] reports to every scheduler replica the agent is configured
//! with (`--scheduler`, repeatable; a DNS name counts once per address it
//! resolves to, looked up again every 30 s): one [`TelemetryClient`] per
//! replica, each with its own connection, backoff and status, so a dead
//! replica costs only its own session. Alerts go to every session.
//!
//! [`TelemetryClient::run`] keeps one connection to one replica: it opens
//! the control stream, sends `Hello`, and on `Welcome` opens one
//! unidirectional stream carrying a `Report` every report interval and each
//! `Alert` as soon as it is raised. The interval comes from `Welcome`, later
//! `Settings` frames and route tables. A dead scheduler is noticed by QUIC
//! keep-alives (1 s) and the idle timeout (5 s); reconnects use jittered
//! exponential backoff capped at 10 s, reset after a session that lived
//! 10 s. Rejections are logged with their reason; `UNKNOWN_NODE` makes the
//! agent forget its credential and enroll again with its token.
//!
//! When the agent drains ([`crate::drain`]), the client sends
//! `AgentControl{draining}` with the grace left on the control stream, at
//! once and again right after every later Welcome, and keeps reporting.

pub mod alert;
mod replicas;
mod session;
pub mod trim;

pub use replicas::Telemetry;

use crate::config::HostPort;
use crate::identity::Identity;
use crate::load::LoadSample;
use crate::metrics::Metrics;
use crate::routes::TableReceiver;
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};
use vantage_proto::v1::{Alert, Hello, RejectReason, StaticOrigin};
use vantage_shared::backoff::Backoff;
use vantage_shared::close::CloseCode;
use vantage_shared::frame::FrameError;

pub use alert::AlertSender;

/// What this build of the agent can do (`Hello.capabilities`).
pub const CAPABILITIES: &[&str] = &[
    "telemetry-v1",
    "routes-v1",
    "probe-v1",
    "relay-httpflv-v1",
    "cmcd-v1",
];
/// Report interval until the scheduler sets one.
pub const DEFAULT_REPORT_INTERVAL_MS: u32 = 1000;
/// Bounds applied to any interval the scheduler asks for.
pub const MIN_REPORT_INTERVAL_MS: u32 = 100;
pub const MAX_REPORT_INTERVAL_MS: u32 = 60_000;
/// QUIC keep-alive and idle timeout: a silent scheduler is declared dead
/// after the idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
pub const IDLE_TIMEOUT_MS: u32 = 5_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("resolving {addr}: {message}")]
    Resolve { addr: String, message: String },
    #[error("QUIC client: {0}")]
    Endpoint(String),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("no answer to Hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("control stream closed before Welcome")]
    NoWelcome,
    #[error("unexpected first control message from the scheduler")]
    UnexpectedReply,
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Builds the QUIC client configuration: TLS 1.3 with the telemetry ALPN,
/// keep-alives, the idle timeout and immediate ACKs.
pub fn quic_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TelemetryError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TelemetryError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()))
        .ack_frequency_config(Some(immediate_acks()));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Asks the scheduler (QUIC ACK_FREQUENCY extension) to acknowledge every
/// report at once instead of after its ACK delay (25 ms): a report is a lone
/// datagram every interval, so a delayed ACK saves no datagram, costs the
/// scheduler a timer per report and lets the ACK race this side's
/// keep-alive (an extra PING when it loses).
pub fn immediate_acks() -> quinn::AckFrequencyConfig {
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(0));
    acks
}

/// Telemetry state for `/v1/status`: the first connected session's (in
/// configured order), reports summed over every session, and each session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetrySnapshot {
    /// Some session is connected.
    pub connected: bool,
    pub session_id: Option<String>,
    pub reports_sent: u64,
    pub report_interval_ms: u32,
    pub scheduler: String,
    /// One per scheduler replica.
    pub sessions: Vec<SessionSnapshot>,
}

/// One session's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionSnapshot {
    pub scheduler: String,
    pub connected: bool,
    pub session_id: Option<String>,
    pub reports_sent: u64,
    pub report_interval_ms: u32,
    /// The replica's role and term when it welcomed this agent.
    pub role: String,
    pub term: u64,
}

/// One session's state, updated by its client.
#[derive(Debug, Default)]
pub struct SessionStatus(Mutex<SessionSnapshot>);

impl SessionStatus {
    fn lock(&self) -> MutexGuard<'_, SessionSnapshot> {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> SessionSnapshot {
        self.lock().clone()
    }
}

/// Every session's state, read by the admin server.
#[derive(Debug, Default)]
pub struct TelemetryStatus(Mutex<Vec<Arc<SessionStatus>>>);

impl TelemetryStatus {
    fn sessions(&self) -> MutexGuard<'_, Vec<Arc<SessionStatus>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add(&self, s: Arc<SessionStatus>) {
        self.sessions().push(s);
    }

    pub(crate) fn remove(&self, s: &Arc<SessionStatus>) {
        self.sessions().retain(|x| !Arc::ptr_eq(x, s));
    }

    pub fn snapshot(&self) -> TelemetrySnapshot {
        let sessions: Vec<SessionSnapshot> = self.sessions().iter().map(|s| s.snapshot()).collect();
        let main = sessions
            .iter()
            .find(|s| s.connected)
            .or_else(|| sessions.first())
            .cloned()
            .unwrap_or_default();
        TelemetrySnapshot {
            connected: sessions.iter().any(|s| s.connected),
            session_id: main.session_id,
            reports_sent: sessions.iter().map(|s| s.reports_sent).sum(),
            report_interval_ms: main.report_interval_ms,
            scheduler: main.scheduler,
            sessions,
        }
    }
}

/// Where one telemetry session connects: an address, or a name resolved
/// at every attempt (its first address), and the TLS name of the
/// scheduler's certificate.
#[derive(Debug, Clone)]
pub struct Target {
    pub server_name: String,
    pub connect: Connect,
}

#[derive(Debug, Clone)]
pub enum Connect {
    Addr(std::net::SocketAddr),
    Name(HostPort),
}

impl Target {
    /// The target of a configured `HOST:PORT` (an IP literal is used as it
    /// is).
    pub fn of(hp: &HostPort) -> Self {
        let connect = match hp.host.parse::<std::net::IpAddr>() {
            Ok(ip) => Connect::Addr(std::net::SocketAddr::new(ip, hp.port)),
            Err(_) => Connect::Name(hp.clone()),
        };
        Target {
            server_name: hp.host.clone(),
            connect,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.connect {
            Connect::Addr(a) if a.ip().to_string() == self.server_name => write!(f, "{a}"),
            Connect::Addr(a) => write!(f, "{}@{a}", self.server_name),
            Connect::Name(hp) => write!(f, "{hp}"),
        }
    }
}

/// Static parts of the agent's `Hello`.
#[derive(Debug, Clone)]
pub struct HelloTemplate {
    pub region: String,
    pub lat: f64,
    pub lon: f64,
    pub capacity_mbps: f64,
    pub public_url: String,
    pub probe_addr: String,
    pub static_origins: Vec<StaticOrigin>,
}

/// The telemetry connection to the scheduler.
/// Something that contributes to every report: the probe subsystem fills
/// `paths`, the relay fills `streams`, `groups` and the traffic fields of
/// `load`. Called on the telemetry task once per report; must be quick
/// (read a snapshot, no I/O).
pub trait ReportSource: Send + Sync {
    fn fill(&self, report: &mut vantage_proto::v1::Report);
}

pub struct TelemetryClient {
    target: Target,
    sources: Vec<Arc<dyn ReportSource>>,
    quic: quinn::ClientConfig,
    hello: HelloTemplate,
    identity: Arc<Identity>,
    tables: TableReceiver,
    load: watch::Receiver<LoadSample>,
    alerts: broadcast::Receiver<Alert>,
    status: Arc<SessionStatus>,
    /// Whether this session counts in `telemetry_connected`.
    counted: bool,
    metrics: Metrics,
    report_seq: u64,
    alert_seq: u64,
    drain: crate::drain::Drain,
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Cancelled; the connection was closed with code 0.
    Shutdown,
    /// The scheduler refused the Hello.
    Rejected(RejectReason),
    /// The connection failed or ended; `welcomed` if it got that far.
    Ended {
        welcomed: bool,
        error: TelemetryError,
    },
}

impl TelemetryClient {
    /// Announce draining to the scheduler when `drain` starts.
    pub fn set_drain(&mut self, drain: crate::drain::Drain) {
        self.drain = drain;
    }

    /// Adds a contributor to every report.
    pub fn add_source(&mut self, source: Arc<dyn ReportSource>) {
        self.sources.push(source);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: Target,
        quic: quinn::ClientConfig,
        hello: HelloTemplate,
        identity: Arc<Identity>,
        tables: TableReceiver,
        load: watch::Receiver<LoadSample>,
        alerts: broadcast::Receiver<Alert>,
        metrics: Metrics,
    ) -> Self {
        let status = Arc::new(SessionStatus::default());
        {
            let mut s = status.lock();
            s.scheduler = target.to_string();
            s.report_interval_ms = DEFAULT_REPORT_INTERVAL_MS;
        }
        Self {
            target,
            sources: Vec::new(),
            quic,
            hello,
            identity,
            tables,
            load,
            alerts,
            status,
            counted: false,
            metrics,
            report_seq: 0,
            alert_seq: 0,
            drain: crate::drain::Drain::default(),
        }
    }

    pub fn status(&self) -> Arc<SessionStatus> {
        self.status.clone()
    }

    pub(crate) fn held_version(&self) -> u64 {
        self.tables.borrow().as_ref().map_or(0, |t| t.version())
    }

    pub(crate) fn held_term(&self) -> u64 {
        self.tables.borrow().as_ref().map_or(0, |t| t.table.term)
    }

    /// The Hello of the next session: current credential and route version.
    pub(crate) fn build_hello(&self) -> Hello {
        let h = &self.hello;
        Hello {
            node_id: self.identity.node_id().to_owned(),
            protocol_version: vantage_proto::PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            region: h.region.clone(),
            lat: h.lat,
            lon: h.lon,
            capacity_mbps: h.capacity_mbps,
            public_url: h.public_url.clone(),
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            route_version: self.held_version(),
            enrollment_token: self.identity.token().unwrap_or_default().to_owned(),
            node_credential: self.identity.credential().unwrap_or_default(),
            probe_addr: h.probe_addr.clone(),
            static_origins: h.static_origins.clone(),
            route_term: self.held_term(),
        }
    }

    /// Connects and reconnects until `cancel`.
    #[instrument(name = "telemetry", skip_all, fields(scheduler = %self.target))]
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut slow = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        loop {
            let started = Instant::now();
            let outcome = self.session(&cancel).await;
            self.set_disconnected();
            if matches!(outcome, Outcome::Shutdown) {
                return;
            }
            let delay = match outcome {
                Outcome::Shutdown => return,
                Outcome::Rejected(RejectReason::UnknownNode) => {
                    if self.identity.token().is_none() {
                        error!(
                            "scheduler does not know this node and no enrollment token is configured"
                        );
                    } else {
                        info!("forgetting the stored credential; enrolling again with the token");
                    }
                    if let Err(e) = self.identity.forget() {
                        error!(error = %e, "could not delete the stored credential");
                    }
                    backoff.next_delay(&mut rand::rng())
                }
                Outcome::Rejected(RejectReason::DuplicateNode)
                    if self.identity.credential().is_some() =>
                {
                    // Another session enrolled this node meanwhile (several
                    // replicas): try again with its credential.
                    backoff.next_delay(&mut rand::rng())
                }
                Outcome::Rejected(reason) => {
                    if CloseCode::from_reject(reason).is_retryable() {
                        backoff.next_delay(&mut rand::rng())
                    } else {
                        slow.next_delay(&mut rand::rng())
                    }
                }
                Outcome::Ended { welcomed, error } => {
                    if welcomed && started.elapsed() >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                    warn!(error = %error, "telemetry session ended");
                    backoff.next_delay(&mut rand::rng())
                }
            };
            debug!(?delay, "reconnecting after backoff");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn set_disconnected(&mut self) {
        self.status.lock().connected = false;
        if std::mem::take(&mut self.counted) {
            self.metrics.telemetry_connected.dec();
        }
    }

    pub(crate) fn set_connected(&mut self) {
        if !std::mem::replace(&mut self.counted, true) {
            self.metrics.telemetry_connected.inc();
        }
    }
}

/// Metric label of a connection's end, and the application code if any.
pub(crate) fn close_label(e: &quinn::ConnectionError) -> (&'static str, Option<u64>) {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(c) => {
            let code = c.error_code.into_inner();
            (
                CloseCode::from_code(code).map_or("unknown", CloseCode::label),
                Some(code),
            )
        }
        E::TimedOut => ("timed_out", None),
        E::Reset => ("reset", None),
        E::LocallyClosed => ("local", None),
        E::ConnectionClosed(_) | E::TransportError(_) | E::VersionMismatch | E::CidsExhausted => {
            ("transport_error", None)
        }
    }
}

/// Clamps a scheduler-provided interval; 0 means "unchanged".
pub(crate) fn clamp_interval(ms: u32) -> Option<u32> {
    (ms != 0).then(|| ms.clamp(MIN_REPORT_INTERVAL_MS, MAX_REPORT_INTERVAL_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_clamped_and_zero_is_unchanged() {
        assert_eq!(clamp_interval(0), None);
        assert_eq!(clamp_interval(5), Some(MIN_REPORT_INTERVAL_MS));
        assert_eq!(clamp_interval(500), Some(500));
        assert_eq!(clamp_interval(u32::MAX), Some(MAX_REPORT_INTERVAL_MS));
    }

    #[test]
    fn close_labels() {
        let app = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(0x11),
            reason: Default::default(),
        });
        assert_eq!(close_label(&app), ("unknown_node", Some(0x11)));
        assert_eq!(
            close_label(&quinn::ConnectionError::TimedOut).0,
            "timed_out"
        );
    }
}
