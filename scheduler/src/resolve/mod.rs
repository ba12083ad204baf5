//! Viewer request routing (DESIGN §5, §8): where should this viewer watch
//! this stream?
//!
//! * [`rank`] — the pure ranking (eligibility, scores, exploration,
//!   spreading), shared with the simulator;
//! * [`learn`] — per (node, client group) estimates with decay;
//! * [`geoip`] — client location and ASN from MaxMind databases;
//! * [`Resolver`] — the scheduler's live side: a snapshot of the nodes with
//!   a spatial index (rebuilt every `refresh_ms` by the liveness loop and at
//!   once on a drain), the learner fed from the agents' reports, and the load
//!   the resolver assigned itself since each node's last report.
//!
//! A resolve scores the `nearest_candidates` nearest up nodes plus every node
//! with an estimate for the viewer's group (all up nodes when the location is
//! unknown, or when none of those is eligible), so its cost does not grow
//! with the cluster.

mod config;
pub mod geoip;
pub mod learn;
mod metrics;
pub mod rank;
#[cfg(test)]
mod tests;

pub use config::ResolveConfig;
pub use metrics::{OutcomeLabel, ResolveMetrics};

use crate::planner::Health;
use crate::registry::{NodeState, Registry};
use geoip::GeoIp;
use learn::Learner;
use rand::Rng;
use rank::{Candidate, Decision, LoadLedger, RankInput, RankParams, Viewer};
use rstar::RTree;
use rstar::primitives::GeomWithData;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use vantage_proto::v1::{GroupQoe, StreamRole};
use vantage_shared::group::{Cell, GroupKey};
use vantage_shared::place::Coord;
use vantage_shared::score::{Breakdown, Ranges, Source, Weights};
use vantage_shared::stream::{StreamKey, StreamPattern};

/// Where a viewer's location came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// The answer to a resolve.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub group: String,
    pub decision: Decision,
    pub eligible: usize,
    pub bitrate_mbps: f64,
    pub edges: Vec<AnswerEdge>,
}

/// What a resolve needs of one node.
#[derive(Debug)]
struct NodeSnap {
    id: Arc<str>,
    public_url: Arc<str>,
    health: Health,
    coord: Option<Coord>,
    capacity_mbps: f64,
    egress_mbps: f64,
    load: Arc<Mutex<LoadLedger>>,
}

/// An immutable picture of the cluster for resolves.
#[derive(Debug, Default)]
struct Snapshot {
    nodes: Vec<NodeSnap>,
    by_id: HashMap<Arc<str>, usize>,
    /// Up nodes with coordinates.
    spatial: RTree<GeomWithData<[f64; 3], usize>>,
    up: Vec<usize>,
    /// Streams published to a node that is not down, with bit rate (kbps).
    published: HashMap<StreamKey, f64>,
    /// Static origin patterns of nodes that are not down.
    patterns: Vec<StreamPattern>,
}

/// Per-node bookkeeping that outlives snapshots.
#[derive(Debug)]
struct NodeTrack {
    load: Arc<Mutex<LoadLedger>>,
    reports: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The scheduler's resolver.
#[derive(Debug)]
pub struct Resolver {
    cfg: ResolveConfig,
    params: RankParams,
    geoip: Arc<GeoIp>,
    default_bitrate_kbps: f64,
    snapshot: RwLock<Arc<Snapshot>>,
    learner: RwLock<Learner>,
    tracks: Mutex<HashMap<Arc<str>, NodeTrack>>,
    built_ms: AtomicI64,
    pruned_ms: AtomicI64,
    dirty: AtomicBool,
    pub metrics: ResolveMetrics,
}

impl Resolver {
    pub fn new(
        cfg: ResolveConfig,
        geoip: Arc<GeoIp>,
        default_bitrate_kbps: f64,
        metrics: ResolveMetrics,
    ) -> Self {
        Self {
            params: cfg.params(),
            learner: RwLock::new(Learner::new(
                cfg.group_half_life_ms,
                learn::DEFAULT_MAX_GROUPS,
            )),
            cfg,
            geoip,
            default_bitrate_kbps,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            tracks: Mutex::new(HashMap::new()),
            built_ms: AtomicI64::new(i64::MIN),
            pruned_ms: AtomicI64::new(0),
            dirty: AtomicBool::new(true),
            metrics,
        }
    }

    pub fn config(&self) -> &ResolveConfig {
        &self.cfg
    }

    pub fn geoip(&self) -> &GeoIp {
        &self.geoip
    }

