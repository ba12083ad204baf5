//! The `qoe` policy's viewer routing: the planning core's resolve
//! ([`vantage_plan::resolve::resolve`]) on a snapshot of the cluster, as
//! the scheduler's resolver runs it for every `/play` request. (Upstream
//! trees come from the planning session: [`super::planning`].)
//!
//! The scheduler's resolver keeps, besides the [`Learner`] of per-group
//! estimates, a [`LoadLedger`] per node (the bit rate it sent there since
//! the node's last reports) and an immutable [`Edges`] snapshot of the
//! nodes (health, reported egress, a spatial index), rebuilt by its
//! liveness loop at once after a state change and otherwise once every
//! [`REFRESH_MS`]. A rebuild is also when a node's new reports are folded
//! in: its ledger rolls over and the group aggregates of its latest report
//! go into the learner, at the time the report arrived. This module keeps
//! the same state on the simulator's [`View`] and calls the same core:
//! candidates are preselected by the core (the [`NEAREST`] nearest up
//! nodes plus every node with an estimate for the viewer's group), ranked,
//! explored and spread by it.
//!
//! Origins take no viewers in the simulator (the scenario's distinction
//! between origins and PoPs): they enter the snapshot without a public URL,
//! which the core never sends a viewer to.

use super::Ask;
use crate::telemetry::{GroupAgg, View};
use crate::world::World;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;
use vantage_plan::Health;
use vantage_plan::resolve::learn::{DEFAULT_MAX_GROUPS, Learner};
use vantage_plan::resolve::rank::{LoadLedger, RankParams};
use vantage_plan::resolve::{EdgeNode, Edges, LocationSource, Request, ResolveParams, resolve};
use vantage_proto::v1::GroupQoe;
use vantage_shared::score::{Ranges, Stability, Weights};
use vantage_shared::stream::StreamKey;

/// Nearest up nodes scored per resolve (the scheduler's
/// `[resolve] nearest_candidates` default).
pub const NEAREST: usize = 16;
/// Geohash characters of a client group (`[resolve] group_precision`).
pub const GROUP_PRECISION: usize = vantage_shared::group::DEFAULT_PRECISION;
/// Edges a steering reload ranks (the viewer's current one must be among
/// them to be kept).
pub const STEER_CANDIDATES: usize = 64;
/// Snapshot age after which it is rebuilt (`[resolve] refresh_ms`).
pub const REFRESH_MS: u64 = 1_000;
/// How often decayed estimates are pruned, and below which weight.
const PRUNE_EVERY_MS: u64 = 10_000;
const PRUNE_MIN_WEIGHT: f64 = 0.01;

/// The resolver's state in one run.
pub struct Qoe {
    pub weights: Weights,
    pub ranges: Ranges,
    pub stability: Stability,
    pub params: RankParams,
    default_bitrate_kbps: f64,
    learner: Learner,
    ledgers: Vec<LoadLedger>,
    /// Reports of each node folded in so far.
    seen: Vec<u64>,
    edges: Edges,
    ids: Vec<Arc<str>>,
    urls: Vec<Arc<str>>,
    /// Per node: the streams it is the origin of, with bit rate (kbps).
    published: Vec<Vec<(StreamKey, f64)>>,
    /// One request per stream slot, its location set per viewer.
    requests: Vec<Request>,
    /// Stream keys by slot.
    keys: Vec<StreamKey>,
    built_ms: Option<u64>,
    dirty: bool,
    pruned_ms: u64,
    rng: StdRng,
}

