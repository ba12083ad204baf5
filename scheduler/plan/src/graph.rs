//! The relay graph: every node by a dense index in id order, what each
//! offers as an upstream (eligibility, load term, buffer input), its
//! nearest peers, and its *relay candidates* — the best
//! `relay_candidates` eligible peers by load-free edge score — with the
//! reverse indices that tell which candidate lists a change can touch.
//!
//! Candidate lists are chosen from a short list: a node's nearest
//! `2 × relay_candidates` peers (whatever their state) plus every peer with
//! a path measurement in either direction; a node without coordinates
//! considers every peer. For unmeasured pairs the score grows with
//! distance, so farther peers cannot beat the short list except through
//! better buffer health, a deliberate simplification.
//!
//! [`Graph::build`] computes everything from the node views;
//! [`Graph::update`] takes new inputs of some nodes (same membership and
//! facts) and recomputes only the candidate lists they can touch, reporting
//! what changed to the per-source planning.

use crate::edge::{
    FNV_OFFSET, IdMap, buffer_input, finalise, fnv, great_circle_km, measured_path, rtt_and_loss,
};
use crate::node::{Health, NodeView, PathStat, eligible};
use crate::settings::PlanSettings;
use rstar::RTree;
use rstar::primitives::GeomWithData;
use std::sync::Arc;
use vantage_shared::score::{Input, Inputs, score_value};

/// "No node": an origin URL as upstream, an unset primary.
pub(crate) const NONE: u32 = u32::MAX;

/// The indexed nodes and their candidate lists.
#[derive(Clone)]
pub(crate) struct Graph {
    pub(crate) views: Vec<NodeView>,
    pub(crate) ids: Vec<Arc<str>>,
    pub(crate) index: IdMap<Arc<str>, u32>,
    pub(crate) eligible: Vec<bool>,
    /// Can be probed: has a probe address and is not down.
    pub(crate) probeable: Vec<bool>,
    /// `w_load · P(utilisation) / Σw`: the load term of every edge leaving
    /// the node.
    pub(crate) load: Vec<f64>,
    pub(crate) buffer: Vec<Input>,
    /// Each node's point on the sphere ([`vantage_shared::place::Coord::sphere_point`]), for
    /// distances.
    pub(crate) point: Vec<Option<[f64; 3]>>,
    /// Own measurements by peer index (known peers only), sorted.
    pub(crate) paths: Vec<Vec<(u32, PathStat)>>,
    /// Nodes that measured this one (reverse of `paths`), sorted.
    pub(crate) measured_by: Vec<Vec<u32>>,
    /// Nearest peers, nearest first, whatever their state.
    pub(crate) near: Vec<Vec<u32>>,
    /// `(v, position)` for every `near[v]` holding this node.
    pub(crate) near_rev: Vec<Vec<(u32, u16)>>,
    /// Nodes without coordinates (their short list is every peer).
    pub(crate) no_coord: Vec<u32>,
    /// Relay candidates of every consumer, best first: `relays[v * k ..]`,
    /// `relay_len[v]` of them (`k` = `relay_candidates`), each with its
    /// load-free edge score and what it adds to a path (edge plus its load
    /// term). One stride per consumer keeps a consumer's candidates in one
    /// place in memory.
    relays: Vec<Relay>,
    /// `e(u→v)` of each entry of `relays`, at the same place.
    relay_e: Vec<f64>,
    relay_len: Vec<u16>,
    k: usize,
    /// Consumers whose candidate list holds this node (unordered).
    pub(crate) kin_rev: Vec<Vec<u32>>,
    /// FNV-1a state after each node's id and separator (spreading hashes).
    pub(crate) fnv_prefix: Vec<u64>,
    /// Hash of each node's id and public URL (route entry hashes).
    pub(crate) node_hash: Vec<u64>,
    /// Length of the nearest-peer lists ([`near_len`]).
    near_len: usize,
}

/// One relay candidate `u` of a consumer `v`, as planning reads it: 8
/// bytes, so a consumer's candidates take two cache lines (the edge score
/// itself is kept apart, in `Graph::relay_e`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Relay {
    pub(crate) u: u32,
    /// `e(u→v) + L(u)`: what relaying through `u` adds to a path (an
    /// `f32`, like the path costs it is added to).
    pub(crate) offer: f32,
}

