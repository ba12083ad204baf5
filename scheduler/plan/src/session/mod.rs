//! A planning session: the state of the cluster's plan and the one object
//! that changes it, step by step, in the scheduler and in the simulator
//! alike.
//!
//! Callers [`offer`](PlanSession::offer) each node's latest inputs (the
//! session applies the deadband against what it planned with), tell it
//! about removed nodes, weight changes and alerts, ask whether a plan is
//! [`due`](PlanSession::due), and [`step`](PlanSession::step) it:
//!
//! * nodes joining or leaving, changed facts (coordinates, URLs, static
//!   origins) or settings re-index the graph and plan everything, with
//!   the previous decisions as hysteresis input;
//! * otherwise the step is incremental: only the candidate lists, path
//!   costs and routes the moved inputs can reach are replanned
//!   (modules `graph` and `source`);
//! * at least every `full_plan_interval_ms` a plan from scratch checks the
//!   incremental state (the two must agree; a difference is counted as
//!   drift, logged by the caller, and the plan from scratch is kept).
//!
//! Every step also keeps each node's table bookkeeping
//! ([`tables`]): a version per node that moves when its table
//! content changes, and a log of what changed, so route tables can be sent
//! as deltas.

mod interest;
mod probes;
mod rebuild;
pub mod tables;

use crate::edge::IdMap;
use crate::graph::{Graph, GraphDelta};
use crate::inputs::Rules;
use crate::node::{Health, NodeView};
use crate::settings::PlanSettings;
use crate::source::{Cx, Dirty, Source, SourceKey, Work};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tables::Book;
use vantage_shared::stream::StreamKey;

pub use interest::{MAX_INTEREST, Subscribed};
pub use tables::{TableChange, TableUpdate};

/// One route of the plan: a node's upstreams for a source, best first,
/// with hop counts ("" = the node's static origin URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub node: String,
    pub source: SourceKey,
    pub upstreams: Vec<(String, u32)>,
}

/// What an [`offer`](PlanSession::offer) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offered {
    /// The planner will see new inputs for the node.
    pub moved: bool,
    /// A change that should be planned at once (join, down, back up,
    /// drain, new facts).
    pub urgent: bool,
}

/// What a [`step`](PlanSession::step) did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Everything was planned (re-index or plan from scratch).
    pub full: bool,
    /// Nodes whose table changed (new version), by id.
    pub changed: Vec<Arc<str>>,
    /// (source, consumer) routes that changed.
    pub routes_changed: usize,
    /// Sources planned incrementally / from scratch in this step.
    pub sources_updated: usize,
    pub sources_planned: usize,
    /// Routes the plan from scratch decided differently from the
    /// incremental state (`None`: no check this step).
    pub drift: Option<usize>,
}

/// The planning state of a cluster. Cloning it copies the whole plan
/// (tests compare a clone's plan from scratch with the incremental state).
#[derive(Clone)]
pub struct PlanSession {
    st: PlanSettings,
    threads: usize,
    graph: Graph,
    sources: Vec<Source>,
    source_index: HashMap<SourceKey, usize>,
    /// `e(root → v)` for every eligible root of some source, by root.
    root_edges: IdMap<u32, Vec<f64>>,
    /// Stream → origin node.
    directory: BTreeMap<StreamKey, u32>,
    /// Streams each node subscribed to ([`interest`]), by node id, and
    /// the nodes subscribed to each stream.
    interest: HashMap<Arc<str>, interest::Interest>,
    watchers: HashMap<StreamKey, BTreeSet<Arc<str>>>,
    /// Per node: its probe targets and their hash.
    probes: Vec<Vec<(u32, probes::Reason)>>,
    probe_hash: Vec<u64>,
    /// Per node: sum of its routes' entry hashes.
    route_sum: Vec<u64>,
    /// Table bookkeeping by node id (also for nodes not planned yet:
    /// versions restored from the store).
    books: HashMap<Arc<str>, Book>,
    params_hash: u64,
    /// Planned views waiting for the next step, by id.
    pending: BTreeMap<String, NodeView>,
    removed: BTreeSet<String>,
    /// Membership, facts or settings changed: re-index at the next step.
    rebuild: bool,
    /// Routes to take as the previous decisions at the next re-index.
    seeds: Vec<RouteEntry>,
    urgent: bool,
    epoch: Option<i64>,
    last_plan_ms: Option<i64>,
    last_full_ms: Option<i64>,
    work: Vec<Work>,
}

