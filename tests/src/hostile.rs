//! A hostile telemetry client: real QUIC with the right ALPN and a trusted
//! certificate chain, but garbage, oversized frames, out-of-range values or
//! somebody else's identity on the wire. Every attempt returns how the
//! scheduler ended the connection ([`Closed`]), so a test can assert the
//! `CloseCode` of each.

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, ConnectionError, Endpoint};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vantage_proto::v1::{
    AgentControl, Hello, Load, PathMeasurement, Rejection, Report, SchedulerControl,
    TelemetryFrame, agent_control, scheduler_control, telemetry_frame,
};
use vantage_proto::{PROTOCOL_VERSION, TELEMETRY_ALPN};
use vantage_shared::frame::{self, DEFAULT_MAX_FRAME};

/// How long to wait for the scheduler to close a bad connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a connection ended.
#[derive(Debug, Clone)]
pub struct Closed {
    /// QUIC application error code, when the peer closed at the application level.
    pub code: Option<u64>,
    /// Reason phrase of the application close.
    pub reason: String,
    /// Any rejection frame read from the control stream before the close.
    pub rejection: Option<Rejection>,
    /// Human-readable description of the end (for failure messages).
    pub how: String,
}

impl Closed {
    fn from_error(e: ConnectionError, rejection: Option<Rejection>) -> Closed {
        match e {
            ConnectionError::ApplicationClosed(a) => Closed {
                code: Some(a.error_code.into_inner()),
                reason: String::from_utf8_lossy(&a.reason).into_owned(),
                rejection,
                how: "application close".into(),
            },
            other => Closed {
                code: None,
                reason: String::new(),
                rejection,
                how: format!("{other}"),
            },
        }
    }

    fn still_open(rejection: Option<Rejection>) -> Closed {
        Closed {
            code: None,
            reason: String::new(),
            rejection,
            how: format!("connection still open {CLOSE_TIMEOUT:?} after the bad input"),
        }
    }
}

/// A Hello as an agent would send it.
pub fn hello(node_id: &str) -> Hello {
    Hello {
        node_id: node_id.to_owned(),
        protocol_version: PROTOCOL_VERSION,
        agent_version: "hostile-test/0".into(),
        region: "test".into(),
        lat: 10.0,
        lon: 10.0,
        capacity_mbps: 100.0,
        public_url: "http://127.0.0.1:9/".into(),
        ..Default::default()
    }
}

/// A report that passes validation (one path, light load).
pub fn valid_report(seq: u64) -> Report {
    Report {
        seq,
        agent_time_ms: crate::clock_ms() as i64,
        load: Some(Load {
            cpu: 0.1,
            mem_used_bytes: 1 << 20,
            mem_total_bytes: 1 << 30,
            ..Default::default()
        }),
        paths: vec![PathMeasurement {
            target_node_id: "somewhere".into(),
            target_addr: "127.0.0.1:9".into(),
            rtt_ewma_ms: 10.0,
            rtt_p50_ms: 10.0,
            rtt_p95_ms: 12.0,
            loss: 0.0,
            jitter_ms: 1.0,
            samples: 10,
            last_success_age_ms: 100,
        }],
        ..Default::default()
    }
}

pub struct HostileClient {
    endpoint: Endpoint,
    server: SocketAddr,
}

impl std::fmt::Debug for HostileClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostileClient")
            .field("server", &self.server)
            .finish()
    }
}

impl HostileClient {
    /// A client trusting `ca` (the scheduler's dev CA), speaking
    /// `vantage-telemetry/1` to `server`.
    pub fn new(ca: &Path, server: SocketAddr) -> HostileClient {
        let roots = vantage_shared::tls::load_roots(ca)
            .unwrap_or_else(|e| panic!("dev CA {}: {e}", ca.display()));
        let tls = vantage_shared::tls::client_config(roots, None, &[TELEMETRY_ALPN])
            .unwrap_or_else(|e| panic!("client tls: {e}"));
        let quic = QuicClientConfig::try_from(tls).unwrap_or_else(|e| panic!("quic tls: {e}"));
        let mut endpoint = Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap_or_else(|e| panic!("client endpoint: {e}"));
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        HostileClient { endpoint, server }
    }

