//! Viewer routing (DESIGN §5, §8): where should this viewer watch this
//! stream? Pure — no locks, no clock, no I/O — so the scheduler's
//! `/v1/resolve` and `/play` and the simulator's `qoe` policy run the same
//! code:
//!
//! * [`rank`] — ranking of candidate edges (eligibility, scores,
//!   exploration, spreading);
//! * [`learn`] — per (node, client group) estimates with decay;
//! * [`Edges`] and [`resolve`] — the cluster as viewer routing sees it (up
//!   nodes in a spatial index, the streams it knows) and one resolve:
//!   candidates preselected (the `nearest` nearest up nodes plus every node
//!   with an estimate for the viewer's group; every up node when the
//!   location is unknown or none of those is eligible), so its cost does
//!   not grow with the cluster, then ranked.

pub mod learn;
pub mod rank;

use crate::node::Health;
use learn::{GroupEstimate, Learner};
use rand::Rng;
use rank::{Candidate, Decision, RankInput, RankParams, Viewer};
use rstar::RTree;
use rstar::primitives::GeomWithData;
use std::collections::HashMap;
use std::sync::Arc;
use vantage_shared::group::{Cell, GroupKey};
use vantage_shared::place::Coord;
use vantage_shared::score::{Breakdown, Ranges, Source, Stability, Weights};
use vantage_shared::stream::{StreamKey, StreamPattern};

/// Where a viewer's location came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocationSource {
    /// `lat`/`lon` query parameters.
    Query,
    /// The trusted location header.
    Header,
    /// The client IP in the GeoIP City database.
    Geoip,
    /// None of the above: distance-free ranking.
    Unknown,
}

/// A resolve request after parsing.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub stream: StreamKey,
    pub coord: Option<Coord>,
    pub source: LocationSource,
    pub asn: Option<u32>,
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no origin is known for stream {0}: no agent publishes it and no agent has a static origin matching it"
    )]
    UnknownStream(StreamKey),
    #[error("no eligible edge for {stream}: {up} of {known} nodes up, none with capacity left")]
    NoEligible {
        stream: StreamKey,
        known: usize,
        up: usize,
    },
}

/// One edge of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerEdge {
    /// Index in [`Edges::nodes`].
    pub index: usize,
    pub node_id: Arc<str>,
    pub public_url: Arc<str>,
    pub score: f64,
    pub breakdown: Breakdown,
    /// Effective samples of this node's estimate for the group (0 = none).
    pub group_samples: f64,
}

impl AnswerEdge {
    /// Whether the group's own measurements drove this score.
    pub fn measured(&self) -> bool {
        self.breakdown
            .terms
            .iter()
            .any(|t| matches!(t.name, "latency" | "buffer") && t.source == Source::Measured)
    }
}

/// The answer to a resolve; the chosen edge is the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub group: String,
    pub decision: Decision,
    pub eligible: usize,
    pub bitrate_mbps: f64,
    pub edges: Vec<AnswerEdge>,
}

/// What viewer routing needs of one node.
#[derive(Debug, Clone)]
pub struct EdgeNode {
    pub id: Arc<str>,
    /// Without a trailing `/`.
    pub public_url: Arc<str>,
    pub health: Health,
    pub coord: Option<Coord>,
    pub capacity_mbps: f64,
    /// Egress as admission counts it: the larger of the latest report and
    /// the smoothed load ([`crate::smoothing::Smoother::admission_egress_mbps`]).
    pub egress_mbps: f64,
    /// Egress in the latest report: what the fallback ranking counts when
    /// no edge has headroom under [`Self::egress_mbps`].
    pub latest_egress_mbps: f64,
    /// Media in this node's GOP cache per stream it holds, ms (its feed's
    /// health: a full GOP when the upstream keeps up), sorted by stream.
    pub stream_buffer_ms: Vec<(StreamKey, f64)>,
}

impl EdgeNode {
    /// The GOP-cache depth this node reported for `stream`, if it holds it.
    pub fn stream_buffer(&self, stream: &StreamKey) -> Option<f64> {
        self.stream_buffer_ms
            .binary_search_by(|(k, _)| k.cmp(stream))
            .ok()
            .map(|i| self.stream_buffer_ms[i].1)
    }
}

