//! The `qoe` policy: the scheduler's own code, called as a library.
//!
//! - Upstream trees: [`vantage_scheduler::planner::plan`] on
//!   [`NodeView`]s built from what agents reported (health from report
//!   age, reported egress, GOP-cache buffer health, probe measurements
//!   towards the probe targets of the previous plan's tables).
//! - Viewer → edge: [`vantage_scheduler::resolve::rank::rank`] with the
//!   per-group estimates of [`vantage_scheduler::resolve::learn::Learner`]
//!   fed by the reports' `GroupQoe` aggregates and a
//!   [`LoadLedger`] per node for load accounting between reports — the
//!   exact sequence the scheduler runs per `/play` request.
//!
//! - Planner inputs go through the scheduler's deadband
//!   ([`vantage_scheduler::plan_inputs`]): a value reaches the planner only
//!   when it moved beyond the band, and a periodic replan is skipped when
//!   no node's inputs moved and the probe rotation epoch did not change —
//!   as `App::run_planner` does. Backup hysteresis gets the previous plan's
//!   backups.
//!
//! The oracle uses the same planner, fed ground truth instead, on every
//! period and without a deadband.

use super::Ask;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{BTreeMap, HashMap};
use vantage_proto::v1::GroupQoe;
use vantage_scheduler::plan_inputs::{Deadband, Planned, Rules};
use vantage_scheduler::planner::{self, Backups, Limits, NodeView, PlanInput};
use vantage_scheduler::resolve::learn::{DEFAULT_MAX_GROUPS, Learner};
use vantage_scheduler::resolve::rank::{
    self, Candidate, LoadLedger, RankInput, RankParams, Viewer,
};
use vantage_shared::score::{Ranges, Stability, Weights};

/// Planner + resolver state of one run.
pub struct Qoe {
    pub weights: Weights,
    pub ranges: Ranges,
    pub stability: Stability,
    pub limits: Limits,
    pub params: RankParams,
    learner: Learner,
    ledger: Vec<LoadLedger>,
    rng: StdRng,
    node_ids: Vec<String>,
    urls: Vec<String>,
    index: HashMap<String, u16, crate::engine::FastHash>,
    streams: usize,
    stream_index: HashMap<String, u32>,
    /// Upstream candidates per (node, stream), `node * streams + stream`.
    routes: Vec<Vec<u16>>,
    probes: Vec<Vec<u16>>,
    previous: BTreeMap<(String, String), String>,
    previous_backups: Backups,
    /// The scheduler's deadband, `None` for the oracle (ground truth,
    /// planned every period).
    deadband: Option<Deadband>,
    /// The inputs of the last plan, by node id, and its probe epoch.
    planned: HashMap<String, Planned>,
    planned_epoch: Option<i64>,
    /// Per viewer city: the nearest PoPs (the resolver's preselection).
    nearest: Vec<Vec<u16>>,
    pub plans: u64,
}

/// PoPs preselected by distance for every viewer, as the scheduler does.
pub const PRESELECT_NEAREST: usize = 32;

/// The stream key of stream slot `i`.
pub fn stream_key(i: usize) -> String {
    format!("live/s{i}")
}