    /// A fresh connection (TLS and ALPN succeed: only the payload is bad).
    pub async fn connect(&self) -> Connection {
        let connecting = self
            .endpoint
            .connect(self.server, "localhost")
            .unwrap_or_else(|e| panic!("connect: {e}"));
        match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("QUIC handshake with {} failed: {e}", self.server),
            Err(_) => panic!("QUIC handshake with {} timed out", self.server),
        }
    }

    /// Writes `bytes` on a new control stream and waits for the close.
    pub async fn send_raw_control(&self, bytes: &[u8]) -> Closed {
        let conn = self.connect().await;
        let (mut send, _recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return Closed::from_error(e, None),
        };
        // The scheduler may close before everything is written.
        let _ = send.write_all(bytes).await;
        wait_closed(&conn, None).await
    }

    /// Random-looking bytes inside a small frame: undecodable protobuf.
    pub async fn send_garbage(&self) -> Closed {
        let mut bytes = vec![0, 0, 0, 24];
        bytes.extend(std::iter::repeat_n(0xff_u8, 24));
        self.send_raw_control(&bytes).await
    }

    /// A length prefix announcing 1 MiB (> 64 KiB), then a few bytes.
    pub async fn send_oversized(&self) -> Closed {
        let mut bytes = (1u32 << 20).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 64]);
        self.send_raw_control(&bytes).await
    }

    /// Sends `hello` and reads the answer. On a Welcome the connection and
    /// its streams are returned for further abuse; on a rejection, the close.
    pub async fn hello(&self, hello: Hello) -> HelloOutcome {
        let conn = self.connect().await;
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return HelloOutcome::Closed(Closed::from_error(e, None)),
        };
        let msg = AgentControl {
            kind: Some(agent_control::Kind::Hello(hello)),
        };
        if let Err(e) = frame::write(&mut send, &msg).await {
            let _ = e;
            return HelloOutcome::Closed(wait_closed(&conn, None).await);
        }
        let mut buf = Vec::new();
        let answer = tokio::time::timeout(
            CLOSE_TIMEOUT,
            frame::read::<SchedulerControl, _>(&mut recv, DEFAULT_MAX_FRAME, &mut buf),
        )
        .await;
        match answer {
            Ok(Ok(Some(SchedulerControl {
                kind: Some(scheduler_control::Kind::Welcome(w)),
            }))) => HelloOutcome::Welcome {
                credential: w.node_credential,
                conn,
                _control: (send, recv),
            },
            Ok(Ok(Some(SchedulerControl {
                kind: Some(scheduler_control::Kind::Rejection(r)),
            }))) => HelloOutcome::Closed(wait_closed(&conn, Some(r)).await),
            _ => HelloOutcome::Closed(wait_closed(&conn, None).await),
        }
    }

    /// Enrolls `node_id` with `token`, then sends `report` on the telemetry
    /// stream and waits for the close. Returns the credential issued (if
    /// any) and how the connection ended.
    pub async fn enroll_then_report(
        &self,
        node_id: &str,
        token: &str,
        report: Report,
    ) -> (Option<String>, Closed) {
        let mut h = hello(node_id);
        h.enrollment_token = token.to_owned();
        let (credential, conn) = match self.hello(h).await {
            HelloOutcome::Welcome {
                credential, conn, ..
            } => (credential, conn),
            HelloOutcome::Closed(c) => {
                panic!("enrolling {node_id} with the real token was refused: {c:?}")
            }
        };
        let mut uni = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => return (Some(credential), Closed::from_error(e, None)),
        };
        let msg = TelemetryFrame {
            kind: Some(telemetry_frame::Kind::Report(report)),
        };
        let _ = frame::write(&mut uni, &msg).await;
        let closed = wait_closed(&conn, None).await;
        (Some(credential).filter(|c| !c.is_empty()), closed)
    }

    /// Closes the endpoint.
    pub async fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Result of a Hello.
pub enum HelloOutcome {
    Welcome {
        credential: String,
        conn: Connection,
        _control: (quinn::SendStream, quinn::RecvStream),
    },
    Closed(Closed),
}

impl std::fmt::Debug for HelloOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloOutcome::Welcome { credential, .. } => f
                .debug_struct("Welcome")
                .field("credential_len", &credential.len())
                .finish(),
            HelloOutcome::Closed(c) => f.debug_tuple("Closed").field(c).finish(),
        }
    }
}

async fn wait_closed(conn: &Connection, rejection: Option<Rejection>) -> Closed {
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.closed()).await {
        Ok(e) => Closed::from_error(e, rejection),
        Err(_) => {
            conn.close(0u32.into(), b"test gave up");
            Closed::still_open(rejection)
        }
    }
}

/// The bytes of one frame holding `msg` (for hand-made sequences).
pub fn frame_bytes<M: prost::Message>(msg: &M) -> Bytes {
    frame::encode(msg)
}