/// What [`Graph::update`] changed, for the per-source planning.
#[derive(Debug, Default)]
pub(crate) struct GraphDelta {
    /// Consumers whose candidate list changed (members or scores).
    pub(crate) cands_changed: Vec<u32>,
    /// Nodes whose load term changed.
    pub(crate) load_changed: Vec<u32>,
    /// Nodes whose own edges all changed (buffer) or whose eligibility did.
    pub(crate) offer_changed: Vec<u32>,
    /// Pairs `(u, v)` whose edge `u → v` changed (path measurements).
    pub(crate) edges_changed: Vec<(u32, u32)>,
    /// Some node became probeable or stopped being.
    pub(crate) probeable_changed: bool,
    /// Nodes whose health or published streams changed.
    pub(crate) streams_changed: Vec<u32>,
}

impl Graph {
    /// Indexes `views` (sorted by id, distinct ids) and computes every
    /// candidate list.
    pub(crate) fn build(views: Vec<NodeView>, st: &PlanSettings, threads: usize) -> Graph {
        Graph::build_with(views, st, threads, None)
    }

    /// [`Graph::build`], reusing the nearest-peer lists of `old` when it
    /// indexed the same nodes at the same places (a change of settings or
    /// of a node's URLs).
    pub(crate) fn build_with(
        views: Vec<NodeView>,
        st: &PlanSettings,
        threads: usize,
        old: Option<Graph>,
    ) -> Graph {
        let n = views.len();
        let ids: Vec<Arc<str>> = views.iter().map(|v| Arc::from(v.id.as_str())).collect();
        let index: IdMap<Arc<str>, u32> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let mut g = Graph {
            eligible: views.iter().map(|v| eligible(v, &st.ranges)).collect(),
            probeable: views.iter().map(probeable).collect(),
            load: views.iter().map(|v| load_term(v, st)).collect(),
            buffer: views
                .iter()
                .map(|v| buffer_input(v.buffer_ms, &st.ranges))
                .collect(),
            point: views
                .iter()
                .map(|v| v.coord.map(|c| c.sphere_point()))
                .collect(),
            paths: Vec::with_capacity(n),
            measured_by: vec![Vec::new(); n],
            near: Vec::new(),
            near_rev: vec![Vec::new(); n],
            no_coord: (0..n as u32)
                .filter(|&i| views[i as usize].coord.is_none())
                .collect(),
            relays: Vec::new(),
            relay_e: Vec::new(),
            relay_len: vec![0; n],
            k: st.limits.relay_candidates.max(1),
            kin_rev: vec![Vec::new(); n],
            fnv_prefix: ids
                .iter()
                .map(|id| fnv(fnv(FNV_OFFSET, id.as_bytes()), &[0xff]))
                .collect(),
            near_len: near_len(st),
            node_hash: views
                .iter()
                .map(|v| {
                    let h = fnv(fnv(FNV_OFFSET, v.id.as_bytes()), &[0x1f]);
                    finalise(fnv(h, v.public_url.as_bytes()))
                })
                .collect(),
            ids,
            index,
            views,
        };
        for v in 0..n {
            let p = g.resolve_paths(v);
            g.paths.push(p);
        }
        for v in 0..n {
            for &(u, _) in &g.paths[v] {
                g.measured_by[u as usize].push(v as u32);
            }
        }
        let same_places = old.as_ref().is_some_and(|o| {
            o.ids == g.ids
                && o.near_len == near_len(st)
                && o.views
                    .iter()
                    .zip(&g.views)
                    .all(|(a, b)| a.coord == b.coord)
        });
        match old {
            Some(o) if same_places => {
                g.near = o.near;
                g.near_rev = o.near_rev;
            }
            _ => {
                g.near = nearest(&g.views, near_len(st), threads);
                for (v, list) in g.near.iter().enumerate() {
                    for (pos, &u) in list.iter().enumerate() {
                        g.near_rev[u as usize].push((v as u32, pos as u16));
                    }
                }
            }
        }
        let lists = crate::par::map(n, threads, |v| g.candidates_of(v as u32, st));
        g.relays = vec![
            Relay {
                u: NONE,
                offer: 0.0,
            };
            n * g.k
        ];
        g.relay_e = vec![0.0; n * g.k];
        for (v, list) in lists.into_iter().enumerate() {
            for &(u, _) in &list {
                g.kin_rev[u as usize].push(v as u32);
            }
            g.set_relays(v, &list);
        }
        g
    }

