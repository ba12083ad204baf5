//! One agent's telemetry connection.

use crate::app::App;
use crate::auth::Admission;
use crate::registry::{NodeEntry, NodeInfo, NodeState, Session};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{Span, debug, info, warn};
use vantage_proto::v1::{
    AgentControl, Hello, RejectReason, Rejection, SchedulerControl, TelemetryFrame, Welcome,
    agent_control, scheduler_control, telemetry_frame,
};
use vantage_shared::auth::hash_secret;
use vantage_shared::clock::now_ms;
use vantage_shared::close::CloseCode;
use vantage_shared::frame::{self, FrameError};
use vantage_shared::place::Coord;
use vantage_shared::stream::StreamPattern;
use vantage_shared::validate;

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session ended other than by an orderly close of the agent.
enum Closed {
    /// We close the connection with this code (bad input, shutdown, ...).
    Close { code: CloseCode, reason: String },
    /// The connection is gone (timeout, reset); nothing to close.
    Lost(String),
}

fn closed(code: CloseCode, reason: impl Into<String>) -> Closed {
    Closed::Close {
        code,
        reason: reason.into(),
    }
}

/// Classifies an error read from a quinn stream.
fn read_error(e: std::io::Error) -> Result<(), Closed> {
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<quinn::ReadError>());
    match inner {
        Some(quinn::ReadError::ConnectionLost(c)) => connection_end(c.clone()),
        Some(quinn::ReadError::Reset(code)) => Err(closed(
            CloseCode::ProtocolViolation,
            format!("agent reset a stream (code {code})"),
        )),
        _ => Err(Closed::Lost(e.to_string())),
    }
}

fn connection_end(e: quinn::ConnectionError) -> Result<(), Closed> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == 0 => Ok(()),
        other => Err(Closed::Lost(other.to_string())),
    }
}

fn frame_error(e: FrameError) -> Result<(), Closed> {
    match e {
        FrameError::TooLarge { .. } => Err(closed(CloseCode::FrameTooLarge, e.to_string())),
        FrameError::Decode(_) => Err(closed(CloseCode::Undecodable, e.to_string())),
        FrameError::Truncated => Err(closed(CloseCode::ProtocolViolation, e.to_string())),
        FrameError::Io(e) => read_error(e),
    }
}

pub async fn run(app: Arc<App>, conn: Connection) {
    let peer_cn = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().and_then(vantage_shared::tls::peer_node_id));
    let mut node_id: Option<String> = None;
    let mut agent_drain = false;
    let result = session(
        &app,
        &conn,
        peer_cn.as_deref(),
        &mut node_id,
        &mut agent_drain,
    )
    .await;
    let orderly = match result {
        Ok(()) => {
            info!(node_id = ?node_id, "telemetry session ended by the agent");
            conn.close(VarInt::from_u32(0), b"bye");
            true
        }
        Err(Closed::Lost(reason)) => {
            info!(node_id = ?node_id, "telemetry connection lost: {reason}");
            false
        }
        Err(Closed::Close { code, reason }) => {
            match code {
                CloseCode::Superseded | CloseCode::ShuttingDown | CloseCode::Normal => {
                    debug!(node_id = ?node_id, code = code.label(), "closing telemetry connection: {reason}")
                }
                _ => {
                    app.metrics.rejected(code.label());
                    warn!(node_id = ?node_id, code = code.label(), "closing telemetry connection: {reason}");
                }
            }
            conn.close(VarInt::from_u32(code.code()), reason.as_bytes());
            false
        }
    };
    if let Some(id) = node_id {
        end_session(&app, &id, conn.stable_id(), orderly, agent_drain);
    }
}