/// An immutable picture of the cluster for resolves.
#[derive(Debug, Default)]
pub struct Edges {
    pub nodes: Vec<EdgeNode>,
    pub by_id: HashMap<Arc<str>, usize>,
    /// Up nodes with coordinates.
    spatial: RTree<GeomWithData<[f64; 3], usize>>,
    /// Up nodes with a public URL.
    pub up: Vec<usize>,
    /// Streams published to a node that is not down, with bit rate (kbps).
    published: HashMap<StreamKey, f64>,
    /// Static origin patterns of nodes that are not down.
    patterns: Vec<StreamPattern>,
    /// Deepest GOP cache any node that is not down reported per stream:
    /// what a feed that keeps up holds (a full GOP, whatever its length).
    full_gop_ms: HashMap<StreamKey, f64>,
}

impl Edges {
    /// Indexes `nodes`; `published` and `patterns` are the streams the
    /// cluster can serve (of nodes that are not down).
    pub fn new(
        nodes: Vec<EdgeNode>,
        published: HashMap<StreamKey, f64>,
        mut patterns: Vec<StreamPattern>,
    ) -> Self {
        patterns.sort();
        patterns.dedup();
        let up: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.health == Health::Up && !n.public_url.is_empty())
            .map(|(i, _)| i)
            .collect();
        let spatial = RTree::bulk_load(
            up.iter()
                .filter_map(|&i| {
                    nodes[i]
                        .coord
                        .map(|c| GeomWithData::new(c.sphere_point(), i))
                })
                .collect(),
        );
        let mut full_gop_ms: HashMap<StreamKey, f64> = HashMap::new();
        for n in nodes.iter().filter(|n| n.health != Health::Down) {
            for (k, ms) in &n.stream_buffer_ms {
                if ms.is_finite() && *ms > 0.0 {
                    let e = full_gop_ms.entry(k.clone()).or_insert(0.0);
                    *e = e.max(*ms);
                }
            }
        }
        Edges {
            full_gop_ms,
            by_id: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.id.clone(), i))
                .collect(),
            nodes,
            spatial,
            up,
            published,
            patterns,
        }
    }

    /// How well node `i`'s feed of `stream` keeps up, 0..=1: its GOP-cache
    /// depth over the deepest any node reported for the stream (the
    /// origin's, whose feed is the publisher). `None` when `i` does not
    /// hold the stream. Relative, because the depth of a healthy feed is
    /// the stream's GOP (0.5–4 s), not a fixed figure: a node holding a
    /// 1 s-GOP stream is as healthy as one that does not hold it yet.
    pub fn stream_feed_ratio(&self, i: usize, stream: &StreamKey) -> Option<f64> {
        let depth = self.nodes.get(i)?.stream_buffer(stream)?;
        let full = *self.full_gop_ms.get(stream)?;
        (full > 0.0 && depth.is_finite()).then(|| (depth / full).clamp(0.0, 1.0))
    }

    /// Bit rate of `stream` in kbps (`default_kbps` when it is unknown but
    /// a static pattern serves it); `None` when nothing serves it.
    pub fn bitrate_kbps(&self, stream: &StreamKey, default_kbps: f64) -> Option<f64> {
        match self.published.get(stream) {
            Some(&k) if k > 0.0 && k.is_finite() => Some(k),
            Some(_) => Some(default_kbps),
            None if self.patterns.iter().any(|p| p.matches(stream)) => Some(default_kbps),
            None => None,
        }
    }
}

/// How resolves are made.
#[derive(Debug, Clone, Copy)]
pub struct ResolveParams<'a> {
    pub weights: &'a Weights,
    pub ranges: &'a Ranges,
    pub rank: &'a RankParams,
    /// Nearest up nodes scored per resolve.
    pub nearest: usize,
    /// Geohash characters of a client group.
    pub group_precision: usize,
    pub default_bitrate_kbps: f64,
}

/// The client group of a location and ASN.
pub fn group_of(coord: Option<Coord>, asn: Option<u32>, precision: usize) -> GroupKey {
    GroupKey::locate(coord.map(|c| (c.lat, c.lon)), precision).with_asn(asn)
}