    pub(crate) fn len(&self) -> usize {
        self.views.len()
    }

    /// The relay candidates of consumer `v`, best first.
    pub(crate) fn relays(&self, v: usize) -> &[Relay] {
        let at = v * self.k;
        &self.relays[at..at + usize::from(self.relay_len[v])]
    }

    /// Sets `v`'s candidates (`(u, e)`, best first; at most `k`), with
    /// each one's offer from its current load term.
    fn set_relays(&mut self, v: usize, list: &[(u32, f64)]) {
        let at = v * self.k;
        let len = list.len().min(self.k);
        for (i, &(u, e)) in list.iter().take(len).enumerate() {
            self.relays[at + i] = Relay {
                u,
                offer: (e + self.load[u as usize]) as f32,
            };
            self.relay_e[at + i] = e;
        }
        self.relay_len[v] = len as u16;
    }

    /// `e(u→v)` of `v`'s relay candidates, in the order of
    /// [`relays`](Self::relays).
    fn relay_edges(&self, v: usize) -> &[f64] {
        let at = v * self.k;
        &self.relay_e[at..at + usize::from(self.relay_len[v])]
    }

    /// Own paths of `v` by peer index, sorted.
    fn resolve_paths(&self, v: usize) -> Vec<(u32, PathStat)> {
        let mut p: Vec<(u32, PathStat)> = self.views[v]
            .paths
            .iter()
            .filter_map(|(peer, s)| self.index.get(peer.as_str()).map(|&u| (u, *s)))
            .filter(|&(u, _)| u as usize != v)
            .collect();
        p.sort_by_key(|&(u, _)| u);
        p
    }

    fn path(&self, from: u32, to: u32) -> Option<PathStat> {
        let p = &self.paths[from as usize];
        p.binary_search_by_key(&to, |&(v, _)| v)
            .ok()
            .map(|i| p[i].1)
    }

    /// [`crate::edge::edge_inputs`]`(u, v, …, 0.0)` on indices: the same
    /// numbers, bit for bit.
    pub(crate) fn inputs_at(&self, u: u32, v: u32, st: &PlanSettings) -> Inputs {
        let ranges = &st.ranges;
        let measured = measured_path(
            self.path(v, u),
            || self.path(u, v),
            st.limits.min_path_samples,
        );
        let (ui, vi) = (u as usize, v as usize);
        let km = match (&self.point[ui], &self.point[vi]) {
            (Some(a), Some(b)) => Input::modelled(great_circle_km(a, b)),
            _ => Input::default_value((ranges.km.lo + ranges.km.hi) / 2.0),
        };
        let (rtt_ms, loss) = rtt_and_loss(measured.as_ref(), &km);
        Inputs {
            rtt_ms,
            loss,
            buffer_ms: self.buffer[ui],
            utilisation: Input::measured(0.0),
            km,
            throughput_ratio: crate::edge::relay_throughput(&rtt_ms, &loss, ranges, &st.limits),
        }
    }

    /// Edge score `u → v` without the load term.
    pub(crate) fn static_edge(&self, u: u32, v: u32, st: &PlanSettings) -> f64 {
        score_value(&st.weights, &st.ranges, &self.inputs_at(u, v, st))
    }