/// Forgets the session (if still ours). An orderly close by the agent marks
/// the node down at once; otherwise liveness decides from missed reports.
///
/// A drain the agent announced itself (SIGTERM) lasts as long as that
/// session: when it ends, however it ends, the node is down and no longer
/// draining, so the restarted agent is eligible again. (A drain ordered
/// through the API stays until an operator lifts it.) A still-draining agent
/// that reconnects announces again.
fn end_session(app: &App, node_id: &str, conn_id: usize, orderly: bool, agent_drain: bool) {
    let down = orderly || agent_drain;
    let now = now_ms();
    let ours = app
        .registry
        .update(node_id, |e| {
            let ours = e
                .session
                .as_ref()
                .and_then(|s| s.connection.as_ref())
                .is_some_and(|c| c.stable_id() == conn_id);
            if ours {
                e.session = None;
                if agent_drain {
                    e.draining = false;
                }
                if down {
                    e.state = NodeState::Down;
                    e.state_since_ms = now;
                }
            }
            ours
        })
        .unwrap_or(false);
    if ours {
        app.metrics.telemetry_sessions.dec();
        if let Some(r) = &app.recorder {
            let how = if orderly { "orderly" } else { "lost" };
            r.node(now, node_id, "disconnect", how, None);
            if down {
                r.node(now, node_id, "down", "session ended", None);
            }
        }
        if agent_drain {
            app.persist_node(node_id);
        }
        if down {
            let why = if orderly {
                "agent closed its session"
            } else {
                "draining agent's connection ended"
            };
            app.event(node_id, "down", why);
            app.trigger_replan();
        }
    }
}

async fn session(
    app: &Arc<App>,
    conn: &Connection,
    peer_cn: Option<&str>,
    node_id_out: &mut Option<String>,
    agent_drain: &mut bool,
) -> Result<(), Closed> {
    let max = app.config.max_frame_bytes;
    let mut buf = Vec::new();
    let (mut ctl_send, mut ctl_recv) =
        match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await {
            Err(_) => {
                return Err(closed(
                    CloseCode::HelloTimeout,
                    "no control stream within 5 s",
                ));
            }
            Ok(Err(e)) => return connection_end(e),
            Ok(Ok(s)) => s,
        };
    let first: AgentControl = match tokio::time::timeout(
        HELLO_TIMEOUT,
        frame::read(&mut ctl_recv, max, &mut buf),
    )
    .await
    {
        Err(_) => return Err(closed(CloseCode::HelloTimeout, "no Hello within 5 s")),
        Ok(Err(e)) => return frame_error(e),
        Ok(Ok(None)) => {
            return Err(closed(
                CloseCode::ProtocolViolation,
                "control stream ended before Hello",
            ));
        }
        Ok(Ok(Some(m))) => m,
    };
    let Some(agent_control::Kind::Hello(hello)) = first.kind else {
        return Err(closed(
            CloseCode::ProtocolViolation,
            "first control message is not Hello",
        ));
    };
    if let Err((reason, detail)) = check_hello(&hello) {
        return reject(&mut ctl_send, reason, detail).await;
    }
    let admission = match app.auth.admit(&hello, peer_cn) {
        Ok(a) => a,
        Err(refusal) => return reject(&mut ctl_send, refusal.reason, refusal.detail).await,
    };
    let node_id = hello.node_id.clone();
    Span::current().record("node_id", node_id.as_str());
    let session_id = hex::encode(rand::random::<[u8; 8]>());
    let now = now_ms();
    let info = node_info(&hello);
    let mut credential = String::new();
    let mut superseded: Option<Connection> = None;
    app.registry.upsert(
        &node_id,
        || NodeEntry::new(node_id.clone(), info.clone(), now),
        |e| {
            e.info = info.clone();
            if let Admission::Enroll(c) = &admission {
                e.credential_hash = Some(hash_secret(&c.secret));
                e.enrolled_at_ms = now;
                credential = c.encode();
            }
            superseded = e.session.take().and_then(|s| s.connection);
            e.session = Some(Session {
                id: session_id.clone(),
                started_ms: now,
                remote: conn.remote_address().to_string(),
                connection: Some(conn.clone()),
            });
        },
    );
    if let Some(old) = superseded {
        old.close(
            VarInt::from_u32(CloseCode::Superseded.code()),
            b"a newer session of this node replaced this one",
        );
    }
    // Enrollment must be durable before the agent is told its credential.
    if let Some(rec) = app.registry.with(&node_id, NodeEntry::to_record) {
        let result = if matches!(admission, Admission::Enroll(_)) {
            app.store.upsert_node(&rec).await.map_err(|e| e.to_string())
        } else {
            app.store.record(crate::store::WriteOp::NodeInfo(rec));
            Ok(())
        };
        if let Err(e) = result {
            app.registry.update(&node_id, |e| e.session = None);
            return Err(closed(
                CloseCode::ShuttingDown,
                format!("store unavailable: {e}"),
            ));
        }
    }
    *node_id_out = Some(node_id.clone());
    app.metrics.telemetry_sessions.inc();
    let welcome = SchedulerControl {
        kind: Some(scheduler_control::Kind::Welcome(Welcome {
            session_id: session_id.clone(),
            report_interval_ms: app.report_interval_ms(),
            scheduler_id: app.config.scheduler_id.clone(),
            node_credential: credential.clone(),
            max_frame_bytes: max as u32,
        })),
    };
    frame::write(&mut ctl_send, &welcome).await.map_err(|e| {
        closed(
            CloseCode::ProtocolViolation,
            format!("cannot send Welcome: {e}"),
        )
    })?;
    info!(
        node_id,
        session_id,
        enrolled = !credential.is_empty(),
        agent_version = hello.agent_version,
        held_route_version = hello.route_version,
        "agent joined"
    );
    if !credential.is_empty() {
        app.event(&node_id, "enrolled", &conn.remote_address().to_string());
    }
    if let Some(r) = &app.recorder {
        r.node(now, &node_id, "connect", &session_id, Some(&info));
    }
    app.trigger_replan();

    let mut telemetry = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_uni()).await {
        Err(_) => {
            return Err(closed(
                CloseCode::ProtocolViolation,
                "no telemetry stream within 5 s of Welcome",
            ));
        }
        Ok(Err(e)) => return connection_end(e),
        Ok(Ok(s)) => s,
    };
    let mut ctl_buf = Vec::new();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => {
                return Err(closed(CloseCode::ShuttingDown, "scheduler shutting down"));
            }
            msg = frame::read::<TelemetryFrame, _>(&mut telemetry, max, &mut buf) => {
                match msg {
                    Ok(Some(f)) => handle_frame(app, &node_id, f, buf.len())?,
                    Ok(None) => return Err(closed(CloseCode::ProtocolViolation, "telemetry stream finished")),
                    Err(e) => return frame_error(e),
                }
            }
            msg = frame::read::<AgentControl, _>(&mut ctl_recv, max, &mut ctl_buf) => {
                match msg {
                    Ok(Some(AgentControl { kind: Some(agent_control::Kind::Draining(d)) })) => {
                        info!(grace_ms = d.grace_period_ms, "agent announced draining");
                        let by_operator = app.registry.with(&node_id, |e| e.draining).unwrap_or(false);
                        app.drain(&node_id, "agent");
                        // Lifted when this session ends (see end_session),
                        // unless an operator drained the node before.
                        *agent_drain |= !by_operator;
                    }
                    Ok(Some(_)) => return Err(closed(CloseCode::ProtocolViolation, "unexpected control message")),
                    Ok(None) => {
                        // Control stream finished: wait for the telemetry stream to end.
                        drain_remaining(app, &node_id, &mut telemetry, max, &mut buf).await?;
                        return Ok(());
                    }
                    Err(e) => return frame_error(e),
                }
            }
        }
    }
}