/// Ranks edges for one viewer. `assigned(i)`: the load the caller
/// assigned to node `i` since its last report and the join-rate charge of
/// admission (Mbps, [`rank::LoadLedger::total`] and
/// [`rank::LoadLedger::charge`]); the caller accounts the viewer's bit
/// rate to the chosen edge (`answer.edges[0].index`). When the margins
/// (the charge, the smoothed load of [`EdgeNode::egress_mbps`]) leave no
/// edge eligible, the ranking is made again without them: they keep
/// headroom, they never turn a viewer away that the latest reports say
/// capacity could take.
pub fn resolve<R: Rng + ?Sized>(
    edges: &Edges,
    learner: &Learner,
    assigned: &dyn Fn(usize) -> (f64, f64),
    req: &Request,
    p: &ResolveParams<'_>,
    now_ms: i64,
    rng: &mut R,
) -> Result<Answer, ResolveError> {
    let kbps = edges
        .bitrate_kbps(&req.stream, p.default_bitrate_kbps)
        .ok_or_else(|| ResolveError::UnknownStream(req.stream.clone()))?;
    let bitrate_mbps = kbps / 1000.0;
    let key = group_of(req.coord, req.asn, p.group_precision);
    let label = key.to_string();
    // Agents label groups by cell only: an ASN-qualified group falls back
    // to its cell's estimates.
    let cell_label = (key.asn.is_some()).then(|| {
        GroupKey {
            asn: None,
            ..key.clone()
        }
        .to_string()
    });
    // This group's estimates by node index (the exact group first, then
    // its cell): one pass over the group's list, O(1) per candidate.
    let mut estimates: HashMap<usize, &GroupEstimate> = HashMap::new();
    for l in [cell_label.as_deref(), Some(label.as_str())]
        .into_iter()
        .flatten()
    {
        for (id, est) in learner.group(l) {
            if let Some(&i) = edges.by_id.get(id) {
                estimates.insert(i, est);
            }
        }
    }
    let mut picked: Vec<usize> = Vec::with_capacity(p.nearest + 8);
    if let (Some(c), Cell::Geohash(_)) = (req.coord, &key.cell) {
        picked.extend(
            edges
                .spatial
                .nearest_neighbor_iter(&c.sphere_point())
                .take(p.nearest)
                .map(|g| g.data),
        );
        let mut learned: Vec<usize> = estimates
            .keys()
            .copied()
            .filter(|&i| edges.nodes[i].health == Health::Up && !picked.contains(&i))
            .collect();
        learned.sort_unstable();
        picked.extend(learned);
    }
    let input = RankInput {
        now_ms,
        weights: p.weights,
        ranges: p.ranges,
        params: p.rank,
        viewer: Viewer {
            coord: req.coord,
            bitrate_mbps,
        },
        n: req.n.max(1),
    };
    // A feed that keeps up counts as a healthy buffer, scaled down by how
    // far it falls behind (`Edges::stream_feed_ratio`).
    let healthy_buffer_ms = p.ranges.buffer_ms.hi.max(p.ranges.buffer_ms.lo);
    // `margins`: the join-rate charge and the smoothed load count; without
    // them only the latest report and what was assigned since.
    let build = |set: &[usize], margins: bool| -> Vec<Candidate<'_>> {
        set.iter()
            .map(|&i| {
                let n = &edges.nodes[i];
                let (assigned_mbps, charge) = assigned(i);
                Candidate {
                    id: &n.id,
                    public_url: &n.public_url,
                    health: n.health,
                    coord: n.coord,
                    capacity_mbps: n.capacity_mbps,
                    egress_mbps: if margins {
                        n.egress_mbps
                    } else {
                        n.latest_egress_mbps
                    },
                    assigned_mbps,
                    charge_mbps: if margins { charge } else { 0.0 },
                    group: estimates.get(&i).copied(),
                    node_wide: learner.node(&n.id),
                    stream_buffer_ms: edges
                        .stream_feed_ratio(i, &req.stream)
                        .map(|r| r * healthy_buffer_ms),
                }
            })
            .collect()
    };
    let mut set = picked;
    let mut cands = build(&set, true);
    let mut ranking = rank::rank(&input, &cands, rng);
    if ranking.edges.is_empty() && set.len() < edges.up.len() {
        set = edges.up.clone();
        cands = build(&set, true);
        ranking = rank::rank(&input, &cands, rng);
    }
    if ranking.edges.is_empty() {
        cands = build(&set, false);
        ranking = rank::rank(&input, &cands, rng);
    }
    if ranking.chosen().is_none() {
        return Err(ResolveError::NoEligible {
            stream: req.stream.clone(),
            known: edges.nodes.len(),
            up: edges.up.len(),
        });
    }
    let answer_edges = ranking
        .edges
        .iter()
        .map(|e| {
            let i = set[e.index];
            let n = &edges.nodes[i];
            AnswerEdge {
                index: i,
                node_id: n.id.clone(),
                public_url: n.public_url.clone(),
                score: e.score,
                breakdown: e.breakdown.clone(),
                group_samples: cands[e.index]
                    .group
                    .map_or(0.0, |g| g.at(now_ms, p.rank.group_half_life_ms).samples),
            }
        })
        .collect();
    Ok(Answer {
        group: label,
        decision: ranking.decision,
        eligible: ranking.eligible,
        bitrate_mbps,
        edges: answer_edges,
    })
}