    /// The relay candidates of `v` from its short list.
    fn candidates_of(&self, v: u32, st: &PlanSettings) -> Vec<(u32, f64)> {
        let k = st.limits.relay_candidates.max(1);
        let vi = v as usize;
        let mut pool: Vec<u32> = if self.views[vi].coord.is_some() {
            let near = &self.near[vi];
            near[..near.len().min(2 * k)].to_vec()
        } else {
            (0..self.len() as u32).collect()
        };
        pool.extend(self.paths[vi].iter().map(|&(u, _)| u));
        pool.extend(self.measured_by[vi].iter().copied());
        pool.retain(|&u| u != v && self.eligible[u as usize]);
        pool.sort_unstable();
        pool.dedup();
        let mut e: Vec<(u32, f64)> = pool
            .into_iter()
            .map(|u| (u, self.static_edge(u, v, st)))
            .collect();
        e.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        e.truncate(k);
        e
    }

    /// Consumers whose short list holds `u` (superset of those whose
    /// candidate list does), sorted.
    fn shortlisting(&self, u: u32, st: &PlanSettings) -> Vec<u32> {
        let k2 = 2 * st.limits.relay_candidates.max(1);
        let ui = u as usize;
        let mut out: Vec<u32> = self.near_rev[ui]
            .iter()
            .filter(|&&(_, pos)| (pos as usize) < k2)
            .map(|&(v, _)| v)
            .collect();
        out.extend(self.paths[ui].iter().map(|&(v, _)| v));
        out.extend(self.measured_by[ui].iter().copied());
        out.extend(self.no_coord.iter().copied());
        out.retain(|&v| v != u);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Takes new planned inputs of existing nodes (same facts) and
    /// recomputes what they touch. `views` by index.
    pub(crate) fn update(&mut self, views: Vec<(u32, NodeView)>, st: &PlanSettings) -> GraphDelta {
        let mut d = GraphDelta::default();
        let mut recompute: Vec<u32> = Vec::new();
        for (u, new) in views {
            let ui = u as usize;
            let old = std::mem::replace(&mut self.views[ui], new);
            let new = &self.views[ui];
            let (el, pr) = (eligible(new, &st.ranges), probeable(new));
            let load = load_term(new, st);
            let buffer = buffer_input(new.buffer_ms, &st.ranges);
            if old.health != new.health
                || old.published != new.published
                || old.published_since != new.published_since
            {
                d.streams_changed.push(u);
            }
            if pr != self.probeable[ui] {
                self.probeable[ui] = pr;
                d.probeable_changed = true;
            }
            if load.to_bits() != self.load[ui].to_bits() {
                self.load[ui] = load;
                d.load_changed.push(u);
            }
            let offer = el != self.eligible[ui] || buffer != self.buffer[ui];
            self.eligible[ui] = el;
            self.buffer[ui] = buffer;
            if offer {
                d.offer_changed.push(u);
                recompute.extend(self.shortlisting(u, st));
            }
            if old.paths != new.paths {
                let paths = self.resolve_paths(ui);
                let old_paths = std::mem::replace(&mut self.paths[ui], paths);
                for (peer, changed) in path_changes(&old_paths, &self.paths[ui]) {
                    let list = &mut self.measured_by[peer as usize];
                    match (changed, list.binary_search(&u)) {
                        (PathChange::Added, Err(at)) => list.insert(at, u),
                        (PathChange::Removed, Ok(at)) => {
                            list.remove(at);
                        }
                        _ => {}
                    }
                    // u measures peer: edges peer → u (u's own) and
                    // u → peer (the reverse direction for peer).
                    d.edges_changed.push((peer, u));
                    d.edges_changed.push((u, peer));
                    recompute.push(u);
                    recompute.push(peer);
                }
            }
        }
        recompute.sort_unstable();
        recompute.dedup();
        for v in recompute {
            let fresh = self.candidates_of(v, st);
            let vi = v as usize;
            let same = self.relays(vi).len() == fresh.len()
                && self
                    .relays(vi)
                    .iter()
                    .zip(self.relay_edges(vi))
                    .zip(&fresh)
                    .all(|((r, e0), &(u, e))| r.u == u && e0.to_bits() == e.to_bits());
            if same {
                continue;
            }
            let old: Vec<u32> = self.relays(vi).iter().map(|r| r.u).collect();
            for u in old {
                let list = &mut self.kin_rev[u as usize];
                if let Some(at) = list.iter().position(|&w| w == v) {
                    list.swap_remove(at);
                }
            }
            for &(u, _) in &fresh {
                self.kin_rev[u as usize].push(v);
            }
            self.set_relays(vi, &fresh);
            d.cands_changed.push(v);
        }
        // Offers of the candidates whose load term changed.
        for &u in &d.load_changed {
            let load = self.load[u as usize];
            for &w in &self.kin_rev[u as usize] {
                let at = w as usize * self.k;
                let len = usize::from(self.relay_len[w as usize]);
                for (r, e) in self.relays[at..at + len]
                    .iter_mut()
                    .zip(&self.relay_e[at..at + len])
                {
                    if r.u == u {
                        r.offer = (e + load) as f32;
                    }
                }
            }
        }
        d.edges_changed.sort_unstable();
        d.edges_changed.dedup();
        d
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathChange {
    Added,
    Removed,
    Changed,
}

/// Peers whose measurement appeared, went or changed between two sorted
/// path lists.
fn path_changes(old: &[(u32, PathStat)], new: &[(u32, PathStat)]) -> Vec<(u32, PathChange)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    out.push((a.0, PathChange::Changed));
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                out.push((a.0, PathChange::Removed));
                i += 1;
            }
            (Some(a), None) => {
                out.push((a.0, PathChange::Removed));
                i += 1;
            }
            (_, Some(b)) => {
                out.push((b.0, PathChange::Added));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

impl Graph {
    /// Whether two graphs chose the same candidates with the same scores.
    pub(crate) fn same_candidates(&self, other: &Graph) -> bool {
        self.len() == other.len()
            && (0..self.len()).all(|v| {
                let (a, b) = (self.relays(v), other.relays(v));
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.u == y.u && x.offer.to_bits() == y.offer.to_bits())
                    && self
                        .relay_edges(v)
                        .iter()
                        .zip(other.relay_edges(v))
                        .all(|(x, y)| x.to_bits() == y.to_bits())
            })
    }
}

/// Length of every node's nearest-peer list: the candidates' short list
/// and the nearest probe targets' scan.
pub(crate) fn near_len(st: &PlanSettings) -> usize {
    (2 * st.limits.relay_candidates.max(1)).max(8 * st.limits.probe_nearest + 32)
}

fn probeable(v: &NodeView) -> bool {
    !v.probe_addr.is_empty() && v.health != Health::Down
}

/// The load term of every edge leaving `v`.
pub(crate) fn load_term(v: &NodeView, st: &PlanSettings) -> f64 {
    let w = &st.weights;
    let weight = w.load / w.sum().max(f64::MIN_POSITIVE);
    weight * st.ranges.load_penalty(v.utilisation().max(0.0))
}

/// Each node's `len` nearest peers (nodes with coordinates only), nearest
/// first, ties by index.
fn nearest(views: &[NodeView], len: usize, threads: usize) -> Vec<Vec<u32>> {
    let tree = RTree::bulk_load(
        views
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.coord
                    .map(|c| GeomWithData::new(c.sphere_point(), i as u32))
            })
            .collect(),
    );
    crate::par::map(views.len(), threads, |v| {
        let Some(c) = views[v].coord else {
            return Vec::new();
        };
        let p = c.sphere_point();
        let dist = |q: &[f64; 3]| {
            let (dx, dy, dz) = (q[0] - p[0], q[1] - p[1], q[2] - p[2]);
            dx * dx + dy * dy + dz * dz
        };
        // The tree's order among equal distances is not specified: take
        // every peer as far as the last one kept, then order by (distance,
        // index), so the list depends only on the nodes.
        let mut found: Vec<(f64, u32)> = Vec::with_capacity(len + 1);
        for g in tree.nearest_neighbor_iter(&p) {
            if g.data as usize == v {
                continue;
            }
            let d = dist(g.geom());
            if found.len() >= len && found.last().is_some_and(|&(last, _)| d > last) {
                break;
            }
            found.push((d, g.data));
        }
        found.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        found.truncate(len);
        found.into_iter().map(|(_, u)| u).collect()
    })
}
