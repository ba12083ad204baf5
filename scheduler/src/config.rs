//! Scheduler configuration: one TOML file (`--config`), overridden by
//! `VANTAGE_*` environment variables and flags (flag > env > file > default).
//! Unknown keys are errors. `deploy/config/scheduler.toml` documents every
//! key and a test parses it with this loader.

use crate::record::RecordLimits;
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use vantage_plan::Limits;
use vantage_shared::score::{Ranges, Stability, Weights};

/// Idle timeout of an agent's QUIC telemetry connection: with no packet
/// for this long (agents send reports every interval and QUIC keep-alives)
/// the connection is closed. It also bounds how long liveness holds a
/// connected node short of `down` while the scheduler itself drops reports.
pub const TELEMETRY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The command line: the config file, every setting, an optional helper
/// command.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "vantage-scheduler",
    version,
    about = "Vantage control plane: ingests agent telemetry over QUIC, scores nodes, pushes route tables over gRPC",
    after_help = "Every setting is a flag, a VANTAGE_<FLAG> environment variable and a key of the \
                  --config file (the same name with underscores); tables such as [weights] and \
                  [resolve] exist only in the file. Precedence: flag > env > file > default."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "VANTAGE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Every setting of the scheduler, as one source gives it (flags with their
/// `VANTAGE_*` variables, or the file): all optional. [`Settings::or`]
/// layers sources, [`Config::resolve`] applies defaults and validates.
/// One list of keys: a flag `--report-interval-ms`, its variable
/// `VANTAGE_REPORT_INTERVAL_MS` and the file key `report_interval_ms`.
/// Unknown file keys are errors naming the key; `deploy/config/scheduler.toml`
/// documents every key and a test parses it.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Development mode: create a CA, a server certificate and an enrollment
    /// token under `<data-dir>/dev/`, and allow API changes without a token.
    #[arg(long, env = "VANTAGE_DEV", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub dev: Option<bool>,
    /// State directory (SQLite database, dev PKI). Default ./vantage-data
    #[arg(long, env = "VANTAGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// QUIC telemetry listener. Default 0.0.0.0:7400
    #[arg(long, env = "VANTAGE_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// gRPC route listener. Default 0.0.0.0:7401
    #[arg(long, env = "VANTAGE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// HTTP API, dashboard and metrics listener. Default 0.0.0.0:7480
    #[arg(long, env = "VANTAGE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Database URL: sqlite://PATH or postgres://... Default SQLite in the data dir.
    #[arg(long, env = "VANTAGE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Token required by mutating API calls (`authorization: Bearer T`),
    /// `--dev` included. Without it (and without --dev) they are refused.
    #[arg(long, env = "VANTAGE_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Token required to read the API (`/v1/nodes`, `/v1/routes`,
    /// `/v1/events`, `/v1/weights`); the admin token reads too. Default:
    /// reads are open (without agents' addresses).
    #[arg(long, env = "VANTAGE_READ_TOKEN")]
    pub read_token: Option<String>,
    /// Host names the API answers to besides IP literals, localhost and
    /// --server-name (checked on mutating calls without a token: DNS
    /// rebinding). Repeatable.
    #[arg(long = "api-host", env = "VANTAGE_API_HOSTS", value_delimiter = ',')]
    #[serde(default)]
    pub api_hosts: Vec<String>,
    /// How publishers are admitted by default: token, webhook or open.
    /// Default token (open with --dev). File: `[publish] auth`.
    #[arg(long, env = "VANTAGE_PUBLISH_AUTH")]
    #[serde(skip)]
    pub publish_auth: Option<crate::publish_auth::PublishAuth>,
    /// on_publish webhook for --publish-auth webhook. File: `[publish] webhook_url`.
    #[arg(long, env = "VANTAGE_PUBLISH_WEBHOOK")]
    #[serde(skip)]
    pub publish_webhook: Option<String>,
    /// HTTP API connections open at once. Default 10000
    #[arg(long, env = "VANTAGE_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// gRPC connections open at once. Default 10000
    #[arg(long, env = "VANTAGE_GRPC_MAX_CONNECTIONS")]
    pub grpc_max_connections: Option<usize>,
    /// QUIC telemetry connections open at once. Default 20000
    #[arg(long, env = "VANTAGE_QUIC_MAX_CONNECTIONS")]
    pub quic_max_connections: Option<usize>,
    /// A new HTTP or gRPC connection must send its first request (gRPC: TLS
    /// handshake included) within this; HTTP request heads too. Default 10000
    #[arg(long, env = "VANTAGE_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// A gRPC connection with no call in flight is closed after this. Default 300000
    #[arg(long, env = "VANTAGE_GRPC_IDLE_TIMEOUT_MS")]
    pub grpc_idle_timeout_ms: Option<u64>,
    /// `/v1/resolve` and `/play` requests per second per client. Default 20
    /// (file: `[limits] rate_per_s`).
    #[arg(long, env = "VANTAGE_RATE_LIMIT_PER_S")]
    #[serde(skip)]
    pub rate_limit_per_s: Option<f64>,
    /// Burst of those requests per client. Default 40 (file: `[limits] burst`).
    #[arg(long, env = "VANTAGE_RATE_LIMIT_BURST")]
    #[serde(skip)]
    pub rate_limit_burst: Option<f64>,
    /// Agent report interval in milliseconds. Default 1000
    #[arg(long, env = "VANTAGE_REPORT_INTERVAL_MS")]
    pub report_interval_ms: Option<u32>,
    /// Least time between two plan steps for inputs that moved, ms. Default 1000
    #[arg(long, env = "VANTAGE_REPLAN_INTERVAL_MS")]
    pub replan_interval_ms: Option<u32>,
    /// How long an agent keeps using a table without contact, seconds. Default 86400
    #[arg(long, env = "VANTAGE_TABLE_TTL_S")]
    pub table_ttl_s: Option<u32>,
    /// Largest telemetry frame accepted, bytes. Default 65536
    #[arg(long, env = "VANTAGE_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Server certificate chain (PEM). Required outside --dev.
    #[arg(long, env = "VANTAGE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "VANTAGE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA for agent client certificates: enables mTLS (CN = node id).
    #[arg(long, env = "VANTAGE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Enrollment token agents present on first contact (token mode).
    #[arg(long, env = "VANTAGE_ENROLLMENT_TOKEN")]
    pub enrollment_token: Option<String>,
    /// File holding the enrollment token.
    #[arg(long, env = "VANTAGE_ENROLLMENT_TOKEN_FILE")]
    pub enrollment_token_file: Option<PathBuf>,
    /// Extra DNS names / IPs for the --dev server certificate (repeatable).
    #[arg(
        long = "server-name",
        env = "VANTAGE_SERVER_NAMES",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Identifier of this scheduler replica. Default: host name.
    #[arg(long, env = "VANTAGE_SCHEDULER_ID")]
    pub scheduler_id: Option<String>,
    /// Several replicas (PostgreSQL): how long the leader's lease lasts
    /// without renewal, ms; a new leader takes over within about this long
    /// after the leader dies. Default 3000
    #[arg(long, env = "VANTAGE_LEASE_MS")]
    pub lease_ms: Option<u32>,
    /// URL of this replica's HTTP API as other replicas' dashboards link to
    /// it. Default http://<scheduler id>:<HTTP port> (http://<address> when
    /// --http-listen names one)
    #[arg(long, env = "VANTAGE_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "VANTAGE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Record inputs and plan steps as rotating trace files in DIR (replay
    /// with `vantage-sim replay DIR`; see docs/simulator-traces.md). Default off.
    #[arg(long = "record", value_name = "DIR", env = "VANTAGE_RECORD")]
    pub record_dir: Option<PathBuf>,
    /// MaxMind City database: viewer location from the client IP
    /// (file: `[resolve] geoip_city`).
    #[arg(long, env = "VANTAGE_GEOIP_CITY")]
    #[serde(skip)]
    pub geoip_city: Option<PathBuf>,
    /// MaxMind ASN database: viewer ASN from the client IP (file: `[resolve] geoip_asn`).
    #[arg(long, env = "VANTAGE_GEOIP_ASN")]
    #[serde(skip)]
    pub geoip_asn: Option<PathBuf>,
    /// Trusted header (set by a front proxy) carrying the viewer's `lat,lon`
    /// (file: `[resolve] location_header`).
    #[arg(long, env = "VANTAGE_LOCATION_HEADER")]
    #[serde(skip)]
    pub location_header: Option<String>,
    /// Geohash precision of viewer client groups. Default 4 (file: `[resolve] group_precision`).
    #[arg(long, env = "VANTAGE_GROUP_PRECISION")]
    #[serde(skip)]
    pub group_precision: Option<usize>,
    /// Share of viewer decisions that explore a runner-up edge. Default 0.05
    /// (file: `[resolve] exploration_share`).
    #[arg(long, env = "VANTAGE_EXPLORATION_SHARE")]
    #[serde(skip)]
    pub exploration_share: Option<f64>,
    /// Initial / file-managed weights (a change becomes a new weight version).
    #[arg(skip)]
    pub weights: Option<Weights>,
    #[arg(skip)]
    pub ranges: Option<Ranges>,
    #[arg(skip)]
    pub stability: Option<Stability>,
    #[arg(skip)]
    pub planner: Option<Limits>,
    /// How far telemetry may wobble before the planner sees it.
    #[arg(skip)]
    pub deadband: Option<vantage_plan::inputs::Deadband>,
    /// Viewer routing (`/v1/resolve`, `/play`).
    #[arg(skip)]
    pub resolve: Option<crate::resolve::ResolveConfig>,
    /// Trace rotation and queue limits.
    #[arg(skip)]
    pub record: Option<RecordLimits>,
    /// Publish authorisation: default mode, webhook, per-app rules, tokens.
    #[arg(skip)]
    pub publish: Option<crate::publish_auth::PublishConfig>,
    /// Per-client limits of the viewer-facing endpoints.
    #[arg(skip)]
    pub limits: Option<crate::api::guard::ClientLimits>,
}