impl Qoe {
    pub fn new(
        weights: Weights,
        ranges: Ranges,
        stability: Stability,
        params: RankParams,
        w: &World,
        keys: &[StreamKey],
        seed: u64,
    ) -> Self {
        let n = w.n();
        let mut published = vec![Vec::new(); n];
        for (key, &o) in keys.iter().zip(&w.stream_origin) {
            published[usize::from(o)].push((key.clone(), w.bitrate_mbps * 1000.0));
        }
        Qoe {
            weights,
            ranges,
            stability,
            params,
            default_bitrate_kbps: vantage_plan::Limits::default().default_bitrate_kbps,
            learner: Learner::new(params.group_half_life_ms, DEFAULT_MAX_GROUPS),
            ledgers: vec![LoadLedger::default(); n],
            seen: vec![0; n],
            edges: Edges::default(),
            ids: w.nodes.iter().map(|x| Arc::from(x.id.as_str())).collect(),
            urls: w
                .nodes
                .iter()
                .map(|x| {
                    Arc::from(if x.origin {
                        String::new()
                    } else {
                        format!("http://{}.sim", x.id)
                    })
                })
                .collect(),
            published,
            requests: keys
                .iter()
                .map(|k| Request {
                    stream: k.clone(),
                    coord: None,
                    source: LocationSource::Query,
                    asn: None,
                    n: 1,
                })
                .collect(),
            keys: keys.to_vec(),
            built_ms: None,
            dirty: true,
            pruned_ms: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next [`Self::maybe_refresh`] rebuilds the snapshot.
    pub fn invalidate(&mut self) {
        self.dirty = true;
    }

    /// Rebuilds the snapshot when it is invalidated or [`REFRESH_MS`] old.
    pub fn maybe_refresh(&mut self, view: &View, w: &World, now_ms: u64) {
        let stale = self
            .built_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= REFRESH_MS);
        if self.dirty || stale {
            self.refresh(view, w, now_ms);
        }
    }

    /// Rebuilds the snapshot from the view and folds in the reports that
    /// arrived since the last rebuild (ledgers, learner).
    fn refresh(&mut self, view: &View, w: &World, now_ms: u64) {
        self.dirty = false;
        let mut nodes = Vec::with_capacity(self.ids.len());
        let mut published = HashMap::new();
        let mut learned = Vec::new();
        for i in 0..self.ids.len() {
            if view.reports[i] != self.seen[i] {
                self.seen[i] = view.reports[i];
                self.ledgers[i].on_report();
                if !view.latest_groups[i].is_empty() {
                    learned.push(i);
                }
            }
            let health = view.health(i);
            if health != Health::Down {
                published.extend(self.published[i].iter().cloned());
            }
            let node = &w.nodes[i];
            nodes.push(EdgeNode {
                id: self.ids[i].clone(),
                public_url: self.urls[i].clone(),
                health,
                coord: Some(node.coord),
                capacity_mbps: node.capacity_mbps,
                egress_mbps: view.admission_egress_mbps(i),
                latest_egress_mbps: view.egress_mbps[i],
                stream_buffer_ms: {
                    let mut v: Vec<(StreamKey, f64)> = view.latest_streams[i]
                        .iter()
                        .filter_map(|&(s, ms)| Some((self.keys.get(s as usize)?.clone(), ms)))
                        .collect();
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    v
                },
            });
        }
        self.edges = Edges::new(nodes, published, Vec::new());
        for i in learned {
            let groups = group_qoe(&view.latest_groups[i], w);
            let at = view.last_arrival_ms(i).unwrap_or(now_ms as i64);
            self.learner.observe(&self.ids[i], &groups, at);
        }
        if now_ms.saturating_sub(self.pruned_ms) > PRUNE_EVERY_MS {
            self.pruned_ms = now_ms;
            let edges = &self.edges;
            self.learner.prune(now_ms as i64, PRUNE_MIN_WEIGHT, |n| {
                edges.by_id.contains_key(n)
            });
        }
        self.built_ms = Some(now_ms);
    }

    /// A Content Steering reload of a viewer on `current`: the core's
    /// ranking without exploration or spreading, and the move the
    /// scheduler's steering endpoint would answer
    /// ([`vantage_plan::resolve::steer`]); the viewer's bit rate is
    /// accounted to the new edge.
    pub fn steer(&mut self, ask: &Ask<'_>, current: usize) -> Option<usize> {
        let req = self.requests.get_mut(ask.stream as usize)?;
        req.coord = Some(ask.world.cities[ask.city as usize].city.coord);
        req.n = STEER_CANDIDATES;
        let rank = RankParams {
            exploration_share: 0.0,
            spread_band: 0.0,
            ..self.params
        };
        let params = ResolveParams {
            weights: &self.weights,
            ranges: &self.ranges,
            rank: &rank,
            nearest: NEAREST,
            group_precision: GROUP_PRECISION,
            default_bitrate_kbps: self.default_bitrate_kbps,
        };
        let ledgers = &self.ledgers;
        let (now, lag) = (ask.now_ms as i64, self.params.admission_lag_ms);
        let answer = resolve(
            &self.edges,
            &self.learner,
            &|i| (ledgers[i].total(), ledgers[i].charge(now, lag)),
            req,
            &params,
            now,
            &mut self.rng,
        )
        .ok()?;
        // A node over the hard limit sheds its excess: each viewer that
        // reloads leaves with the probability that brings it back.
        let n = &self.edges.nodes[current];
        let u = if n.capacity_mbps > 0.0 {
            n.egress_mbps / n.capacity_mbps
        } else {
            f64::INFINITY
        };
        let h = self.ranges.hard_utilisation;
        let over = u >= h && self.rng.random::<f64>() < (u - h) / u;
        let to =
            vantage_plan::resolve::steer(&self.edges, &answer, current, over, &self.stability)?;
        self.ledgers[to].assign_at(answer.bitrate_mbps, now);
        Some(to)
    }

    /// The edge for one viewer: the core's answer, and the viewer's bit
    /// rate accounted to it. A viewer that just failed to reach a node
    /// asks for two edges and takes the first other one, as a client of
    /// `/v1/resolve` falls back to the next edge of the answer.
    pub fn choose(&mut self, ask: &Ask<'_>) -> Option<usize> {
        let req = self.requests.get_mut(ask.stream as usize)?;
        req.coord = Some(ask.world.cities[ask.city as usize].city.coord);
        req.n = if ask.exclude.is_some() { 2 } else { 1 };
        let params = ResolveParams {
            weights: &self.weights,
            ranges: &self.ranges,
            rank: &self.params,
            nearest: NEAREST,
            group_precision: GROUP_PRECISION,
            default_bitrate_kbps: self.default_bitrate_kbps,
        };
        let ledgers = &self.ledgers;
        let (now, lag) = (ask.now_ms as i64, self.params.admission_lag_ms);
        let answer = resolve(
            &self.edges,
            &self.learner,
            &|i| (ledgers[i].total(), ledgers[i].charge(now, lag)),
            req,
            &params,
            now,
            &mut self.rng,
        )
        .ok()?;
        let chosen = answer
            .edges
            .iter()
            .map(|e| e.index)
            .find(|&i| Some(i as u16) != ask.exclude)?;
        self.ledgers[chosen].assign_at(answer.bitrate_mbps, now);
        Some(chosen)
    }
}

/// A report's group aggregates as agents send them (`GroupQoe`), labelled
/// by the viewer city's group.
fn group_qoe(groups: &[(u32, GroupAgg)], w: &World) -> Vec<GroupQoe> {
    groups
        .iter()
        .map(|(city, g)| GroupQoe {
            group: w.cities[*city as usize].group.clone(),
            viewers: g.viewers,
            tcp_rtt_ms: g.rtt_ms,
            retransmit_rate: g.loss,
            stall_rate: g.stall_rate,
            buffer_ms: g.buffer_ms,
            samples: g.viewers,
            delivery_rate_mbps: g.delivery_mbps,
        })
        .collect()
}
