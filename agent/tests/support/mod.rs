//! A fake scheduler for the agent's integration tests: a real quinn server
//! speaking the telemetry protocol and a real tonic `RouteDiscovery` server,
//! both on loopback with certificates from `DevPki`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use vantage_proto::v1::route_discovery_server::{RouteDiscovery, RouteDiscoveryServer};
use vantage_proto::v1::{
    AgentControl, Alert, Hello, RejectReason, Rejection, Report, RouteRequest, RouteTable,
    SchedulerControl, Settings, TelemetryFrame, Welcome, agent_control, scheduler_control,
    telemetry_frame,
};
use vantage_shared::auth::NodeCredential;
use vantage_shared::close::CloseCode;
use vantage_shared::frame::{self, DEFAULT_MAX_FRAME};
use vantage_shared::tls::{self, ClientAuth, DevPki};

pub const TOKEN: &str = "test-enroll-token";
pub const WAIT: Duration = Duration::from_secs(20);

/// What the fake scheduler saw.
#[derive(Debug)]
pub enum Event {
    Hello(Hello),
    Report(Report, Instant),
    Alert(Alert),
    /// A telemetry connection ended; the application close code if any.
    Closed(Option<u64>),
}

/// Telemetry server state that survives restarts.
#[derive(Default)]
pub struct QuicState {
    /// Credentials the fake scheduler knows.
    pub known: Mutex<HashSet<String>>,
    /// Control stream of the latest session, to push Settings.
    pub control: Mutex<Option<mpsc::Sender<SchedulerControl>>>,
    pub sessions: Mutex<u32>,
    /// Require client certificates (mTLS) and admit by certificate CN.
    pub mtls: bool,
}

pub struct FakeQuic {
    pub addr: SocketAddr,
    pub endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
}

pub fn pki(dir: &Path) -> DevPki {
    DevPki::ensure(dir, &[]).unwrap()
}

impl FakeQuic {
    pub async fn start(
        pki: &DevPki,
        addr: SocketAddr,
        interval_ms: u32,
        state: Arc<QuicState>,
        events: mpsc::UnboundedSender<Event>,
    ) -> FakeQuic {
        let tls = tls::server_config(
            tls::load_certs(&pki.server_cert).unwrap(),
            tls::load_key(&pki.server_key).unwrap(),
            &if state.mtls {
                ClientAuth::Required(Arc::new(tls::load_roots(&pki.ca_cert).unwrap()))
            } else {
                ClientAuth::None
            },
            &[vantage_proto::TELEMETRY_ALPN],
        )
        .unwrap();
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // After a restart the old socket may linger for a moment.
        let mut tries = 0;
        let endpoint = loop {
            match quinn::Endpoint::server(config.clone(), addr) {
                Ok(e) => break e,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        let addr = endpoint.local_addr().unwrap();
        let ep = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (state, events) = (state.clone(), events.clone());
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve_conn(conn, interval_ms, state, events).await;
                    }
                });
            }
        });
        FakeQuic {
            addr,
            endpoint,
            task,
        }
    }

    /// Closes every connection with SHUTTING_DOWN and stops listening.
    pub async fn stop(self) {
        self.endpoint
            .close(CloseCode::ShuttingDown.code().into(), b"restart");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.task.abort();
    }
}

