//! The records the store keeps and the fire-and-forget write operations.

use serde::Serialize;
use vantage_shared::score::Weights;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names, if supported.
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// One version of the scoring weights, with its audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightSet {
    pub version: u64,
    pub weights: Weights,
    pub created_at_ms: i64,
    pub actor: String,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    pub lat: f64,
    pub lon: f64,
    pub capacity_mbps: f64,
    pub public_url: String,
    pub probe_addr: String,
    /// Hash of the node credential (token mode); `None` keeps the stored one on upsert.
    pub credential_hash: Option<String>,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: i64,
    pub drained: bool,
}

/// The latest route table version of a node and the highest version it acknowledged (0 = none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteHead {
    pub node_id: String,
    pub version: u64,
    pub hash: String,
    pub acked_version: u64,
}

/// One stored route table version with its ACK/NACK outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteVersionRecord {
    pub node_id: String,
    pub version: u64,
    pub hash: String,
    pub created_at_ms: i64,
    pub acked_at_ms: Option<i64>,
    pub nacked_at_ms: Option<i64>,
    pub nack_detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub at_ms: i64,
    pub node_id: String,
    /// up, down, drain, failover, nack, ...
    pub kind: String,
    pub detail: String,
}

/// Telemetry of one node summarised over one minute (`minute_ms` = start of the minute).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollup {
    pub node_id: String,
    pub minute_ms: i64,
    pub reports: u32,
    pub cpu_avg: f64,
    pub utilisation_avg: f64,
    pub egress_mbps_avg: f64,
    pub viewers_max: u32,
}

/// A fire-and-forget write for [`Store::record`](super::Store::record).
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// `last_seen_ms = max(last_seen_ms, at_ms)` of a known node.
    NodeSeen {
        node_id: String,
        at_ms: i64,
    },
    /// Upsert; a `None` credential hash keeps the stored one.
    NodeInfo(NodeRecord),
    /// New route table version (a repeated (node, version) is ignored).
    RouteVersion {
        node_id: String,
        version: u64,
        hash: String,
        created_at_ms: i64,
    },
    RouteAck {
        node_id: String,
        version: u64,
        at_ms: i64,
    },
    RouteNack {
        node_id: String,
        version: u64,
        at_ms: i64,
        detail: String,
    },
    Event(EventRecord),
    /// Upsert by (node_id, minute_ms).
    Rollup(Rollup),
}
