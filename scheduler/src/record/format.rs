//! The trace format: one JSON object per line, tagged by `"type"`.
//!
//! These types are the stable, documented shape of a trace
//! (`docs/simulator-traces.md`); they mirror the planner's types instead of
//! deriving serde on them, so the planner can change without silently
//! changing the files operators keep. Conversions both ways live here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vantage_shared::score::Weights;

/// `header.format` of every trace file.
pub const FORMAT: &str = "vantage-trace";
/// `header.version`: bumped on incompatible changes.
pub const VERSION: u32 = 1;

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