/// Offline helper commands (the daemon runs when none is given).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Certificate helpers for production mTLS (see docs/tls.md).
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a new CA (ca.pem, ca.key) in DIR.
    InitCa {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "Vantage CA")]
        name: String,
    },
    /// Issue the scheduler's server certificate (server.pem, server.key).
    Server {
        #[arg(long)]
        ca_dir: PathBuf,
        /// DNS name or IP address the agents use (repeatable).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an agent client certificate whose CN is the node id (`<ID>.pem`, `<ID>.key`).
    Agent {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        node_id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

impl CertsCommand {
    /// Runs the command; returns the files written.
    pub fn run(&self) -> Result<Vec<PathBuf>, vantage_shared::tls::TlsError> {
        use vantage_shared::tls;
        Ok(match self {
            CertsCommand::InitCa { out, name } => {
                let (c, k) = tls::create_ca(out, name)?;
                vec![c, k]
            }
            CertsCommand::Server { ca_dir, names, out } => {
                let (c, k) = tls::issue_server_from_files(
                    &ca_dir.join("ca.pem"),
                    &ca_dir.join("ca.key"),
                    names.clone(),
                    out,
                )?;
                vec![c, k]
            }
            CertsCommand::Agent {
                ca_dir,
                node_id,
                out,
            } => {
                let (c, k) = tls::issue_client_from_files(
                    &ca_dir.join("ca.pem"),
                    &ca_dir.join("ca.key"),
                    node_id,
                    out,
                )?;
                vec![c, k]
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Settings {
    /// `self` where it gives a value, else `lower` (flags over the file).
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            dev: self.dev.or(lower.dev),
            data_dir: self.data_dir.or(lower.data_dir),
            quic_listen: self.quic_listen.or(lower.quic_listen),
            grpc_listen: self.grpc_listen.or(lower.grpc_listen),
            http_listen: self.http_listen.or(lower.http_listen),
            database_url: self.database_url.or(lower.database_url),
            admin_token: self.admin_token.or(lower.admin_token),
            read_token: self.read_token.or(lower.read_token),
            api_hosts: if self.api_hosts.is_empty() {
                lower.api_hosts
            } else {
                self.api_hosts
            },
            publish_auth: self.publish_auth.or(lower.publish_auth),
            publish_webhook: self.publish_webhook.or(lower.publish_webhook),
            http_max_connections: self.http_max_connections.or(lower.http_max_connections),
            grpc_max_connections: self.grpc_max_connections.or(lower.grpc_max_connections),
            quic_max_connections: self.quic_max_connections.or(lower.quic_max_connections),
            handshake_timeout_ms: self.handshake_timeout_ms.or(lower.handshake_timeout_ms),
            grpc_idle_timeout_ms: self.grpc_idle_timeout_ms.or(lower.grpc_idle_timeout_ms),
            rate_limit_per_s: self.rate_limit_per_s.or(lower.rate_limit_per_s),
            rate_limit_burst: self.rate_limit_burst.or(lower.rate_limit_burst),
            report_interval_ms: self.report_interval_ms.or(lower.report_interval_ms),
            replan_interval_ms: self.replan_interval_ms.or(lower.replan_interval_ms),
            table_ttl_s: self.table_ttl_s.or(lower.table_ttl_s),
            max_frame_bytes: self.max_frame_bytes.or(lower.max_frame_bytes),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            client_ca: self.client_ca.or(lower.client_ca),
            enrollment_token: self.enrollment_token.or(lower.enrollment_token),
            enrollment_token_file: self.enrollment_token_file.or(lower.enrollment_token_file),
            server_names: if self.server_names.is_empty() {
                lower.server_names
            } else {
                self.server_names
            },
            scheduler_id: self.scheduler_id.or(lower.scheduler_id),
            lease_ms: self.lease_ms.or(lower.lease_ms),
            advertise_url: self.advertise_url.or(lower.advertise_url),
            log_format: self.log_format.or(lower.log_format),
            record_dir: self.record_dir.or(lower.record_dir),
            geoip_city: self.geoip_city.or(lower.geoip_city),
            geoip_asn: self.geoip_asn.or(lower.geoip_asn),
            location_header: self.location_header.or(lower.location_header),
            group_precision: self.group_precision.or(lower.group_precision),
            exploration_share: self.exploration_share.or(lower.exploration_share),
            weights: self.weights.or(lower.weights),
            ranges: self.ranges.or(lower.ranges),
            stability: self.stability.or(lower.stability),
            planner: self.planner.or(lower.planner),
            deadband: self.deadband.or(lower.deadband),
            resolve: self.resolve.or(lower.resolve),
            record: self.record.or(lower.record),
            publish: self.publish.or(lower.publish),
            limits: self.limits.or(lower.limits),
        }
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML; errors name the line and the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(l) => format!("line {l}: {}", e.message().trim()),
                None => e.message().trim().to_owned(),
            }
        })
    }
}

/// TLS settings after resolution.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Generate / reuse the development PKI under `<data-dir>/dev`.
    Dev,
    Files {
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
    },
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub dev: bool,
    pub data_dir: PathBuf,
    pub quic_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub database_url: Option<String>,
    pub admin_token: Option<String>,
    pub read_token: Option<String>,
    /// Host names the API serves besides IP literals and localhost.
    pub api_hosts: Vec<String>,
    /// Publish authorisation (`auth` resolved: token, or open in --dev).
    pub publish: crate::publish_auth::PublishConfig,
    /// Whether publishing is open because of --dev's default (warned about).
    pub publish_open_by_dev: bool,
    pub http_max_connections: usize,
    pub grpc_max_connections: usize,
    pub quic_max_connections: usize,
    pub handshake_timeout: std::time::Duration,
    pub grpc_idle_timeout: std::time::Duration,
    /// `[limits]`: per-client limits of `/v1/resolve` and `/play`.
    pub client_limits: crate::api::guard::ClientLimits,
    pub report_interval_ms: u32,
    pub replan_interval_ms: u32,
    pub table_ttl_s: u32,
    pub max_frame_bytes: usize,
    pub tls: TlsSource,
    pub enrollment_token: Option<String>,
    pub server_names: Vec<String>,
    pub scheduler_id: String,
    /// Leader lease (several replicas on PostgreSQL).
    pub lease_ms: u32,
    /// This replica's HTTP API URL as other replicas show it.
    pub advertise_url: String,
    pub log_format: LogFormat,
    pub file_weights: Option<Weights>,
    pub ranges: Ranges,
    pub stability: Stability,
    pub limits: Limits,
    pub deadband: vantage_plan::inputs::Deadband,
    pub config_path: Option<PathBuf>,
    pub resolve: crate::resolve::ResolveConfig,
    /// The GeoIP databases of `resolve`, opened once.
    pub geoip: std::sync::Arc<crate::resolve::geoip::GeoIp>,
    pub record_dir: Option<PathBuf>,
    pub record: RecordLimits,
}

impl Config {
    /// Flags and environment from the process, then the file, then defaults.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(p) => Settings::load(p)?,
            None => Settings::default(),
        };
        Self::resolve(cli.settings.or(file), cli.config)
    }

    /// Applies defaults to `s` (flags, environment and file layered) and
    /// validates; `config_path` is the file it came from (reloaded on SIGHUP).
    pub fn resolve(s: Settings, config_path: Option<PathBuf>) -> Result<Self, ConfigError> {
        let dev = s.dev.unwrap_or(false);
        let data_dir = s
            .data_dir
            .unwrap_or_else(|| PathBuf::from("./vantage-data"));
        let addr = |a: &str| -> SocketAddr {
            // Infallible: constant literals below.
            a.parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
        };
        let tls_cert = s.tls_cert;
        let tls_key = s.tls_key;
        let client_ca = s.client_ca;
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert,
                key,
                client_ca,
            },
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid("tls_cert", "tls_cert and tls_key go together"));
            }
            (None, None) if dev => {
                if client_ca.is_some() {
                    return Err(invalid(
                        "client_ca",
                        "mTLS needs tls_cert/tls_key from the same operator CA; --dev uses its own CA",
                    ));
                }
                TlsSource::Dev
            }
            (None, None) => {
                return Err(invalid(
                    "tls_cert",
                    "a server certificate is required (tls_cert + tls_key); use --dev for a development CA",
                ));
            }
        };
        let token_file = s.enrollment_token_file;
        let mut enrollment_token = s.enrollment_token;
        if let Some(path) = token_file {
            let t = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            enrollment_token = Some(t.trim().to_owned());
        }
        let record_dir = s.record_dir;
        if let Some(dir) = &record_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                invalid(
                    "record_dir",
                    format!("cannot create {}: {e}", dir.display()),
                )
            })?;
        }
        let mut resolve = s.resolve.unwrap_or_default();
        resolve.geoip_city = s.geoip_city.or(resolve.geoip_city);
        resolve.geoip_asn = s.geoip_asn.or(resolve.geoip_asn);
        resolve.location_header = s.location_header.or(resolve.location_header);
        if let Some(p) = s.group_precision {
            resolve.group_precision = p;
        }
        if let Some(x) = s.exploration_share {
            resolve.exploration_share = x;
        }
        let mut publish = s.publish.unwrap_or_default();
        publish.auth = s.publish_auth.or(publish.auth);
        publish.webhook_url = s.publish_webhook.or(publish.webhook_url);
        let publish_open_by_dev = dev && publish.auth.is_none();
        if publish.auth.is_none() {
            publish.auth = Some(if dev {
                crate::publish_auth::PublishAuth::Open
            } else {
                crate::publish_auth::PublishAuth::Token
            });
        }
        let mut client_limits = s.limits.unwrap_or_default();
        if let Some(r) = s.rate_limit_per_s {
            client_limits.rate_per_s = r;
        }
        if let Some(b) = s.rate_limit_burst {
            client_limits.burst = b;
        }
        let mut api_hosts = s.api_hosts;
        api_hosts.extend(s.server_names.iter().cloned());
        // --dev without an admin token: the open API listens on loopback
        // unless told otherwise.
        let default_http = if dev && s.admin_token.is_none() {
            "127.0.0.1:7480"
        } else {
            "0.0.0.0:7480"
        };
        let http_listen = s.http_listen.unwrap_or_else(|| addr(default_http));
        let scheduler_id = s.scheduler_id.unwrap_or_else(default_scheduler_id);
        let advertise_url = s.advertise_url.unwrap_or_else(|| {
            if http_listen.ip().is_unspecified() {
                format!("http://{scheduler_id}:{}", http_listen.port())
            } else {
                format!("http://{http_listen}")
            }
        });
        let mut cfg = Config {
            dev,
            read_token: s.read_token,
            api_hosts,
            publish,
            publish_open_by_dev,
            http_max_connections: s.http_max_connections.unwrap_or(10_000),
            grpc_max_connections: s.grpc_max_connections.unwrap_or(10_000),
            quic_max_connections: s.quic_max_connections.unwrap_or(20_000),
            handshake_timeout: std::time::Duration::from_millis(
                s.handshake_timeout_ms.unwrap_or(10_000),
            ),
            grpc_idle_timeout: std::time::Duration::from_millis(
                s.grpc_idle_timeout_ms.unwrap_or(300_000),
            ),
            client_limits,
            quic_listen: s.quic_listen.unwrap_or_else(|| addr("0.0.0.0:7400")),
            grpc_listen: s.grpc_listen.unwrap_or_else(|| addr("0.0.0.0:7401")),
            http_listen,
            database_url: s.database_url,
            admin_token: s.admin_token,
            report_interval_ms: s.report_interval_ms.unwrap_or(1000),
            replan_interval_ms: s.replan_interval_ms.unwrap_or(1000),
            table_ttl_s: s.table_ttl_s.unwrap_or(24 * 3600),
            max_frame_bytes: s
                .max_frame_bytes
                .unwrap_or(vantage_shared::frame::DEFAULT_MAX_FRAME),
            tls,
            enrollment_token,
            server_names: s.server_names,
            scheduler_id,
            lease_ms: s.lease_ms.unwrap_or(3_000),
            advertise_url,
            log_format: s.log_format.unwrap_or_default(),
            file_weights: s.weights,
            ranges: s.ranges.unwrap_or_default(),
            stability: s.stability.unwrap_or_default(),
            limits: s.planner.unwrap_or_default(),
            deadband: s.deadband.unwrap_or_default(),
            record_dir,
            record: s.record.unwrap_or_default(),
            config_path,
            data_dir,
            resolve,
            geoip: Default::default(),
        };
        cfg.validate()?;
        cfg.geoip = std::sync::Arc::new(
            crate::resolve::geoip::GeoIp::open(
                cfg.resolve.geoip_city.as_deref(),
                cfg.resolve.geoip_asn.as_deref(),
            )
            .map_err(|e| invalid("resolve.geoip", e.to_string()))?,
        );
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(100..=60_000).contains(&self.report_interval_ms) {
            return Err(invalid(
                "report_interval_ms",
                format!("{} is outside 100..=60000", self.report_interval_ms),
            ));
        }
        if !(50..=60_000).contains(&self.replan_interval_ms) {
            return Err(invalid(
                "replan_interval_ms",
                format!("{} is outside 50..=60000", self.replan_interval_ms),
            ));
        }
        if !(300..=60_000).contains(&self.lease_ms) {
            return Err(invalid(
                "lease_ms",
                format!("{} is outside 300..=60000", self.lease_ms),
            ));
        }
        if !(self.advertise_url.starts_with("http://")
            || self.advertise_url.starts_with("https://"))
        {
            return Err(invalid(
                "advertise_url",
                "must be an http:// or https:// URL",
            ));
        }
        if !vantage_shared::auth::valid_node_id(&self.scheduler_id) {
            return Err(invalid(
                "scheduler_id",
                "1-64 characters of [A-Za-z0-9._-], starting alphanumeric",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_frame_bytes) {
            return Err(invalid("max_frame_bytes", "must be 1 KiB ..= 16 MiB"));
        }
        if self.table_ttl_s == 0 {
            return Err(invalid("table_ttl_s", "must be > 0"));
        }
        if let Some(w) = &self.file_weights {
            w.validate()
                .map_err(|e| invalid("weights", e.to_string()))?;
        }
        self.ranges
            .validate()
            .map_err(|e| invalid("ranges", e.to_string()))?;
        self.deadband
            .validate()
            .map_err(|e| invalid("deadband", e))?;
        self.limits.validate().map_err(|e| invalid("planner", e))?;
        self.resolve
            .validate()
            .map_err(|(key, m)| invalid(key, m))?;
        self.record.validate().map_err(|e| invalid("record", e))?;
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        for (key, token) in [
            ("admin_token", &self.admin_token),
            ("read_token", &self.read_token),
        ] {
            if let Some(t) = token
                && t.trim().len() < 16
            {
                return Err(invalid(key, "must be at least 16 characters"));
            }
        }
        for (key, n) in [
            ("http_max_connections", self.http_max_connections),
            ("grpc_max_connections", self.grpc_max_connections),
            ("quic_max_connections", self.quic_max_connections),
        ] {
            if !(1..=1_000_000).contains(&n) {
                return Err(invalid(key, format!("{n} is outside 1..=1000000")));
            }
        }
        if !(100..=600_000).contains(&self.handshake_timeout.as_millis()) {
            return Err(invalid("handshake_timeout_ms", "must be 100..=600000"));
        }
        if !(1_000..=86_400_000).contains(&self.grpc_idle_timeout.as_millis()) {
            return Err(invalid("grpc_idle_timeout_ms", "must be 1000..=86400000"));
        }
        self.publish
            .validate()
            .map_err(|(key, m)| invalid(key, m))?;
        self.client_limits
            .validate()
            .map_err(|(key, m)| invalid(key, m))?;
        if let Some(t) = &self.enrollment_token
            && t.len() < 16
        {
            return Err(invalid(
                "enrollment_token",
                "must be at least 16 characters",
            ));
        }
        if !self.dev
            && matches!(
                self.tls,
                TlsSource::Files {
                    client_ca: None,
                    ..
                }
            )
            && self.enrollment_token.is_none()
        {
            return Err(invalid(
                "enrollment_token",
                "token mode needs an enrollment token (or set client_ca for mTLS)",
            ));
        }
        Ok(())
    }
}

