//! One simulated agent's life over real QUIC: enrollment, the control stream,
//! the report loop, reconnects.

use super::*;

/// Counters shared by every simulated agent.
#[derive(Debug, Default)]
pub(crate) struct LoadStats {
    pub(crate) reports_sent: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) sessions_ended: AtomicU64,
    /// Enrollments retried (as an agent would, after a timeout or reset).
    pub(crate) enroll_retries: AtomicU64,
    /// Sessions re-established with the node credential after a loss.
    pub(crate) reconnects: AtomicU64,
}

/// One agent after Welcome.
pub(crate) struct Session {
    pub(crate) conn: quinn::Connection,
    pub(crate) ctl_send: quinn::SendStream,
    pub(crate) ctl_recv: quinn::RecvStream,
    pub(crate) uni: quinn::SendStream,
    /// The id the agent enrolled under.
    pub(crate) node_id: String,
    pub(crate) credential: String,
    pub(crate) interval_ms: u32,
}

/// Attempts per agent (handshake + Hello/Welcome) before it counts as failed.
pub(crate) const ENROLL_ATTEMPTS: u32 = 4;

/// How one enrollment attempt failed.
pub(crate) enum Refused {
    /// The scheduler answered with a rejection.
    Rejected(vantage_proto::v1::Rejection),
    /// Transport trouble (timeout, reset): worth retrying, as an agent would.
    Transport(anyhow::Error),
}

pub(crate) async fn try_enroll(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    hello: Hello,
) -> Result<Session, Refused> {
    let t = |e: anyhow::Error| Refused::Transport(e);
    let conn = endpoint
        .connect(server, "localhost")
        .map_err(|e| t(e.into()))?
        .await
        .map_err(|e| t(anyhow!("QUIC handshake: {e}")))?;
    let (mut ctl_send, mut ctl_recv) = conn
        .open_bi()
        .await
        .map_err(|e| t(anyhow!("control stream: {e}")))?;
    let msg = AgentControl {
        kind: Some(agent_control::Kind::Hello(hello)),
    };
    ctl_send
        .write_all(&frame::encode(&msg))
        .await
        .map_err(|e| t(anyhow!("writing Hello: {e}")))?;
    let mut buf = Vec::new();
    let reply = frame::read::<SchedulerControl, _>(&mut ctl_recv, DEFAULT_MAX_FRAME, &mut buf)
        .await
        .map_err(|e| t(anyhow!("reading Welcome: {e}")))?
        .ok_or_else(|| t(anyhow!("control stream ended before Welcome")))?;
    let welcome = match reply.kind {
        Some(scheduler_control::Kind::Welcome(w)) => w,
        Some(scheduler_control::Kind::Rejection(r)) => return Err(Refused::Rejected(r)),
        _ => return Err(t(anyhow!("unexpected first control message"))),
    };
    let uni = conn
        .open_uni()
        .await
        .map_err(|e| t(anyhow!("telemetry stream: {e}")))?;
    Ok(Session {
        conn,
        ctl_send,
        ctl_recv,
        uni,
        node_id: String::new(),
        credential: welcome.node_credential,
        interval_ms: welcome.report_interval_ms.max(1),
    })
}