impl Qoe {
    pub fn new(
        weights: Weights,
        ranges: Ranges,
        stability: Stability,
        node_ids: Vec<String>,
        streams: usize,
        seed: u64,
        deadband: Option<Deadband>,
    ) -> Self {
        let params = RankParams::default();
        let index = node_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u16))
            .collect();
        let n = node_ids.len();
        Self {
            weights,
            ranges,
            stability,
            limits: Limits::default(),
            params,
            learner: Learner::new(params.group_half_life_ms, DEFAULT_MAX_GROUPS),
            ledger: vec![LoadLedger::default(); n],
            rng: StdRng::seed_from_u64(seed),
            urls: node_ids
                .iter()
                .map(|id| format!("http://{id}.sim/"))
                .collect(),
            node_ids,
            index,
            streams,
            stream_index: (0..streams).map(|i| (stream_key(i), i as u32)).collect(),
            routes: vec![Vec::new(); n * streams],
            probes: vec![Vec::new(); n],
            previous: BTreeMap::new(),
            previous_backups: Backups::new(),
            deadband,
            planned: HashMap::new(),
            planned_epoch: None,
            nearest: Vec::new(),
            plans: 0,
        }
    }

    pub fn node_id(&self, i: usize) -> &str {
        &self.node_ids[i]
    }

    pub fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    /// A node's report reached the scheduler: its group aggregates feed
    /// the learner and its load ledger rolls over.
    pub fn observe(&mut self, node: usize, groups: &[GroupQoe], now_ms: u64) {
        self.learner
            .observe(&self.node_ids[node], groups, now_ms as i64);
        self.ledger[node].on_report();
    }

    /// The PoPs nearest to `city`, best first (cached per city).
    fn nearest(&mut self, ask: &Ask<'_>) -> &[u16] {
        let city = ask.city as usize;
        if self.nearest.len() < ask.world.cities.len() {
            self.nearest.resize(ask.world.cities.len(), Vec::new());
        }
        if self.nearest[city].is_empty() {
            let mut pops: Vec<u16> = ask.world.pops.clone();
            pops.sort_by(|&a, &b| {
                ask.world
                    .city_km(city, usize::from(a))
                    .total_cmp(&ask.world.city_km(city, usize::from(b)))
                    .then(a.cmp(&b))
            });
            pops.truncate(PRESELECT_NEAREST);
            self.nearest[city] = pops;
        }
        &self.nearest[city]
    }

    /// Ranks PoPs for one viewer with the scheduler's resolver. Candidates
    /// are preselected as the scheduler does: the 32 nearest PoPs plus
    /// every PoP with an estimate for the viewer's group.
    pub fn choose(&mut self, ask: &Ask<'_>) -> Option<usize> {
        let city = &ask.world.cities[ask.city as usize];
        let mut picked: Vec<(usize, Option<usize>)> = self
            .nearest(ask)
            .iter()
            .map(|&p| (usize::from(p), None))
            .collect();
        let estimates = self.learner.group(city.group.as_str());
        for (e, (node, _)) in estimates.iter().enumerate() {
            let Some(&p) = self.index.get(&**node) else {
                continue;
            };
            let p = usize::from(p);
            if ask.world.nodes[p].origin {
                continue;
            }
            match picked.iter_mut().find(|(q, _)| *q == p) {
                Some(slot) => slot.1 = Some(e),
                None => picked.push((p, Some(e))),
            }
        }
        picked.retain(|(p, _)| Some(*p as u16) != ask.exclude);
        let cands: Vec<Candidate<'_>> = picked
            .iter()
            .map(|&(p, e)| {
                let node = &ask.world.nodes[p];
                Candidate {
                    id: self.node_ids[p].as_str(),
                    public_url: &self.urls[p],
                    health: ask.view.health(p, ask.now_ms),
                    coord: Some(node.coord),
                    capacity_mbps: node.capacity_mbps,
                    egress_mbps: ask.view.egress_mbps[p],
                    assigned_mbps: self.ledger[p].total(),
                    group: e.map(|e| &estimates[e].1),
                }
            })
            .collect();
        let input = RankInput {
            now_ms: ask.now_ms as i64,
            weights: &self.weights,
            ranges: &self.ranges,
            params: &self.params,
            viewer: Viewer {
                coord: Some(city.city.coord),
                bitrate_mbps: ask.world.bitrate_mbps,
            },
            n: 1,
        };
        let ranking = rank::rank(&input, &cands, &mut self.rng);
        let chosen = ranking.chosen().map(|e| picked[e.index].0)?;
        self.ledger[chosen].assign(ask.world.bitrate_mbps);
        Some(chosen)
    }

    /// Runs the scheduler's planner on `nodes` and keeps the tables'
    /// upstream lists and probe targets. With a deadband, inputs that
    /// stayed within it keep their planned values, and a `periodic` replan
    /// that would see nothing new is skipped.
    pub fn replan(
        &mut self,
        mut nodes: Vec<NodeView>,
        now_ms: u64,
        report_interval_ms: u32,
        periodic: bool,
    ) {
        let epoch = self.limits.probe_epoch(now_ms as i64);
        if let Some(band) = &self.deadband {
            let rules = Rules {
                band,
                ranges: &self.ranges,
                min_path_samples: self.limits.min_path_samples,
            };
            let mut moved = nodes.len() != self.planned.len();
            let mut planned = HashMap::with_capacity(nodes.len());
            for v in &mut nodes {
                let last = self.planned.get(&v.id);
                let held = rules.hold(v.capacity_mbps, last, Planned::take_from(v));
                moved |= last != Some(&held);
                held.write_to(v);
                planned.insert(v.id.clone(), held);
            }
            if periodic && !moved && self.planned_epoch == Some(epoch) {
                return;
            }
            self.planned = planned;
        }
        self.planned_epoch = Some(epoch);
        let input = PlanInput {
            now_ms: now_ms as i64,
            weights: self.weights,
            weights_version: 1,
            ranges: self.ranges,
            stability: self.stability,
            limits: self.limits,
            report_interval_ms,
            table_ttl_s: 60,
            nodes,
            previous: std::mem::take(&mut self.previous),
            probe_key: Vec::new(),
            previous_backups: std::mem::take(&mut self.previous_backups),
        };
        let plan = planner::plan(&input);
        self.plans += 1;
        self.previous = plan.primaries;
        self.previous_backups = plan.backups;
        for r in &mut self.routes {
            r.clear();
        }
        for (id, table) in &plan.tables {
            let Some(&n) = self.index.get(id) else {
                continue;
            };
            let n = usize::from(n);
            for route in &table.streams {
                let Some(&s) = self.stream_index.get(&route.stream) else {
                    continue;
                };
                let list = &mut self.routes[n * self.streams + s as usize];
                list.extend(
                    route
                        .upstreams
                        .iter()
                        .filter_map(|u| self.index.get(&u.node_id).copied()),
                );
            }
            self.probes[n] = table
                .probe_targets
                .iter()
                .filter_map(|t| self.index.get(&t.node_id).copied())
                .collect();
        }
    }

    pub fn upstreams(&self, node: usize, stream: usize) -> Option<&[u16]> {
        self.routes
            .get(node * self.streams + stream)
            .filter(|l| !l.is_empty())
            .map(Vec::as_slice)
    }

    pub fn probe_targets(&self, node: usize) -> &[u16] {
        self.probes.get(node).map(Vec::as_slice).unwrap_or(&[])
    }
}
