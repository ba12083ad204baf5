//! One telemetry session: connect, Hello → Welcome/Rejection, then reports
//! and alerts until the connection ends or the agent shuts down.

use super::alert::ALERT_MAX_AGE_MS;
use super::{
    CONNECT_TIMEOUT, DEFAULT_REPORT_INTERVAL_MS, HELLO_TIMEOUT, Outcome, TelemetryClient,
    TelemetryError, clamp_interval, close_label,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, info, warn};
use vantage_proto::v1::{
    AgentControl, Alert, ControlPath, Draining, Load, RejectReason, Report, SchedulerControl,
    TelemetryFrame, Welcome, agent_control, scheduler_control, telemetry_frame,
};
use vantage_shared::clock::now_ms;
use vantage_shared::close::CloseCode;
use vantage_shared::frame::{self, DEFAULT_MAX_FRAME};

fn ticker(interval_ms: u32, first: Instant) -> Interval {
    let period = Duration::from_millis(u64::from(interval_ms));
    let mut t = tokio::time::interval_at(first, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

impl TelemetryClient {
    async fn resolve(&self) -> Result<SocketAddr, TelemetryError> {
        let hp = match &self.target.connect {
            super::Connect::Addr(a) => return Ok(*a),
            super::Connect::Name(hp) => hp,
        };
        let addr = hp.to_string();
        let mut addrs =
            tokio::net::lookup_host(addr.as_str())
                .await
                .map_err(|e| TelemetryError::Resolve {
                    addr: addr.clone(),
                    message: e.to_string(),
                })?;
        let first = addrs.next();
        drop(addrs);
        first.ok_or(TelemetryError::Resolve {
            addr,
            message: "no addresses".to_owned(),
        })
    }

    /// Runs one session to its end.
    pub(crate) async fn session(&mut self, cancel: &CancellationToken) -> Outcome {
        let failed = |error| Outcome::Ended {
            welcomed: false,
            error,
        };
        let addr = match self.resolve().await {
            Ok(a) => a,
            Err(e) => {
                self.metrics.connect_result("error");
                return failed(e);
            }
        };
        debug!(%addr, "connecting to the scheduler");
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = match quinn::Endpoint::client(bind) {
            Ok(e) => e,
            Err(e) => {
                self.metrics.connect_result("error");
                return failed(TelemetryError::Endpoint(e.to_string()));
            }
        };
        // Token mode without a credential yet: one session enrolls at a time
        // (several replicas would each issue a credential); the others wait
        // and then present the credential it stored.
        let enrolling = if !self.identity.is_mtls() && self.identity.credential().is_none() {
            tokio::select! {
                _ = cancel.cancelled() => return Outcome::Shutdown,
                g = self.identity.enrollment() => Some(g),
            }
        } else {
            None
        };
        let connecting =
            match endpoint.connect_with(self.quic.clone(), addr, &self.target.server_name) {
                Ok(c) => c,
                Err(e) => {
                    self.metrics.connect_result("error");
                    return failed(e.into());
                }
            };
        let conn = tokio::select! {
            _ = cancel.cancelled() => return Outcome::Shutdown,
            r = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    self.metrics.connect_result("error");
                    return failed(e.into());
                }
                Err(_) => {
                    self.metrics.connect_result("error");
                    return failed(TelemetryError::ConnectTimeout(CONNECT_TIMEOUT));
                }
            },
        };
        debug!(%addr, "QUIC connection established");

        let outcome = self.on_connection(&conn, cancel, enrolling).await;
        match &outcome {
            Outcome::Shutdown => {
                conn.close(CloseCode::Normal.code().into(), b"shutdown");
                // Let the close frame leave before the endpoint goes away.
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            _ => {
                // Learn why the connection ended (the scheduler closes it
                // after a rejection), record and log the code.
                let reason = match conn.close_reason() {
                    Some(r) => r,
                    None => match tokio::time::timeout(Duration::from_secs(1), conn.closed()).await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            conn.close(
                                CloseCode::ProtocolViolation.code().into(),
                                b"session ended",
                            );
                            quinn::ConnectionError::LocallyClosed
                        }
                    },
                };
                let (label, code) = close_label(&reason);
                if label != "local" {
                    self.metrics.closed(label);
                }
                match (&reason, code) {
                    (quinn::ConnectionError::ApplicationClosed(c), Some(code)) => warn!(
                        code = format_args!("{code:#x}"),
                        label,
                        reason = %String::from_utf8_lossy(&c.reason),
                        "scheduler closed the telemetry connection"
                    ),
                    (quinn::ConnectionError::TimedOut, _) => {
                        warn!("scheduler unreachable: telemetry connection timed out")
                    }
                    _ => info!(label, error = %reason, "telemetry connection ended"),
                }
            }
        }
        outcome
    }

    async fn on_connection(
        &mut self,
        conn: &quinn::Connection,
        cancel: &CancellationToken,
        enrolling: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Outcome {
        let ended = |error| Outcome::Ended {
            welcomed: false,
            error,
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.connect_result("error");
                return ended(e.into());
            }
        };
        let hello = AgentControl {
            kind: Some(agent_control::Kind::Hello(self.build_hello())),
        };
        if let Err(e) = frame::write(&mut send, &hello).await {
            self.metrics.connect_result("error");
            return ended(e.into());
        }
        let mut buf = Vec::new();
        let reply = tokio::select! {
            _ = cancel.cancelled() => return Outcome::Shutdown,
            r = tokio::time::timeout(
                HELLO_TIMEOUT,
                frame::read::<SchedulerControl, _>(&mut recv, DEFAULT_MAX_FRAME, &mut buf),
            ) => r,
        };
        let welcome = match reply {
            Err(_) => {
                self.metrics.connect_result("error");
                return ended(TelemetryError::HelloTimeout(HELLO_TIMEOUT));
            }
            Ok(Err(e)) => {
                self.metrics.connect_result("error");
                return ended(e.into());
            }
            Ok(Ok(None)) => {
                self.metrics.connect_result("error");
                return ended(TelemetryError::NoWelcome);
            }
            Ok(Ok(Some(msg))) => match msg.kind {
                Some(scheduler_control::Kind::Welcome(w)) => w,
                Some(scheduler_control::Kind::Rejection(r)) => {
                    self.metrics.connect_result("rejected");
                    let reason = RejectReason::try_from(r.reason).unwrap_or_default();
                    let code = CloseCode::from_reject(reason);
                    error!(
                        reason = code.label(),
                        detail = %r.detail,
                        retryable = code.is_retryable(),
                        "scheduler rejected this agent"
                    );
                    return Outcome::Rejected(reason);
                }
                _ => {
                    self.metrics.connect_result("error");
                    conn.close(
                        CloseCode::ProtocolViolation.code().into(),
                        b"expected welcome or rejection",
                    );
                    return ended(TelemetryError::UnexpectedReply);
                }
            },
        };
        self.metrics.connect_result("welcomed");
        if !welcome.node_credential.is_empty()
            && let Err(e) = self.identity.store(&welcome.node_credential)
        {
            error!(error = %e, "could not store the node credential from Welcome");
        }
        drop(enrolling);
        let error = self.welcomed(conn, welcome, send, recv, cancel).await;
        match error {
            None => Outcome::Shutdown,
            Some(error) => Outcome::Ended {
                welcomed: true,
                error,
            },
        }
    }

    /// The reporting phase. `None` when cancelled, else why it ended.
    async fn welcomed(
        &mut self,
        conn: &quinn::Connection,
        welcome: Welcome,
        mut ctl_send: quinn::SendStream,
        recv: quinn::RecvStream,
        cancel: &CancellationToken,
    ) -> Option<TelemetryError> {
        let mut interval_ms =
            clamp_interval(welcome.report_interval_ms).unwrap_or(DEFAULT_REPORT_INTERVAL_MS);
        let max_frame = match welcome.max_frame_bytes {
            0 => DEFAULT_MAX_FRAME,
            n => n as usize,
        };
        {
            let mut s = self.status.lock();
            s.connected = true;
            s.session_id = Some(welcome.session_id.clone());
            s.report_interval_ms = interval_ms;
            s.role = welcome.role.clone();
            s.term = welcome.term;
        }
        self.set_connected();
        info!(
            session_id = %welcome.session_id,
            scheduler_id = %welcome.scheduler_id,
            role = %welcome.role,
            term = welcome.term,
            report_interval_ms = interval_ms,
            "welcomed by the scheduler"
        );

        let mut uni = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => return Some(e.into()),
        };
        let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel(8);
        let _reader = AbortOnDropHandle::new(tokio::spawn(read_control(recv, ctl_tx)));
        let mut ctl_open = true;
        let mut tables_open = true;
        self.tables.mark_unchanged();
        let mut tick = ticker(interval_ms, Instant::now());
        // Draining is announced once per session (a new session repeats it).
        let drain = self.drain.clone();
        let mut announced = false;

        loop {
            let mut new_interval = None;
            tokio::select! {
                _ = cancel.cancelled() => return None,
                e = conn.closed() => return Some(e.into()),
                alert = self.alerts.recv() => match alert {
                    Ok(alert) => {
                        if let Some(e) = self.send_alert(&mut uni, alert, max_frame).await {
                            return Some(e);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        self.metrics.alerts_dropped.inc_by(n);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
                },
                _ = tick.tick() => {
                    if let Some(e) = self.send_report(&mut uni, conn, max_frame).await {
                        return Some(e);
                    }
                }
                _ = drain.started(), if !announced => {
                    announced = true;
                    let grace_period_ms =
                        u32::try_from(drain.remaining().as_millis()).unwrap_or(u32::MAX);
                    let msg = AgentControl {
                        kind: Some(agent_control::Kind::Draining(Draining { grace_period_ms })),
                    };
                    if let Err(e) = frame::write(&mut ctl_send, &msg).await {
                        return Some(e.into());
                    }
                    drain.mark_announced();
                    info!(grace_period_ms, "announced draining to the scheduler");
                }
                msg = ctl_rx.recv(), if ctl_open => match msg {
                    Some(SchedulerControl { kind: Some(scheduler_control::Kind::Settings(s)) }) => {
                        new_interval = clamp_interval(s.report_interval_ms);
                    }
                    Some(other) => warn!(message = ?other.kind, "ignoring unexpected control message"),
                    None => ctl_open = false,
                },
                changed = self.tables.changed(), if tables_open => match changed {
                    Ok(()) => {
                        new_interval = self
                            .tables
                            .borrow_and_update()
                            .as_ref()
                            .and_then(|t| clamp_interval(t.table.report_interval_ms));
                    }
                    Err(_) => tables_open = false,
                },
            }
            if let Some(ms) = new_interval.filter(|ms| *ms != interval_ms) {
                info!(from = interval_ms, to = ms, "report interval changed");
                interval_ms = ms;
                self.status.lock().report_interval_ms = ms;
                tick = ticker(ms, Instant::now() + Duration::from_millis(u64::from(ms)));
            }
        }
    }

    async fn write_frame(
        uni: &mut quinn::SendStream,
        frame: &TelemetryFrame,
        max_frame: usize,
    ) -> Result<bool, TelemetryError> {
        let bytes = frame::encode(frame);
        if bytes.len() > max_frame + 4 {
            warn!(
                len = bytes.len(),
                max_frame, "telemetry frame too large for the scheduler; dropped"
            );
            return Ok(false);
        }
        uni.write_all(&bytes).await?;
        Ok(true)
    }

    async fn send_report(
        &mut self,
        uni: &mut quinn::SendStream,
        conn: &quinn::Connection,
        max_frame: usize,
    ) -> Option<TelemetryError> {
        self.report_seq += 1;
        let load = *self.load.borrow();
        let path = conn.stats().path;
        let mut report = Report {
            seq: self.report_seq,
            agent_time_ms: now_ms(),
            route_version: self.held_version(),
            load: Some(Load {
                cpu: load.cpu,
                mem_used_bytes: load.mem_used_bytes,
                mem_total_bytes: load.mem_total_bytes,
                egress_mbps: 0.0,
                ingress_mbps: 0.0,
                ..Default::default()
            }),
            paths: Vec::new(),
            streams: Vec::new(),
            groups: Vec::new(),
            control_path: Some(ControlPath {
                rtt_ms: path.rtt.as_secs_f64() * 1000.0,
                lost_packets: path.lost_packets,
                congestion_events: path.congestion_events,
            }),
            tail: None,
        };
        for source in &self.sources {
            source.fill(&mut report);
        }
        let trimmed = super::trim::fit(&mut report, max_frame);
        if trimmed.any() {
            self.metrics.report_trimmed(&trimmed);
            debug!(
                streams = trimmed.streams,
                groups = trimmed.groups,
                paths = trimmed.paths,
                "report over the frame limit: the tail left out"
            );
        }
        let frame = TelemetryFrame {
            kind: Some(telemetry_frame::Kind::Report(report)),
        };
        match Self::write_frame(uni, &frame, max_frame).await {
            Ok(true) => {
                self.metrics.reports_sent.inc();
                self.status.lock().reports_sent += 1;
                None
            }
            Ok(false) => None,
            Err(e) => Some(e),
        }
    }

    async fn send_alert(
        &mut self,
        uni: &mut quinn::SendStream,
        mut alert: Alert,
        max_frame: usize,
    ) -> Option<TelemetryError> {
        if now_ms() - alert.agent_time_ms > ALERT_MAX_AGE_MS {
            self.metrics.alerts_dropped.inc();
            return None;
        }
        self.alert_seq += 1;
        alert.seq = self.alert_seq;
        let frame = TelemetryFrame {
            kind: Some(telemetry_frame::Kind::Alert(alert)),
        };
        match Self::write_frame(uni, &frame, max_frame).await {
            Ok(true) => {
                self.metrics.alerts_sent.inc();
                None
            }
            Ok(false) => {
                self.metrics.alerts_dropped.inc();
                None
            }
            Err(e) => Some(e),
        }
    }
}

/// Forwards control frames from the scheduler (Settings) until the stream
/// ends; framing is not cancel-safe, so it gets its own task.
async fn read_control(
    mut recv: quinn::RecvStream,
    tx: tokio::sync::mpsc::Sender<SchedulerControl>,
) {
    let mut buf = Vec::new();
    loop {
        match frame::read::<SchedulerControl, _>(&mut recv, DEFAULT_MAX_FRAME, &mut buf).await {
            Ok(Some(m)) => {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "control stream ended");
                return;
            }
        }
    }
}