impl std::fmt::Debug for PlanSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanSession")
            .field("nodes", &self.graph.len())
            .field("sources", &self.sources.len())
            .field("streams", &self.directory.len())
            .finish_non_exhaustive()
    }
}

impl PlanSession {
    /// An empty session; `threads` bounds the threads a step may use
    /// (the result never depends on it).
    pub fn new(settings: PlanSettings, threads: usize) -> Self {
        let params_hash = tables::params_hash(&settings);
        PlanSession {
            graph: Graph::build(Vec::new(), &settings, 1),
            st: settings,
            threads: threads.max(1),
            sources: Vec::new(),
            source_index: HashMap::new(),
            root_edges: IdMap::default(),
            directory: BTreeMap::new(),
            interest: HashMap::new(),
            watchers: HashMap::new(),
            probes: Vec::new(),
            probe_hash: Vec::new(),
            route_sum: Vec::new(),
            books: HashMap::new(),
            params_hash,
            pending: BTreeMap::new(),
            removed: BTreeSet::new(),
            rebuild: false,
            seeds: Vec::new(),
            urgent: false,
            epoch: None,
            last_plan_ms: None,
            last_full_ms: None,
            work: Vec::new(),
        }
    }

    pub fn settings(&self) -> &PlanSettings {
        &self.st
    }

    /// Changes settings; everything is replanned at the next step (tables
    /// carry the new weight-set version and report interval).
    pub fn set_settings(&mut self, settings: PlanSettings) {
        if settings != self.st {
            self.st = settings;
            self.rebuild = true;
            self.urgent = true;
        }
    }