    /// The next [`Self::maybe_refresh`] rebuilds the snapshot.
    pub fn invalidate(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Rebuilds the snapshot when it is stale or invalidated.
    pub fn maybe_refresh(&self, registry: &Registry, now_ms: i64) {
        let age = now_ms.saturating_sub(self.built_ms.load(Ordering::Relaxed));
        if self.dirty.load(Ordering::Relaxed) || age >= self.cfg.refresh_ms {
            self.refresh(registry, now_ms);
        }
    }

    /// Rebuilds the node snapshot from the registry and feeds the learner
    /// with the group aggregates of reports that arrived since last time.
    pub fn refresh(&self, registry: &Registry, now_ms: i64) {
        self.dirty.store(false, Ordering::Relaxed);
        let mut snap = Snapshot::default();
        let mut learned: Vec<(Arc<str>, Vec<GroupQoe>, i64)> = Vec::new();
        {
            let mut tracks = lock(&self.tracks);
            registry.for_each(|e| {
                let id: Arc<str> = Arc::from(e.id.as_str());
                let track = tracks.entry(id.clone()).or_insert_with(|| NodeTrack {
                    load: Arc::new(Mutex::new(LoadLedger::default())),
                    reports: e.reports,
                });
                if track.reports != e.reports {
                    track.reports = e.reports;
                    lock(&track.load).on_report();
                    if !e.groups.is_empty() {
                        learned.push((
                            id.clone(),
                            e.groups.clone(),
                            e.last_report_ms.unwrap_or(now_ms),
                        ));
                    }
                }
                let health = match e.state {
                    NodeState::Down => Health::Down,
                    _ if e.draining => Health::Draining,
                    NodeState::Up => Health::Up,
                    NodeState::Suspect => Health::Suspect,
                    NodeState::Draining => Health::Draining,
                };
                if health != Health::Down {
                    for s in &e.streams {
                        if s.role == StreamRole::Origin as i32
                            && let Ok(k) = StreamKey::parse(&s.key)
                        {
                            snap.published.insert(k, s.bitrate_kbps);
                        }
                    }
                    snap.patterns.extend(e.info.static_origins.keys().cloned());
                }
                let i = snap.nodes.len();
                snap.by_id.insert(id.clone(), i);
                if health == Health::Up && !e.info.public_url.is_empty() {
                    snap.up.push(i);
                }
                snap.nodes.push(NodeSnap {
                    id,
                    public_url: Arc::from(e.info.public_url.trim_end_matches('/')),
                    health,
                    coord: e.info.coord,
                    capacity_mbps: e.info.capacity_mbps,
                    egress_mbps: e.load.as_ref().map_or(0.0, |l| l.egress_mbps),
                    load: track.load.clone(),
                });
            });
            tracks.retain(|id, _| snap.by_id.contains_key(id));
        }
        snap.patterns.sort();
        snap.patterns.dedup();
        snap.spatial = RTree::bulk_load(
            snap.up
                .iter()
                .filter_map(|&i| {
                    snap.nodes[i]
                        .coord
                        .map(|c| GeomWithData::new(c.sphere_point(), i))
                })
                .collect(),
        );
        // One short write lock per node, so resolves never wait for a whole
        // round of reports to be folded in.
        for (id, groups, at) in &learned {
            write(&self.learner).observe(id, groups, *at);
        }
        if !learned.is_empty() || now_ms - self.pruned_ms.load(Ordering::Relaxed) > 10_000 {
            let mut l = write(&self.learner);
            if now_ms - self.pruned_ms.load(Ordering::Relaxed) > 10_000 {
                self.pruned_ms.store(now_ms, Ordering::Relaxed);
                l.prune(now_ms, 0.01, |n| snap.by_id.contains_key(n));
            }
            self.record_sizes(&l);
        }
        *write(&self.snapshot) = Arc::new(snap);
        self.built_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Folds group aggregates of `node` in directly (benchmarks, tests).
    pub fn observe(&self, node: &str, groups: &[GroupQoe], now_ms: i64) {
        let mut l = write(&self.learner);
        l.observe(node, groups, now_ms);
        self.record_sizes(&l);
    }

    fn record_sizes(&self, l: &Learner) {
        self.metrics.learned_groups.set(l.len() as i64);
        self.metrics.learned_pairs.set(l.pairs() as i64);
    }

    /// Client groups with at least one estimate.
    pub fn learned_groups(&self) -> usize {
        read(&self.learner).len()
    }

    /// (node, group) estimates held.
    pub fn learned_pairs(&self) -> usize {
        read(&self.learner).pairs()
    }

    /// The client group of a location and ASN.
    pub fn group_of(&self, coord: Option<Coord>, asn: Option<u32>) -> GroupKey {
        GroupKey::locate(coord.map(|c| (c.lat, c.lon)), self.cfg.group_precision).with_asn(asn)
    }

    /// Ranks edges for one viewer and accounts the viewer's bit rate to the
    /// chosen one.
    pub fn resolve<R: Rng + ?Sized>(
        &self,
        req: &Request,
        weights: &Weights,
        ranges: &Ranges,
        now_ms: i64,
        rng: &mut R,
    ) -> Result<Answer, ResolveError> {
        let snap = read(&self.snapshot).clone();
        let kbps = match snap.published.get(&req.stream) {
            Some(&k) if k > 0.0 && k.is_finite() => k,
            Some(_) => self.default_bitrate_kbps,
            None if snap.patterns.iter().any(|p| p.matches(&req.stream)) => {
                self.default_bitrate_kbps
            }
            None => return Err(ResolveError::UnknownStream(req.stream.clone())),
        };
        let bitrate_mbps = kbps / 1000.0;
        let key = self.group_of(req.coord, req.asn);
        let label = key.to_string();
        // Agents label groups by cell only: an ASN-qualified group falls
        // back to its cell's estimates.
        let cell_label = (key.asn.is_some()).then(|| {
            GroupKey {
                asn: None,
                ..key.clone()
            }
            .to_string()
        });
        let learner = read(&self.learner);
        // This group's estimates by snapshot index (the exact group first,
        // then its cell): one pass over the group's list, O(1) per candidate.
        let mut estimates: HashMap<usize, &learn::GroupEstimate> = HashMap::new();
        for l in [cell_label.as_deref(), Some(label.as_str())]
            .into_iter()
            .flatten()
        {
            for (id, est) in learner.group(l) {
                if let Some(&i) = snap.by_id.get(id) {
                    estimates.insert(i, est);
                }
            }
        }
        let mut picked: Vec<usize> = Vec::with_capacity(self.cfg.nearest_candidates + 8);
        if let (Some(c), Cell::Geohash(_)) = (req.coord, &key.cell) {
            picked.extend(
                snap.spatial
                    .nearest_neighbor_iter(&c.sphere_point())
                    .take(self.cfg.nearest_candidates)
                    .map(|g| g.data),
            );
            let mut learned: Vec<usize> = estimates
                .keys()
                .copied()
                .filter(|&i| snap.nodes[i].health == Health::Up && !picked.contains(&i))
                .collect();
            learned.sort_unstable();
            picked.extend(learned);
        }
        let input = RankInput {
            now_ms,
            weights,
            ranges,
            params: &self.params,
            viewer: Viewer {
                coord: req.coord,
                bitrate_mbps,
            },
            n: req.n.max(1),
        };
        let build = |set: &[usize]| -> Vec<Candidate<'_>> {
            set.iter()
                .map(|&i| {
                    let n = &snap.nodes[i];
                    Candidate {
                        id: &n.id,
                        public_url: &n.public_url,
                        health: n.health,
                        coord: n.coord,
                        capacity_mbps: n.capacity_mbps,
                        egress_mbps: n.egress_mbps,
                        assigned_mbps: lock(&n.load).total(),
                        group: estimates.get(&i).copied(),
                    }
                })
                .collect()
        };
        let mut set = picked;
        let mut cands = build(&set);
        let mut ranking = rank::rank(&input, &cands, rng);
        if ranking.edges.is_empty() && set.len() < snap.up.len() {
            set = snap.up.clone();
            cands = build(&set);
            ranking = rank::rank(&input, &cands, rng);
        }
        let Some(chosen) = ranking.chosen() else {
            return Err(ResolveError::NoEligible {
                stream: req.stream.clone(),
                known: snap.nodes.len(),
                up: snap.up.len(),
            });
        };
        lock(&snap.nodes[set[chosen.index]].load).assign(bitrate_mbps);
        let edges = ranking
            .edges
            .iter()
            .map(|e| {
                let n = &snap.nodes[set[e.index]];
                AnswerEdge {
                    node_id: n.id.clone(),
                    public_url: n.public_url.clone(),
                    score: e.score,
                    breakdown: e.breakdown.clone(),
                    group_samples: cands[e.index].group.map_or(0.0, |g| {
                        g.at(now_ms, self.params.group_half_life_ms).samples
                    }),
                }
            })
            .collect();
        Ok(Answer {
            group: label,
            decision: ranking.decision,
            eligible: ranking.eligible,
            bitrate_mbps,
            edges,
        })
    }
}