fn default_scheduler_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "scheduler".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Settings {
        Settings {
            dev: Some(true),
            ..Settings::default()
        }
    }

    fn resolve(s: Settings) -> Result<Config, ConfigError> {
        Config::resolve(s, None)
    }

    #[test]
    fn defaults_in_dev() {
        let c = resolve(dev()).unwrap();
        assert_eq!(c.quic_listen.port(), 7400);
        assert_eq!(c.grpc_listen.port(), 7401);
        assert_eq!(c.http_listen.port(), 7480);
        assert_eq!(c.report_interval_ms, 1000);
        assert!(matches!(c.tls, TlsSource::Dev));
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let file = Settings::parse(
            "report_interval_ms = 500\nhttp_listen = \"127.0.0.1:9000\"\ntable_ttl_s = 60",
        )
        .unwrap();
        let flags = Cli::try_parse_from(["vantage-scheduler", "--dev", "--report-interval-ms=250"])
            .unwrap();
        let c = resolve(flags.settings.or(file.clone())).unwrap();
        assert_eq!(c.report_interval_ms, 250);
        assert_eq!(c.http_listen.port(), 9000);
        assert_eq!(c.table_ttl_s, 60);
        // Every setting is a flag, including those that used to be file-only.
        let flags = Cli::try_parse_from([
            "vantage-scheduler",
            "--dev=false",
            "--table-ttl-s=30",
            "--max-frame-bytes=4096",
        ])
        .unwrap();
        assert_eq!(flags.settings.dev, Some(false));
        assert_eq!(flags.settings.table_ttl_s, Some(30));
        assert_eq!(flags.settings.max_frame_bytes, Some(4096));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = Settings::parse("report_intervall_ms = 5").unwrap_err();
        assert!(
            err.contains("report_intervall_ms") && err.contains("line 1"),
            "{err}"
        );
        let err = Settings::parse("[weights]\nlatency = 1\nfoo = 2").unwrap_err();
        assert!(err.contains("foo"), "{err}");
        // Flag-only overrides of [resolve] keys are not file keys.
        assert!(Settings::parse("geoip_city = \"x\"").is_err());
        let file = Settings::parse("report_interval_ms = 5").unwrap();
        let err = resolve(dev().or(file)).unwrap_err();
        assert!(err.to_string().contains("report_interval_ms"), "{err}");
        let err = resolve(Settings::default()).unwrap_err();
        assert!(err.to_string().contains("--dev"), "{err}");
        let err = resolve(
            Settings::parse("[planner]\nmax_backups = 99")
                .unwrap()
                .or(dev()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("planner"), "{err}");
    }

    #[test]
    fn record_dir_from_flag_or_file_and_limits_validated() {
        let tmp = tempfile::tempdir().unwrap();
        let (t, u) = (tmp.path().join("t"), tmp.path().join("u"));
        let file = Settings::parse(&format!(
            "record_dir = {:?}\n[record]\nmax_file_mib = 8\nmax_files = 3",
            t.display().to_string()
        ))
        .unwrap();
        let c = resolve(dev().or(file.clone())).unwrap();
        assert_eq!(c.record_dir.as_deref(), Some(t.as_path()));
        assert!(t.is_dir(), "the trace directory is created at start-up");
        assert_eq!((c.record.max_file_mib, c.record.max_files), (8, 3));
        let flags = Settings {
            record_dir: Some(u.clone()),
            ..dev()
        };
        let c = resolve(flags.or(file)).unwrap();
        assert_eq!(c.record_dir.as_deref(), Some(u.as_path()));
        let blocked = Settings {
            record_dir: Some(tmp.path().join("t/../file/x")),
            ..dev()
        };
        std::fs::write(tmp.path().join("file"), "not a directory").unwrap();
        let err = resolve(blocked).unwrap_err();
        assert!(err.to_string().contains("record_dir"), "{err}");
        let c = resolve(dev()).unwrap();
        assert!(c.record_dir.is_none());
        let bad = Settings::parse("[record]\nmax_files = 0").unwrap();
        let err = resolve(dev().or(bad)).unwrap_err();
        assert!(err.to_string().contains("record"), "{err}");
        assert!(Settings::parse("[record]\nmax_filez = 1").is_err());
    }

    #[test]
    fn example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/scheduler.toml");
        let file = Settings::load(&path).unwrap();
        // The example sets production TLS paths; resolve in dev to validate the rest.
        let mut file2 = file.clone();
        file2.tls_cert = None;
        file2.tls_key = None;
        file2.client_ca = None;
        file2.enrollment_token_file = None;
        resolve(dev().or(file2)).unwrap();
        assert!(file.weights.is_some() && file.ranges.is_some() && file.planner.is_some());
        // Recording stays off in the example (record_dir is commented out).
        assert!(file.record_dir.is_none() && file.record.is_some());
    }
}
