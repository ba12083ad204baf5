//! Scenario files: the TOML schema (documented in `docs/simulator.md`),
//! loading with line-numbered errors, and semantic validation.
//!
//! Parsing uses serde with `deny_unknown_fields` everywhere, so a misspelt
//! key is an error naming the key and its line (toml's own message).
//! Validation errors after parsing name the field path
//! (`events[2].pop`) and the line of the table it sits in (from
//! [`toml::Spanned`]). Paths in `[data]` and `viewers.traces` resolve
//! relative to the scenario file.

use crate::error::SimError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;
use vantage_shared::score::{Ranges, Stability, Weights};

mod validate;

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Simulated time, seconds.
    pub duration_s: f64,
    /// Seeds to run (compare uses every seed and pools the sessions).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Policies `compare` runs (default: all).
    #[serde(default = "default_policies")]
    pub policies: Vec<String>,
    /// Step of the player and load integration, ms.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u32,
    #[serde(default)]
    pub data: DataSpec,
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub player: PlayerSpec,
    #[serde(default)]
    pub access: AccessSpec,
    #[serde(default)]
    pub qoe: QoeSpec,
    pub pops: Vec<Spanned<PopSpec>>,
    pub origins: Vec<Spanned<PopSpec>>,
    pub streams: Spanned<StreamsSpec>,
    pub viewers: Spanned<ViewersSpec>,
    #[serde(default)]
    pub events: Vec<Spanned<EventSpec>>,
    /// Where the file was loaded from (paths resolve relative to it).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file's text (for line numbers of validation errors).
    #[serde(skip)]
    pub source: String,
    #[serde(skip)]
    pub file: PathBuf,
}

fn default_seeds() -> Vec<u64> {
    vec![1]
}
fn default_tick_ms() -> u32 {
    1000
}
/// All policies, in report order.
pub const ALL_POLICIES: [&str; 8] = [
    "random",
    "round-robin",
    "geo-nearest",
    "least-loaded",
    "lowest-rtt",
    "power-of-two",
    "oracle",
    "qoe",
];
fn default_policies() -> Vec<String> {
    ALL_POLICIES.iter().map(|s| (*s).to_owned()).collect()
}

/// Data files. A key left out means the bundled file of
/// `simulations/data/` ([`bundled_data_dir`]), wherever the scenario file
/// lives; a path given resolves relative to the scenario file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSpec {
    pub servers: Option<String>,
    pub pings: Option<String>,
    pub cities: Option<String>,
    pub stream_durations: Option<String>,
    /// Median last-mile speeds per country (`country,fixed_mbps,mobile_mbps`).
    pub access_speeds: Option<String>,
}

/// The data shipped with the simulator: `$VANTAGE_SIM_DATA` when set,
/// else `simulations/data/` of the source tree it was built from.
pub fn bundled_data_dir() -> PathBuf {
    match std::env::var_os("VANTAGE_SIM_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data"),
    }
}

/// What agents report and how it reaches the policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySpec {
    pub report_interval_ms: u32,
    /// Transport + ingest delay of a report, ms.
    pub delay_ms: u32,
    /// Relative standard deviation of reported RTTs and loads.
    pub noise: f64,
    /// Probe packets per target per report interval (loss is estimated
    /// from them, so low loss is seen coarsely).
    pub probes_per_interval: u32,
    /// Least time between two plans of moved inputs (qoe, oracle): the
    /// planning session's `replan_interval_ms`, ms.
    pub replan_interval_ms: u32,
    /// Probability that any one report is lost on its way (independent
    /// per report; on top of `telemetry_loss` events).
    pub loss_probability: f64,
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        Self {
            report_interval_ms: 1000,
            delay_ms: 300,
            noise: 0.1,
            probes_per_interval: 10,
            replan_interval_ms: 1000,
            loss_probability: 0.0,
        }
    }
}

/// Ground-truth network model parameters (see docs/simulator.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// RTT of the viewer's access network, added to every viewer path, ms.
    pub access_rtt_ms: f64,
    /// Loss of a path: `base_loss + loss_per_1000km · km / 1000`.
    pub base_loss: f64,
    pub loss_per_1000km: f64,
    /// Loss between data centres (relay hops, probes):
    /// `relay_base_loss + relay_loss_per_1000km · km / 1000`.
    pub relay_base_loss: f64,
    pub relay_loss_per_1000km: f64,
    /// Utilisation where congestion loss starts.
    pub congestion_knee: f64,
    /// Congestion loss added at utilisation 1 (quadratic from the knee).
    pub loss_at_capacity: f64,
    /// Mean service time of a PoP's egress queue, ms (queueing delay is
    /// `service_ms · u/(1−u)`, capped at `max_queue_ms`).
    pub service_ms: f64,
    pub max_queue_ms: f64,
    /// Processing delay per relay hop (receive, remux, send), ms.
    pub hop_processing_ms: f64,
    /// Multiplies every last-mile capacity sample.
    pub throughput_scale: f64,
    /// Ground-truth RTT overrides for pairs of places (replace the
    /// latency matrix for that pair, both directions).
    pub rtt: Vec<Spanned<RttOverride>>,
}

