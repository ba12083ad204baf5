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

/// Data files; defaults are the files shipped in `simulations/data/`
/// (found relative to the scenario file: `../data/...`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSpec {
    pub servers: String,
    pub pings: String,
    pub cities: String,
    pub stream_durations: String,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            servers: "../data/servers.csv".into(),
            pings: "../data/pings.csv".into(),
            cities: "../data/cities.csv".into(),
            stream_durations: "../data/ytlive-durations.csv".into(),
        }
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
    /// How often the qoe policy replans upstream trees, ms.
    pub replan_interval_ms: u32,
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        Self {
            report_interval_ms: 1000,
            delay_ms: 300,
            noise: 0.1,
            probes_per_interval: 10,
            replan_interval_ms: 1000,
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
    /// Multiplies every last-mile trace sample.
    pub throughput_scale: f64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            access_rtt_ms: 10.0,
            base_loss: 0.001,
            loss_per_1000km: 0.001,
            congestion_knee: 0.8,
            loss_at_capacity: 0.02,
            service_ms: 2.0,
            max_queue_ms: 200.0,
            hop_processing_ms: 30.0,
            throughput_scale: 1.0,
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
}

impl Default for PlayerSpec {
    fn default() -> Self {
        Self {
            startup_buffer_ms: 500.0,
            resume_buffer_ms: 1000.0,
            edge_queue_ms: 4000.0,
            reconnect_timeout_ms: 2000.0,
            redirect_rtt_ms: 40.0,
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
    pub deadband: Option<vantage_scheduler::plan_inputs::Deadband>,
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
    #[serde(default = "default_bitrate")]
    pub bitrate_kbps: f64,
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
    /// Glob of last-mile throughput traces (`*`, `?` in the file name).
    #[serde(default = "default_traces")]
    pub traces: String,
}

fn default_min_pop() -> u64 {
    100_000
}
fn default_traces() -> String {
    "../data/traces/*".into()
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
    },
    PopUp {
        at_s: f64,
        pop: String,
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
    },
    /// Arrivals multiplied, optionally only for viewers of one region and
    /// directed at one stream (by popularity rank, 0 = most popular).
    FlashCrowd {
        at_s: f64,
        until_s: f64,
        multiplier: f64,
        region: Option<String>,
        stream: Option<u32>,
    },
    /// Reports of a node (or all nodes) are lost.
    TelemetryLoss {
        at_s: f64,
        until_s: f64,
        pop: Option<String>,
    },
    /// Reports of every node arrive later by this much.
    TelemetryDelay {
        at_s: f64,
        until_s: f64,
        extra_ms: u32,
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

    /// A path from the scenario, resolved relative to the scenario file.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn err(&self, span_start: Option<usize>, field: &str, message: impl Into<String>) -> SimError {
        SimError::Scenario {
            file: self.file.clone(),
            line: span_start.map(|s| line_of(&self.source, s)),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// Line of the first occurrence of `key =` (for top-level fields that
    /// carry no span).
    fn key_line(&self, key: &str) -> Option<usize> {
        let needle = format!("{key} ");
        let needle_eq = format!("{key}=");
        self.source
            .lines()
            .position(|l| {
                let t = l.trim_start();
                t.starts_with(&needle) || t.starts_with(&needle_eq)
            })
            .map(|i| i + 1)
    }

    fn err_key(&self, key: &str, field: &str, message: impl Into<String>) -> SimError {
        SimError::Scenario {
            file: self.file.clone(),
            line: self.key_line(key),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// Checks everything serde cannot: ranges, references between tables.
    pub fn validate(&self) -> Result<(), SimError> {
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !pos(self.duration_s) || self.duration_s > 30.0 * 86_400.0 {
            return Err(self.err_key(
                "duration_s",
                "duration_s",
                "must be > 0 and at most 30 days",
            ));
        }
        if self.seeds.is_empty() {
            return Err(self.err_key("seeds", "seeds", "needs at least one seed"));
        }
        if self.policies.is_empty() {
            return Err(self.err_key("policies", "policies", "needs at least one policy"));
        }
        for (i, p) in self.policies.iter().enumerate() {
            if !ALL_POLICIES.contains(&p.as_str()) {
                return Err(self.err_key(
                    "policies",
                    &format!("policies[{i}]"),
                    format!("unknown policy `{p}` (known: {})", ALL_POLICIES.join(", ")),
                ));
            }
        }
        if !(10..=60_000).contains(&self.tick_ms) {
            return Err(self.err_key("tick_ms", "tick_ms", "must be within 10..=60000"));
        }
        let t = &self.telemetry;
        if t.report_interval_ms == 0 || t.report_interval_ms > 600_000 {
            return Err(self.err_key(
                "report_interval_ms",
                "telemetry.report_interval_ms",
                "must be within 1..=600000",
            ));
        }
        if t.replan_interval_ms == 0 {
            return Err(self.err_key(
                "replan_interval_ms",
                "telemetry.replan_interval_ms",
                "must be > 0",
            ));
        }
        if !nonneg(t.noise) || t.noise > 1.0 {
            return Err(self.err_key("noise", "telemetry.noise", "must be within 0..=1"));
        }
        let n = &self.network;
        for (name, v) in [
            ("access_rtt_ms", n.access_rtt_ms),
            ("base_loss", n.base_loss),
            ("loss_per_1000km", n.loss_per_1000km),
            ("loss_at_capacity", n.loss_at_capacity),
            ("service_ms", n.service_ms),
            ("max_queue_ms", n.max_queue_ms),
            ("hop_processing_ms", n.hop_processing_ms),
        ] {
            if !nonneg(v) {
                return Err(self.err_key(name, &format!("network.{name}"), "must be ≥ 0"));
            }
        }
        if !(n.base_loss < 1.0 && n.loss_at_capacity < 1.0) {
            return Err(self.err_key("base_loss", "network.base_loss", "loss must be < 1"));
        }
        if !(n.congestion_knee > 0.0 && n.congestion_knee < 1.0) {
            return Err(self.err_key(
                "congestion_knee",
                "network.congestion_knee",
                "must be within (0, 1)",
            ));
        }
        if !pos(n.throughput_scale) {
            return Err(self.err_key(
                "throughput_scale",
                "network.throughput_scale",
                "must be > 0",
            ));
        }
        let p = &self.player;
        for (name, v) in [
            ("startup_buffer_ms", p.startup_buffer_ms),
            ("resume_buffer_ms", p.resume_buffer_ms),
            ("edge_queue_ms", p.edge_queue_ms),
            ("reconnect_timeout_ms", p.reconnect_timeout_ms),
            ("redirect_rtt_ms", p.redirect_rtt_ms),
        ] {
            if !nonneg(v) {
                return Err(self.err_key(name, &format!("player.{name}"), "must be ≥ 0"));
            }
        }
        if let Some(w) = &self.qoe.weights
            && let Err(e) = w.validate()
        {
            return Err(self.err_key("weights", "qoe.weights", e.to_string()));
        }
        if let Some(r) = &self.qoe.ranges
            && let Err(e) = r.validate()
        {
            return Err(self.err_key("ranges", "qoe.ranges", e.to_string()));
        }
        if let Some(d) = &self.qoe.deadband
            && let Err(e) = d.validate()
        {
            return Err(self.err_key("deadband", "qoe.deadband", e));
        }
        if self.pops.is_empty() {
            return Err(self.err(None, "pops", "needs at least one [[pops]] entry"));
        }
        if self.pops.len() + self.origins.len() > 5000 {
            return Err(self.err(None, "pops", "at most 5000 nodes"));
        }
        if self.origins.is_empty() {
            return Err(self.err(None, "origins", "needs at least one [[origins]] entry"));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (table, list) in [("pops", &self.pops), ("origins", &self.origins)] {
            for (i, sp) in list.iter().enumerate() {
                let node = sp.get_ref();
                let at = Some(sp.span().start);
                if !vantage_shared::auth::valid_node_id(&node.id) {
                    return Err(self.err(at, &format!("{table}[{i}].id"), "not a valid node id"));
                }
                if !ids.insert(node.id.clone()) {
                    return Err(self.err(
                        at,
                        &format!("{table}[{i}].id"),
                        format!("duplicate id `{}`", node.id),
                    ));
                }
                match (&node.city, node.lat, node.lon) {
                    (Some(_), None, None) => {}
                    (None, Some(lat), Some(lon)) => {
                        if vantage_shared::place::Coord::new(lat, lon).is_none() {
                            return Err(self.err(
                                at,
                                &format!("{table}[{i}].lat"),
                                "coordinates out of range",
                            ));
                        }
                    }
                    _ => {
                        return Err(self.err(
                            at,
                            &format!("{table}[{i}].city"),
                            "give either `city` or both `lat` and `lon`",
                        ));
                    }
                }
                if !pos(node.capacity_mbps) {
                    return Err(self.err(
                        at,
                        &format!("{table}[{i}].capacity_mbps"),
                        "must be > 0",
                    ));
                }
            }
        }
        let st = self.streams.get_ref();
        let at = Some(self.streams.span().start);
        if st.count == 0 || st.count > 100_000 {
            return Err(self.err(at, "streams.count", "must be within 1..=100000"));
        }
        for (i, o) in st.origins.iter().enumerate() {
            if !self.origins.iter().any(|x| &x.get_ref().id == o) {
                return Err(self.err(
                    at,
                    &format!("streams.origins[{i}]"),
                    format!("no [[origins]] entry with id `{o}`"),
                ));
            }
        }
        if !nonneg(st.zipf_s) || st.zipf_s > 10.0 {
            return Err(self.err(at, "streams.zipf_s", "must be within 0..=10"));
        }
        if !pos(st.bitrate_kbps) || st.bitrate_kbps > 100_000.0 {
            return Err(self.err(at, "streams.bitrate_kbps", "must be within (0, 100000]"));
        }
        if !(st.gop_ms.is_finite() && (100.0..=20_000.0).contains(&st.gop_ms)) {
            return Err(self.err(at, "streams.gop_ms", "must be within 100..=20000"));
        }
        match &st.lifetime {
            Lifetime::Seconds(s) if !pos(*s) => {
                return Err(self.err(at, "streams.lifetime", "seconds must be > 0"));
            }
            Lifetime::Named(n) if n != "ytlive" && n != "forever" => {
                return Err(self.err(
                    at,
                    "streams.lifetime",
                    format!("`{n}`: expected \"ytlive\", \"forever\" or a number of seconds"),
                ));
            }
            _ => {}
        }
        let v = self.viewers.get_ref();
        let at = Some(self.viewers.span().start);
        if v.arrivals.is_empty() {
            return Err(self.err(at, "viewers.arrivals", "needs at least one [time_s, rate]"));
        }
        for (i, [t, r]) in v.arrivals.iter().enumerate() {
            if !nonneg(*t) || !nonneg(*r) || *r > 1e6 {
                return Err(self.err(
                    at,
                    &format!("viewers.arrivals[{i}]"),
                    "time and rate must be finite, ≥ 0 (rate ≤ 1e6/s)",
                ));
            }
            if i > 0 && *t < v.arrivals[i - 1][0] {
                return Err(self.err(
                    at,
                    &format!("viewers.arrivals[{i}]"),
                    "times must not decrease",
                ));
            }
        }
        for (region, curve) in &v.region_weights {
            if curve.is_empty() || curve.iter().any(|[t, w]| !nonneg(*t) || !nonneg(*w)) {
                return Err(self.err(
                    at,
                    &format!("viewers.region_weights.{region}"),
                    "needs [time_s, weight] points, finite and ≥ 0",
                ));
            }
        }
        let bad_session = match &v.session {
            SessionSpec::Lognormal { median_s, sigma } => {
                !pos(*median_s) || !nonneg(*sigma) || *sigma > 5.0
            }
            SessionSpec::Exponential { mean_s } => !pos(*mean_s),
            SessionSpec::Fixed { seconds } => !pos(*seconds),
        };
        if bad_session {
            return Err(self.err(
                at,
                "viewers.session",
                "lengths must be > 0 (sigma within 0..=5)",
            ));
        }
        let node_exists = |id: &str| ids.contains(id);
        for (i, sp) in self.events.iter().enumerate() {
            let ev = sp.get_ref();
            let at = Some(sp.span().start);
            let f = |name: &str| format!("events[{i}].{name}");
            if !nonneg(ev.at_s()) {
                return Err(self.err(at, &f("at_s"), "must be ≥ 0"));
            }
            match ev {
                EventSpec::PopDown { pop, .. } | EventSpec::PopUp { pop, .. } => {
                    if !node_exists(pop) {
                        return Err(self.err(at, &f("pop"), format!("no node with id `{pop}`")));
                    }
                }
                EventSpec::LinkDegrade {
                    at_s,
                    until_s,
                    from,
                    to,
                    extra_rtt_ms,
                    loss,
                } => {
                    if !node_exists(from) {
                        return Err(self.err(at, &f("from"), format!("no node with id `{from}`")));
                    }
                    if let Some(to) = to
                        && !node_exists(to)
                    {
                        return Err(self.err(at, &f("to"), format!("no node with id `{to}`")));
                    }
                    if !nonneg(*extra_rtt_ms) {
                        return Err(self.err(at, &f("extra_rtt_ms"), "must be ≥ 0"));
                    }
                    if !(nonneg(*loss) && *loss < 1.0) {
                        return Err(self.err(at, &f("loss"), "must be within 0..1"));
                    }
                    if let Some(u) = until_s
                        && !(u.is_finite() && u > at_s)
                    {
                        return Err(self.err(at, &f("until_s"), "must be after at_s"));
                    }
                }
                EventSpec::FlashCrowd {
                    at_s,
                    until_s,
                    multiplier,
                    stream,
                    ..
                } => {
                    if !(until_s.is_finite() && until_s > at_s) {
                        return Err(self.err(at, &f("until_s"), "must be after at_s"));
                    }
                    if !nonneg(*multiplier) || *multiplier > 1000.0 {
                        return Err(self.err(at, &f("multiplier"), "must be within 0..=1000"));
                    }
                    if let Some(s) = stream
                        && *s >= st.count
                    {
                        return Err(self.err(
                            at,
                            &f("stream"),
                            format!("stream rank {s} ≥ streams.count"),
                        ));
                    }
                }
                EventSpec::TelemetryLoss {
                    at_s, until_s, pop, ..
                } => {
                    if !(until_s.is_finite() && until_s > at_s) {
                        return Err(self.err(at, &f("until_s"), "must be after at_s"));
                    }
                    if let Some(pop) = pop
                        && !node_exists(pop)
                    {
                        return Err(self.err(at, &f("pop"), format!("no node with id `{pop}`")));
                    }
                }
                EventSpec::TelemetryDelay { at_s, until_s, .. } => {
                    if !(until_s.is_finite() && until_s > at_s) {
                        return Err(self.err(at, &f("until_s"), "must be after at_s"));
                    }
                }
            }
        }
        Ok(())
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