/// Enrolls agent `idx`, retrying transport failures with jittered backoff.
/// If a lost Welcome left the id enrolled without us knowing the
/// credential (DUPLICATE_NODE), the retry uses a fresh id.
pub(crate) async fn enroll(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    idx: usize,
    token: &str,
    stats: &LoadStats,
) -> Result<Session> {
    let mut id = node_id(idx);
    let mut last = anyhow!("no attempt");
    for attempt in 1..=ENROLL_ATTEMPTS {
        if attempt > 1 {
            stats.enroll_retries.fetch_add(1, Ordering::Relaxed);
            let backoff = 250 * u64::from(attempt) + rand::rng().random_range(0..500);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        match try_enroll(endpoint, server, hello(idx, &id, token)).await {
            Ok(s) if s.credential.is_empty() => {
                bail!("Welcome without a node credential")
            }
            Ok(mut s) => {
                s.node_id = id;
                return Ok(s);
            }
            Err(Refused::Rejected(r))
                if r.reason == vantage_proto::v1::RejectReason::DuplicateNode as i32 =>
            {
                id = format!("{}-r{attempt}", node_id(idx));
                last = anyhow!("rejected as duplicate: {}", r.detail);
            }
            Err(Refused::Rejected(r)) => {
                bail!("rejected: reason {} ({})", r.reason, r.detail)
            }
            Err(Refused::Transport(e)) => last = e,
        }
    }
    Err(last.context(format!("{ENROLL_ATTEMPTS} attempts")))
}

/// Reads the control stream after Welcome; applies `Settings`. Returns when
/// the stream ends.
pub(crate) async fn follow_control(mut recv: quinn::RecvStream, interval_ms: &AtomicU32) {
    let mut buf = Vec::new();
    while let Ok(Some(msg)) =
        frame::read::<SchedulerControl, _>(&mut recv, DEFAULT_MAX_FRAME, &mut buf).await
    {
        if let Some(scheduler_control::Kind::Settings(s)) = msg.kind
            && s.report_interval_ms > 0
        {
            interval_ms.store(s.report_interval_ms, Ordering::Relaxed);
        }
    }
}

pub(crate) fn ticker(interval_ms: u32, first: tokio::time::Instant) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(first, Duration::from_millis(u64::from(interval_ms)));
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Why a reporting session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The fleet stopped (or the phase deadline passed).
    Stopped,
    /// The connection ended: the scheduler closed it or it timed out.
    Lost,
}

/// Sends a report every interval (first one after a random offset within
/// the interval) until `stop` or the connection ends.
pub(crate) async fn report_loop(
    s: Session,
    idx: usize,
    n: usize,
    stats: &LoadStats,
    shared: &AgentShared,
    stop: &CancellationToken,
    deadline: tokio::time::Instant,
) -> SessionEnd {
    let Session {
        conn,
        ctl_send,
        ctl_recv,
        mut uni,
        interval_ms,
        ..
    } = s;
    let interval = AtomicU32::new(interval_ms);
    let control = follow_control(ctl_recv, &interval);
    tokio::pin!(control);
    let mut base = report_template(idx, n);
    let mut frame_msg = TelemetryFrame {
        kind: Some(telemetry_frame::Kind::Report(base.clone())),
    };
    let mut rng = StdRng::seed_from_u64(idx as u64 ^ rand::random::<u64>());
    let offset = Duration::from_millis(rng.random_range(0..u64::from(interval_ms)));
    let mut current = interval_ms;
    let mut tick = ticker(current, tokio::time::Instant::now() + offset);
    let mut seq = 0u64;
    let deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(deadline);
    let end = loop {
        let now = tokio::select! {
            _ = stop.cancelled() => break SessionEnd::Stopped,
            _ = &mut deadline => break SessionEnd::Stopped,
            _ = &mut control => break SessionEnd::Lost,
            _ = shared.report_now.notified() => true,
            _ = tick.tick() => false,
        };
        if now {
            // New streams published here: in this report, sent at once.
            for key in shared.take_new_streams() {
                base.streams.push(StreamState {
                    key,
                    role: StreamRole::Origin as i32,
                    upstream: String::new(),
                    bitrate_kbps: 4_000.0,
                    viewers: 0,
                    gop_cache_ms: 2_000.0,
                    ingest_lag_ms: 150.0,
                    send_lag_p95_ms: 15.0,
                });
            }
            frame_msg.kind = Some(telemetry_frame::Kind::Report(base.clone()));
        }
        seq += 1;
        if let Some(telemetry_frame::Kind::Report(r)) = frame_msg.kind.as_mut() {
            refresh(
                r,
                &base,
                &mut rng,
                seq,
                shared.route_version.load(Ordering::Relaxed),
            );
        }
        if uni.write_all(&frame::encode(&frame_msg)).await.is_err() {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
            break SessionEnd::Lost;
        }
        stats.reports_sent.fetch_add(1, Ordering::Relaxed);
        let wanted = interval.load(Ordering::Relaxed);
        if wanted != current {
            current = wanted;
            tick = ticker(
                current,
                tokio::time::Instant::now() + Duration::from_millis(u64::from(current)),
            );
        }
    };
    drop(ctl_send);
    if end == SessionEnd::Stopped {
        conn.close(0u32.into(), b"shutdown");
    }
    end
}

