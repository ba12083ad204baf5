//! Starting and stopping the scheduler: TLS material, store, listeners,
//! background loops, and an orderly shutdown.

use crate::app::App;
use crate::auth::Mode;
use crate::comments::grpc::CommentService;
use crate::config::{Config, TlsSource};
use crate::publish::grpc::RouteService;
use crate::store::{Store, StoreError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vantage_proto::v1::comment_control_server::CommentControlServer;
use vantage_proto::v1::route_discovery_server::RouteDiscoveryServer;
use vantage_shared::tls::{self, ClientAuth, DevPki, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error(transparent)]
    Lock(#[from] crate::cluster::lock::LockError),
    #[error("cannot listen on {addr}/tcp ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Server certificate, key and client-auth policy, read once and used by
/// both the QUIC and the gRPC listener.
struct TlsMaterial {
    cert_path: PathBuf,
    cert_pem: Vec<u8>,
    key_path: PathBuf,
    key_pem: Vec<u8>,
    client_ca: Option<(PathBuf, Vec<u8>)>,
    mode: Mode,
}

/// `--dev`'s enrollment token: the one given, else the one in
/// `<data-dir>/dev/enroll.token`, else a new random one written there
/// (owner-only). Never empty.
fn dev_token(config: &Config) -> Result<(String, PathBuf), StartError> {
    let dir = config.data_dir.join("dev");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let token_path = dir.join("enroll.token");
    let token = match &config.enrollment_token {
        Some(t) => {
            tls::write_private(&token_path, t.as_bytes())?;
            t.clone()
        }
        None => match std::fs::read_to_string(&token_path) {
            Ok(t) if t.trim().len() >= 16 => t.trim().to_owned(),
            _ => {
                let t = vantage_shared::auth::random_secret();
                tls::write_private(&token_path, t.as_bytes())?;
                t
            }
        },
    };
    Ok((token, token_path))
}

fn tls_material(config: &Config) -> Result<TlsMaterial, StartError> {
    match &config.tls {
        TlsSource::Dev => {
            let dir = config.data_dir.join("dev");
            let pki = DevPki::ensure(&dir, &config.server_names)?;
            let (token, token_path) = dev_token(config)?;
            info!(
                ca = %pki.ca_cert.display(),
                token_file = %token_path.display(),
                "development mode: agents join with --ca {} --token-file {}",
                pki.ca_cert.display(),
                token_path.display()
            );
            println!("vantage-scheduler --dev: enrollment token {token}");
            println!(
                "  agents: vantage-agent --node-id NAME --scheduler HOST:{} --ca {} --token-file {}",
                config.quic_listen.port(),
                pki.ca_cert.display(),
                token_path.display()
            );
            Ok(TlsMaterial {
                cert_pem: std::fs::read(&pki.server_cert).map_err(io_err(&pki.server_cert))?,
                key_pem: std::fs::read(&pki.server_key).map_err(io_err(&pki.server_key))?,
                cert_path: pki.server_cert,
                key_path: pki.server_key,
                client_ca: None,
                mode: Mode::Token {
                    enrollment_token: token,
                },
            })
        }
        TlsSource::Files {
            cert,
            key,
            client_ca,
        } => {
            let client_ca = match client_ca {
                Some(p) => Some((p.clone(), std::fs::read(p).map_err(io_err(p))?)),
                None => None,
            };
            let mode = match (&client_ca, &config.enrollment_token) {
                (Some(_), _) => Mode::Mtls,
                (None, Some(t)) => Mode::Token {
                    enrollment_token: t.clone(),
                },
                // --dev with the operator's certificate and no token: the
                // dev token, never an empty one.
                (None, None) => {
                    let (token, path) = dev_token(config)?;
                    info!(token_file = %path.display(), "development mode: enrollment token in {}", path.display());
                    Mode::Token {
                        enrollment_token: token,
                    }
                }
            };
            Ok(TlsMaterial {
                cert_path: cert.clone(),
                cert_pem: std::fs::read(cert).map_err(io_err(cert))?,
                key_path: key.clone(),
                key_pem: std::fs::read(key).map_err(io_err(key))?,
                client_ca,
                mode,
            })
        }
    }
}

/// The server TLS configuration with application protocols `alpn`
/// (telemetry's for QUIC, `h2` for gRPC).
fn rustls_config(m: &TlsMaterial, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, StartError> {
    let client_auth = match &m.client_ca {
        Some((path, pem)) => ClientAuth::Required(Arc::new(tls::roots_from_pem(pem, path)?)),
        None => ClientAuth::None,
    };
    Ok(tls::server_config(
        tls::certs_from_pem(&m.cert_pem, &m.cert_path)?,
        tls::key_from_pem(&m.key_pem, &m.key_path)?,
        &client_auth,
        alpn,
    )?)
}

/// Start-up warnings of what is open to anyone who can reach a port.
fn warn_open(config: &Config) {
    if config.dev && config.admin_token.is_none() {
        if config.http_listen.ip().is_loopback() {
            warn!(
                http = %config.http_listen,
                "development mode without --admin-token: the API accepts changes (drain, weights) \
                 from anyone on this host; it listens on loopback only"
            );
        } else {
            warn!(
                http = %config.http_listen,
                "development mode without --admin-token: the API accepts changes (drain, weights) \
                 from anyone who can reach {}; give --admin-token or listen on loopback",
                config.http_listen
            );
        }
    }
    if config.publish.any_open() {
        let why = if config.publish_open_by_dev {
            "--dev's default (give --publish-auth token for tokens)"
        } else {
            "publish auth = open"
        };
        warn!(
            "publishing is open: anyone who can reach an agent's media or RTMP port may publish \
             any stream ({why})"
        );
    }
}

/// Addresses actually bound (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub quic: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(io_err(&config.data_dir))?;
    let material = tls_material(&config)?;
    let quic_tls = rustls_config(&material, &[vantage_proto::TELEMETRY_ALPN])?;
    let grpc_tls = Arc::new(rustls_config(&material, &[b"h2"])?);
    warn_open(&config);
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| Store::sqlite_url(&config.data_dir.join("vantage.db")));
    // One scheduler per SQLite file (several replicas need PostgreSQL);
    // held until this function returns.
    let _sqlite_lock = match crate::cluster::lock::sqlite_path(&url) {
        Some(db) => Some(crate::cluster::lock::acquire(&db, &config.scheduler_id)?),
        None => None,
    };
    let store = Store::open(&url).await?;
    info!(backend = store.backend().as_str(), "store open");
    let app = App::new(
        config.clone(),
        store.clone(),
        material.mode.clone(),
        shutdown.clone(),
    )
    .await?;

    let ingest = crate::ingest::Ingest::bind(config.quic_listen, quic_tls)?;
    let grpc_listener = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "gRPC",
            addr: config.grpc_listen,
            source,
        })?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "HTTP",
            addr: config.http_listen,
            source,
        })?;
    let bound = Bound {
        quic: ingest.local_addr(),
        grpc: grpc_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "gRPC",
                addr: config.grpc_listen,
                source,
            })?,
        http: http_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "HTTP",
                addr: config.http_listen,
                source,
            })?,
    };

    // Several replicas: serve what the leader committed from the start.
    if app.cluster.replicated() {
        match app.follow_tables().await {
            Ok(n) => info!(tables = n, "committed route tables read"),
            Err(e) => warn!("committed route tables not read yet: {e}"),
        }
    }
    // First plan before accepting anyone, so tables exist for known nodes
    // (on a blocking thread: a round takes the plan's lock blocking; with
    // several replicas, only a leader plans).
    let first = app.clone();
    if tokio::task::spawn_blocking(move || first.plan_round(true))
        .await
        .is_err()
    {
        tracing::warn!("the first plan panicked; planning goes on in the planning loop");
    }

    let mut tasks = tokio::task::JoinSet::new();
    let socket_drops = ingest.socket_drops();
    tasks.spawn(crate::ingest::serve(app.clone(), ingest));
    tasks.spawn(app.clone().run_planner());
    tasks.spawn(app.clone().run_liveness(socket_drops));
    crate::cluster::sync::spawn(&app, &mut tasks);
    let grpc = grpc_server(app.clone(), grpc_tls, grpc_listener).await?;
    tasks.spawn(grpc);
    let router = crate::api::router(app.clone());
    let http = crate::listeners::http_listener(&app, http_listener);
    tasks.spawn(crate::listeners::serve_http(
        http,
        router,
        config.handshake_timeout,
        shutdown.clone(),
    ));
    tasks.spawn(app.comments.clone().reload_loop(app.shutdown.clone()));
    let reload = app.clone();
    tasks.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = reload.shutdown.cancelled() => return,
                s = hup.recv() => match s {
                    Some(()) => reload.reload_file_weights().await,
                    None => return,
                },
            }
        }
    });
    app.set_ready();
    info!(
        quic = %bound.quic, grpc = %bound.grpc, http = %bound.http,
        scheduler_id = app.config.scheduler_id,
        replicated = app.cluster.replicated(),
        "vantage-scheduler ready"
    );
    println!(
        "vantage-scheduler ready: telemetry quic://{} routes grpc://{} api http://{}",
        bound.quic, bound.grpc, bound.http
    );

    shutdown.cancelled().await;
    info!("shutting down");
    crate::cluster::sync::release(&app).await;
    let grace = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => {
                warn!("tasks still running after the grace period; stopping them");
                tasks.abort_all();
                break;
            }
            next = tasks.join_next() => if next.is_none() { break },
        }
    }
    if let Err(e) = store.close().await {
        warn!("store did not close cleanly: {e}");
    }
    info!("stopped");
    Ok(())
}

async fn grpc_server(
    app: Arc<App>,
    tls: Arc<rustls::ServerConfig>,
    listener: TcpListener,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, StartError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<RouteDiscoveryServer<RouteService>>()
        .await;
    reporter
        .set_serving::<CommentControlServer<CommentService>>()
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vantage_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Grpc(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vantage_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Grpc(e.to_string()))?;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(crate::listeners::CallLayer)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            RouteDiscoveryServer::new(RouteService::new(app.clone()))
                .max_decoding_message_size(crate::publish::grpc::MAX_REQUEST_BYTES),
        )
        .add_service(CommentControlServer::new(CommentService::new(app.clone())));
    let shutdown = app.shutdown.clone();
    // TLS happens in the accept loop (each handshake under the listener's
    // deadline); tonic gets the finished connections.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let listener = crate::listeners::grpc_listener(&app, listener);
    let accept = tokio::spawn(crate::listeners::accept_grpc(
        listener,
        tls,
        tx,
        shutdown.clone(),
    ));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(async move {
        info!("routes (gRPC) listening");
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.cancelled().await;
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            })
            .await
        {
            warn!("gRPC server stopped: {e}");
        }
        accept.abort();
    })
}
