//! Planning everything: after a change of membership, facts or settings
//! (re-indexing the graph, the previous decisions carried over by id as
//! hysteresis input), and the periodic check of the incremental state
//! against a plan from scratch.

use super::*;

impl PlanSession {
    /// Re-indexes every node (pending inputs in, removed nodes out) and
    /// plans every source whole.
    pub(super) fn rebuild_all(&mut self, report: &mut StepReport) -> SourcesOutcome {
        let removed = std::mem::take(&mut self.removed);
        let mut views: BTreeMap<String, NodeView> = self
            .graph
            .views
            .iter()
            .filter(|v| !removed.contains(&v.id))
            .map(|v| (v.id.clone(), v.clone()))
            .collect();
        views.extend(std::mem::take(&mut self.pending));
        let old_ids = self.graph.ids.clone();
        // Route entry hashes carry node ids and URLs: recomputed for every
        // route when some node's facts changed or a node left (routes
        // through it lose an upstream when carried over), else only for
        // the routes whose upstreams changed (a weight change, a join).
        // Seeded routes (a replay's recorded state) carry no hashes yet.
        let facts_changed = !removed.is_empty()
            || !self.seeds.is_empty()
            || self
                .graph
                .views
                .iter()
                .any(|old| views.get(&old.id).is_some_and(|new| !new.same_facts(old)));
        let old_graph = std::mem::replace(&mut self.graph, Graph::build(Vec::new(), &self.st, 1));
        self.graph = Graph::build_with(
            views.into_values().collect(),
            &self.st,
            self.threads,
            Some(old_graph),
        );
        let index = &self.graph.index;
        let map: Vec<Option<u32>> = old_ids
            .iter()
            .map(|id| index.get(id.as_ref()).copied())
            .collect();
        let remap = |v: u32| map.get(v as usize).copied().flatten();
        // The directory, with the old entries re-indexed so that only real
        // changes count.
        let old_dir = std::mem::take(&mut self.directory);
        let mut gone: Vec<StreamKey> = Vec::new();
        for (k, o) in old_dir {
            match remap(o) {
                Some(o) => {
                    self.directory.insert(k, o);
                }
                None => gone.push(k),
            }
        }
        let mut dir_changes = self.refresh_directory();
        dir_changes.extend(gone);
        dir_changes.sort();
        dir_changes.dedup();
        let want = self.wanted_sources();
        let n = self.graph.len();
        let mut old: HashMap<SourceKey, Source> = std::mem::take(&mut self.sources)
            .into_iter()
            .map(|s| (s.key.clone(), s))
            .collect();
        // Same nodes in the same order: a source with the same roots is
        // replanned in place (its routes are the hysteresis input as they
        // are); otherwise its routes are carried over by id.
        let same_nodes = old_ids == self.graph.ids;
        let stride = 1 + self.st.limits.max_backups;
        let layers = self.st.limits.max_relay_hops as usize + 1;
        for (key, roots) in want {
            match old.remove(&key) {
                Some(prev) if same_nodes && prev.roots == roots && prev.fits(n, stride, layers) => {
                    self.sources.push(prev);
                }
                prev => {
                    let mut src = Source::new(key, roots, n, &self.st);
                    if let Some(prev) = prev {
                        src.adopt_routes(&prev, &remap);
                    }
                    self.sources.push(src);
                }
            }
        }
        // Seeded routes (a replay's recorded state) are the previous
        // decisions where given.
        for seed in std::mem::take(&mut self.seeds) {
            let (Some(s), Some(&v)) = (
                self.source_index_of(&seed.source),
                self.graph.index.get(seed.node.as_str()),
            ) else {
                continue;
            };
            let ups: Vec<(u32, u8)> = seed
                .upstreams
                .iter()
                .filter_map(|(id, hops)| {
                    let node = if id.is_empty() {
                        crate::graph::NONE
                    } else {
                        *self.graph.index.get(id.as_str())?
                    };
                    Some((node, u8::try_from(*hops).unwrap_or(u8::MAX)))
                })
                .collect();
            self.sources[s].set_route(v, &ups);
        }
        let removed_sources = old
            .into_values()
            .map(|s| Removed {
                routed: s
                    .routed()
                    .filter_map(|(v, h)| remap(v).map(|v| (v, h)))
                    .collect(),
                key: s.key,
            })
            .collect();
        self.source_index = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
        self.root_edges.clear();
        self.fill_root_edges();
        self.probes = vec![Vec::new(); n];
        self.probe_hash = vec![0; n];
        self.route_sum = vec![0; n];
        let plans: Vec<(usize, bool)> = (0..self.sources.len()).map(|s| (s, true)).collect();
        report.sources_planned += plans.len();
        let routes = self.plan_sources(&plans, &|_| (Vec::new(), Vec::new()), &[], facts_changed);
        let params = tables::params_hash(&self.st, self.term);
        self.params_hash = params;
        SourcesOutcome {
            routes,
            removed: removed_sources,
            dir_changes,
        }
    }

    /// The index of a source among `self.sources` (before `source_index`
    /// is rebuilt).
    fn source_index_of(&self, key: &SourceKey) -> Option<usize> {
        self.sources.iter().position(|s| s.key == *key)
    }

    /// Plans every source from scratch — a graph built anew from the
    /// planned views, every layer and decision, with the current routes as
    /// hysteresis input — and compares with the incremental state. Keeps
    /// the plan from scratch. Returns how many routes differed and, per
    /// source, the consumers whose route content changed.
    pub(super) fn verify(&mut self) -> (usize, Vec<(usize, Vec<u32>)>) {
        let views = self.graph.views.clone();
        let fresh = Graph::build(views, &self.st, self.threads);
        let old_graph = std::mem::replace(&mut self.graph, fresh);
        let old_sources = std::mem::take(&mut self.sources);
        let n = self.graph.len();
        for prev in &old_sources {
            let mut src = Source::new(prev.key.clone(), prev.roots.clone(), n, &self.st);
            src.adopt_routes(prev, &Some);
            self.sources.push(src);
        }
        self.root_edges.clear();
        self.fill_root_edges();
        let plans: Vec<(usize, bool)> = (0..self.sources.len()).map(|s| (s, true)).collect();
        let routes = self.plan_sources(&plans, &|_| (Vec::new(), Vec::new()), &[], true);
        let mut drift = 0;
        for (new, old) in self.sources.iter().zip(&old_sources) {
            if !new.same_plan(old) {
                drift += (0..n as u32)
                    .filter(|&v| {
                        let (a, b) = (new.route(v), old.route(v));
                        a.len() != b.len()
                            || a.iter()
                                .zip(b)
                                .any(|(x, y)| x.node != y.node || x.hops != y.hops)
                    })
                    .count()
                    .max(1);
            }
        }
        if drift == 0 && !old_graph.same_candidates(&self.graph) {
            drift = 1;
        }
        (drift, routes)
    }
}