    /// How fresh telemetry becomes planner input.
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            band: &self.st.deadband,
            ranges: &self.st.ranges,
            min_path_samples: self.st.limits.min_path_samples,
        }
    }

    /// The inputs the planner holds for `id` (pending ones first).
    pub fn planned(&self, id: &str) -> Option<&NodeView> {
        if self.removed.contains(id) {
            return None;
        }
        self.pending.get(id).or_else(|| {
            self.graph
                .index
                .get(id)
                .map(|&i| &self.graph.views[i as usize])
        })
    }

    /// The views the last step planned with, in id order (without inputs
    /// offered since).
    pub fn views(&self) -> &[NodeView] {
        &self.graph.views
    }

    /// Every node as planned (pending inputs included), by id.
    pub fn planned_views(&self) -> Vec<NodeView> {
        let mut out: BTreeMap<&str, &NodeView> = self
            .graph
            .views
            .iter()
            .filter(|v| !self.removed.contains(&v.id))
            .map(|v| (v.id.as_str(), v))
            .collect();
        for (id, v) in &self.pending {
            out.insert(id, v);
        }
        out.into_values().cloned().collect()
    }

    /// Views taken since the last step (offered and moved, or set), by
    /// id: what the next step plans with besides the planned state. Read
    /// before [`step`](Self::step) by a caller that records steps
    /// (`crate::trace`); nothing is kept for it otherwise.
    pub fn pending_views(&self) -> impl Iterator<Item = &NodeView> {
        self.pending.values()
    }

    /// Nodes removed since the last step (and not offered again), by id.
    pub fn pending_removals(&self) -> impl Iterator<Item = &str> {
        self.removed.iter().map(String::as_str)
    }

    /// Offers a node's latest (smoothed) inputs. Values that stayed inside
    /// the deadband around what the planner holds are held back.
    pub fn offer(&mut self, fresh: NodeView) -> Offered {
        self.removed.remove(&fresh.id);
        let Some(planned) = self.planned(&fresh.id) else {
            self.pending.insert(fresh.id.clone(), fresh);
            self.rebuild = true;
            self.urgent = true;
            return Offered {
                moved: true,
                urgent: true,
            };
        };
        let facts_changed = !planned.same_facts(&fresh);
        let mut view = fresh;
        self.rules().hold_view(planned, &mut view);
        if !facts_changed && view == *planned {
            return Offered::default();
        }
        // A stream that starts or ends changes its subscribers' directory
        // and maybe the sources: planned at once, like a node going down.
        let streams_moved = !planned.published.keys().eq(view.published.keys());
        let urgent = facts_changed || streams_moved || urgent_change(planned.health, view.health);
        if facts_changed {
            self.rebuild = true;
        }
        self.urgent |= urgent;
        self.pending.insert(view.id.clone(), view);
        Offered {
            moved: true,
            urgent,
        }
    }

    /// Takes `view` as the node's planned inputs as they are (no deadband):
    /// inputs recorded after the deadband, replayed.
    pub fn set_planned(&mut self, view: NodeView) {
        self.removed.remove(&view.id);
        let known = self.planned(&view.id).map(|p| {
            let streams_moved = !p.published.keys().eq(view.published.keys());
            (*p == view, p.same_facts(&view), p.health, streams_moved)
        });
        match known {
            Some((true, ..)) => {}
            Some((false, same_facts, health, streams_moved)) => {
                self.rebuild |= !same_facts;
                self.urgent |= streams_moved || urgent_change(health, view.health);
                self.pending.insert(view.id.clone(), view);
            }
            None => {
                self.rebuild = true;
                self.urgent = true;
                self.pending.insert(view.id.clone(), view);
            }
        }
    }

    /// Routes the next step takes as the previous decisions (hysteresis
    /// input): a replay starting from a recorded state. The next step
    /// re-indexes and plans everything.
    pub fn seed_routes(&mut self, routes: Vec<RouteEntry>) {
        self.seeds = routes;
        self.rebuild = true;
        self.urgent = true;
    }

    /// Every route of the plan: (node, source, upstreams with hop counts;
    /// "" = the node's static origin URL), by source then node.
    pub fn routes(&self) -> Vec<RouteEntry> {
        let mut out = Vec::new();
        for s in &self.sources {
            for (v, _) in s.routed() {
                out.push(RouteEntry {
                    node: self.graph.ids[v as usize].to_string(),
                    source: s.key.clone(),
                    upstreams: s
                        .route(v)
                        .iter()
                        .map(|up| match up.node {
                            crate::graph::NONE => (String::new(), 0),
                            u => (self.graph.ids[u as usize].to_string(), u32::from(up.hops)),
                        })
                        .collect(),
                });
            }
        }
        out
    }

    /// Forgets a node (it left the cluster).
    pub fn remove(&mut self, id: &str) {
        self.pending.remove(id);
        if self.graph.index.contains_key(id) {
            self.removed.insert(id.to_owned());
            self.rebuild = true;
            self.urgent = true;
        }
    }

    /// Plan at the next opportunity (an alert: something may have broken
    /// that the inputs do not show yet).
    pub fn trigger(&mut self) {
        self.urgent = true;
    }

    /// Whether a step now would do anything: something urgent, inputs that
    /// moved and the replan interval is over, a new probe rotation epoch,
    /// or the plan from scratch is due.
    pub fn due(&self, now_ms: i64) -> bool {
        if self.rebuild || self.urgent {
            return true;
        }
        let since = |t: Option<i64>| t.map_or(i64::MAX, |t| now_ms.saturating_sub(t));
        (!self.pending.is_empty()
            && since(self.last_plan_ms) >= i64::from(self.st.replan_interval_ms))
            || self.epoch != Some(self.st.limits.probe_epoch(now_ms))
            || (self.st.full_plan_interval_ms > 0
                && since(self.last_full_ms) >= i64::from(self.st.full_plan_interval_ms))
    }

    /// Plans what changed since the last step.
    pub fn step(&mut self, now_ms: i64) -> StepReport {
        let mut report = StepReport::default();
        let mut probes_all = false;
        let mut outcome = if self.rebuild || self.last_full_ms.is_none() {
            report.full = true;
            probes_all = true;
            self.last_full_ms = Some(now_ms);
            self.rebuild_all(&mut report)
        } else if !self.pending.is_empty() {
            let views: Vec<(u32, NodeView)> = std::mem::take(&mut self.pending)
                .into_values()
                .filter_map(|v| self.graph.index.get(v.id.as_str()).map(|&i| (i, v)))
                .collect();
            let delta = self.graph.update(views, &self.st);
            probes_all |= delta.probeable_changed;
            self.incremental(&delta, &mut report)
        } else {
            SourcesOutcome::default()
        };
        let epoch = self.st.limits.probe_epoch(now_ms);
        if self.epoch != Some(epoch) {
            self.epoch = Some(epoch);
            probes_all = true;
        }
        let full_due = self.st.full_plan_interval_ms > 0
            && self.last_full_ms.is_some_and(|t| {
                now_ms.saturating_sub(t) >= i64::from(self.st.full_plan_interval_ms)
            });
        if full_due && !report.full {
            let (drift, fixed) = self.verify();
            report.drift = Some(drift);
            outcome.routes.extend(fixed);
            self.last_full_ms = Some(now_ms);
        }
        self.finish_step(outcome, probes_all, &mut report);
        self.rebuild = false;
        self.urgent = false;
        self.last_plan_ms = Some(now_ms);
        report
    }

    /// The incremental part of a step: directory and sources, root edges,
    /// then each source replanned as far as the graph's changes reach.
    fn incremental(&mut self, delta: &GraphDelta, report: &mut StepReport) -> SourcesOutcome {
        let mut out = SourcesOutcome::default();
        let mut whole: BTreeSet<usize> = BTreeSet::new();
        if !delta.streams_changed.is_empty() {
            out.dir_changes = self.refresh_directory();
            let (added, removed) = self.refresh_sources();
            out.removed = removed;
            whole.extend(added);
        }
        // A root whose offer changed (eligibility, buffer) gets its root
        // edges recomputed whole; single pairs are patched.
        for &u in &delta.offer_changed {
            self.root_edges.remove(&u);
        }
        for &(u, v) in &delta.edges_changed {
            if self.root_edges.contains_key(&u) {
                let x = self.graph.static_edge(u, v, &self.st);
                if let Some(e) = self.root_edges.get_mut(&u) {
                    e[v as usize] = x;
                }
            }
        }
        self.fill_root_edges();
        let offer: BTreeSet<u32> = delta
            .offer_changed
            .iter()
            .chain(&delta.load_changed)
            .copied()
            .collect();
        for (s, src) in self.sources.iter().enumerate() {
            if src.roots.iter().any(|(r, _)| offer.contains(r)) {
                whole.insert(s);
            }
        }
        let mut edge_by_root: HashMap<u32, Vec<u32>> = HashMap::new();
        for &(u, v) in &delta.edges_changed {
            edge_by_root.entry(u).or_default().push(v);
        }
        let plans: Vec<(usize, bool)> = (0..self.sources.len())
            .map(|s| (s, whole.contains(&s)))
            .collect();
        report.sources_planned += whole.len();
        report.sources_updated += plans.len() - whole.len();
        let dirty = |src: &Source| {
            let mut edge: Vec<u32> = Vec::new();
            for (r, _) in &src.roots {
                if let Some(vs) = edge_by_root.get(r) {
                    edge.extend(vs);
                }
            }
            let load: Vec<u32> = delta
                .load_changed
                .iter()
                .copied()
                .filter(|u| !src.roots.iter().any(|(r, _)| r == u))
                .collect();
            (edge, load)
        };
        out.routes = self.plan_sources(&plans, &dirty, &delta.cands_changed, false);
        out
    }

    /// Plans the sources `plans` names — whole (`true`) or incrementally,
    /// with the dirty consumers `dirty` gives and `cands` (consumers whose
    /// candidates changed) — on the session's threads. Returns, per
    /// source, the consumers whose route changed.
    fn plan_sources(
        &mut self,
        plans: &[(usize, bool)],
        dirty: &DirtyOf<'_>,
        cands: &[u32],
        rehash_all: bool,
    ) -> Vec<(usize, Vec<u32>)> {
        let threads = self.threads.min(plans.len()).max(1);
        while self.work.len() < threads {
            self.work.push(Work::default());
        }
        let PlanSession {
            sources,
            graph,
            st,
            root_edges,
            work,
            ..
        } = self;
        let cells: Vec<Mutex<&mut Source>> = sources.iter_mut().map(Mutex::new).collect();
        let works: Vec<Mutex<&mut Work>> = work.iter_mut().map(Mutex::new).collect();
        crate::par::tasks(plans.len(), threads, |t| {
            let (s, whole) = plans[t];
            // Each source is planned by exactly one task, and at most
            // `threads` tasks run at once, so a free scratch always exists.
            let mut src = cells[s].lock().unwrap_or_else(|e| e.into_inner());
            let mut w = loop {
                if let Some(w) = works.iter().find_map(|m| m.try_lock().ok()) {
                    break w;
                }
                std::thread::yield_now();
            };
            let edges: Vec<&[f64]> = src
                .roots
                .iter()
                .map(|(r, _)| root_edges.get(r).map_or(&[][..], Vec::as_slice))
                .collect();
            let cx = Cx {
                g: graph,
                st,
                edges,
            };
            let changed = if whole {
                src.full(&cx, &mut w)
            } else {
                let (edge, load) = dirty(&src);
                let d = Dirty {
                    edge,
                    cands,
                    load: &load,
                };
                src.update(&cx, &d, &mut w)
            };
            let changed = if rehash_all {
                let n = src.consumers() as u32;
                src.rehash(graph, 0..n)
            } else {
                src.rehash(graph, changed)
            };
            (s, changed.into_iter().map(|(v, _, _)| v).collect())
        })
    }

    /// Computes the root edges every eligible root of a source needs and
    /// does not have yet.
    fn fill_root_edges(&mut self) {
        let mut missing: Vec<u32> = self
            .sources
            .iter()
            .flat_map(|s| s.roots.iter().map(|&(r, _)| r))
            .filter(|&r| self.graph.eligible[r as usize] && !self.root_edges.contains_key(&r))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let (g, st) = (&self.graph, &self.st);
        let n = g.len();
        let computed = crate::par::tasks(missing.len(), self.threads, |i| {
            let r = missing[i];
            (0..n as u32)
                .map(|v| {
                    if v == r {
                        f64::INFINITY
                    } else {
                        g.static_edge(r, v, st)
                    }
                })
                .collect::<Vec<f64>>()
        });
        for (r, e) in missing.into_iter().zip(computed) {
            self.root_edges.insert(r, e);
        }
        // Roots that stopped being eligible offer nothing.
        let eligible = &self.graph.eligible;
        self.root_edges.retain(|&r, _| eligible[r as usize]);
    }

    /// Recomputes the stream → origin directory from the nodes' published
    /// streams; returns the keys whose entry changed. Of several nodes
    /// publishing one key (not down), the origin is the healthiest (up,
    /// then draining, then suspect), then the first by id.
    fn refresh_directory(&mut self) -> Vec<StreamKey> {
        let rank = |h: Health| match h {
            Health::Up => 0,
            Health::Draining => 1,
            Health::Suspect => 2,
            Health::Down => 3,
        };
        let mut fresh: BTreeMap<StreamKey, u32> = BTreeMap::new();
        for (i, v) in self.graph.views.iter().enumerate() {
            if v.health == Health::Down {
                continue;
            }
            for key in v.published.keys() {
                let i = i as u32;
                let better = |cur: u32| {
                    (rank(v.health), i) < (rank(self.graph.views[cur as usize].health), cur)
                };
                match fresh.get_mut(key) {
                    Some(cur) if better(*cur) => *cur = i,
                    Some(_) => {}
                    None => {
                        fresh.insert(key.clone(), i);
                    }
                }
            }
        }
        let mut changed = Vec::new();
        for (k, o) in &fresh {
            if self.directory.get(k) != Some(o) {
                changed.push(k.clone());
            }
        }
        for k in self.directory.keys() {
            if !fresh.contains_key(k) {
                changed.push(k.clone());
            }
        }
        changed.sort();
        self.directory = fresh;
        changed
    }

    /// The sources the directory and static origins call for: origins of
    /// directory streams, and static patterns with the nodes (not down)
    /// configured with them.
    fn wanted_sources(&self) -> BTreeMap<SourceKey, Vec<(u32, Option<String>)>> {
        let mut want: BTreeMap<SourceKey, Vec<(u32, Option<String>)>> = BTreeMap::new();
        for &o in self.directory.values() {
            want.entry(SourceKey::Origin(self.graph.ids[o as usize].clone()))
                .or_insert_with(|| vec![(o, None)]);
        }
        for (i, v) in self.graph.views.iter().enumerate() {
            if v.health == Health::Down {
                continue;
            }
            for (p, url) in &v.static_origins {
                want.entry(SourceKey::Pattern(p.clone()))
                    .or_default()
                    .push((i as u32, Some(url.clone())));
            }
        }
        want
    }

    /// Brings the set of sources in line with [`Self::wanted_sources`].
    /// Returns the indices of sources to plan whole (new ones, and those
    /// whose roots changed, which keep their previous routes as
    /// hysteresis input) and the removed sources with the consumers that
    /// had a route (and its entry hash).
    fn refresh_sources(&mut self) -> (Vec<usize>, Vec<Removed>) {
        let want = self.wanted_sources();
        let n = self.graph.len();
        let mut old: HashMap<SourceKey, Source> = std::mem::take(&mut self.sources)
            .into_iter()
            .map(|s| (s.key.clone(), s))
            .collect();
        let mut whole = Vec::new();
        for (key, roots) in want {
            match old.remove(&key) {
                Some(src) if src.roots == roots => self.sources.push(src),
                prev => {
                    let mut src = Source::new(key, roots, n, &self.st);
                    if let Some(prev) = prev {
                        src.adopt_routes(&prev, &|v| Some(v));
                    }
                    whole.push(self.sources.len());
                    self.sources.push(src);
                }
            }
        }
        let removed = old
            .into_values()
            .map(|s| Removed {
                routed: s.routed().collect(),
                key: s.key,
            })
            .collect();
        self.source_index = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
        (whole, removed)
    }
}

