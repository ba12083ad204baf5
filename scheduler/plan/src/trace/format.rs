//! The trace format: one JSON object per line, tagged by `"type"`
//! (`docs/simulator-traces.md`).
//!
//! These types are the stable, documented shape of a trace. Where the
//! planning core's own types are plain data with stable names (weights,
//! ranges, limits, the deadband, health) they are written as they are;
//! node views, routes and decisions are mirrored here instead, so the
//! planner can change without silently changing the files operators keep.
//! Conversions both ways live here.

use crate::inputs::Deadband;
use crate::node::{Health, NodeView, PathStat};
use crate::settings::{Limits, PlanSettings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vantage_shared::place::Coord;
use vantage_shared::score::{Ranges, Stability, Weights};

pub use super::decisions::{
    Decisions, NodeDecision, ProbeChoice, RoutesLine, UpstreamChoice, decision_of, snapshot_line,
    snapshot_routes,
};
use vantage_shared::stream::{StreamKey, StreamPattern};

/// `header.format` of every trace file.
pub const FORMAT: &str = "vantage-trace";
/// `header.version`: bumped on incompatible changes (2: `step` lines
/// replaced version 1's whole-plan `plan` lines).
pub const VERSION: u32 = 2;

/// One line of a trace file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Header(Header),
    Report(ReportLine),
    Node(NodeEvent),
    Alert(AlertLine),
    Weights(WeightsLine),
    Resolve(ResolveLine),
    Step(Box<StepLine>),
}

impl Line {
    /// The scheduler's wall clock when the line was made, ms since the
    /// Unix epoch.
    pub fn at_ms(&self) -> i64 {
        match self {
            Line::Header(h) => h.at_ms,
            Line::Report(r) => r.at_ms,
            Line::Node(n) => n.at_ms,
            Line::Alert(a) => a.at_ms,
            Line::Weights(w) => w.at_ms,
            Line::Resolve(r) => r.at_ms,
            Line::Step(s) => s.at_ms,
        }
    }
}

/// First line of every file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub at_ms: i64,
    pub format: String,
    pub version: u32,
    /// Sequence number of this file in the directory.
    pub seq: u64,
    pub scheduler_id: String,
    /// The weights in force when the file was opened.
    pub weights_version: u64,
    pub weights: Weights,
}

/// A report as received (protobuf `vantage.v1.Report`, base64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportLine {
    pub at_ms: i64,
    pub node_id: String,
    pub seq: u64,
    pub report_pb: String,
}

/// A node's self-description from its Hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfoLine {
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    pub capacity_mbps: f64,
    pub public_url: String,
    pub probe_addr: String,
    pub agent_version: String,
    #[serde(default)]
    pub static_origins: BTreeMap<String, String>,
}

/// `connect`, `disconnect`, `up`, `suspect`, `down`, `draining`, `drain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub at_ms: i64,
    pub node_id: String,
    pub event: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<NodeInfoLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertLine {
    pub at_ms: i64,
    pub node_id: String,
    pub kind: String,
    pub subject: String,
    pub detail: String,
    pub value: f64,
}

/// A new weight set in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsLine {
    pub at_ms: i64,
    pub version: u64,
    pub weights: Weights,
    pub actor: String,
    pub comment: String,
}

/// A viewer resolve request and the scheduler's answer, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolveLine {
    pub at_ms: i64,
    pub request: serde_json::Value,
    pub answer: serde_json::Value,
}

/// One step of the planning session: what it was given since the step
/// before and what it decided.
///
/// A line with a `snapshot` is *self-contained* — the first step line of
/// every file, and the first after a step that could not be recorded: its
/// `nodes` are every node, its `snapshot` the routes before the step (the
/// hysteresis state) and its `decisions` every node's. Other lines hold
/// only what moved since the step line before them, which is always the
/// step `step_seq - 1` in the same file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLine {
    /// The `now` the step was given (it also seeds the probe rotation).
    pub at_ms: i64,
    /// Counts every step of the scheduler process, recorded or not.
    pub step_seq: u64,
    pub duration_us: u64,
    /// The step re-indexed and planned everything.
    pub full: bool,
    /// `None` (written `null`): the settings of the step line before in
    /// the same file.
    pub settings: Option<SettingsLine>,
    /// Views the session took since the step before (after the deadband),
    /// by id.
    #[serde(default)]
    pub nodes: Vec<NodeLine>,
    /// Nodes removed since the step before (left out when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Every node's routes before the step, by node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<BTreeMap<String, RoutesLine>>,
    /// The decisions of every node whose table changed in the step (every
    /// node on a self-contained line), by node id.
    #[serde(default)]
    pub decisions: Decisions,
}

/// [`PlanSettings`] without the probe key (a secret the session only
/// copies into tables; it influences no decision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsLine {
    pub weights: Weights,
    pub weights_version: u64,
    pub ranges: Ranges,
    pub stability: Stability,
    pub limits: Limits,
    pub deadband: Deadband,
    pub report_interval_ms: u32,
    pub table_ttl_s: u32,
    pub replan_interval_ms: u32,
    pub full_plan_interval_ms: u32,
}

