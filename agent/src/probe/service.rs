//! The probe task: one UDP socket, one task that `select!`s over incoming
//! datagrams, the prober's next deadline, route-table changes, the orphan
//! check and name lookups.

use super::prober::{Event, Prober, TargetSpec, Unmatched};
use super::responder::Limiter;
use super::{ProbeConfig, ProbeMetrics, orphaned};
use crate::config::HostPort;
use crate::routes::TableReceiver;
use crate::telemetry::{AlertSender, ReportSource};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};
use vantage_proto::v1::{AlertKind, Report};
use vantage_shared::clock::now_ms;
use vantage_shared::probe::{Kind, NodeTag, Packet, ProbeKeys};

/// Largest datagram read; anything longer than a probe is dropped as
/// "long" anyway.
const RECV_BUF: usize = 2048;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest sleep of the loop, so a stuck deadline cannot spin.
const MIN_SLEEP: Duration = Duration::from_millis(1);

type Reachable = Arc<dyn Fn() -> bool + Send + Sync>;

struct Shared {
    prober: Mutex<Prober>,
    listen: SocketAddr,
    active: AtomicBool,
    keyed: AtomicBool,
}

impl Shared {
    fn prober(&self) -> MutexGuard<'_, Prober> {
        // A poisoned lock only means a panic elsewhere; the state is usable.
        self.prober.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Read side of the probe subsystem: fills `Report.paths` and `/v1/status`.
#[derive(Clone)]
pub struct ProbeStatus(Arc<Shared>);

/// `/v1/status` → `probe`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeView {
    pub listen: String,
    /// Probing (false: stopped by the orphan rule).
    pub active: bool,
    /// A probe key is held (the responder can answer).
    pub keyed: bool,
    pub targets: usize,
    pub paths: Vec<PathView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathView {
    pub node_id: String,
    pub addr: String,
    pub rtt_ewma_ms: f64,
    pub rtt_p50_ms: f64,
    pub rtt_p95_ms: f64,
    pub loss: f64,
    pub jitter_ms: f64,
    pub samples: u32,
    pub last_success_age_ms: u32,
    pub lost: bool,
}

impl ProbeStatus {
    pub fn snapshot(&self) -> ProbeView {
        let now = Instant::now();
        let p = self.0.prober();
        let paths = p
            .measurements(now)
            .into_iter()
            .map(|m| PathView {
                lost: p.is_lost(&m.target_node_id),
                node_id: m.target_node_id,
                addr: m.target_addr,
                rtt_ewma_ms: m.rtt_ewma_ms,
                rtt_p50_ms: m.rtt_p50_ms,
                rtt_p95_ms: m.rtt_p95_ms,
                loss: m.loss,
                jitter_ms: m.jitter_ms,
                samples: m.samples,
                last_success_age_ms: m.last_success_age_ms,
            })
            .collect();
        ProbeView {
            listen: self.0.listen.to_string(),
            active: self.0.active.load(Ordering::Relaxed),
            keyed: self.0.keyed.load(Ordering::Relaxed),
            targets: p.len(),
            paths,
        }
    }
}

impl ReportSource for ProbeStatus {
    fn fill(&self, report: &mut Report) {
        let now = Instant::now();
        report.paths.extend(self.0.prober().measurements(now));
    }
}

/// The probe socket and its task.
pub struct ProbeService {
    socket: UdpSocket,
    own: NodeTag,
    cfg: ProbeConfig,
    tables: TableReceiver,
    alerts: AlertSender,
    metrics: ProbeMetrics,
    reachable: Reachable,
    shared: Arc<Shared>,
    epoch: Instant,
}

/// Per-run state of the task that is not shared.
struct Run {
    keys: ProbeKeys,
    limiter: Limiter,
    lookups: JoinSet<(TargetSpec, Option<SocketAddr>)>,
    active: bool,
    stop_reason: Option<&'static str>,
}

impl ProbeService {
    /// Wraps a bound socket. `node_id` gives this agent's tag on the wire.
    pub fn new(
        socket: UdpSocket,
        node_id: &str,
        cfg: ProbeConfig,
        tables: TableReceiver,
        alerts: AlertSender,
        metrics: ProbeMetrics,
    ) -> std::io::Result<ProbeService> {
        let listen = socket.local_addr()?;
        let epoch = Instant::now();
        let own = NodeTag::of(node_id);
        Ok(ProbeService {
            shared: Arc::new(Shared {
                prober: Mutex::new(Prober::new(cfg.clone(), own, epoch)),
                listen,
                active: AtomicBool::new(false),
                keyed: AtomicBool::new(false),
            }),
            socket,
            own,
            cfg,
            tables,
            alerts,
            metrics,
            reachable: Arc::new(|| false),
            epoch,
        })
    }

