//! Routes and decisions as a trace writes them: the routes before a step
//! (a self-contained step line's `snapshot`, the hysteresis state) and
//! each node's decisions after it (upstreams with hops and scores, probe
//! targets), with conversions from and to the session's
//! [`RouteEntry`] and the route tables it builds.

use super::format::InputError;
use crate::session::RouteEntry;
use crate::source::SourceKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use vantage_proto::v1::{ProbeReason, RouteTable, Upstream};
use vantage_shared::stream::StreamPattern;

/// One node's routes in a snapshot: upstreams `[node, hops]` per origin
/// and per static pattern (`""` = the node's own static origin URL).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutesLine {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub origins: BTreeMap<String, Vec<(String, u32)>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub patterns: BTreeMap<String, Vec<(String, u32)>>,
}

/// A snapshot line from [`PlanSession::routes`](crate::PlanSession::routes).
pub fn snapshot_line(routes: &[RouteEntry]) -> BTreeMap<String, RoutesLine> {
    let mut out: BTreeMap<String, RoutesLine> = BTreeMap::new();
    for r in routes {
        let node = out.entry(r.node.clone()).or_default();
        let by = match r.source {
            SourceKey::Origin(_) => &mut node.origins,
            SourceKey::Pattern(_) => &mut node.patterns,
        };
        by.insert(r.source.name().to_owned(), r.upstreams.clone());
    }
    out
}

/// The routes a snapshot line holds, for
/// [`PlanSession::seed_routes`](crate::PlanSession::seed_routes).
pub fn snapshot_routes(
    snapshot: &BTreeMap<String, RoutesLine>,
) -> Result<Vec<RouteEntry>, InputError> {
    let mut out = Vec::new();
    for (node, routes) in snapshot {
        for (source, ups) in routes_of(node, &routes.origins, &routes.patterns)? {
            out.push(RouteEntry {
                node: node.clone(),
                source,
                upstreams: ups.clone(),
            });
        }
    }
    Ok(out)
}

/// Origin and pattern maps as source keys (patterns parsed).
fn routes_of<'a, T>(
    node: &str,
    origins: &'a BTreeMap<String, T>,
    patterns: &'a BTreeMap<String, T>,
) -> Result<Vec<(SourceKey, &'a T)>, InputError> {
    let mut out: Vec<(SourceKey, &T)> = origins
        .iter()
        .map(|(o, v)| (SourceKey::Origin(Arc::from(o.as_str())), v))
        .collect();
    for (p, v) in patterns {
        let key = StreamPattern::parse(p).map_err(|_| InputError::Key {
            node: node.to_owned(),
            key: p.clone(),
        })?;
        out.push((SourceKey::Pattern(key), v));
    }
    Ok(out)
}

/// Decisions of one step, by node id.
pub type Decisions = BTreeMap<String, NodeDecision>;

/// What one node's table says: upstreams per origin and per static
/// pattern, best first (the first is the primary, the rest failover
/// backups), and probe targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDecision {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub origins: BTreeMap<String, Vec<UpstreamChoice>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub patterns: BTreeMap<String, Vec<UpstreamChoice>>,
    #[serde(default)]
    pub probes: Vec<ProbeChoice>,
}

/// One upstream of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamChoice {
    /// Serving node; "" = the node's own static origin URL.
    pub node: String,
    pub hops: u32,
    /// The table's score (quantised to 0.001).
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeChoice {
    pub node: String,
    /// `upstream`, `nearest` or `random`.
    pub reason: String,
}

impl NodeDecision {
    /// Every route as (`origin:ID` or `pattern:P`, upstreams), origins
    /// first.
    pub fn routes(&self) -> impl Iterator<Item = (String, &[UpstreamChoice])> {
        let o = self.origins.iter().map(|(k, v)| (format!("origin:{k}"), v));
        let p = self
            .patterns
            .iter()
            .map(|(k, v)| (format!("pattern:{k}"), v));
        o.chain(p).map(|(k, v)| (k, v.as_slice()))
    }

    /// Equal but for scores: the same upstreams in the same order with
    /// the same hop counts, and the same probe targets. (A table's
    /// version moves only when this changes, so a node whose table kept
    /// its version may hold other scores than its last recorded ones.)
    pub fn same_choices(&self, other: &NodeDecision) -> bool {
        fn same(
            a: &BTreeMap<String, Vec<UpstreamChoice>>,
            b: &BTreeMap<String, Vec<UpstreamChoice>>,
        ) -> bool {
            a.len() == b.len()
                && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
                    ka == kb
                        && va.len() == vb.len()
                        && va
                            .iter()
                            .zip(vb)
                            .all(|(x, y)| x.node == y.node && x.hops == y.hops)
                })
        }
        same(&self.origins, &other.origins)
            && same(&self.patterns, &other.patterns)
            && self.probes == other.probes
    }

    /// The routes as [`RouteEntry`]s of node `node` (scores dropped).
    /// Patterns that do not parse are left out ([`Trace::load`] refuses
    /// them).
    ///
    /// [`Trace::load`]: super::Trace::load
    pub fn route_entries(&self, node: &str) -> Vec<RouteEntry> {
        let entry = |source: SourceKey, ups: &[UpstreamChoice]| RouteEntry {
            node: node.to_owned(),
            source,
            upstreams: ups.iter().map(|u| (u.node.clone(), u.hops)).collect(),
        };
        let origins = self
            .origins
            .iter()
            .map(|(o, ups)| entry(SourceKey::Origin(Arc::from(o.as_str())), ups));
        let patterns = self.patterns.iter().filter_map(|(p, ups)| {
            let key = StreamPattern::parse(p).ok()?;
            Some(entry(SourceKey::Pattern(key), ups))
        });
        origins.chain(patterns).collect()
    }

    /// Checks what [`route_entries`](Self::route_entries) would leave out.
    pub fn check(&self, node: &str) -> Result<(), InputError> {
        routes_of(node, &self.origins, &self.patterns).map(|_| ())
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

fn choices(ups: &[Upstream]) -> Vec<UpstreamChoice> {
    ups.iter()
        .map(|u| UpstreamChoice {
            node: u.node_id.clone(),
            hops: u.hops,
            score: u.score,
        })
        .collect()
}

/// The decisions in one node's table
/// ([`PlanSession::own_table`](crate::PlanSession::own_table)).
pub fn decision_of(t: &RouteTable) -> NodeDecision {
    NodeDecision {
        origins: t
            .origins
            .iter()
            .map(|o| (o.origin.clone(), choices(&o.upstreams)))
            .collect(),
        patterns: t
            .streams
            .iter()
            .map(|s| (s.stream.clone(), choices(&s.upstreams)))
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