/// One RTT override: between two nodes, or between a node and every
/// viewer city of a region, country code or named city.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttOverride {
    /// A node id.
    pub from: String,
    /// A node id, or viewers: a region (`viewers.regions` entry or
    /// timezone prefix), an ISO country code or a city name.
    pub to: String,
    pub rtt_ms: f64,
    /// Jitter (mean deviation) of the pair, ms; default 5 % of `rtt_ms`.
    pub jitter_ms: Option<f64>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            access_rtt_ms: 10.0,
            base_loss: 0.001,
            loss_per_1000km: 0.001,
            relay_base_loss: 0.0001,
            relay_loss_per_1000km: 0.00001,
            congestion_knee: 0.8,
            loss_at_capacity: 0.02,
            service_ms: 2.0,
            max_queue_ms: 200.0,
            hop_processing_ms: 30.0,
            throughput_scale: 1.0,
            rtt: Vec::new(),
        }
    }
}

/// The HTTP-FLV player model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlayerSpec {
    /// Media buffered before playback starts, ms.
    pub startup_buffer_ms: f64,
    /// Media buffered before playback resumes after a stall, ms.
    pub resume_buffer_ms: f64,
    /// The edge's per-viewer queue bound: media not yet sent beyond this
    /// is skipped to the next keyframe (DESIGN §7), ms.
    pub edge_queue_ms: f64,
    /// Time a player waits on a dead edge before re-resolving, ms.
    pub reconnect_timeout_ms: f64,
    /// RTT from a viewer to the scheduler's `/play` redirect, ms
    /// (anycast / regional front: a constant).
    pub redirect_rtt_ms: f64,
    /// Share of viewers playing LL-HLS (hls.js in low-latency mode); the
    /// others play HTTP-FLV (mpegts.js).
    pub hls_share: f64,
    /// LL-HLS part duration (the agent's `hls_part_target`), ms; the
    /// player's latency target is `PART-HOLD-BACK` = 3 parts.
    pub part_ms: f64,
    /// Content Steering: an LL-HLS player reloads the steering manifest
    /// every this many ms (the manifest's `TTL`); 0 disables steering.
    pub steering_ttl_ms: f64,
    /// An HTTP-FLV player that stalled this many times within
    /// `flv_reconnect_window_ms` reconnects through `/play` (re-steered,
    /// at a rendition its throughput estimate affords); 0 never.
    pub flv_reconnect_stalls: u32,
    pub flv_reconnect_window_ms: f64,
    /// Join abandonment: a viewer waits at least `patience_min_ms` for the
    /// first frame, then leaves at a constant rate, mean
    /// `patience_mean_ms` (Krishnan & Sitaraman, IMC 2012: abandonment
    /// starts after 2 s of startup delay, +5.8 % per further second).
    pub patience_min_ms: f64,
    pub patience_mean_ms: f64,
}

impl Default for PlayerSpec {
    fn default() -> Self {
        Self {
            startup_buffer_ms: 500.0,
            resume_buffer_ms: 1000.0,
            edge_queue_ms: 4000.0,
            reconnect_timeout_ms: 2000.0,
            redirect_rtt_ms: 40.0,
            hls_share: 0.5,
            part_ms: 500.0,
            steering_ttl_ms: 30_000.0,
            flv_reconnect_stalls: 3,
            flv_reconnect_window_ms: 60_000.0,
            patience_min_ms: 2_000.0,
            patience_mean_ms: 17_000.0,
        }
    }
}

/// The viewers' last mile (docs/simulator.md, "Last mile").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSpec {
    /// Share of viewers on a cellular network.
    pub mobile_share: f64,
    /// Share of viewers on a constrained line: one of the bundled
    /// low-throughput traces (`viewers.traces`) as measured.
    pub constrained_share: f64,
    /// Spread (σ of the log) of per-viewer capacity around the country's
    /// median, fixed and mobile.
    pub fixed_sigma: f64,
    pub mobile_sigma: f64,
    /// Exponent applied to the trace shape (sample / trace mean) that
    /// makes a mobile viewer's capacity vary over time (fixed: 1).
    pub mobile_variability: f64,
}