/// Mid-session steering (HLS Content Steering reloads, docs/viewer-routing.md):
/// for a viewer on node `current` (an index of [`Edges::nodes`]) and an
/// answer ranked without exploration or spreading, the node it should move
/// to, or `None` to stay.
///
/// * `current` ranked in the answer: move only when the best is clearly
///   better ([`Stability::should_switch`] with the margins doubled: a move
///   costs the viewer a new connection and the node a burst), so viewers
///   do not flap between near-equal edges;
/// * `current` not in the answer (not eligible for a *new* viewer):
///   move when it is not up any more or is itself over the hard
///   utilisation limit (`current_over_limit`); a node merely too full for
///   one more viewer keeps the viewers it has (the answer charges the
///   viewer's bit rate as if it were new, which would empty every node
///   near the limit at once).
pub fn steer(
    edges: &Edges,
    answer: &Answer,
    current: usize,
    current_over_limit: bool,
    stability: &Stability,
) -> Option<usize> {
    let best = answer.edges.first()?;
    if best.index == current {
        return None;
    }
    let margins = Stability {
        switch_margin_abs: 2.0 * stability.switch_margin_abs,
        switch_margin_rel: 2.0 * stability.switch_margin_rel,
        ..*stability
    };
    match answer.edges.iter().find(|e| e.index == current) {
        Some(cur) => margins
            .should_switch(cur.score, best.score)
            .then_some(best.index),
        None => {
            let up = edges
                .nodes
                .get(current)
                .is_some_and(|n| n.health == Health::Up);
            (!up || current_over_limit).then_some(best.index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, health: Health, streams: &[(&str, f64)]) -> EdgeNode {
        EdgeNode {
            id: Arc::from(id),
            public_url: Arc::from(format!("http://{id}")),
            health,
            coord: None,
            capacity_mbps: 100.0,
            egress_mbps: 0.0,
            latest_egress_mbps: 0.0,
            stream_buffer_ms: streams
                .iter()
                .map(|(k, ms)| (StreamKey::parse(k).unwrap(), *ms))
                .collect(),
        }
    }

    #[test]
    fn feed_ratio_is_relative_to_the_streams_full_gop() {
        let x = StreamKey::parse("live/x").unwrap();
        let y = StreamKey::parse("live/y").unwrap();
        let edges = Edges::new(
            vec![
                node("origin", Health::Up, &[("live/x", 1000.0)]),
                node("keeps-up", Health::Up, &[("live/x", 1000.0)]),
                node("behind", Health::Up, &[("live/x", 400.0)]),
                node("cold", Health::Up, &[]),
                // A down node's figures are not the reference.
                node("gone", Health::Down, &[("live/x", 4000.0)]),
            ],
            HashMap::new(),
            Vec::new(),
        );
        // A 1 s GOP held in full is a healthy feed, not half of 2 s.
        assert_eq!(edges.stream_feed_ratio(1, &x), Some(1.0));
        assert_eq!(edges.stream_feed_ratio(2, &x), Some(0.4));
        assert_eq!(edges.stream_feed_ratio(3, &x), None);
        assert_eq!(edges.stream_feed_ratio(0, &y), None);
        assert_eq!(edges.stream_feed_ratio(99, &x), None);
    }
}