/// What the coordinator shares with one agent task.
#[derive(Debug, Default)]
pub(crate) struct AgentShared {
    /// Route version held (set by the gRPC subscription), sent in reports.
    pub(crate) route_version: AtomicU64,
    /// The current telemetry connection.
    pub(crate) conn: std::sync::Mutex<Option<quinn::Connection>>,
    /// Streams this agent starts publishing (the `routes` phase's stream
    /// changes); a report showing them goes out at once.
    pub(crate) new_streams: std::sync::Mutex<Vec<String>>,
    pub(crate) report_now: tokio::sync::Notify,
    /// Agents in the fleet (for the channels this one relays).
    pub(crate) fleet_size: AtomicU64,
    /// The RouteDiscovery stream's requests (set once subscribed).
    pub(crate) routes_tx: std::sync::Mutex<Option<mpsc::Sender<RouteRequest>>>,
}

impl AgentShared {
    /// Starts publishing `key`: the next report, sent at once, shows it.
    pub(crate) fn publish(&self, key: String) {
        self.new_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key);
        self.report_now.notify_one();
    }

    pub(crate) fn set_routes_tx(&self, tx: mpsc::Sender<RouteRequest>) {
        *self.routes_tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// Subscribes to `key`'s directory entry on the RouteDiscovery stream.
    pub(crate) async fn subscribe(&self, key: &str) {
        let tx = self
            .routes_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(tx) = tx {
            let _ = tx
                .send(RouteRequest {
                    subscribe: vec![key.to_owned()],
                    ..RouteRequest::default()
                })
                .await;
        }
    }

    fn take_new_streams(&self) -> Vec<String> {
        std::mem::take(&mut *self.new_streams.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn set_conn(&self, c: quinn::Connection) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    pub(crate) fn conn(&self) -> Option<quinn::Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An agent's life after enrollment: report; when the scheduler drops the
/// session (e.g. marked down after 3 missed intervals under overload),
/// reconnect with the node credential after a jittered backoff, as the real
/// agent does, until the fleet stops.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn agent_life(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    idx: usize,
    n: usize,
    first: Session,
    shared: Arc<AgentShared>,
    stats: Arc<LoadStats>,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + PHASE_DEADLINE;
    let id = first.node_id.clone();
    let credential = first.credential.clone();
    let mut session = first;
    loop {
        shared.set_conn(session.conn.clone());
        let end = report_loop(session, idx, n, &stats, &shared, &stop, deadline).await;
        if end == SessionEnd::Stopped {
            return;
        }
        stats.sessions_ended.fetch_add(1, Ordering::Relaxed);
        let mut attempt = 0u32;
        session = loop {
            attempt = attempt.saturating_add(1);
            let backoff = (100u64 << attempt.min(5)).min(3_000);
            let wait =
                Duration::from_millis(backoff / 2 + rand::rng().random_range(0..=backoff / 2));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Ok(_permit) = sem.acquire().await else {
                return;
            };
            let hello = Hello {
                node_credential: credential.clone(),
                ..hello(idx, &id, "")
            };
            let attempt =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, try_enroll(&endpoint, server, hello));
            if let Ok(Ok(mut s)) = attempt.await {
                s.node_id = id.clone();
                break s;
            }
        };
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}
