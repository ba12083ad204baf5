//! The protocol of one agent's telemetry connection (DESIGN §3), as a state
//! machine the event loop ([`super::driver`]) feeds with connection events:
//!
//! `Handshake` (TLS) → `Hello` (control stream and its first frame within
//! 5 s) → `LookingUp` (several replicas only: the store is asked about a
//! node this replica does not know or cannot admit yet) → `Admitting` (only
//! while the store makes an enrollment durable) →
//! `Telemetry` (Welcome sent; the report stream within 5 s) → `Running`
//! (reports and alerts; a `Draining` announcement on the control stream) →
//! `Finishing` (the agent finished its control stream: what is left of the
//! report stream is read for up to 2 s) → `Ended`. A bad Hello goes
//! `Rejecting` (a typed `Rejection`, up to 200 ms for the agent to read it)
//! before the close. What the messages do to the scheduler (Hello checks,
//! reports and alerts into the registry) is in [`super::apply`]; here,
//! `join` holds the Hello, Welcome and rejection steps and `inbound` the
//! reassembly of a stream's frames.

mod inbound;
mod join;

use super::apply::{check_hello, end_session, handle_frame, node_info};
use super::{Command, Enrolled, Links, SessionLink};
use crate::app::App;
use crate::auth::Admission;
use crate::registry::{NodeEntry, NodeInfo, Session as RegistrySession};
use bytes::Bytes;
use inbound::Inbound;
use quinn_proto::{Connection, ConnectionError, Dir, Event, StreamEvent, VarInt, WriteError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use vantage_proto::v1::{
    AgentControl, RejectReason, Rejection, SchedulerControl, TelemetryFrame, Welcome,
    agent_control, scheduler_control,
};
use vantage_shared::auth::hash_secret;
use vantage_shared::clock::now_ms;
use vantage_shared::close::CloseCode;
use vantage_shared::frame;

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a rejection waits for the agent to read it before the close.
const REJECT_LINGER: Duration = Duration::from_millis(200);
/// How long the rest of the report stream is read after an orderly end.
const FINISH_LINGER: Duration = Duration::from_secs(2);

/// Why this side closes a connection: the code the agent sees and the reason.
pub(super) type Refusal = (CloseCode, String);

pub(super) fn refusal(code: CloseCode, reason: impl Into<String>) -> Refusal {
    (code, reason.into())
}

/// What the event loop hands a session along with an event.
pub(super) struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub links: &'a Arc<Links>,
    pub now: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Hello,
    LookingUp,
    Admitting,
    Telemetry,
    Running,
    Finishing,
    Rejecting,
    Ended,
}

/// An admitted node waiting for the store before its Welcome.
struct Joining {
    node_id: String,
    session_id: String,
    credential: String,
    info: NodeInfo,
    agent_version: String,
    held_route_version: u64,
}

pub(super) struct Session {
    /// The connection's id (see [`SessionLink::id`]).
    id: u64,
    remote: SocketAddr,
    phase: Phase,
    deadline: Option<Instant>,
    /// Set once the Welcome went out: the registry entry this session feeds.
    node_id: Option<String>,
    joining: Option<Joining>,
    /// The agent announced draining itself (see [`end_session`]).
    agent_drain: bool,
    /// The close code and detail of a rejection being delivered.
    rejection: Option<Refusal>,
    /// The Hello waiting for a store lookup, and whether one was made.
    looking_up: Option<AgentControl>,
    looked_up: bool,
    control: Inbound,
    control_out: Vec<u8>,
    reports: Inbound,
}

impl Session {
    pub(super) fn new(id: u64, remote: SocketAddr) -> Self {
        Self {
            id,
            remote,
            phase: Phase::Handshake,
            deadline: None,
            node_id: None,
            joining: None,
            agent_drain: false,
            rejection: None,
            looking_up: None,
            looked_up: false,
            control: Inbound::default(),
            control_out: Vec::new(),
            reports: Inbound::default(),
        }
    }

