//! The trace format: one JSON object per line, tagged by `"type"`.
//!
//! These types are the stable, documented shape of a trace
//! (`docs/simulator-traces.md`); they mirror the planner's types instead of
//! deriving serde on them, so the planner can change without silently
//! changing the files operators keep. Conversions both ways live here.

use crate::planner::{Health, Limits, NodeView, PathStat, Plan, PlanInput};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vantage_proto::v1::{ProbeReason, RouteTable};
use vantage_shared::place::Coord;
use vantage_shared::score::{Ranges, Stability, Weights};
use vantage_shared::stream::{StreamKey, StreamPattern};

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
    Plan(PlanLine),
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

/// One plan: what the planner was given and what it decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanLine {
    pub at_ms: i64,
    /// Counts every plan of the process, recorded or dropped.
    pub plan_seq: u64,
    pub duration_us: u64,
    pub input: InputLine,
    pub decisions: Decisions,
}

/// [`PlanInput`] without the probe key (a secret the planner only copies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputLine {
    pub now_ms: i64,
    pub weights: Weights,
    pub weights_version: u64,
    pub ranges: Ranges,
    pub stability: Stability,
    pub limits: Limits,
    pub report_interval_ms: u32,
    pub table_ttl_s: u32,
    pub nodes: Vec<NodeLine>,
    /// `(node, route, upstream)`; `None` = the primaries of the previous
    /// plan line of the same file.
    pub previous: Option<Vec<(String, String, String)>>,
    /// `(node, route, backups)`; `None` = the backups of the previous plan
    /// line of the same file (absent in traces from before backup hysteresis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_backups: Option<Vec<(String, String, Vec<String>)>>,
}

/// [`NodeView`] as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeLine {
    pub id: String,
    pub health: String,
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
    #[serde(default)]
    pub paths: BTreeMap<String, PathLine>,
    #[serde(default)]
    pub published: BTreeMap<String, f64>,
    #[serde(default)]
    pub static_origins: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PathLine {
    pub rtt_ms: f64,
    pub loss: f64,
    pub samples: u32,
}

/// Primary upstream per (node, route): the planner's hysteresis state.
pub type Primaries = BTreeMap<(String, String), String>;

/// Backups per (node, route): the planner's backup hysteresis state.
pub type Backups = crate::planner::Backups;

/// Every node's decisions of one plan, by node id.
pub type Decisions = BTreeMap<String, NodeDecision>;

/// What one node's table says: upstreams per route and probe targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDecision {
    #[serde(default)]
    pub streams: BTreeMap<String, Vec<UpstreamChoice>>,
    #[serde(default)]
    pub probes: Vec<ProbeChoice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamChoice {
    /// Serving node; "" = the node's own static origin URL.
    pub node: String,
    pub url: String,
    pub score: f64,
    pub hops: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeChoice {
    pub node: String,
    pub reason: String,
}

/// A trace line that does not describe a valid planner input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("node {node}: unknown health {health:?}")]
    Health { node: String, health: String },
    #[error("node {node}: coordinates {lat}, {lon} out of range")]
    Coord { node: String, lat: f64, lon: f64 },
    #[error("node {node}: invalid stream key or pattern {key:?}")]
    Key { node: String, key: String },
}

fn health_label(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Suspect => "suspect",
        Health::Down => "down",
        Health::Draining => "draining",
    }
}

fn parse_health(s: &str) -> Option<Health> {
    Some(match s {
        "up" => Health::Up,
        "suspect" => Health::Suspect,
        "down" => Health::Down,
        "draining" => Health::Draining,
        _ => return None,
    })
}

impl From<&NodeView> for NodeLine {
    fn from(v: &NodeView) -> Self {
        NodeLine {
            id: v.id.clone(),
            health: health_label(v.health).to_owned(),
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
                    (
                        k.clone(),
                        PathLine {
                            rtt_ms: p.rtt_ms,
                            loss: p.loss,
                            samples: p.samples,
                        },
                    )
                })
                .collect(),
            published: v
                .published
                .iter()
                .map(|(k, b)| (k.to_string(), *b))
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
            health: parse_health(&self.health).ok_or_else(|| InputError::Health {
                node: self.id.clone(),
                health: self.health.clone(),
            })?,
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
                    (
                        k.clone(),
                        PathStat {
                            rtt_ms: p.rtt_ms,
                            loss: p.loss,
                            samples: p.samples,
                        },
                    )
                })
                .collect(),
            published: self
                .published
                .iter()
                .map(|(k, b)| Ok((StreamKey::parse(k).map_err(|_| key_err(k))?, *b)))
                .collect::<Result<_, InputError>>()?,
            static_origins: self
                .static_origins
                .iter()
                .map(|(k, u)| Ok((StreamPattern::parse(k).map_err(|_| key_err(k))?, u.clone())))
                .collect::<Result<_, InputError>>()?,
        })
    }
}