impl Default for AccessSpec {
    fn default() -> Self {
        Self {
            mobile_share: 0.3,
            constrained_share: 0.05,
            fixed_sigma: 1.22,
            mobile_sigma: 1.22,
            mobile_variability: 1.5,
        }
    }
}

/// Settings of the `qoe` policy: the scheduler's formula and planner.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QoeSpec {
    pub weights: Option<Weights>,
    pub ranges: Option<Ranges>,
    pub stability: Option<Stability>,
    /// How far a node's inputs must move before the planner sees them
    /// (the scheduler's `[deadband]`).
    pub deadband: Option<vantage_plan::inputs::Deadband>,
    /// Viewer routing tunables (the scheduler's `[resolve]` keys of the
    /// same names: `min_group_samples`, `exploration_share`, ...).
    pub resolve: Option<vantage_plan::resolve::rank::RankParams>,
}

/// A PoP (edge) or an origin: at a measured city or at coordinates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopSpec {
    pub id: String,
    /// A city of the latency matrix (`servers.csv` name or title).
    pub city: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub capacity_mbps: f64,
}

/// Streams: count, popularity, bit rate, GOP, lifetime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsSpec {
    pub count: u32,
    /// Origins (ids of `[[origins]]`), assigned round-robin.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Zipf exponent of stream popularity (0 = uniform).
    #[serde(default = "one")]
    pub zipf_s: f64,
    /// Bit rate of the top rendition, kbps.
    #[serde(default = "default_bitrate")]
    pub bitrate_kbps: f64,
    /// The ABR ladder, kbps, ascending; default `bitrate_kbps` × 0.15,
    /// 0.3, 0.6, 1 (the spacing of Apple's HLS authoring ladder).
    #[serde(default)]
    pub ladder_kbps: Vec<f64>,
    #[serde(default = "default_gop")]
    pub gop_ms: f64,
    /// Lifetime: "ytlive" (real YouTube live durations), "forever", or a
    /// number of seconds.
    #[serde(default = "default_lifetime")]
    pub lifetime: Lifetime,
}

fn one() -> f64 {
    1.0
}
fn default_bitrate() -> f64 {
    1000.0
}

/// Rungs of the default ladder as shares of the top rendition.
pub const DEFAULT_LADDER: [f64; 4] = [0.15, 0.3, 0.6, 1.0];

impl StreamsSpec {
    /// The ladder in kbps, ascending.
    pub fn ladder(&self) -> Vec<f64> {
        if self.ladder_kbps.is_empty() {
            DEFAULT_LADDER
                .iter()
                .map(|k| k * self.bitrate_kbps)
                .collect()
        } else {
            self.ladder_kbps.clone()
        }
    }
}
fn default_gop() -> f64 {
    2000.0
}
fn default_lifetime() -> Lifetime {
    Lifetime::Named("forever".into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Lifetime {
    Seconds(f64),
    Named(String),
}

/// Viewers: arrivals, places, session lengths, last miles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewersSpec {
    /// Arrival rate (viewers/s) as `[time_s, rate]` points, linearly
    /// interpolated, constant after the last point.
    pub arrivals: Vec<[f64; 2]>,
    /// Region filter: continents (`Europe`, `Asia`, `Africa`, `America`,
    /// `Australia`, `Pacific` — timezone prefixes) or ISO country codes.
    /// Empty = the whole world.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Per-region arrival weights over time (follow-the-sun): region →
    /// `[[time_s, weight], ...]`. Regions without a curve weigh 1.
    #[serde(default)]
    pub region_weights: std::collections::BTreeMap<String, Vec<[f64; 2]>>,
    #[serde(default = "default_min_pop")]
    pub min_population: u64,
    pub session: SessionSpec,
    /// Glob of last-mile throughput traces (`*`, `?` in the file name):
    /// constrained viewers play them as measured, the others' capacity
    /// varies over time with their shape. Default: the bundled FCC traces.
    #[serde(default)]
    pub traces: Option<String>,
}

fn default_min_pop() -> u64 {
    100_000
}

/// Session length distribution.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "distribution", rename_all = "snake_case")]
pub enum SessionSpec {
    /// Log-normal with median and shape σ (viewing times are heavy-tailed).
    Lognormal {
        median_s: f64,
        sigma: f64,
    },
    Exponential {
        mean_s: f64,
    },
    Fixed {
        seconds: f64,
    },
}

/// Scenario events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum EventSpec {
    /// A PoP or origin fails (stops serving, stops reporting).
    PopDown {
        at_s: f64,
        pop: String,
        /// Capacity falls linearly to 0 over this long, then the node dies.
        #[serde(default)]
        ramp_s: f64,
    },
    PopUp {
        at_s: f64,
        pop: String,
        /// Capacity grows linearly from 0 over this long.
        #[serde(default)]
        ramp_s: f64,
    },
    /// Extra RTT and loss on the path between two nodes (both directions);
    /// with `to` omitted, on every viewer path of `from`.
    LinkDegrade {
        at_s: f64,
        until_s: Option<f64>,
        from: String,
        to: Option<String>,
        #[serde(default)]
        extra_rtt_ms: f64,
        #[serde(default)]
        loss: f64,
        /// The degradation grows linearly over this long.
        #[serde(default)]
        ramp_s: f64,
    },
    /// Arrivals multiplied, optionally only for viewers of one region and
    /// directed at one stream (by popularity rank, 0 = most popular).
    FlashCrowd {
        at_s: f64,
        until_s: f64,
        multiplier: f64,
        region: Option<String>,
        stream: Option<u32>,
        #[serde(default)]
        ramp_s: f64,
    },
    /// Reports of a node (or all nodes) are lost.
    TelemetryLoss {
        at_s: f64,
        until_s: f64,
        pop: Option<String>,
        /// The share of reports lost grows linearly to 1 over this long.
        #[serde(default)]
        ramp_s: f64,
    },
    /// Reports of every node arrive later by this much.
    TelemetryDelay {
        at_s: f64,
        until_s: f64,
        extra_ms: u32,
        #[serde(default)]
        ramp_s: f64,
    },
}

