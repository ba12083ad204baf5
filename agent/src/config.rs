//! Agent configuration: one TOML file (`--config`), `VANTAGE_*` environment
//! variables and command-line flags, merged with the precedence
//! flag > env > file > default, then [`Settings::validate`]d into a
//! [`Config`].
//!
//! Every setting has the same name in all three places: the flag
//! `--probe-advertise`, the variable `VANTAGE_PROBE_ADVERTISE` and the file
//! key `probe-advertise`. Unknown file keys are errors that name the key.
//! `deploy/config/agent.toml` documents every key; a test below keeps it in
//! sync with [`Settings`].

use clap::{CommandFactory, Parser, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vantage_proto::v1::StaticOrigin;
use vantage_shared::auth::valid_node_id;
use vantage_shared::place::Coord;
use vantage_shared::stream::StreamPattern;

use crate::comments::CommentsConfig;
use crate::relay::RelayConfig;
use crate::rtmp::RtmpConfig;

mod comments;
mod media;
mod values;
pub use crate::addr::{HostPort, parse_http_url};
use values::hostname;
pub use values::{ClientCert, RouteTarget, TokenSource};

/// Default QUIC telemetry address of the scheduler.
pub const DEFAULT_SCHEDULER: &str = "127.0.0.1:7400";
/// Default gRPC port of the scheduler (same host as `--scheduler`).
pub const DEFAULT_ROUTES_PORT: u16 = 7401;
/// Most scheduler addresses (`--scheduler`, `--routes`) an agent takes.
pub const MAX_SCHEDULERS: usize = 16;
pub const DEFAULT_DATA_DIR: &str = "./vantage-agent-data";
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
pub const DEFAULT_PROBE_LISTEN: &str = "0.0.0.0:7402";
pub const DEFAULT_CAPACITY_MBPS: f64 = 1000.0;
/// Prefix of the environment variables (`VANTAGE_NODE_ID`, ...).
pub const ENV_PREFIX: &str = "VANTAGE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Command-line parsing failed or help/version was asked for; the
    /// binary lets clap print it and exit.
    #[error("{0}")]
    Cli(#[from] clap::Error),
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Raw settings as given by one source (flags, environment or file). Every
/// field is optional; [`Settings::or`] layers sources and
/// [`Settings::validate`] applies defaults and checks the result.
#[derive(Debug, Clone, Default, PartialEq, Parser, Deserialize)]
#[command(
    name = "vantage-agent",
    version,
    about = "Vantage edge agent: reports telemetry to the scheduler and applies its route tables",
    after_help = "Every flag can also be given as an environment variable VANTAGE_<FLAG> \
                  (e.g. VANTAGE_NODE_ID; VANTAGE_ORIGIN takes a comma-separated list) or as a key \
                  of the --config file (e.g. node_id = \"edge-1\"). Precedence: flag > env > file > default."
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Settings {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Node id (1–64 of [A-Za-z0-9._-], starting alphanumeric). Required.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,

    /// Scheduler QUIC telemetry address; repeat it for several scheduler
    /// replicas (the agent reports to every one, and to every address a
    /// DNS name resolves to) [default: 127.0.0.1:7400].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub scheduler: Vec<String>,

    /// Scheduler gRPC route URL; repeat it for several replicas (one route
    /// stream at a time, failing over between them)
    /// [default: https://SCHEDULER-HOST:7401 for every --scheduler].
    #[arg(long, value_name = "URL")]
    #[serde(default, deserialize_with = "values::one_or_many")]
    pub routes: Vec<String>,

    /// CA certificate (PEM) the scheduler's certificate chains to. Required.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Enrollment token (token mode).
    #[arg(long, value_name = "T")]
    pub token: Option<String>,

    /// File holding the enrollment token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Client certificate (PEM) for mTLS; its subject CN must be the node id.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Directory for the node credential and the last route table
    /// [default: ./vantage-agent-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Media HTTP listen address [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,

    /// Admin HTTP listen address [default: 127.0.0.1:8081].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// UDP probe listen address [default: 0.0.0.0:7402].
    #[arg(long, value_name = "ADDR")]
    pub probe_listen: Option<SocketAddr>,

    /// Address peers should probe [default: --probe-listen].
    #[arg(long, value_name = "HOST:PORT")]
    pub probe_advertise: Option<String>,

    /// Probe requests per second to each target [default: 5].
    #[arg(long, value_name = "HZ")]
    pub probe_rate_hz: Option<f64>,

    /// Region label [default: ""].
    #[arg(long, value_name = "R")]
    pub region: Option<String>,

    /// Latitude in degrees (with --lon).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub lat: Option<f64>,

    /// Longitude in degrees (with --lat).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub lon: Option<f64>,

    /// Egress capacity in Mbit/s [default: 1000].
    #[arg(long, value_name = "N")]
    pub capacity_mbps: Option<f64>,

    /// URL viewers are redirected to [default: http://HOSTNAME:HTTP-LISTEN-PORT].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Static origin for streams the scheduler has not placed (repeatable).
    #[arg(long = "origin", value_name = "PATTERN=URL")]
    #[serde(default)]
    pub origin: Vec<String>,

    /// Log format [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Relay: per-viewer queue bound in media time; a slower viewer skips to
    /// a keyframe [default: 2000].
    #[arg(long, value_name = "MS")]
    pub relay_max_lag_ms: Option<u64>,

    /// Relay: overflows within 30 s that disconnect a slow viewer [default: 3].
    #[arg(long, value_name = "N")]
    pub relay_overflow_disconnect: Option<u32>,

    /// Relay: no media from an upstream for this long switches to the next
    /// candidate [default: 1000].
    #[arg(long, value_name = "MS")]
    pub relay_stall_timeout_ms: Option<u64>,

    /// Relay: a pulled stream without viewers is stopped after this long
    /// [default: 10000].
    #[arg(long, value_name = "MS")]
    pub relay_idle_timeout_ms: Option<u64>,

    /// Relay: a stream's directory subscription is kept this long after
    /// the last stream here used it (1000..=86400000) [default: 60000].
    #[arg(long, value_name = "MS")]
    pub relay_directory_linger_ms: Option<u64>,

    /// Relay: viewers are woken at most once per this window, so tags
    /// arriving in between go out in one write (0..=500; 0 = every video tag)
    /// [default: 100].
    #[arg(long, value_name = "MS")]
    pub relay_write_coalesce_ms: Option<u64>,

    /// Relay: bytes of media held per stream (GOP cache and viewer queues)
    /// [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub relay_cache_max_bytes: Option<u64>,

    /// Relay: media connections whose first request head has not arrived
    /// yet; more are closed at accept (16..=1000000) [default: 4096].
    #[arg(long, value_name = "N")]
    pub relay_max_pending: Option<usize>,

    /// CMCD: `POST /v1/cmcd` beacons per second per client (0.01..=10000)
    /// [default: 10].
    #[arg(long, value_name = "N")]
    pub cmcd_beacon_rate: Option<f64>,

    /// CMCD: burst of beacons per client (1..=100000) [default: 20].
    #[arg(long, value_name = "N")]
    pub cmcd_beacon_burst: Option<u32>,

    /// CMCD: a client is its IPv4 address truncated to this prefix, for
    /// the beacon limit and session ownership (8..=32) [default: 32].
    #[arg(long, value_name = "BITS")]
    pub cmcd_client_prefix_v4: Option<u8>,

    /// CMCD: a client is its IPv6 address truncated to this prefix
    /// (16..=128) [default: 64].
    #[arg(long, value_name = "BITS")]
    pub cmcd_client_prefix_v6: Option<u8>,

    /// CMCD: viewer sessions tracked per client; beyond, a new session's
    /// reports do not count while all the client's are live (1..=100000)
    /// [default: 64].
    #[arg(long, value_name = "N")]
    pub cmcd_sessions_per_client: Option<usize>,

    /// CMCD: viewer sessions tracked in all (1000..=10000000) [default: 100000].
    #[arg(long, value_name = "N")]
    pub cmcd_max_sessions: Option<usize>,

    /// LL-HLS: longest part, the playlist's PART-TARGET (100..=2000)
    /// [default: 500].
    #[arg(long, value_name = "MS")]
    pub hls_part_target_ms: Option<u64>,

    /// LL-HLS: complete segments kept per stream (3..=60) [default: 6].
    #[arg(long, value_name = "N")]
    pub hls_window_segments: Option<usize>,

    /// LL-HLS Content Steering: the scheduler's HTTP base URL (e.g.
    /// `http://sched.example:7480`); multivariant playlists then carry
    /// `EXT-X-CONTENT-STEERING` pointing at its `/v1/steering` [default: none].
    #[arg(long, value_name = "URL")]
    pub steering_url: Option<String>,

    /// RTMP listen address (publish and play) [default: 0.0.0.0:1935].
    #[arg(long, value_name = "ADDR")]
    pub rtmp_listen: Option<SocketAddr>,

    /// RTMP: connections open at once; more are closed at accept (1..=100000)
    /// [default: 1000].
    #[arg(long, value_name = "N")]
    pub rtmp_max_connections: Option<usize>,

    /// RTMP: the handshake must finish within this (100..=60000) [default: 5000].
    #[arg(long, value_name = "MS")]
    pub rtmp_handshake_timeout_ms: Option<u64>,

    /// RTMP: no bytes from a connection for this long, before it plays or
    /// while it publishes, closes it (100..=600000) [default: 10000].
    #[arg(long, value_name = "MS")]
    pub rtmp_idle_timeout_ms: Option<u64>,

    /// RTMP: largest chunk size a peer may set (128..=16777216) [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub rtmp_max_chunk_size: Option<u32>,

    /// RTMP: largest message (one video frame) accepted (65536..=16777215)
    /// [default: 8388608].
    #[arg(long, value_name = "BYTES")]
    pub rtmp_max_message_bytes: Option<u32>,

    /// Drain on SIGTERM: longest wait for viewers to leave before exiting
    /// (0..=3600 s) [default: 30].
    #[arg(long, value_name = "S")]
    pub drain_grace_s: Option<u64>,

    /// Comments: heartbeat interval announced to clients, who send `ping` at
    /// least this often (1000..=300000) [default: 20000].
    #[arg(long, value_name = "MS")]
    pub comments_heartbeat_ms: Option<u64>,

    /// Comments: a connection silent for this long is closed (more than the
    /// heartbeat, up to 600000) [default: 60000].
    #[arg(long, value_name = "MS")]
    pub comments_idle_timeout_ms: Option<u64>,

    /// Comments: deliveries to a connection are batched into one write per
    /// window; the first comment after a quiet window goes at once (0..=1000)
    /// [default: 100].
    #[arg(long, value_name = "MS")]
    pub comments_coalesce_ms: Option<u64>,

    /// Comments: comments kept per room for resuming clients and links
    /// (16..=1000000) [default: 4096].
    #[arg(long, value_name = "N")]
    pub comments_buffer: Option<usize>,

    /// Comments: longest comment text in UTF-8 bytes (1..=4096) [default: 500].
    #[arg(long, value_name = "BYTES")]
    pub comments_max_text_bytes: Option<usize>,

    /// Comments: posts per second per poster connection (0.01..=1000)
    /// [default: 1].
    #[arg(long, value_name = "N")]
    pub comments_client_rate: Option<f64>,

    /// Comments: burst of posts per poster connection (1..=10000) [default: 5].
    #[arg(long, value_name = "N")]
    pub comments_client_burst: Option<u32>,

    /// Comments: posts per second per room, at its sequencer (0.1..=100000)
    /// [default: 500].
    #[arg(long, value_name = "N")]
    pub comments_room_rate: Option<f64>,

    /// Comments: burst of posts per room (1..=1000000) [default: 1000].
    #[arg(long, value_name = "N")]
    pub comments_room_burst: Option<u32>,

    /// Comments: connections at once; more get 503 (1..=10000000)
    /// [default: 100000].
    #[arg(long, value_name = "N")]
    pub comments_max_connections: Option<usize>,

    /// Comments: deliveries per second (one comment to one connection) this
    /// box is sized for; the scheduler counts the share in use as load
    /// (1000..=1000000000) [default: 1000000 per CPU core].
    #[arg(long, value_name = "N")]
    pub comments_fanout_capacity: Option<f64>,

    /// Comments: bytes queued for a connection that does not read before it
    /// is dropped as a slow reader (4096..=67108864) [default: 262144].
    #[arg(long, value_name = "BYTES")]
    pub comments_queue_bytes: Option<usize>,

    /// Comments: queued bytes that do not move for this long drop the
    /// connection as a slow reader (100..=600000) [default: 10000].
    #[arg(long, value_name = "MS")]
    pub comments_write_timeout_ms: Option<u64>,

    /// Comments: an upstream link without the sequencer's heartbeat for this
    /// long fails over to the next candidate (1500..=60000) [default: 3000].
    #[arg(long, value_name = "MS")]
    pub comments_stall_timeout_ms: Option<u64>,

    /// Comments: an accepted upgrade must hand over its socket, and an
    /// upstream link be welcomed, within this (100..=60000) [default: 10000].
    #[arg(long, value_name = "MS")]
    pub comments_handshake_timeout_ms: Option<u64>,

    /// Most entries (directory, origins, patterns, probe targets) a route
    /// table may hold once a delta is merged; a larger table is NACKed and
    /// the last good one stays (>= 1) [default: 1000000].
    #[arg(long, value_name = "N")]
    pub routes_max_entries: Option<u64>,
}

impl Settings {
    /// Layers `self` over `lower`: every field set here wins.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            config: self.config.or(lower.config),
            node_id: self.node_id.or(lower.node_id),
            scheduler: if self.scheduler.is_empty() {
                lower.scheduler
            } else {
                self.scheduler
            },
            routes: if self.routes.is_empty() {
                lower.routes
            } else {
                self.routes
            },
            ca: self.ca.or(lower.ca),
            token: self.token.or(lower.token),
            token_file: self.token_file.or(lower.token_file),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            data_dir: self.data_dir.or(lower.data_dir),
            http_listen: self.http_listen.or(lower.http_listen),
            admin_listen: self.admin_listen.or(lower.admin_listen),
            probe_listen: self.probe_listen.or(lower.probe_listen),
            probe_advertise: self.probe_advertise.or(lower.probe_advertise),
            probe_rate_hz: self.probe_rate_hz.or(lower.probe_rate_hz),
            region: self.region.or(lower.region),
            lat: self.lat.or(lower.lat),
            lon: self.lon.or(lower.lon),
            capacity_mbps: self.capacity_mbps.or(lower.capacity_mbps),
            public_url: self.public_url.or(lower.public_url),
            origin: if self.origin.is_empty() {
                lower.origin
            } else {
                self.origin
            },
            log_format: self.log_format.or(lower.log_format),
            relay_max_lag_ms: self.relay_max_lag_ms.or(lower.relay_max_lag_ms),
            relay_overflow_disconnect: self
                .relay_overflow_disconnect
                .or(lower.relay_overflow_disconnect),
            relay_stall_timeout_ms: self.relay_stall_timeout_ms.or(lower.relay_stall_timeout_ms),
            relay_idle_timeout_ms: self.relay_idle_timeout_ms.or(lower.relay_idle_timeout_ms),
            relay_directory_linger_ms: self
                .relay_directory_linger_ms
                .or(lower.relay_directory_linger_ms),
            relay_write_coalesce_ms: self
                .relay_write_coalesce_ms
                .or(lower.relay_write_coalesce_ms),
            relay_cache_max_bytes: self.relay_cache_max_bytes.or(lower.relay_cache_max_bytes),
            relay_max_pending: self.relay_max_pending.or(lower.relay_max_pending),
            cmcd_beacon_rate: self.cmcd_beacon_rate.or(lower.cmcd_beacon_rate),
            cmcd_beacon_burst: self.cmcd_beacon_burst.or(lower.cmcd_beacon_burst),
            cmcd_client_prefix_v4: self.cmcd_client_prefix_v4.or(lower.cmcd_client_prefix_v4),
            cmcd_client_prefix_v6: self.cmcd_client_prefix_v6.or(lower.cmcd_client_prefix_v6),
            cmcd_sessions_per_client: self
                .cmcd_sessions_per_client
                .or(lower.cmcd_sessions_per_client),
            cmcd_max_sessions: self.cmcd_max_sessions.or(lower.cmcd_max_sessions),
            hls_part_target_ms: self.hls_part_target_ms.or(lower.hls_part_target_ms),
            hls_window_segments: self.hls_window_segments.or(lower.hls_window_segments),
            steering_url: self.steering_url.clone().or(lower.steering_url.clone()),
            rtmp_listen: self.rtmp_listen.or(lower.rtmp_listen),
            rtmp_max_connections: self.rtmp_max_connections.or(lower.rtmp_max_connections),
            rtmp_handshake_timeout_ms: self
                .rtmp_handshake_timeout_ms
                .or(lower.rtmp_handshake_timeout_ms),
            rtmp_idle_timeout_ms: self.rtmp_idle_timeout_ms.or(lower.rtmp_idle_timeout_ms),
            rtmp_max_chunk_size: self.rtmp_max_chunk_size.or(lower.rtmp_max_chunk_size),
            rtmp_max_message_bytes: self.rtmp_max_message_bytes.or(lower.rtmp_max_message_bytes),
            comments_heartbeat_ms: self.comments_heartbeat_ms.or(lower.comments_heartbeat_ms),
            comments_idle_timeout_ms: self
                .comments_idle_timeout_ms
                .or(lower.comments_idle_timeout_ms),
            comments_coalesce_ms: self.comments_coalesce_ms.or(lower.comments_coalesce_ms),
            comments_buffer: self.comments_buffer.or(lower.comments_buffer),
            comments_max_text_bytes: self
                .comments_max_text_bytes
                .or(lower.comments_max_text_bytes),
            comments_client_rate: self.comments_client_rate.or(lower.comments_client_rate),
            comments_client_burst: self.comments_client_burst.or(lower.comments_client_burst),
            comments_room_rate: self.comments_room_rate.or(lower.comments_room_rate),
            comments_room_burst: self.comments_room_burst.or(lower.comments_room_burst),
            comments_max_connections: self
                .comments_max_connections
                .or(lower.comments_max_connections),
            comments_fanout_capacity: self
                .comments_fanout_capacity
                .or(lower.comments_fanout_capacity),
            comments_queue_bytes: self.comments_queue_bytes.or(lower.comments_queue_bytes),
            comments_write_timeout_ms: self
                .comments_write_timeout_ms
                .or(lower.comments_write_timeout_ms),
            comments_stall_timeout_ms: self
                .comments_stall_timeout_ms
                .or(lower.comments_stall_timeout_ms),
            comments_handshake_timeout_ms: self
                .comments_handshake_timeout_ms
                .or(lower.comments_handshake_timeout_ms),
            drain_grace_s: self.drain_grace_s.or(lower.drain_grace_s),
            routes_max_entries: self.routes_max_entries.or(lower.routes_max_entries),
        }
    }

    /// Settings from `VANTAGE_*` variables. Each variable is parsed like its
    /// flag, so errors name the variable. Unrelated variables are ignored.
    pub fn from_env<I>(vars: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let flags: Vec<String> = Settings::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        let mut out = Settings::default();
        for (var, value) in vars {
            let Some(name) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let flag = name.to_ascii_lowercase().replace('_', "-");
            if !flags.contains(&flag) {
                continue;
            }
            let values: Vec<&str> = if matches!(flag.as_str(), "origin" | "scheduler" | "routes") {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            } else {
                vec![value.as_str()]
            };
            let mut argv = vec!["vantage-agent".to_owned()];
            argv.extend(values.iter().map(|v| format!("--{flag}={v}")));
            let one = Settings::try_parse_from(argv).map_err(|e| ConfigError::Env {
                var: var.clone(),
                message: first_line(&e.to_string()),
            })?;
            out = one.or(out);
        }
        Ok(out)
    }

    /// Settings from a TOML document; unknown keys are errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::File {
                path: path.to_owned(),
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message().trim()),
                    None => e.message().trim().to_owned(),
                },
            }
        })
    }

    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, path)
    }

    /// Applies defaults and checks every value.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let relay = self.relay_settings()?;
        let rtmp = self.rtmp_settings()?;
        let comments = self.comments_settings()?;
        let node_id = self.node_id.unwrap_or_default();
        if node_id.is_empty() {
            return Err(invalid(
                "node id is required (--node-id, VANTAGE_NODE_ID or node-id in the config file)",
            ));
        }
        if !valid_node_id(&node_id) {
            return Err(invalid(format!(
                "node id {node_id:?} is invalid: 1-64 characters of [A-Za-z0-9._-], starting alphanumeric"
            )));
        }

        let scheduler_raw = if self.scheduler.is_empty() {
            vec![DEFAULT_SCHEDULER.to_owned()]
        } else {
            self.scheduler
        };
        let mut schedulers: Vec<HostPort> = Vec::with_capacity(scheduler_raw.len());
        for raw in &scheduler_raw {
            let hp = HostPort::parse(raw)
                .ok_or_else(|| invalid(format!("--scheduler {raw:?} is not HOST:PORT")))?;
            if !schedulers.contains(&hp) {
                schedulers.push(hp);
            }
        }
        if schedulers.len() > MAX_SCHEDULERS {
            return Err(invalid(format!(
                "at most {MAX_SCHEDULERS} --scheduler addresses are supported"
            )));
        }

        let routes_raw = if self.routes.is_empty() {
            schedulers
                .iter()
                .map(|s| format!("https://{}:{DEFAULT_ROUTES_PORT}", s.authority_host()))
                .collect()
        } else {
            self.routes
        };
        let mut routes: Vec<RouteTarget> = Vec::with_capacity(routes_raw.len());
        for url in routes_raw {
            let host = match parse_http_url(&url) {
                Some(("https", host)) => host,
                Some(_) => {
                    return Err(invalid(format!(
                        "--routes {url:?} must be an https:// URL (route tables are served over TLS)"
                    )));
                }
                None => return Err(invalid(format!("--routes {url:?} is not a valid URL"))),
            };
            if !routes.iter().any(|r| r.url == url) {
                routes.push(RouteTarget { url, host });
            }
        }
        if routes.len() > MAX_SCHEDULERS {
            return Err(invalid(format!(
                "at most {MAX_SCHEDULERS} --routes URLs are supported"
            )));
        }

        let ca = self.ca.ok_or_else(|| {
            invalid(
                "--ca is required: the CA certificate (PEM) the scheduler's certificate chains to",
            )
        })?;

        let token = match (self.token, self.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid("give either --token or --token-file, not both"));
            }
            (Some(t), None) if t.trim().is_empty() => {
                return Err(invalid("--token is empty"));
            }
            (Some(t), None) => Some(TokenSource::Inline(t.trim().to_owned())),
            (None, Some(f)) => Some(TokenSource::File(f)),
            (None, None) => None,
        };
        let client_cert = match (self.cert, self.key) {
            (Some(c), Some(k)) => Some(ClientCert { cert: c, key: k }),
            (Some(_), None) => return Err(invalid("--cert requires --key")),
            (None, Some(_)) => return Err(invalid("--key requires --cert")),
            (None, None) => None,
        };

        let http_listen = self
            .http_listen
            .unwrap_or_else(|| default_addr(DEFAULT_HTTP_LISTEN));
        let admin_listen = self
            .admin_listen
            .unwrap_or_else(|| default_addr(DEFAULT_ADMIN_LISTEN));
        let probe_listen = self
            .probe_listen
            .unwrap_or_else(|| default_addr(DEFAULT_PROBE_LISTEN));
        let probe_advertise = self
            .probe_advertise
            .unwrap_or_else(|| probe_listen.to_string());
        if HostPort::parse(&probe_advertise).is_none() {
            return Err(invalid(format!(
                "--probe-advertise {probe_advertise:?} is not HOST:PORT"
            )));
        }
        let probe_rate_hz = self.probe_rate_hz.unwrap_or(crate::probe::DEFAULT_RATE_HZ);
        if !(0.1..=1000.0).contains(&probe_rate_hz) {
            return Err(invalid(format!(
                "--probe-rate-hz {probe_rate_hz} is outside 0.1..=1000"
            )));
        }

        let coord = match (self.lat, self.lon) {
            (Some(lat), Some(lon)) => Some(Coord::new(lat, lon).ok_or_else(|| {
                invalid(format!(
                    "coordinates lat={lat} lon={lon} are out of range (|lat| <= 90, |lon| <= 180)"
                ))
            })?),
            (None, None) => None,
            _ => return Err(invalid("--lat and --lon must be given together")),
        };

        let capacity_mbps = self.capacity_mbps.unwrap_or(DEFAULT_CAPACITY_MBPS);
        if !(capacity_mbps.is_finite() && capacity_mbps > 0.0) {
            return Err(invalid(format!(
                "--capacity-mbps {capacity_mbps} must be a positive number"
            )));
        }

        let public_url = self
            .public_url
            .unwrap_or_else(|| format!("http://{}:{}", hostname(), http_listen.port()));
        if parse_http_url(&public_url).is_none() {
            return Err(invalid(format!(
                "--public-url {public_url:?} is not an http(s) URL"
            )));
        }

        let drain_grace = match self.drain_grace_s {
            Some(s) if s > 3600 => {
                return Err(invalid(format!("--drain-grace-s {s} is outside 0..=3600")));
            }
            Some(s) => Duration::from_secs(s),
            None => crate::drain::DEFAULT_GRACE,
        };

        let routes_max_entries = match self.routes_max_entries {
            Some(0) => return Err(invalid("--routes-max-entries must be at least 1")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => crate::routes::DEFAULT_MAX_ENTRIES,
        };

        let mut origins = Vec::with_capacity(self.origin.len());
        for o in &self.origin {
            origins.push(parse_origin(o)?);
        }

        Ok(Config {
            node_id,
            schedulers,
            routes,
            ca,
            token,
            client_cert,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            http_listen,
            admin_listen,
            probe_listen,
            probe_advertise,
            probe_rate_hz,
            region: self.region.unwrap_or_default(),
            coord,
            capacity_mbps,
            public_url,
            origins,
            log_format: self.log_format.unwrap_or_default(),
            relay,
            rtmp_listen: self
                .rtmp_listen
                .unwrap_or_else(|| default_addr(crate::rtmp::DEFAULT_LISTEN)),
            rtmp,
            comments,
            drain_grace,
            routes_max_entries,
        })
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default().trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

fn default_addr(s: &str) -> SocketAddr {
    // The defaults are literal socket addresses; the fallback is never taken.
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn parse_origin(s: &str) -> Result<StaticOrigin, ConfigError> {
    let (pattern, url) = s
        .split_once('=')
        .ok_or_else(|| invalid(format!("--origin {s:?} must be PATTERN=URL")))?;
    let pattern = StreamPattern::parse(pattern.trim())
        .map_err(|e| invalid(format!("--origin {s:?}: {e}")))?;
    let url = url.trim();
    if parse_http_url(url).is_none() {
        return Err(invalid(format!(
            "--origin {s:?}: {url:?} is not an http(s) URL"
        )));
    }
    Ok(StaticOrigin {
        pattern: pattern.to_string(),
        url: url.to_owned(),
    })
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    /// QUIC telemetry addresses of the scheduler replicas (reported to
    /// every one).
    pub schedulers: Vec<HostPort>,
    /// Route services of the scheduler replicas (one stream at a time).
    pub routes: Vec<RouteTarget>,
    pub ca: PathBuf,
    pub token: Option<TokenSource>,
    pub client_cert: Option<ClientCert>,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub probe_listen: SocketAddr,
    pub probe_advertise: String,
    /// Probe requests per second to each target.
    pub probe_rate_hz: f64,
    pub region: String,
    /// `None` when no coordinates were configured (sent as 0, 0).
    pub coord: Option<Coord>,
    pub capacity_mbps: f64,
    pub public_url: String,
    pub origins: Vec<StaticOrigin>,
    pub log_format: LogFormat,
    /// Media relay settings (`relay_*` keys).
    pub relay: RelayConfig,
    /// RTMP listen address (`rtmp_listen`).
    pub rtmp_listen: SocketAddr,
    /// RTMP listener settings (`rtmp_*` keys).
    pub rtmp: RtmpConfig,
    /// Live comment settings (`comments_*` keys).
    pub comments: CommentsConfig,
    /// Longest drain after SIGTERM (`drain_grace_s`).
    pub drain_grace: Duration,
    /// Most entries a route table may hold (`routes_max_entries`).
    pub routes_max_entries: usize,
}

impl Config {
    /// Loads the configuration of this process: flags, `VANTAGE_*`
    /// variables and the `--config` file.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(std::env::args_os(), std::env::vars())
    }

    /// Loads the configuration from explicit arguments and environment.
    pub fn load_from<A, T, E>(args: A, env: E) -> Result<Config, ConfigError>
    where
        A: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
        E: IntoIterator<Item = (String, String)>,
    {
        let flags = Settings::try_parse_from(args)?;
        let env = Settings::from_env(env)?;
        let file = match flags.config.as_ref().or(env.config.as_ref()) {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        flags.or(env).or(file).validate()
    }

    /// `<data-dir>/node.credential`
    pub fn credential_path(&self) -> PathBuf {
        self.data_dir.join("node.credential")
    }

    /// `<data-dir>/routes.pb`
    pub fn routes_path(&self) -> PathBuf {
        self.data_dir.join("routes.pb")
    }

    /// `<data-dir>/comments.pb` (keys and blocklist from the scheduler)
    pub fn comments_path(&self) -> PathBuf {
        self.data_dir.join("comments.pb")
    }
}

#[cfg(test)]
mod tests;
