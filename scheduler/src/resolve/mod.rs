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
mod metrics;
#[cfg(test)]
mod tests;

pub use config::ResolveConfig;
pub use metrics::{OutcomeLabel, ResolveMetrics};
pub use vantage_plan::resolve::{
    Answer, AnswerEdge, EdgeNode, Edges, LocationSource, Request, ResolveError, learn, rank,
};

use crate::registry::{NodeState, Registry};
use geoip::GeoIp;
use learn::Learner;
use rand::Rng;
use rank::{LoadLedger, RankParams};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use vantage_plan::Health;
use vantage_plan::resolve::ResolveParams;
use vantage_proto::v1::{GroupQoe, StreamRole};
use vantage_shared::group::GroupKey;
use vantage_shared::place::Coord;
use vantage_shared::score::{Ranges, Weights};
use vantage_shared::stream::{StreamKey, StreamPattern};

/// An immutable picture of the cluster for resolves, with each node's
/// load ledger.
#[derive(Debug, Default)]
struct Snapshot {
    edges: Edges,
    load: Vec<Arc<Mutex<LoadLedger>>>,
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
        let mut nodes: Vec<EdgeNode> = Vec::new();
        let mut load: Vec<Arc<Mutex<LoadLedger>>> = Vec::new();
        let mut published: HashMap<StreamKey, f64> = HashMap::new();
        let mut patterns: Vec<StreamPattern> = Vec::new();
        let mut learned: Vec<(Arc<str>, Vec<GroupQoe>, i64)> = Vec::new();
        let mut ids: std::collections::HashSet<Arc<str>> = std::collections::HashSet::new();
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
                    s => s,
                };
                if health != Health::Down {
                    for s in &e.streams {
                        if s.role == StreamRole::Origin as i32
                            && let Ok(k) = StreamKey::parse(&s.key)
                        {
                            published.insert(k, s.bitrate_kbps);
                        }
                    }
                    patterns.extend(e.info.static_origins.keys().cloned());
                }
                ids.insert(id.clone());
                nodes.push(EdgeNode {
                    id,
                    public_url: Arc::from(e.info.public_url.trim_end_matches('/')),
                    health,
                    coord: e.info.coord,
                    capacity_mbps: e.info.capacity_mbps,
                    egress_mbps: e.smoother.admission_egress_mbps(e.info.capacity_mbps),
                    latest_egress_mbps: e.smoother.latest_egress_mbps(),
                    stream_buffer_ms: {
                        let mut v: Vec<(StreamKey, f64)> = e
                            .streams
                            .iter()
                            .filter_map(|s| Some((StreamKey::parse(&s.key).ok()?, s.gop_cache_ms)))
                            .collect();
                        v.sort_by(|a, b| a.0.cmp(&b.0));
                        v.dedup_by(|a, b| a.0 == b.0);
                        v
                    },
                });
                load.push(track.load.clone());
            });
            tracks.retain(|id, _| ids.contains(id));
        }
        let snap = Snapshot {
            edges: Edges::new(nodes, published, patterns),
            load,
        };
        // One short write lock per node, so resolves never wait for a whole
        // round of reports to be folded in.
        for (id, groups, at) in &learned {
            write(&self.learner).observe(id, groups, *at);
        }
        if !learned.is_empty() || now_ms - self.pruned_ms.load(Ordering::Relaxed) > 10_000 {
            let mut l = write(&self.learner);
            if now_ms - self.pruned_ms.load(Ordering::Relaxed) > 10_000 {
                self.pruned_ms.store(now_ms, Ordering::Relaxed);
                l.prune(now_ms, 0.01, |n| snap.edges.by_id.contains_key(n));
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
        vantage_plan::resolve::group_of(coord, asn, self.cfg.group_precision)
    }

    /// A Content Steering reload (`GET /v1/steering`): the viewer is on
    /// node `current`; returns the ranking made without exploration or
    /// spreading with the node to serve it first — a better edge when
    /// [`vantage_plan::resolve::steer`] says the viewer should move (its
    /// bit rate is then accounted there), else `current` — and whether it
    /// moved. `current` unknown to the cluster: the best edge, as a join.
    pub fn steer<R: Rng + ?Sized>(
        &self,
        req: &Request,
        current: &str,
        weights: &Weights,
        ranges: &Ranges,
        now_ms: i64,
        rng: &mut R,
    ) -> Result<(Answer, bool), ResolveError> {
        let snap = read(&self.snapshot).clone();
        let learner = read(&self.learner);
        let rank = RankParams {
            exploration_share: 0.0,
            spread_band: 0.0,
            ..self.params
        };
        let params = ResolveParams {
            weights,
            ranges,
            rank: &rank,
            nearest: self.cfg.nearest_candidates,
            group_precision: self.cfg.group_precision,
            default_bitrate_kbps: self.default_bitrate_kbps,
        };
        let lag = self.params.admission_lag_ms;
        let assigned = |i: usize| {
            let l = lock(&snap.load[i]);
            (l.total(), l.charge(now_ms, lag))
        };
        let mut answer = vantage_plan::resolve::resolve(
            &snap.edges,
            &learner,
            &assigned,
            req,
            &params,
            now_ms,
            rng,
        )?;
        let Some(&cur) = snap.edges.by_id.get(current) else {
            if let Some(first) = answer.edges.first() {
                lock(&snap.load[first.index]).assign_at(answer.bitrate_mbps, now_ms);
            }
            return Ok((answer, true));
        };
        let node = &snap.edges.nodes[cur];
        let over = node.capacity_mbps <= 0.0
            || node.egress_mbps / node.capacity_mbps >= ranges.hard_utilisation;
        let stability = vantage_shared::score::Stability::default();
        match vantage_plan::resolve::steer(&snap.edges, &answer, cur, over, &stability) {
            Some(to) => {
                lock(&snap.load[to]).assign_at(answer.bitrate_mbps, now_ms);
                if let Some(i) = answer.edges.iter().position(|e| e.index == to) {
                    let e = answer.edges.remove(i);
                    answer.edges.insert(0, e);
                }
                Ok((answer, true))
            }
            None => {
                // Stay: the current edge first (when it is still eligible).
                if let Some(i) = answer.edges.iter().position(|e| e.index == cur) {
                    let e = answer.edges.remove(i);
                    answer.edges.insert(0, e);
                }
                Ok((answer, false))
            }
        }
    }

    /// Ranks edges for one viewer and, with `reserve`, accounts the
    /// viewer's bit rate to the chosen one until its next reports show it
    /// (callers bound how often one client may reserve: see
    /// `api::guard::Guard::may_reserve`).
    pub fn resolve<R: Rng + ?Sized>(
        &self,
        req: &Request,
        weights: &Weights,
        ranges: &Ranges,
        now_ms: i64,
        rng: &mut R,
        reserve: bool,
    ) -> Result<Answer, ResolveError> {
        let snap = read(&self.snapshot).clone();
        let learner = read(&self.learner);
        let params = ResolveParams {
            weights,
            ranges,
            rank: &self.params,
            nearest: self.cfg.nearest_candidates,
            group_precision: self.cfg.group_precision,
            default_bitrate_kbps: self.default_bitrate_kbps,
        };
        let lag = self.params.admission_lag_ms;
        let assigned = |i: usize| {
            let l = lock(&snap.load[i]);
            (l.total(), l.charge(now_ms, lag))
        };
        let answer = vantage_plan::resolve::resolve(
            &snap.edges,
            &learner,
            &assigned,
            req,
            &params,
            now_ms,
            rng,
        )?;
        if reserve && let Some(first) = answer.edges.first() {
            lock(&snap.load[first.index]).assign_at(answer.bitrate_mbps, now_ms);
        }
        Ok(answer)
    }
}