    /// When [`Session::on_deadline`] is due.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub(super) fn on_event(&mut self, cx: &Ctx<'_>, conn: &mut Connection, event: Event) {
        if self.phase == Phase::Ended {
            return;
        }
        match event {
            Event::Connected => {
                cx.app.metrics.telemetry_connections.inc();
                self.phase = Phase::Hello;
                self.deadline = Some(cx.now + HELLO_TIMEOUT);
                self.pump(cx, conn);
            }
            Event::ConnectionLost { reason } => self.lost(cx, reason),
            Event::Stream(StreamEvent::Opened { .. } | StreamEvent::Readable { .. }) => {
                self.pump(cx, conn)
            }
            Event::Stream(StreamEvent::Writable { .. }) => {
                if let Err((code, reason)) = self.flush_control(conn) {
                    self.close(cx, conn, code, reason);
                }
            }
            Event::Stream(StreamEvent::Finished { id } | StreamEvent::Stopped { id, .. })
                if self.phase == Phase::Rejecting && Some(id) == self.control.id =>
            {
                self.deliver_rejection(cx, conn)
            }
            _ => {}
        }
    }

    /// The deadline of the current phase passed.
    pub(super) fn on_deadline(&mut self, cx: &Ctx<'_>, conn: &mut Connection) {
        self.deadline = None;
        match self.phase {
            Phase::Hello if self.control.id.is_none() => self.close(
                cx,
                conn,
                CloseCode::HelloTimeout,
                "no control stream within 5 s".into(),
            ),
            Phase::Hello => self.close(
                cx,
                conn,
                CloseCode::HelloTimeout,
                "no Hello within 5 s".into(),
            ),
            Phase::Telemetry => self.close(
                cx,
                conn,
                CloseCode::ProtocolViolation,
                "no telemetry stream within 5 s of Welcome".into(),
            ),
            Phase::Rejecting => self.deliver_rejection(cx, conn),
            Phase::Finishing => self.end_orderly(cx, conn),
            _ => {}
        }
    }

    /// The store's answer to an enrollment.
    pub(super) fn on_admitted(&mut self, cx: &Ctx<'_>, conn: &mut Connection, result: Enrolled) {
        if self.phase != Phase::Admitting {
            return;
        }
        match result {
            Enrolled::Done => self.welcome(cx, conn),
            Enrolled::Duplicate(stored) => {
                // The credential another replica issued stays in force.
                if let Some(j) = self.joining.take() {
                    let id = self.id;
                    cx.app.registry.update(&j.node_id, |e| {
                        e.credential_hash = stored.as_ref().and_then(|r| r.credential_hash.clone());
                        if e.session
                            .as_ref()
                            .and_then(|s| s.connection.as_ref())
                            .is_some_and(|c| c.id() == id)
                        {
                            e.session = None;
                        }
                    });
                    let detail = format!(
                        "node id {:?} was enrolled through another replica; present its credential",
                        j.node_id
                    );
                    let _ = self.reject(cx, conn, RejectReason::DuplicateNode, detail);
                }
            }
            Enrolled::Failed(e) => self.close(
                cx,
                conn,
                CloseCode::ShuttingDown,
                format!("store unavailable: {e}"),
            ),
        }
    }

    /// The store's answer to a lookup (several replicas): the node as
    /// another replica enrolled it, if it did; the Hello is checked again.
    pub(super) fn on_looked_up(
        &mut self,
        cx: &Ctx<'_>,
        conn: &mut Connection,
        result: Result<Option<crate::store::NodeRecord>, String>,
    ) {
        if self.phase != Phase::LookingUp {
            return;
        }
        let Some(hello) = self.looking_up.take() else {
            return;
        };
        self.looked_up = true;
        self.phase = Phase::Hello;
        match result {
            Ok(Some(rec)) => {
                let id = rec.id.clone();
                let hash = rec.credential_hash.clone();
                let drained = rec.drained;
                if cx
                    .app
                    .registry
                    .update(&id, |e| {
                        if hash.is_some() {
                            e.credential_hash = hash.clone();
                        }
                        e.draining |= drained;
                    })
                    .is_none()
                {
                    cx.app.registry.insert(crate::app::entry_of(rec));
                }
            }
            Ok(None) => {}
            Err(e) => {
                return self.close(
                    cx,
                    conn,
                    CloseCode::ShuttingDown,
                    format!("store unavailable: {e}"),
                );
            }
        }
        if let Err((code, reason)) = self.hello(cx, conn, hello) {
            self.close(cx, conn, code, reason);
        }
    }

    /// The connection is gone from the endpoint; ends the session if nothing
    /// else did.
    pub(super) fn on_drained(&mut self, cx: &Ctx<'_>) {
        if self.phase != Phase::Ended {
            info!(remote = %self.remote, node_id = ?self.node_id, "telemetry connection drained");
            self.end(cx, false);
        }
    }

    /// Closes the connection with `code` (bad input, superseded, shutdown).
    pub(super) fn close(
        &mut self,
        cx: &Ctx<'_>,
        conn: &mut Connection,
        code: CloseCode,
        reason: String,
    ) {
        if self.phase == Phase::Ended {
            return;
        }
        match code {
            CloseCode::Superseded | CloseCode::ShuttingDown | CloseCode::Normal => {
                debug!(remote = %self.remote, node_id = ?self.node_id, code = code.label(), "closing telemetry connection: {reason}")
            }
            _ => {
                cx.app.metrics.rejected(code.label());
                warn!(remote = %self.remote, node_id = ?self.node_id, code = code.label(), "closing telemetry connection: {reason}");
            }
        }
        conn.close(
            cx.now,
            VarInt::from_u32(code.code()),
            Bytes::from(reason.into_bytes()),
        );
        self.end(cx, false);
    }

    fn end_orderly(&mut self, cx: &Ctx<'_>, conn: &mut Connection) {
        info!(remote = %self.remote, node_id = ?self.node_id, "telemetry session ended by the agent");
        conn.close(cx.now, VarInt::from_u32(0), Bytes::from_static(b"bye"));
        self.end(cx, true);
    }

    fn lost(&mut self, cx: &Ctx<'_>, reason: ConnectionError) {
        match reason {
            _ if self.phase == Phase::Handshake => {
                cx.app.metrics.rejected("handshake");
                warn!(remote = %self.remote, "QUIC handshake failed: {reason}");
                self.phase = Phase::Ended;
            }
            ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == 0 => {
                info!(remote = %self.remote, node_id = ?self.node_id, "telemetry session ended by the agent");
                self.end(cx, true);
            }
            other => {
                info!(remote = %self.remote, node_id = ?self.node_id, "telemetry connection lost: {other}");
                self.end(cx, false);
            }
        }
    }

    fn end(&mut self, cx: &Ctx<'_>, orderly: bool) {
        self.phase = Phase::Ended;
        self.deadline = None;
        if let Some(j) = self.joining.take() {
            // Admitted but never welcomed: forget the session it registered.
            let id = self.id;
            cx.app.registry.update(&j.node_id, |e| {
                if e.session
                    .as_ref()
                    .and_then(|s| s.connection.as_ref())
                    .is_some_and(|c| c.id() == id)
                {
                    e.session = None;
                }
            });
        }
        if let Some(node_id) = self.node_id.take() {
            end_session(cx.app, &node_id, self.id, orderly, self.agent_drain);
        }
    }

    /// Accepts the streams the current phase expects, reads what arrived
    /// and acts on every complete frame.
    fn pump(&mut self, cx: &Ctx<'_>, conn: &mut Connection) {
        if let Err((code, reason)) = self.try_pump(cx, conn) {
            self.close(cx, conn, code, reason);
        }
    }

    fn try_pump(&mut self, cx: &Ctx<'_>, conn: &mut Connection) -> Result<(), Refusal> {
        let max = cx.app.config.max_frame_bytes;
        if self.phase == Phase::Hello && self.control.id.is_none() {
            self.control.id = conn.streams().accept(Dir::Bi);
        }
        if self.phase == Phase::Telemetry && self.reports.id.is_none() {
            self.reports.id = conn.streams().accept(Dir::Uni);
            if self.reports.id.is_some() {
                self.phase = Phase::Running;
                self.deadline = None;
            }
        }
        self.control.pull(conn)?;
        match self.phase {
            Phase::Hello => match self.control.next::<AgentControl>(max)? {
                Some((first, _)) => return self.hello(cx, conn, first),
                None if self.control.ended() => {
                    return Err(refusal(
                        CloseCode::ProtocolViolation,
                        "control stream ended before Hello",
                    ));
                }
                None => return Ok(()),
            },
            // Control messages wait for the report stream (a Draining or the
            // end of the control stream refers to a running session).
            Phase::Running => self.control_frames(cx, max)?,
            _ => {}
        }
        if matches!(self.phase, Phase::Running | Phase::Finishing) {
            self.report_frames(cx, conn, max)?;
        }
        Ok(())
    }

    /// Control messages after the Welcome: only `Draining`, then the end of
    /// the stream (the agent's orderly shutdown).
    fn control_frames(&mut self, cx: &Ctx<'_>, max: usize) -> Result<(), Refusal> {
        while let Some((msg, _)) = self.control.next::<AgentControl>(max)? {
            let Some(agent_control::Kind::Draining(d)) = msg.kind else {
                return Err(refusal(
                    CloseCode::ProtocolViolation,
                    "unexpected control message",
                ));
            };
            let node_id = self.node_id.as_deref().unwrap_or_default();
            info!(
                node_id,
                grace_ms = d.grace_period_ms,
                "agent announced draining"
            );
            let by_operator = cx
                .app
                .registry
                .with(node_id, |e| e.draining)
                .unwrap_or(false);
            cx.app.drain(node_id, "agent");
            // Lifted when this session ends (see end_session), unless an
            // operator drained the node before.
            self.agent_drain |= !by_operator;
        }
        if self.control.ended() {
            // Wait (briefly) for the rest of the report stream.
            self.phase = Phase::Finishing;
            self.deadline = Some(cx.now + FINISH_LINGER);
        }
        Ok(())
    }

    fn report_frames(
        &mut self,
        cx: &Ctx<'_>,
        conn: &mut Connection,
        max: usize,
    ) -> Result<(), Refusal> {
        let pulled = self.reports.pull(conn);
        let node_id = self.node_id.as_deref().unwrap_or_default();
        if self.phase == Phase::Finishing {
            // Whatever is complete still counts; a broken tail ends the session.
            while let Ok(Some((f, len))) = self.reports.next::<TelemetryFrame>(max) {
                handle_frame(cx.app, node_id, f, len)?;
            }
            if pulled.is_err() || self.reports.finished {
                self.end_orderly(cx, conn);
            }
            return Ok(());
        }
        pulled?;
        while let Some((f, len)) = self.reports.next::<TelemetryFrame>(max)? {
            handle_frame(cx.app, node_id, f, len)?;
        }
        if self.reports.ended() {
            return Err(refusal(
                CloseCode::ProtocolViolation,
                "telemetry stream finished",
            ));
        }
        Ok(())
    }

    fn flush_control(&mut self, conn: &mut Connection) -> Result<(), Refusal> {
        let Some(id) = self.control.id else {
            return Ok(());
        };
        while !self.control_out.is_empty() {
            match conn.send_stream(id).write(&self.control_out) {
                Ok(n) => {
                    self.control_out.drain(..n);
                }
                Err(WriteError::Blocked) => break,
                Err(e) => {
                    return Err(refusal(
                        CloseCode::ProtocolViolation,
                        format!("cannot send on the control stream: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }
}
