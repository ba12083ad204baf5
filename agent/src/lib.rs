//! The Vantage edge agent.
//!
//! The agent reports to the scheduler and applies the route tables it
//! pushes (the control loop), relays live media (HTTP-FLV) along those
//! routes, and measures paths and viewers. Components read the table in use
//! from [`Agent::routes`] and raise alerts through [`Agent::alerts`].
//!
//! * [`config`] — flags, `VANTAGE_*` env and TOML file, validated.
//! * [`identity`] — enrollment token, node credential store, mTLS flag.
//! * [`telemetry`] — QUIC client: Hello/Welcome, reports, alerts.
//! * [`routes`] — gRPC route subscription, validation, apply, persistence.
//! * [`load`] — CPU and memory from `/proc`.
//! * [`relay`] — HTTP-FLV media relay: publish, play, pull, fan-out, failover.
//! * [`hls`] — LL-HLS (fMP4 parts, blocking playlist reload) from the relay's rings.
//! * [`rtmp`] — RTMP publish and play on `--rtmp-listen` (1935), fed into and
//!   from the same relay.
//! * [`probe`] — UDP path probes (responder + prober) to the table's targets.
//! * [`viewer`] — `TCP_INFO` of viewer sockets, aggregated per client group.
//! * [`drain`] — graceful drain on SIGTERM (announce, refuse newcomers).
//! * [`admin`] — `/healthz`, `/readyz`, `/metrics`, `/v1/status`.
//! * [`metrics`] — `vantage_agent_*` Prometheus metrics.
//!
//! Entry point: [`Agent::bind`] checks everything that can fail at startup
//! (TLS files, token, data dir, admin port) and [`Agent::run`] runs until
//! its cancellation token fires, then closes the QUIC connection with code 0
//! and ends the route stream.
// `deny`, not `forbid`: `viewer::tcp_info` allows `unsafe` for exactly one
// `getsockopt(TCP_INFO)` call, with its SAFETY argument beside it.
#![deny(unsafe_code)]

pub mod addr;
pub mod admin;
pub mod config;
mod disk;
pub mod drain;
pub mod hls;
pub mod identity;
pub mod load;
pub mod metrics;
pub mod probe;
pub mod relay;
pub mod routes;
pub mod rtmp;
pub mod telemetry;
pub mod viewer;

use config::Config;
use identity::Identity;
use metrics::Metrics;
use prometheus_client::registry::Registry;
use routes::{AppliedTable, RouteClient, TableReceiver};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use telemetry::{AlertSender, HelloTemplate, TelemetryClient};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use vantage_proto::v1::Alert;
use vantage_shared::clock::now_ms;
use vantage_shared::tls::{self, TlsError};

/// How often load is sampled from `/proc`.
pub const LOAD_PERIOD: Duration = Duration::from_secs(1);

/// Startup failures: each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file: {0}")]
    Ca(TlsError),
    #[error("client certificate: {0}")]
    ClientCert(TlsError),
    #[error("token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(
        "no way to authenticate: give --token or --token-file (token mode) or --cert and --key (mTLS)"
    )]
    NoCredentials,
    #[error("admin listener {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("telemetry TLS: {0}")]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error("media listener {addr} (HTTP-FLV, --http-listen): {source}")]
    MediaBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("RTMP listener {addr} (--rtmp-listen): {source}")]
    RtmpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("probe listener {addr} (UDP, --probe-listen): {source}")]
    ProbeBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A component stopped on its own.
#[derive(Debug, thiserror::Error)]
#[error("{component} stopped unexpectedly: {reason}")]
pub struct RunError {
    pub component: &'static str,
    pub reason: String,
}

/// A started, not yet running agent.
pub struct Agent {
    config: Config,
    registry: Arc<Registry>,
    metrics: Metrics,
    identity: Arc<Identity>,
    tables: watch::Sender<Option<Arc<AppliedTable>>>,
    alerts: AlertSender,
    alerts_rx: mpsc::Receiver<Alert>,
    admin: tokio::net::TcpListener,
    probe_socket: tokio::net::UdpSocket,
    probe_metrics: probe::ProbeMetrics,
    viewers: viewer::ViewerStats,
    media: tokio::net::TcpListener,
    rtmp: tokio::net::TcpListener,
    rtmp_metrics: rtmp::metrics::RtmpMetrics,
    relay: relay::Relay,
    drain: drain::Drain,
    quic: quinn::ClientConfig,
    grpc_tls: tonic::transport::ClientTlsConfig,
}