impl From<&PlanSettings> for SettingsLine {
    fn from(s: &PlanSettings) -> Self {
        SettingsLine {
            weights: s.weights,
            weights_version: s.weights_version,
            ranges: s.ranges,
            stability: s.stability,
            limits: s.limits,
            deadband: s.deadband,
            report_interval_ms: s.report_interval_ms,
            table_ttl_s: s.table_ttl_s,
            replan_interval_ms: s.replan_interval_ms,
            full_plan_interval_ms: s.full_plan_interval_ms,
        }
    }
}

impl SettingsLine {
    /// The session settings, with an empty probe key. Limits and weights
    /// a session would refuse are an error.
    pub fn to_settings(&self) -> Result<PlanSettings, InputError> {
        self.limits.validate().map_err(InputError::Settings)?;
        self.deadband.validate().map_err(InputError::Settings)?;
        self.ranges
            .validate()
            .map_err(|e| InputError::Settings(e.to_string()))?;
        self.weights
            .validate()
            .map_err(|e| InputError::Settings(e.to_string()))?;
        Ok(PlanSettings {
            weights: self.weights,
            weights_version: self.weights_version,
            ranges: self.ranges,
            stability: self.stability,
            limits: self.limits,
            deadband: self.deadband,
            report_interval_ms: self.report_interval_ms,
            table_ttl_s: self.table_ttl_s,
            probe_key: Vec::new(),
            publish: None,
            replan_interval_ms: self.replan_interval_ms,
            full_plan_interval_ms: self.full_plan_interval_ms,
        })
    }
}

/// [`NodeView`] as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeLine {
    pub id: String,
    pub health: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    pub capacity_mbps: f64,
    pub egress_mbps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_ms: Option<f64>,
    pub public_url: String,
    pub probe_addr: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paths: BTreeMap<String, PathLine>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub published: BTreeMap<String, f64>,
    /// Added with the first-publisher rule: absent in older traces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub published_since: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub static_origins: BTreeMap<String, String>,
}

/// [`PathStat`] as written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PathLine {
    pub rtt_ms: f64,
    pub loss: f64,
    pub samples: u32,
}

/// A trace line that does not describe a valid planning input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("node {node}: coordinates {lat}, {lon} out of range")]
    Coord { node: String, lat: f64, lon: f64 },
    #[error("node {node}: invalid stream key or pattern {key:?}")]
    Key { node: String, key: String },
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("settings are null on the file's first step line")]
    NoSettings,
}

impl From<&NodeView> for NodeLine {
    fn from(v: &NodeView) -> Self {
        NodeLine {
            id: v.id.clone(),
            health: v.health,
            lat: v.coord.map(|c| c.lat),
            lon: v.coord.map(|c| c.lon),
            capacity_mbps: v.capacity_mbps,
            egress_mbps: v.egress_mbps,
            buffer_ms: v.buffer_ms,
            public_url: v.public_url.clone(),
            probe_addr: v.probe_addr.clone(),
            paths: v
                .paths
                .iter()
                .map(|(k, p)| {
                    let line = PathLine {
                        rtt_ms: p.rtt_ms,
                        loss: p.loss,
                        samples: p.samples,
                    };
                    (k.clone(), line)
                })
                .collect(),
            published: v
                .published
                .iter()
                .map(|(k, b)| (k.to_string(), *b))
                .collect(),
            published_since: v
                .published_since
                .iter()
                .map(|(k, t)| (k.to_string(), *t))
                .collect(),
            static_origins: v
                .static_origins
                .iter()
                .map(|(k, u)| (k.to_string(), u.clone()))
                .collect(),
        }
    }
}

impl NodeLine {
    pub fn to_view(&self) -> Result<NodeView, InputError> {
        let coord = match (self.lat, self.lon) {
            (Some(lat), Some(lon)) => Some(Coord::new(lat, lon).ok_or(InputError::Coord {
                node: self.id.clone(),
                lat,
                lon,
            })?),
            _ => None,
        };
        let key_err = |key: &str| InputError::Key {
            node: self.id.clone(),
            key: key.to_owned(),
        };
        Ok(NodeView {
            id: self.id.clone(),
            health: self.health,
            coord,
            capacity_mbps: self.capacity_mbps,
            egress_mbps: self.egress_mbps,
            buffer_ms: self.buffer_ms,
            public_url: self.public_url.clone(),
            probe_addr: self.probe_addr.clone(),
            paths: self
                .paths
                .iter()
                .map(|(k, p)| {
                    let stat = PathStat {
                        rtt_ms: p.rtt_ms,
                        loss: p.loss,
                        samples: p.samples,
                    };
                    (k.clone(), stat)
                })
                .collect(),
            published: self
                .published
                .iter()
                .map(|(k, b)| Ok((StreamKey::parse(k).map_err(|_| key_err(k))?, *b)))
                .collect::<Result<_, InputError>>()?,
            published_since: self
                .published_since
                .iter()
                .map(|(k, t)| Ok((StreamKey::parse(k).map_err(|_| key_err(k))?, *t)))
                .collect::<Result<_, InputError>>()?,
            static_origins: self
                .static_origins
                .iter()
                .map(|(k, u)| Ok((StreamPattern::parse(k).map_err(|_| key_err(k))?, u.clone())))
                .collect::<Result<_, InputError>>()?,
        })
    }
}