/// The consumers of a source a change reaches: `(root edges changed,
/// relays whose load changed)`.
type DirtyOf<'a> = dyn Fn(&Source) -> (Vec<u32>, Vec<u32>) + Sync + 'a;

/// A source that no longer exists, and who had a route from it.
#[derive(Debug)]
struct Removed {
    key: SourceKey,
    routed: Vec<(u32, u64)>,
}

/// What planning the sources changed.
#[derive(Debug, Default)]
struct SourcesOutcome {
    routes: Vec<(usize, Vec<u32>)>,
    removed: Vec<Removed>,
    dir_changes: Vec<StreamKey>,
}

/// Health changes planned at once: going down, coming back, draining.
fn urgent_change(old: Health, new: Health) -> bool {
    old != new
        && (matches!(old, Health::Down | Health::Draining)
            || matches!(new, Health::Down | Health::Draining))
}

/// Queries of the plan (the simulator's view of its decisions, tests).
impl PlanSession {
    /// Nodes planned, in id order.
    pub fn node_ids(&self) -> impl Iterator<Item = &str> {
        self.graph.ids.iter().map(|id| id.as_ref())
    }

    /// The origin node of a stream (the directory's entry).
    pub fn origin_of(&self, stream: &StreamKey) -> Option<&str> {
        self.directory
            .get(stream)
            .map(|&o| self.graph.ids[o as usize].as_ref())
    }