impl Agent {
    /// Prepares the agent: data dir, TLS material, token, credential, the
    /// route table on disk, the admin listener. Registers the agent's
    /// metrics in `registry`.
    pub async fn bind(config: Config, mut registry: Registry) -> Result<Agent, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        tls::install_crypto_provider();
        let roots = tls::load_roots(&config.ca).map_err(StartError::Ca)?;
        let ca_pem = std::fs::read(&config.ca).map_err(|source| {
            StartError::Ca(TlsError::Io {
                path: config.ca.clone(),
                source,
            })
        })?;
        let mut grpc_tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name(config.routes_host.clone());
        let identity_pair = match &config.client_cert {
            Some(cc) => {
                let chain = tls::load_certs(&cc.cert).map_err(StartError::ClientCert)?;
                let key = tls::load_key(&cc.key).map_err(StartError::ClientCert)?;
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|source| {
                        StartError::ClientCert(TlsError::Io {
                            path: p.clone(),
                            source,
                        })
                    })
                };
                grpc_tls = grpc_tls.identity(tonic::transport::Identity::from_pem(
                    read(&cc.cert)?,
                    read(&cc.key)?,
                ));
                Some((chain, key))
            }
            None => None,
        };
        let client_tls = tls::client_config(roots, identity_pair, &[vantage_proto::TELEMETRY_ALPN])
            .map_err(StartError::ClientCert)?;
        let quic = telemetry::quic_config(client_tls)?;

        let token = match &config.token {
            Some(src) => Some(src.read().map_err(|source| StartError::Token {
                path: match src {
                    config::TokenSource::File(p) => p.clone(),
                    config::TokenSource::Inline(_) => PathBuf::from("--token"),
                },
                source,
            })?),
            None => None,
        };
        let mtls = config.client_cert.is_some();
        let identity = Identity::open(&config.node_id, token, mtls, &config.credential_path())?;
        if identity.token().is_none() && !mtls && identity.credential().is_none() {
            return Err(StartError::NoCredentials);
        }

        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .map_err(|source| StartError::AdminBind {
                addr: config.admin_listen,
                source,
            })?;

        let media =
            relay::bind(config.http_listen)
                .await
                .map_err(|source| StartError::MediaBind {
                    addr: config.http_listen,
                    source,
                })?;

        let rtmp = rtmp::bind(config.rtmp_listen)
            .await
            .map_err(|source| StartError::RtmpBind {
                addr: config.rtmp_listen,
                source,
            })?;

        let probe_socket = tokio::net::UdpSocket::bind(config.probe_listen)
            .await
            .map_err(|source| StartError::ProbeBind {
                addr: config.probe_listen,
                source,
            })?;

        let metrics = Metrics::register(&mut registry);
        let probe_metrics = probe::ProbeMetrics::register(&mut registry);
        let viewers = viewer::ViewerStats::new(
            viewer::ViewerConfig::default(),
            viewer::ViewerMetrics::register(&mut registry),
        );
        let initial = routes::persist::restore(
            &config.routes_path(),
            &config.node_id,
            config.routes_max_entries,
            now_ms(),
        );
        let (alerts, alerts_rx) = telemetry::alert::channel(metrics.clone());
        let tables = watch::Sender::new(initial.map(Arc::new));
        let interest = routes::Interest::default();
        let relay = relay::Relay::new(
            config.relay.clone(),
            config.node_id.clone(),
            tables.subscribe(),
            interest.clone(),
            &config.origins,
            alerts.clone(),
            relay::metrics::RelayMetrics::register(&mut registry),
        );
        relay.set_viewer_stats(viewers.clone());
        let rtmp_metrics = rtmp::metrics::RtmpMetrics::register(&mut registry);
        let drain = drain::Drain::new(config.drain_grace);
        relay.set_drain(drain.clone());
        Ok(Agent {
            registry: Arc::new(registry),
            metrics,
            identity: Arc::new(identity),
            tables,
            alerts,
            alerts_rx,
            admin,
            probe_socket,
            probe_metrics,
            viewers,
            media,
            rtmp,
            rtmp_metrics,
            relay,
            drain,
            quic,
            grpc_tls,
            config,
        })
    }

    /// The route table in use, for the relay and probe modules.
    pub fn routes(&self) -> TableReceiver {
        self.tables.subscribe()
    }

    /// A handle to raise alerts.
    pub fn alerts(&self) -> AlertSender {
        self.alerts.clone()
    }

    /// Viewer socket statistics, for the relay to register viewers with.
    pub fn viewer_stats(&self) -> viewer::ViewerStats {
        self.viewers.clone()
    }

    /// The bound UDP probe address (useful with port 0).
    pub fn probe_addr(&self) -> std::io::Result<SocketAddr> {
        self.probe_socket.local_addr()
    }

    /// The bound media (HTTP-FLV) address (useful with port 0).
    pub fn media_addr(&self) -> std::io::Result<SocketAddr> {
        self.media.local_addr()
    }

    /// The bound RTMP address (useful with port 0).
    pub fn rtmp_addr(&self) -> std::io::Result<SocketAddr> {
        self.rtmp.local_addr()
    }

    /// The media relay (status, report source).
    pub fn relay(&self) -> relay::Relay {
        self.relay.clone()
    }

    /// The drain handle: start it to drain (see [`drain`]).
    pub fn drain(&self) -> drain::Drain {
        self.drain.clone()
    }

    /// The bound admin address (useful with port 0).
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Runs telemetry, the route subscription, the load sampler and the
    /// admin server until `cancel` fires, then waits for them to stop. If a
    /// component stops on its own, the others are stopped and its error is
    /// returned.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), RunError> {
        let cancel = cancel.child_token();
        let c = &self.config;
        let (load_rx, load_task) = load::spawn(self.metrics.clone(), LOAD_PERIOD, cancel.clone());
        let route_client = RouteClient::new(
            c.routes.clone(),
            self.grpc_tls,
            self.identity.clone(),
            c.routes_path(),
            c.routes_max_entries,
            self.tables.clone(),
            self.metrics.clone(),
        )
        .with_interest(self.relay.interest().clone());
        let (lat, lon) = c.coord.map_or((0.0, 0.0), |p| (p.lat, p.lon));
        let mut telemetry = TelemetryClient::new(
            c.scheduler.clone(),
            self.quic,
            HelloTemplate {
                region: c.region.clone(),
                lat,
                lon,
                capacity_mbps: c.capacity_mbps,
                public_url: c.public_url.clone(),
                probe_addr: advertised_probe_addr(&c.probe_advertise, &self.probe_socket),
                static_origins: c.origins.clone(),
            },
            self.identity.clone(),
            self.tables.subscribe(),
            load_rx,
            self.alerts_rx,
            self.metrics.clone(),
        );
        telemetry.set_drain(self.drain.clone());
        let reachable = {
            let routes = route_client.status();
            let session = telemetry.status();
            move || routes.subscribed() || session.snapshot().connected
        };
        let probe = probe::ProbeService::new(
            self.probe_socket,
            &c.node_id,
            probe::ProbeConfig {
                rate_hz: c.probe_rate_hz,
                ..probe::ProbeConfig::default()
            },
            self.tables.subscribe(),
            self.alerts.clone(),
            self.probe_metrics,
        )
        .map_err(|e| RunError {
            component: "probe",
            reason: e.to_string(),
        })?
        .with_reachability(reachable);
        telemetry.add_source(Arc::new(probe.status()));
        telemetry.add_source(Arc::new(self.viewers.clone()));
        // After the viewer sampler: the relay completes its groups.
        telemetry.add_source(Arc::new(self.relay.clone()));
        let admin_state = admin::AdminState {
            node_id: c.node_id.clone(),
            telemetry: telemetry.status(),
            routes: route_client.status(),
            tables: self.tables.subscribe(),
            routes_max_entries: c.routes_max_entries,
            registry: self.registry.clone(),
            probe: probe.status(),
            relay: self.relay.clone(),
            drain: self.drain.clone(),
        };
        info!(
            node_id = %c.node_id,
            scheduler = %c.scheduler,
            routes = %c.routes,
            admin = %self.admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            media = %self.media.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            rtmp = %self.rtmp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "vantage-agent running"
        );

        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let r = load_task.await.map_err(|e| e.to_string());
            ("load sampler", r)
        });
        let t = cancel.clone();
        tasks.spawn(async move {
            telemetry.run(t).await;
            ("telemetry", Ok(()))
        });
        let t = cancel.clone();
        tasks.spawn(async move {
            route_client.run(t).await;
            ("routes", Ok(()))
        });
        let t = cancel.clone();
        tasks.spawn(async move {
            probe.run(t).await;
            ("probe", Ok(()))
        });
        let t = cancel.clone();
        let (relay, listener) = (self.relay.clone(), self.rtmp);
        let (rtmp_cfg, rtmp_metrics) = (c.rtmp.clone(), self.rtmp_metrics);
        tasks.spawn(async move {
            let r = rtmp::serve(relay, listener, rtmp_cfg, rtmp_metrics, t).await;
            ("rtmp", r.map_err(|e| e.to_string()))
        });
        let t = cancel.clone();
        let (relay, media) = (self.relay, self.media);
        tasks.spawn(async move {
            let r = relay.serve(media, t).await;
            ("relay", r.map_err(|e| e.to_string()))
        });
        let t = cancel.clone();
        let listener = self.admin;
        tasks.spawn(async move {
            let r = admin::serve(listener, admin_state, t).await;
            ("admin", r.map_err(|e| e.to_string()))
        });

        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let (component, reason) = match joined {
                Ok((_, Ok(()))) if cancel.is_cancelled() => continue,
                Ok((component, Ok(()))) => (component, "returned".to_owned()),
                Ok((component, Err(e))) => (component, e),
                Err(e) => ("task", e.to_string()),
            };
            error!(component, reason = %reason, "component stopped; shutting down");
            cancel.cancel();
            first_error.get_or_insert(RunError { component, reason });
        }
        // Keep the table sender alive until every reader is gone.
        drop(self.tables);
        match first_error {
            Some(e) => Err(e),
            None => {
                info!("vantage-agent stopped");
                Ok(())
            }
        }
    }
}

/// `--probe-advertise`, with a port of 0 replaced by the port actually bound.
fn advertised_probe_addr(advertise: &str, socket: &tokio::net::UdpSocket) -> String {
    match (config::HostPort::parse(advertise), socket.local_addr()) {
        (Some(hp), Ok(bound)) if hp.port == 0 => config::HostPort {
            port: bound.port(),
            ..hp
        }
        .to_string(),
        _ => advertise.to_owned(),
    }
}