async fn serve_conn(
    conn: quinn::Connection,
    interval_ms: u32,
    state: Arc<QuicState>,
    events: mpsc::UnboundedSender<Event>,
) {
    let report_close = |conn: &quinn::Connection| {
        let code = match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
            _ => None,
        };
        let _ = events.send(Event::Closed(code));
    };
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let mut buf = Vec::new();
    let Ok(Some(msg)) =
        frame::read::<AgentControl, _>(&mut recv, DEFAULT_MAX_FRAME, &mut buf).await
    else {
        return;
    };
    let Some(agent_control::Kind::Hello(hello)) = msg.kind else {
        return;
    };
    let _ = events.send(Event::Hello(hello.clone()));

    let reject = |reason: RejectReason| SchedulerControl {
        kind: Some(scheduler_control::Kind::Rejection(Rejection {
            reason: reason as i32,
            detail: format!("{reason:?}"),
        })),
    };
    let peer_cn = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().and_then(tls::peer_node_id));
    let (reply, issued) = if state.mtls {
        if peer_cn.as_deref() == Some(hello.node_id.as_str()) {
            (None, None)
        } else {
            (Some(RejectReason::IdentityMismatch), None)
        }
    } else if !hello.node_credential.is_empty() {
        if state.known.lock().unwrap().contains(&hello.node_credential) {
            (None, None)
        } else {
            (Some(RejectReason::UnknownNode), None)
        }
    } else if hello.enrollment_token == TOKEN {
        let cred = NodeCredential::issue(&hello.node_id).encode();
        state.known.lock().unwrap().insert(cred.clone());
        (None, Some(cred))
    } else {
        (Some(RejectReason::BadToken), None)
    };
    if let Some(reason) = reply {
        let _ = frame::write(&mut send, &reject(reason)).await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(
            CloseCode::from_reject(reason).code().into(),
            format!("{reason:?}").as_bytes(),
        );
        return;
    }
    let session = {
        let mut s = state.sessions.lock().unwrap();
        *s += 1;
        *s
    };
    let welcome = SchedulerControl {
        kind: Some(scheduler_control::Kind::Welcome(Welcome {
            session_id: format!("s-{session}"),
            report_interval_ms: interval_ms,
            scheduler_id: "fake".into(),
            node_credential: issued.unwrap_or_default(),
            max_frame_bytes: DEFAULT_MAX_FRAME as u32,
            role: "leader".into(),
            term: 0,
        })),
    };
    if frame::write(&mut send, &welcome).await.is_err() {
        return;
    }
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<SchedulerControl>(4);
    *state.control.lock().unwrap() = Some(ctl_tx);
    let writer_conn = conn.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = writer_conn.closed() => break,
                m = ctl_rx.recv() => match m {
                    Some(m) if frame::write(&mut send, &m).await.is_ok() => {}
                    _ => break,
                },
            }
        }
    });
    let Ok(mut uni) = conn.accept_uni().await else {
        report_close(&conn);
        return;
    };
    loop {
        match frame::read::<TelemetryFrame, _>(&mut uni, DEFAULT_MAX_FRAME, &mut buf).await {
            Ok(Some(TelemetryFrame {
                kind: Some(telemetry_frame::Kind::Report(r)),
            })) => {
                let _ = events.send(Event::Report(r, Instant::now()));
            }
            Ok(Some(TelemetryFrame {
                kind: Some(telemetry_frame::Kind::Alert(a)),
            })) => {
                let _ = events.send(Event::Alert(a));
            }
            _ => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    report_close(&conn);
}

/// Pushes a Settings frame on the latest session's control stream.
pub async fn push_settings(state: &QuicState, report_interval_ms: u32) {
    let tx = state.control.lock().unwrap().clone().unwrap();
    tx.send(SchedulerControl {
        kind: Some(scheduler_control::Kind::Settings(Settings {
            report_interval_ms,
        })),
    })
    .await
    .unwrap();
}

/// A `RouteDiscovery` server: sends the current table of `tables` whenever
/// it differs from the version the agent holds, forwards every request
/// (with its `authorization` header) to the test.
pub struct FakeRoutes {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Disco {
    stop: CancellationToken,
    tables: watch::Receiver<Option<RouteTable>>,
    requests: mpsc::UnboundedSender<(Option<String>, RouteRequest)>,
}

type TableStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<RouteTable, Status>> + Send>>;

#[tonic::async_trait]
impl RouteDiscovery for Disco {
    type StreamRoutesStream = TableStream;

    async fn stream_routes(
        &self,
        req: Request<Streaming<RouteRequest>>,
    ) -> Result<Response<TableStream>, Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no first request"))?;
        let mut sent = first.version_info;
        let _ = self.requests.send((auth.clone(), first));
        let (tx, rx) = mpsc::channel(4);
        let mut tables = self.tables.clone();
        let requests = self.requests.clone();
        let stop = self.stop.clone();
        tables.mark_changed();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("shutting down"))).await;
                        break;
                    }
                    m = inbound.message() => match m {
                        Ok(Some(r)) => { let _ = requests.send((auth.clone(), r)); }
                        _ => break,
                    },
                    c = tables.changed() => {
                        if c.is_err() { break; }
                        let t = tables.borrow_and_update().clone();
                        if let Some(t) = t.filter(|t| t.version != sent) {
                            sent = t.version;
                            if tx.send(Ok(t)).await.is_err() { break; }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl FakeRoutes {
    pub async fn start(
        pki: &DevPki,
        addr: SocketAddr,
        tables: watch::Receiver<Option<RouteTable>>,
        requests: mpsc::UnboundedSender<(Option<String>, RouteRequest)>,
    ) -> FakeRoutes {
        Self::start_with(pki, addr, tables, requests, false).await
    }

    /// With `mtls`, clients must present a certificate from the dev CA.
    pub async fn start_with(
        pki: &DevPki,
        addr: SocketAddr,
        tables: watch::Receiver<Option<RouteTable>>,
        requests: mpsc::UnboundedSender<(Option<String>, RouteRequest)>,
        mtls: bool,
    ) -> FakeRoutes {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(&pki.server_cert).unwrap(),
            std::fs::read(&pki.server_key).unwrap(),
        );
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let server = tonic::transport::Server::builder()
            .tls_config({
                let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
                if mtls {
                    tls.client_ca_root(tonic::transport::Certificate::from_pem(
                        std::fs::read(&pki.ca_cert).unwrap(),
                    ))
                } else {
                    tls
                }
            })
            .unwrap()
            .add_service(RouteDiscoveryServer::new(Disco {
                stop: cancel.clone(),
                tables,
                requests,
            }));
        let task = tokio::spawn(async move {
            let _ = server
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned())
                .await;
        });
        FakeRoutes { addr, cancel, task }
    }

    /// Ends every open stream with UNAVAILABLE and stops listening.
    pub async fn stop(self) {
        self.cancel.cancel();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(3), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Waits for the first event matching `pick`, skipping others.
pub async fn next_event<T>(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    within: Duration,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("timed out waiting for a telemetry event")
            .expect("event channel closed");
        if let Some(t) = pick(ev) {
            return t;
        }
    }
}

pub async fn next_report(rx: &mut mpsc::UnboundedReceiver<Event>) -> (Report, Instant) {
    next_event(rx, WAIT, |e| match e {
        Event::Report(r, at) => Some((r, at)),
        _ => None,
    })
    .await
}

pub async fn next_request(
    rx: &mut mpsc::UnboundedReceiver<(Option<String>, RouteRequest)>,
) -> (Option<String>, RouteRequest) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a route request")
        .expect("request channel closed")
}

/// Minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("admin HTTP request timed out")
}

pub async fn status_json(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(addr, "/v1/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `check` every 20 ms until it holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback address with a port nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    drop(s);
    let t = std::net::TcpListener::bind(("127.0.0.1", port));
    match t {
        Ok(t) => t.local_addr().unwrap(),
        Err(_) => free_addr(),
    }
}
