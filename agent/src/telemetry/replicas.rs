//! Reporting to every scheduler replica: one [`TelemetryClient`] per
//! configured `--scheduler` address; a DNS name is looked up every
//! [`RESOLVE_EVERY`] and gets a client per address it resolves to (clients
//! of addresses that disappeared stop). Alerts raised anywhere in the agent
//! go to every client.

use super::{
    Connect, HelloTemplate, ReportSource, SessionStatus, Target, TelemetryClient, TelemetryStatus,
};
use crate::config::HostPort;
use crate::identity::Identity;
use crate::load::LoadSample;
use crate::metrics::Metrics;
use crate::routes::TableReceiver;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vantage_proto::v1::Alert;

/// How often a scheduler DNS name is looked up again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Telemetry to every scheduler replica.
pub struct Telemetry {
    targets: Vec<HostPort>,
    quic: quinn::ClientConfig,
    hello: HelloTemplate,
    identity: Arc<Identity>,
    tables: TableReceiver,
    load: watch::Receiver<LoadSample>,
    alerts_in: Option<mpsc::Receiver<Alert>>,
    alerts: broadcast::Sender<Alert>,
    sources: Vec<Arc<dyn ReportSource>>,
    drain: crate::drain::Drain,
    metrics: Metrics,
    status: Arc<TelemetryStatus>,
}

impl Telemetry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        targets: Vec<HostPort>,
        quic: quinn::ClientConfig,
        hello: HelloTemplate,
        identity: Arc<Identity>,
        tables: TableReceiver,
        load: watch::Receiver<LoadSample>,
        alerts_in: mpsc::Receiver<Alert>,
        metrics: Metrics,
    ) -> Self {
        Telemetry {
            targets,
            quic,
            hello,
            identity,
            tables,
            load,
            alerts_in: Some(alerts_in),
            alerts: broadcast::Sender::new(super::alert::ALERT_QUEUE),
            sources: Vec::new(),
            drain: crate::drain::Drain::default(),
            metrics,
            status: Arc::new(TelemetryStatus::default()),
        }
    }

    /// Announce draining to every replica when `drain` starts.
    pub fn set_drain(&mut self, drain: crate::drain::Drain) {
        self.drain = drain;
    }

    /// Adds a contributor to every report.
    pub fn add_source(&mut self, source: Arc<dyn ReportSource>) {
        self.sources.push(source);
    }

    /// Every session's state.
    pub fn status(&self) -> Arc<TelemetryStatus> {
        self.status.clone()
    }

    fn client(&self, target: Target) -> TelemetryClient {
        let mut c = TelemetryClient::new(
            target,
            self.quic.clone(),
            self.hello.clone(),
            self.identity.clone(),
            self.tables.clone(),
            self.load.clone(),
            self.alerts.subscribe(),
            self.metrics.clone(),
        );
        c.set_drain(self.drain.clone());
        for s in &self.sources {
            c.add_source(s.clone());
        }
        c
    }

    /// Runs every session until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let alerts = self.alerts.clone();
        let metrics = self.metrics.clone();
        if let Some(mut alerts_in) = self.alerts_in.take() {
            let cancel = cancel.clone();
            tasks.spawn(async move {
                // Every session gets every alert (a session whose queue is
                // full loses its oldest, counted there). The senders live
                // as long as the agent: stop with the sessions.
                loop {
                    let a = tokio::select! {
                        _ = cancel.cancelled() => return,
                        a = alerts_in.recv() => a,
                    };
                    let Some(a) = a else { return };
                    if alerts.send(a).is_err() {
                        metrics.alerts_dropped.inc();
                    }
                }
            });
        }
        let me = Arc::new(self);
        for hp in me.targets.clone() {
            let me = me.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move { me.supervise(hp, cancel).await });
        }
        cancel.cancelled().await;
        while tasks.join_next().await.is_some() {}
    }

    /// One configured address: a client for an IP address; for a name, a
    /// client per address it resolves to, kept in step with the DNS.
    async fn supervise(self: Arc<Self>, hp: HostPort, cancel: CancellationToken) {
        let target = Target::of(&hp);
        if let Connect::Addr(_) = target.connect {
            self.run_client(target, cancel).await;
            return;
        }
        let mut running: BTreeMap<SocketAddr, CancellationToken> = BTreeMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            match tokio::net::lookup_host(hp.to_string()).await {
                Ok(addrs) => {
                    let now: std::collections::BTreeSet<SocketAddr> = addrs.collect();
                    running.retain(|addr, stop| {
                        let keep = now.contains(addr);
                        if !keep {
                            info!(scheduler = %hp, %addr, "a scheduler address is gone from the DNS");
                            stop.cancel();
                        }
                        keep
                    });
                    for addr in now {
                        if running.contains_key(&addr) {
                            continue;
                        }
                        info!(scheduler = %hp, %addr, "reporting to a scheduler address");
                        let stop = cancel.child_token();
                        running.insert(addr, stop.clone());
                        let me = self.clone();
                        let target = Target {
                            server_name: hp.host.clone(),
                            connect: Connect::Addr(addr),
                        };
                        tasks.spawn(async move { me.run_client(target, stop).await });
                    }
                }
                Err(e) if running.is_empty() => {
                    warn!(scheduler = %hp, error = %e, "cannot resolve the scheduler; trying again");
                }
                Err(e) => {
                    warn!(scheduler = %hp, error = %e, "cannot resolve the scheduler; keeping its known addresses");
                }
            }
            let wait = if running.is_empty() {
                Duration::from_secs(2)
            } else {
                RESOLVE_EVERY
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn run_client(&self, target: Target, cancel: CancellationToken) {
        let client = self.client(target);
        let status: Arc<SessionStatus> = client.status();
        self.status.add(status.clone());
        client.run(cancel).await;
        self.status.remove(&status);
    }
}