/// Flattens a `previous` map for a trace line.
pub fn previous_line(prev: &Primaries) -> Vec<(String, String, String)> {
    prev.iter()
        .map(|((n, r), u)| (n.clone(), r.clone(), u.clone()))
        .collect()
}

/// The `previous` map a plan hands to the next one, derived from its
/// decisions: the first upstream of every route is the primary.
pub fn primaries_of(d: &Decisions) -> Primaries {
    let mut out = BTreeMap::new();
    for (node, nd) in d {
        for (route, ups) in &nd.streams {
            if let Some(first) = ups.first() {
                out.insert((node.clone(), route.clone()), first.node.clone());
            }
        }
    }
    out
}

/// The backups a plan hands to the next one, derived from its decisions:
/// every upstream after the first.
pub fn backups_of(d: &Decisions) -> Backups {
    let mut out = BTreeMap::new();
    for (node, nd) in d {
        for (route, ups) in &nd.streams {
            if ups.len() > 1 {
                out.insert(
                    (node.clone(), route.clone()),
                    ups[1..].iter().map(|u| u.node.clone()).collect(),
                );
            }
        }
    }
    out
}

impl InputLine {
    /// The line for a plan input; `previous` (`previous_backups`) is written
    /// only when it is not `chained` (`chained_backups`): the primaries
    /// (backups) of the previous line of the file.
    pub fn from_input(
        input: &PlanInput,
        chained: Option<&Primaries>,
        chained_backups: Option<&Backups>,
    ) -> Self {
        InputLine {
            now_ms: input.now_ms,
            weights: input.weights,
            weights_version: input.weights_version,
            ranges: input.ranges,
            stability: input.stability,
            limits: input.limits,
            report_interval_ms: input.report_interval_ms,
            table_ttl_s: input.table_ttl_s,
            nodes: input.nodes.iter().map(NodeLine::from).collect(),
            previous: match chained {
                Some(c) if *c == input.previous => None,
                _ => Some(previous_line(&input.previous)),
            },
            previous_backups: match chained_backups {
                Some(c) if *c == input.previous_backups => None,
                _ => Some(
                    input
                        .previous_backups
                        .iter()
                        .map(|((n, r), b)| (n.clone(), r.clone(), b.clone()))
                        .collect(),
                ),
            },
        }
    }

    /// The planner input, with `previous` resolved by the caller when the
    /// line chains (`None`). The probe key is empty: it is not recorded and
    /// does not influence decisions.
    pub fn to_input(
        &self,
        chained: &Primaries,
        chained_backups: &Backups,
    ) -> Result<PlanInput, InputError> {
        Ok(PlanInput {
            now_ms: self.now_ms,
            weights: self.weights,
            weights_version: self.weights_version,
            ranges: self.ranges,
            stability: self.stability,
            limits: self.limits,
            report_interval_ms: self.report_interval_ms,
            table_ttl_s: self.table_ttl_s,
            nodes: self
                .nodes
                .iter()
                .map(NodeLine::to_view)
                .collect::<Result<_, _>>()?,
            previous: match &self.previous {
                Some(p) => p
                    .iter()
                    .map(|(n, r, u)| ((n.clone(), r.clone()), u.clone()))
                    .collect(),
                None => chained.clone(),
            },
            previous_backups: match &self.previous_backups {
                Some(p) => p
                    .iter()
                    .map(|(n, r, b)| ((n.clone(), r.clone()), b.clone()))
                    .collect(),
                None => chained_backups.clone(),
            },
            probe_key: Vec::new(),
        })
    }
}

fn probe_reason(r: i32) -> String {
    ProbeReason::try_from(r)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("PROBE_REASON_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("unknown({r})"))
}

/// The decisions in one node's table.
pub fn decision_of(t: &RouteTable) -> NodeDecision {
    NodeDecision {
        streams: t
            .streams
            .iter()
            .map(|s| {
                (
                    s.stream.clone(),
                    s.upstreams
                        .iter()
                        .map(|u| UpstreamChoice {
                            node: u.node_id.clone(),
                            url: u.url.clone(),
                            score: u.score,
                            hops: u.hops,
                        })
                        .collect(),
                )
            })
            .collect(),
        probes: t
            .probe_targets
            .iter()
            .map(|p| ProbeChoice {
                node: p.node_id.clone(),
                reason: probe_reason(p.reason),
            })
            .collect(),
    }
}

/// The decisions of a whole plan.
pub fn decisions_of(plan: &Plan) -> Decisions {
    plan.tables
        .iter()
        .map(|(id, t)| (id.clone(), decision_of(t)))
        .collect()
}