    /// Streams and their origins, in key order.
    pub fn directory(&self) -> impl Iterator<Item = (&StreamKey, &str)> {
        self.directory
            .iter()
            .map(|(k, &o)| (k, self.graph.ids[o as usize].as_ref()))
    }

    /// Every source planned, in key order.
    pub fn sources(&self) -> impl Iterator<Item = &SourceKey> {
        self.sources.iter().map(|s| &s.key)
    }

    /// `node`'s upstreams for `source`, best first, as (node id — "" for
    /// its static origin URL —, hop count). Empty: no route.
    pub fn upstreams(&self, node: &str, source: &SourceKey) -> Vec<(&str, u32)> {
        let (Some(&v), Some(&s)) = (self.graph.index.get(node), self.source_index.get(source))
        else {
            return Vec::new();
        };
        self.sources[s]
            .route(v)
            .iter()
            .map(|up| match up.node {
                crate::graph::NONE => ("", 0),
                u => (self.graph.ids[u as usize].as_ref(), u32::from(up.hops)),
            })
            .collect()
    }

    /// The upstreams `node` would pull `stream` from: its origin's route
    /// from the directory, else the most specific static pattern's.
    pub fn route_for(&self, node: &str, stream: &StreamKey) -> Vec<(&str, u32)> {
        if let Some(&o) = self.directory.get(stream) {
            let key = SourceKey::Origin(self.graph.ids[o as usize].clone());
            let ups = self.upstreams(node, &key);
            if !ups.is_empty() {
                return ups;
            }
        }
        let best = self
            .sources
            .iter()
            .filter_map(|s| match &s.key {
                SourceKey::Pattern(p) if p.matches(stream) => Some((p.specificity(), &s.key)),
                _ => None,
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)));
        best.map(|(_, key)| self.upstreams(node, key))
            .unwrap_or_default()
    }

    /// `node`'s probe targets (node ids), in table order.
    pub fn probe_targets_of(&self, node: &str) -> Vec<&str> {
        let Some(&v) = self.graph.index.get(node) else {
            return Vec::new();
        };
        self.probes
            .get(v as usize)
            .map(|p| {
                p.iter()
                    .map(|&(u, _)| self.graph.ids[u as usize].as_ref())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Routes a plan from scratch on the same inputs (and the current
    /// routes as hysteresis input) would decide differently: 0 when the
    /// incremental state is right. Does not change the session.
    pub fn drift_from_scratch(&self) -> usize {
        self.clone().verify().0
    }
}

#[cfg(test)]
mod tests;
