//! What the planner knows about a node: its facts (from its Hello) and its
//! planned inputs (from its reports, after smoothing and the deadband).

use std::collections::BTreeMap;
use vantage_shared::place::Coord;
use vantage_shared::score::Ranges;
use vantage_shared::stream::{StreamKey, StreamPattern};

/// Liveness of a node as the planner sees it (the registry's state).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Up,
    Suspect,
    Down,
    Draining,
}

impl Health {
    pub const ALL: [Health; 4] = [Health::Up, Health::Suspect, Health::Down, Health::Draining];

    pub fn label(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Suspect => "suspect",
            Health::Down => "down",
            Health::Draining => "draining",
        }
    }
}

/// A path measurement from a node to a peer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathStat {
    pub rtt_ms: f64,
    pub loss: f64,
    pub samples: u32,
}

/// What the planner knows about one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub health: Health,
    pub coord: Option<Coord>,
    pub capacity_mbps: f64,
    pub egress_mbps: f64,
    /// Mean media buffered in this node's GOP caches, if it reported any.
    pub buffer_ms: Option<f64>,
    pub public_url: String,
    pub probe_addr: String,
    /// Measurements by this node towards peers, by peer id.
    pub paths: BTreeMap<String, PathStat>,
    /// Streams published to this node (it is their origin), with bit rate.
    pub published: BTreeMap<StreamKey, f64>,
    /// When the scheduler first saw each of `published` here (its clock,
    /// ms): of two nodes publishing a stream, the first stays its origin.
    /// Missing (the simulator, old traces): ranked after known times.
    pub published_since: BTreeMap<StreamKey, i64>,
    /// Static origins configured on this node: pattern → URL template.
    pub static_origins: BTreeMap<StreamPattern, String>,
}

impl NodeView {
    /// A node with nothing reported yet (tests, benchmarks, the simulator).
    pub fn new(id: impl Into<String>) -> Self {
        NodeView {
            id: id.into(),
            health: Health::Up,
            coord: None,
            capacity_mbps: 0.0,
            egress_mbps: 0.0,
            buffer_ms: None,
            public_url: String::new(),
            probe_addr: String::new(),
            paths: BTreeMap::new(),
            published: BTreeMap::new(),
            published_since: BTreeMap::new(),
            static_origins: BTreeMap::new(),
        }
    }

    pub fn utilisation(&self) -> f64 {
        if self.capacity_mbps > 0.0 {
            self.egress_mbps / self.capacity_mbps
        } else {
            1.0
        }
    }

    /// Whether the facts a node states in its Hello differ (placement,
    /// URLs, capacity, static origins): the planner then re-indexes.
    pub fn same_facts(&self, other: &NodeView) -> bool {
        self.id == other.id
            && self.coord == other.coord
            && self.capacity_mbps.to_bits() == other.capacity_mbps.to_bits()
            && self.public_url == other.public_url
            && self.probe_addr == other.probe_addr
            && self.static_origins == other.static_origins
    }
}

/// Whether a node may serve others: up and under the hard utilisation limit.
pub fn eligible(n: &NodeView, ranges: &Ranges) -> bool {
    n.health == Health::Up && n.utilisation() < ranges.hard_utilisation
}