/// Reads what is left on the telemetry stream after the agent finished its
/// control stream (orderly shutdown).
async fn drain_remaining(
    app: &Arc<App>,
    node_id: &str,
    telemetry: &mut RecvStream,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<(), Closed> {
    loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            frame::read::<TelemetryFrame, _>(telemetry, max, buf),
        )
        .await
        {
            Ok(Ok(Some(f))) => handle_frame(app, node_id, f, buf.len())?,
            _ => return Ok(()),
        }
    }
}

fn handle_frame(app: &App, node_id: &str, f: TelemetryFrame, len: usize) -> Result<(), Closed> {
    match f.kind {
        Some(telemetry_frame::Kind::Report(r)) => {
            validate::report(&r).map_err(|e| closed(CloseCode::InvalidValue, e.to_string()))?;
            let now = now_ms();
            if let Some(rec) = &app.recorder {
                rec.report(now, node_id, &r);
            }
            let finished = app
                .registry
                .update(node_id, |e| e.apply_report(r, now))
                .flatten();
            if let Some(minute) = finished {
                // Once a minute per node: the roll-up and the last-seen time.
                app.store
                    .record(crate::store::WriteOp::Rollup(minute.to_store(node_id)));
                app.store.record(crate::store::WriteOp::NodeSeen {
                    node_id: node_id.to_owned(),
                    at_ms: now,
                });
            }
            app.metrics.reports.inc();
            app.metrics.report_bytes.inc_by(len as u64);
            Ok(())
        }
        Some(telemetry_frame::Kind::Alert(a)) => {
            validate::alert(&a).map_err(|e| closed(CloseCode::InvalidValue, e.to_string()))?;
            let kind = vantage_proto::v1::AlertKind::try_from(a.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("ALERT_KIND_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| "unknown".to_owned());
            info!(
                kind,
                subject = a.subject,
                detail = a.detail,
                value = a.value,
                "alert"
            );
            app.metrics
                .alerts
                .get_or_create(&crate::metrics::KindLabel { kind: kind.clone() })
                .inc();
            app.registry.update(node_id, |e| e.alerts += 1);
            if let Some(r) = &app.recorder {
                r.alert(now_ms(), node_id, &kind, &a);
            }
            app.event(
                node_id,
                &format!("alert:{kind}"),
                &format!("{} {}", a.subject, a.detail),
            );
            app.trigger_replan();
            Ok(())
        }
        None => Err(closed(CloseCode::Undecodable, "empty telemetry frame")),
    }
}

async fn reject(send: &mut SendStream, reason: RejectReason, detail: String) -> Result<(), Closed> {
    let msg = SchedulerControl {
        kind: Some(scheduler_control::Kind::Rejection(Rejection {
            reason: reason as i32,
            detail: detail.clone(),
        })),
    };
    if frame::write(send, &msg).await.is_ok() && send.finish().is_ok() {
        // Give the agent a moment to read the rejection before the close.
        let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    }
    debug!(?reason, "hello rejected");
    Err(closed(CloseCode::from_reject(reason), detail))
}

/// Validates the self-description in a Hello.
fn check_hello(h: &Hello) -> Result<(), (RejectReason, String)> {
    if h.protocol_version != vantage_proto::PROTOCOL_VERSION {
        return Err((
            RejectReason::VersionUnsupported,
            format!(
                "protocol version {} not supported (this scheduler speaks {})",
                h.protocol_version,
                vantage_proto::PROTOCOL_VERSION
            ),
        ));
    }
    let bad = |m: String| Err((RejectReason::InvalidHello, m));
    if !vantage_shared::auth::valid_node_id(&h.node_id) {
        return bad(format!("invalid node id {:?}", h.node_id));
    }
    if !(h.lat == 0.0 && h.lon == 0.0) && Coord::new(h.lat, h.lon).is_none() {
        return bad(format!("coordinates out of range: {}, {}", h.lat, h.lon));
    }
    if !h.capacity_mbps.is_finite() || h.capacity_mbps <= 0.0 || h.capacity_mbps > 1e7 {
        return bad(format!("capacity_mbps {} out of range", h.capacity_mbps));
    }
    if h.public_url.len() > 512 || h.region.len() > 64 || h.static_origins.len() > 256 {
        return bad("field too long".into());
    }
    for o in &h.static_origins {
        if StreamPattern::parse(&o.pattern).is_err() {
            return bad(format!("invalid origin pattern {:?}", o.pattern));
        }
        if !(o.url.starts_with("http://") || o.url.starts_with("https://")) {
            return bad(format!("origin URL must be http(s): {:?}", o.url));
        }
    }
    Ok(())
}

fn node_info(h: &Hello) -> NodeInfo {
    let coord = if h.lat == 0.0 && h.lon == 0.0 {
        None
    } else {
        Coord::new(h.lat, h.lon)
    };
    NodeInfo {
        region: h.region.clone(),
        coord,
        capacity_mbps: h.capacity_mbps,
        public_url: h.public_url.clone(),
        probe_addr: h.probe_addr.clone(),
        agent_version: h.agent_version.clone(),
        static_origins: h
            .static_origins
            .iter()
            .filter_map(|o| {
                StreamPattern::parse(&o.pattern)
                    .ok()
                    .map(|p| (p, o.url.clone()))
            })
            .collect::<BTreeMap<_, _>>(),
    }
}