    /// How to tell whether the scheduler is reachable (orphan rule); by
    /// default it never is, so an expired table always stops probing.
    pub fn with_reachability(mut self, f: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.reachable = Arc::new(f);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Report contributor and status reader.
    pub fn status(&self) -> ProbeStatus {
        ProbeStatus(self.shared.clone())
    }

    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Runs until `cancel`.
    #[instrument(name = "probe", skip_all, fields(listen = %self.shared.listen))]
    pub async fn run(self, cancel: CancellationToken) {
        let mut run = Run {
            keys: ProbeKeys::default(),
            limiter: Limiter::new(self.cfg.replies.clone(), Instant::now()),
            lookups: JoinSet::new(),
            active: false,
            stop_reason: None,
        };
        let mut tables = self.tables.clone();
        let mut tables_open = true;
        let mut orphan_tick = tokio::time::interval(self.cfg.orphan_check.max(MIN_SLEEP));
        orphan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = vec![0u8; RECV_BUF];
        let mut recv_errors = 0u32;
        info!("probe responder listening");
        loop {
            let now = Instant::now();
            let wake = self
                .shared
                .prober()
                .next_wakeup()
                .unwrap_or(now + Duration::from_secs(1))
                .max(now + MIN_SLEEP);
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => {
                    let at = Instant::now();
                    match r {
                        Ok((n, src)) => {
                            recv_errors = 0;
                            let data = buf.get(..n).unwrap_or_default();
                            self.on_datagram(&mut run, data, src, at).await;
                        }
                        Err(e) => {
                            // ICMP errors surface here on some systems; they
                            // are never fatal, but do not spin on them.
                            recv_errors = recv_errors.saturating_add(1);
                            debug!(error = %e, "probe socket receive error");
                            if recv_errors > 100 {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                }
                changed = tables.changed(), if tables_open => {
                    if changed.is_err() {
                        tables_open = false;
                    }
                    self.apply_table(&mut run, &tables);
                }
                _ = orphan_tick.tick() => self.apply_table(&mut run, &tables),
                Some(done) = run.lookups.join_next(), if !run.lookups.is_empty() => {
                    match done {
                        Ok((spec, Some(addr))) => {
                            debug!(node_id = %spec.node_id, addr = %spec.addr, resolved = %addr, "probe target resolved");
                            self.shared.prober().resolved(&spec, addr);
                        }
                        Ok((spec, None)) => warn!(node_id = %spec.node_id, addr = %spec.addr,
                            "could not resolve probe target; retrying later"),
                        Err(e) => warn!(error = %e, "probe target lookup task failed"),
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => self.on_timer(&run, Instant::now()).await,
            }
        }
        run.lookups.abort_all();
        info!("probe task stopped");
    }

    /// Follows the table: key rotation, targets, orphan rule.
    fn apply_table(&self, run: &mut Run, tables: &TableReceiver) {
        let table = tables.borrow().clone();
        if let Some(t) = &table
            && run.keys.rotate(&t.table.probe_key)
        {
            info!(version = t.version(), "probe key installed");
        }
        let keyed = run.keys.current().is_some();
        self.shared.keyed.store(keyed, Ordering::Relaxed);
        let reason = orphaned(table.as_deref(), now_ms(), || (self.reachable)());
        let now = Instant::now();
        let mut prober = self.shared.prober();
        match (reason, &table) {
            (None, Some(t)) => {
                let specs: Vec<TargetSpec> = t
                    .table
                    .probe_targets
                    .iter()
                    .map(|p| TargetSpec {
                        node_id: p.node_id.clone(),
                        addr: p.addr.clone(),
                    })
                    .collect();
                if specs.len() > prober.config().max_targets {
                    debug!(
                        targets = specs.len(),
                        max = prober.config().max_targets,
                        "more probe targets than allowed; probing the first ones"
                    );
                }
                prober.set_targets(&specs, now);
                for spec in prober.to_resolve(now) {
                    let prefer_v4 = self.shared.listen.is_ipv4();
                    run.lookups.spawn(async move {
                        let addr = lookup(&spec.addr, prefer_v4).await;
                        (spec, addr)
                    });
                }
                if !run.active {
                    info!(targets = prober.len(), "probing started");
                }
                run.active = true;
                run.stop_reason = None;
            }
            (reason, _) => {
                let reason = reason.unwrap_or("no route table");
                if run.active || run.stop_reason != Some(reason) {
                    info!(reason, "not probing");
                }
                prober.clear();
                run.active = false;
                run.stop_reason = Some(reason);
            }
        }
        self.shared.active.store(run.active, Ordering::Relaxed);
        self.metrics.active.set(i64::from(run.active));
        self.metrics
            .targets
            .set(i64::try_from(prober.len()).unwrap_or(i64::MAX));
    }

    async fn on_datagram(&self, run: &mut Run, data: &[u8], src: SocketAddr, at: Instant) {
        let (packet, slot) = match Packet::decode(data, &run.keys) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.drop(e.label());
                return;
            }
        };
        match packet.kind {
            Kind::Request => {
                if !run.limiter.admit(src.ip(), at) {
                    self.metrics.drop("rate");
                    return;
                }
                let Some(key) = run.keys.get(slot) else {
                    return;
                };
                let reply = packet.reply(self.own, self.micros(at), self.micros(Instant::now()));
                match self.socket.send_to(&reply.encode(key), src).await {
                    Ok(_) => {
                        self.metrics.reflected.inc();
                    }
                    Err(e) => {
                        self.metrics.send_errors.inc();
                        debug!(error = %e, peer = %src, "could not send probe reply");
                    }
                }
            }
            Kind::Reply => {
                let outcome = self.shared.prober().on_reply(&packet, at);
                match outcome {
                    Ok(event) => {
                        self.metrics.received.inc();
                        if let Some(Event::Recovered { node_id, addr }) = event {
                            info!(node_id, addr, "probe target answers again");
                        }
                    }
                    Err(Unmatched::Late) => {
                        self.metrics.lost.inc();
                        self.metrics.drop("late");
                    }
                    Err(Unmatched::UnknownSeq | Unmatched::WrongPeer) => {
                        self.metrics.drop("unmatched");
                    }
                }
            }
        }
    }

    /// Timeouts, lost-target alerts, and the requests now due.
    async fn on_timer(&self, run: &Run, now: Instant) {
        let (lost, events, sends) = {
            let mut p = self.shared.prober();
            let (lost, events) = p.expire(now);
            (lost, events, p.due(now))
        };
        self.metrics.lost.inc_by(lost);
        for event in events {
            match event {
                Event::Lost {
                    node_id,
                    addr,
                    silent,
                } => {
                    let ms = silent.as_millis();
                    warn!(node_id, addr, silent_ms = ms, "probe target lost");
                    self.metrics.targets_lost.inc();
                    self.alerts.raise(
                        AlertKind::ProbeTargetLost,
                        node_id,
                        format!("no probe reply from {addr} for {ms} ms"),
                        1.0,
                    );
                }
                Event::Recovered { node_id, addr } => {
                    info!(node_id, addr, "probe target answers again");
                }
            }
        }
        let Some(key) = run.keys.current() else {
            return;
        };
        for (addr, packet) in sends {
            match self.socket.send_to(&packet.encode(key), addr).await {
                Ok(_) => {
                    self.metrics.sent.inc();
                }
                Err(e) => {
                    self.metrics.send_errors.inc();
                    debug!(error = %e, target = %addr, "could not send probe");
                }
            }
        }
    }
}

/// Resolves `HOST:PORT`, preferring the socket's address family.
async fn lookup(addr: &str, prefer_v4: bool) -> Option<SocketAddr> {
    let hp = HostPort::parse(addr)?;
    let found = tokio::time::timeout(
        LOOKUP_TIMEOUT,
        tokio::net::lookup_host((hp.host.as_str(), hp.port)),
    )
    .await
    .ok()?
    .ok()?;
    let all: Vec<SocketAddr> = found.collect();
    all.iter()
        .find(|a| a.is_ipv4() == prefer_v4)
        .or(all.first())
        .copied()
}