impl EventSpec {
    pub fn at_s(&self) -> f64 {
        match self {
            EventSpec::PopDown { at_s, .. }
            | EventSpec::PopUp { at_s, .. }
            | EventSpec::LinkDegrade { at_s, .. }
            | EventSpec::FlashCrowd { at_s, .. }
            | EventSpec::TelemetryLoss { at_s, .. }
            | EventSpec::TelemetryDelay { at_s, .. } => *at_s,
        }
    }

    /// How long the event takes to reach its full effect, s (0: at once).
    pub fn ramp_s(&self) -> f64 {
        match self {
            EventSpec::PopDown { ramp_s, .. }
            | EventSpec::PopUp { ramp_s, .. }
            | EventSpec::LinkDegrade { ramp_s, .. }
            | EventSpec::FlashCrowd { ramp_s, .. }
            | EventSpec::TelemetryLoss { ramp_s, .. }
            | EventSpec::TelemetryDelay { ramp_s, .. } => *ramp_s,
        }
    }

    /// Share of the full effect at `t_s` (0 before `at_s`, linear over the
    /// ramp, 1 after).
    pub fn strength(&self, t_s: f64) -> f64 {
        let (at, ramp) = (self.at_s(), self.ramp_s());
        if t_s < at {
            0.0
        } else if ramp <= 0.0 {
            1.0
        } else {
            ((t_s - at) / ramp).min(1.0)
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            EventSpec::PopDown { .. } => "pop_down",
            EventSpec::PopUp { .. } => "pop_up",
            EventSpec::LinkDegrade { .. } => "link_degrade",
            EventSpec::FlashCrowd { .. } => "flash_crowd",
            EventSpec::TelemetryLoss { .. } => "telemetry_loss",
            EventSpec::TelemetryDelay { .. } => "telemetry_delay",
        }
    }
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates scenario text that lives at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SimError> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| SimError::Scenario {
            file: path.to_path_buf(),
            line: e.span().map(|sp| line_of(text, sp.start)),
            field: String::new(),
            message: e.message().trim().to_owned(),
        })?;
        s.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        s.source = text.to_owned();
        s.file = path.to_path_buf();
        s.validate()?;
        Ok(s)
    }

    /// A data file: the scenario's path (relative to the scenario file),
    /// else the bundled `default` file.
    pub fn data_file(&self, given: &Option<String>, default: &str) -> PathBuf {
        match given {
            Some(p) => self.resolve(p),
            None => bundled_data_dir().join(default),
        }
    }

    /// The line of byte offset `at` of the scenario text.
    pub fn line(&self, at: usize) -> usize {
        line_of(&self.source, at)
    }

    /// A path from the scenario, resolved relative to the scenario file.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn streams(&self) -> &StreamsSpec {
        self.streams.get_ref()
    }

    pub fn viewers(&self) -> &ViewersSpec {
        self.viewers.get_ref()
    }

    /// Multiplies every arrival rate by `k` (quick runs, tests).
    pub fn scale_arrivals(&mut self, k: f64) {
        let span = self.viewers.span();
        let mut v = self.viewers.get_ref().clone();
        for p in &mut v.arrivals {
            p[1] *= k;
        }
        self.viewers = Spanned::new(span, v);
    }

    /// The weights of the `qoe` policy (scenario, else the defaults).
    pub fn weights(&self) -> Weights {
        self.qoe.weights.unwrap_or_default()
    }
}

/// 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
