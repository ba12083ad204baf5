//! In-memory node state: what every agent said in its Hello and last reports.
//!
//! Hot path: one `DashMap` entry per node, updated by that node's ingest
//! task on every report; the planner, the API and the liveness check read
//! snapshots. Nothing here touches the database; `store` gets batched
//! writes from the callers.

use crate::plan_inputs::{PATH_SMOOTHING, Planned, Rules};
use crate::planner::{Health, NodeView, PathStat};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use vantage_proto::v1::{
    ControlPath, GroupQoe, Load, PathMeasurement, Report, StreamRole, StreamState,
};
use vantage_shared::estimate::Ewma;
use vantage_shared::place::Coord;
use vantage_shared::stream::{StreamKey, StreamPattern};

/// Liveness state shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Up,
    Suspect,
    Down,
    Draining,
}

impl NodeState {
    pub const ALL: [NodeState; 4] = [
        NodeState::Up,
        NodeState::Suspect,
        NodeState::Down,
        NodeState::Draining,
    ];

    pub fn label(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
        }
    }
}

/// Static facts about a node, from its Hello (or the store at startup).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    pub region: String,
    pub coord: Option<Coord>,
    pub capacity_mbps: f64,
    pub public_url: String,
    pub probe_addr: String,
    pub agent_version: String,
    pub static_origins: BTreeMap<StreamPattern, String>,
}

/// Live session of a connected agent.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub started_ms: i64,
    pub remote: String,
    /// Closing this drops the agent (used when a newer session supersedes it).
    pub connection: Option<crate::ingest::SessionLink>,
}

#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub id: String,
    pub info: NodeInfo,
    pub credential_hash: Option<String>,
    pub state: NodeState,
    /// Operator or agent asked to drain; survives reconnects.
    pub draining: bool,
    pub session: Option<Session>,
    pub enrolled_at_ms: i64,
    /// Scheduler clock when the last report arrived.
    pub last_report_ms: Option<i64>,
    /// Scheduler clock when this state began (for "down since").
    pub state_since_ms: i64,
    pub reports: u64,
    pub last_seq: u64,
    pub load: Option<Load>,
    pub utilisation_ewma: Ewma,
    pub paths: BTreeMap<String, PathMeasurement>,
    pub streams: Vec<StreamState>,
    pub groups: Vec<GroupQoe>,
    pub control_path: Option<ControlPath>,
    pub route_version_in_use: u64,
    pub alerts: u64,
    /// Per peer: RTT and loss smoothed over reports, for the planner.
    pub smoothed_paths: BTreeMap<String, (Ewma, Ewma)>,
    /// The inputs the last plan saw (see [`crate::plan_inputs`]).
    pub planned: Option<Planned>,
    /// Aggregate of the current minute, flushed to the store as a roll-up.
    pub rollup: RollupAcc,
}

/// Per-minute aggregate of a node's reports (DESIGN §9 roll-ups).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollupAcc {
    pub minute_ms: i64,
    pub reports: u32,
    pub cpu_sum: f64,
    pub utilisation_sum: f64,
    pub egress_sum: f64,
    pub viewers_max: u32,
}

impl RollupAcc {
    /// Adds a report at `now_ms`; returns the finished previous minute when
    /// this report starts a new one.
    pub fn add(
        &mut self,
        now_ms: i64,
        cpu: f64,
        util: f64,
        egress: f64,
        viewers: u32,
    ) -> Option<RollupAcc> {
        let minute = now_ms - now_ms.rem_euclid(60_000);
        let done = (self.reports > 0 && minute != self.minute_ms).then(|| std::mem::take(self));
        self.minute_ms = minute;
        self.reports += 1;
        self.cpu_sum += cpu;
        self.utilisation_sum += util;
        self.egress_sum += egress;
        self.viewers_max = self.viewers_max.max(viewers);
        done
    }

    pub fn to_store(&self, node_id: &str) -> crate::store::Rollup {
        let n = f64::from(self.reports.max(1));
        crate::store::Rollup {
            node_id: node_id.to_owned(),
            minute_ms: self.minute_ms,
            reports: self.reports,
            cpu_avg: self.cpu_sum / n,
            utilisation_avg: self.utilisation_sum / n,
            egress_mbps_avg: self.egress_sum / n,
            viewers_max: self.viewers_max,
        }
    }
}

impl NodeEntry {
    pub fn new(id: String, info: NodeInfo, now_ms: i64) -> Self {
        Self {
            id,
            info,
            credential_hash: None,
            state: NodeState::Down,
            draining: false,
            session: None,
            enrolled_at_ms: now_ms,
            last_report_ms: None,
            state_since_ms: now_ms,
            reports: 0,
            last_seq: 0,
            load: None,
            utilisation_ewma: Ewma::new(0.3),
            paths: BTreeMap::new(),
            streams: Vec::new(),
            groups: Vec::new(),
            control_path: None,
            route_version_in_use: 0,
            alerts: 0,
            smoothed_paths: BTreeMap::new(),
            planned: None,
            rollup: RollupAcc::default(),
        }
    }

    pub fn utilisation(&self) -> f64 {
        match &self.load {
            Some(l) if self.info.capacity_mbps > 0.0 => l.egress_mbps / self.info.capacity_mbps,
            _ => 0.0,
        }
    }

    /// Applies a validated report. Returns a finished per-minute roll-up
    /// when this report starts a new minute.
    pub fn apply_report(&mut self, r: Report, now_ms: i64) -> Option<RollupAcc> {
        self.reports += 1;
        self.last_seq = r.seq;
        self.last_report_ms = Some(now_ms);
        self.route_version_in_use = r.route_version;
        if let Some(l) = r.load {
            self.load = Some(l);
            let u = self.utilisation();
            self.utilisation_ewma.observe(u);
        }
        // In place: the peers rarely change between reports, so this moves
        // the new values in without cloning ids or rebuilding the map.
        self.paths
            .retain(|k, _| r.paths.iter().any(|p| &p.target_node_id == k));
        self.smoothed_paths
            .retain(|k, _| r.paths.iter().any(|p| &p.target_node_id == k));
        for p in r.paths {
            let (rtt, loss) = match self.smoothed_paths.get_mut(&p.target_node_id) {
                Some(s) => s,
                None => self
                    .smoothed_paths
                    .entry(p.target_node_id.clone())
                    .or_insert_with(|| (Ewma::new(PATH_SMOOTHING), Ewma::new(PATH_SMOOTHING))),
            };
            rtt.observe(path_rtt(&p));
            loss.observe(p.loss);
            match self.paths.get_mut(&p.target_node_id) {
                Some(v) => *v = p,
                None => {
                    self.paths.insert(p.target_node_id.clone(), p);
                }
            }
        }
        self.streams = r.streams;
        self.groups = r.groups;
        if r.control_path.is_some() {
            self.control_path = r.control_path;
        }
        let (cpu, egress, viewers) = self
            .load
            .as_ref()
            .map(|l| (l.cpu, l.egress_mbps, l.viewers))
            .unwrap_or_default();
        let util = self.utilisation();
        self.rollup.add(now_ms, cpu, util, egress, viewers)
    }

    /// The state this node should be in at `now_ms` given the report
    /// interval: suspect after 2 missed intervals, down after 3.
    ///
    /// Unless the scheduler itself is losing reports: a node that is not
    /// down yet and still has its connection is held short of down (at
    /// suspect, or draining) while `local_loss()` says the scheduler's
    /// socket dropped datagrams lately, for at most [`held_down_after_ms`].
    /// (A dead agent's connection ends at the QUIC idle timeout, and then
    /// nothing is held.) `local_loss` is asked only for such a node.
    pub fn evaluate(
        &self,
        now_ms: i64,
        interval_ms: i64,
        local_loss: &mut dyn FnMut() -> bool,
    ) -> NodeState {
        let age = match self.last_report_ms {
            Some(t) => now_ms - t,
            None => return NodeState::Down,
        };
        if self.session.is_none() && self.state == NodeState::Down {
            return NodeState::Down;
        }
        // Conditions of a hold, cheapest first: most ticks stop at the first.
        let held = age > 3 * interval_ms
            && self.state != NodeState::Down
            && self.session.is_some()
            && age <= held_down_after_ms(interval_ms)
            && local_loss();
        if age > 3 * interval_ms && !held {
            NodeState::Down
        } else if self.draining {
            NodeState::Draining
        } else if age > 2 * interval_ms {
            NodeState::Suspect
        } else {
            NodeState::Up
        }
    }

    /// What the store keeps of this node.
    pub fn to_record(&self) -> crate::store::NodeRecord {
        crate::store::NodeRecord {
            id: self.id.clone(),
            region: self.info.region.clone(),
            lat: self.info.coord.map(|c| c.lat).unwrap_or(0.0),
            lon: self.info.coord.map(|c| c.lon).unwrap_or(0.0),
            capacity_mbps: self.info.capacity_mbps,
            public_url: self.info.public_url.clone(),
            probe_addr: self.info.probe_addr.clone(),
            credential_hash: self.credential_hash.clone(),
            enrolled_at_ms: self.enrolled_at_ms,
            last_seen_ms: self.last_report_ms.unwrap_or(self.enrolled_at_ms),
            drained: self.draining,
        }
    }

    /// What the planner would see of this node from the latest report
    /// alone (API, dashboard; the planner itself gets [`Self::planning_view`]).
    pub fn view(&self) -> NodeView {
        self.view_of(self.inputs(false))
    }

    /// The planner's view: smoothed, and held at the last plan's values
    /// while they stay inside `band`. Records what it hands out as the
    /// node's planned inputs.
    pub fn planning_view(&mut self, rules: &Rules<'_>) -> NodeView {
        let inputs = rules.hold(
            self.info.capacity_mbps,
            self.planned.as_ref(),
            self.inputs(true),
        );
        self.planned = Some(inputs.clone());
        self.view_of(inputs)
    }

    /// The view the last plan had of this node.
    pub fn planned_view(&self) -> NodeView {
        self.view_of(self.planned.clone().unwrap_or_else(|| self.inputs(true)))
    }

    /// Would [`Self::planning_view`] now differ from what the last plan saw?
    pub fn inputs_moved(&self, rules: &Rules<'_>) -> bool {
        match &self.planned {
            None => true,
            Some(p) => rules.hold(self.info.capacity_mbps, Some(p), self.inputs(true)) != *p,
        }
    }

    /// Latest inputs; path RTT, loss and egress smoothed when `smoothed`.
    fn inputs(&self, smoothed: bool) -> Planned {
        let health = match self.state {
            NodeState::Up => Health::Up,
            NodeState::Suspect => Health::Suspect,
            NodeState::Down => Health::Down,
            NodeState::Draining => Health::Draining,
        };
        let buffers: Vec<f64> = self
            .streams
            .iter()
            .map(|s| s.gop_cache_ms)
            .filter(|b| b.is_finite())
            .collect();
        let buffer_ms =
            (!buffers.is_empty()).then(|| buffers.iter().sum::<f64>() / buffers.len() as f64);
        let published = self
            .streams
            .iter()
            .filter(|s| s.role == StreamRole::Origin as i32)
            .filter_map(|s| StreamKey::parse(&s.key).ok().map(|k| (k, s.bitrate_kbps)))
            .collect();
        let paths = self
            .paths
            .iter()
            .map(|(k, p)| {
                let (mut rtt_ms, mut loss) = (path_rtt(p), p.loss);
                if let Some((r, l)) = self.smoothed_paths.get(k).filter(|_| smoothed) {
                    rtt_ms = r.value().unwrap_or(rtt_ms);
                    loss = l.value().unwrap_or(loss);
                }
                let samples = p.samples;
                (
                    k.clone(),
                    PathStat {
                        rtt_ms,
                        loss,
                        samples,
                    },
                )
            })
            .collect();
        let raw_egress = self.load.as_ref().map(|l| l.egress_mbps).unwrap_or(0.0);
        let egress_mbps = match self.utilisation_ewma.value() {
            Some(u) if smoothed && self.info.capacity_mbps > 0.0 => u * self.info.capacity_mbps,
            _ => raw_egress,
        };
        Planned {
            health,
            egress_mbps,
            buffer_ms,
            paths,
            published,
        }
    }

    fn view_of(&self, inputs: Planned) -> NodeView {
        NodeView {
            id: self.id.clone(),
            health: inputs.health,
            coord: self.info.coord,
            capacity_mbps: self.info.capacity_mbps,
            egress_mbps: inputs.egress_mbps,
            buffer_ms: inputs.buffer_ms,
            public_url: self.info.public_url.clone(),
            probe_addr: self.info.probe_addr.clone(),
            paths: inputs.paths,
            published: inputs.published,
            static_origins: self.info.static_origins.clone(),
        }
    }
}

/// A path's RTT as the planner uses it: the window's median, else the EWMA.
fn path_rtt(p: &PathMeasurement) -> f64 {
    if p.rtt_p50_ms > 0.0 {
        p.rtt_p50_ms
    } else {
        p.rtt_ewma_ms
    }
}

/// While the scheduler is dropping telemetry datagrams, a node that
/// still has its connection goes down only after this long without a
/// report, not 3 intervals (see [`NodeEntry::evaluate`]): 10 report
/// intervals, and at least the QUIC idle timeout (10 s), by which a dead
/// agent's connection has ended anyway.
pub fn held_down_after_ms(interval_ms: i64) -> i64 {
    let idle_ms = i64::try_from(crate::ingest::IDLE_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
    (10 * interval_ms).max(idle_ms)
}

/// What [`Registry::tick_aware`] did.
#[derive(Debug, Default)]
pub struct Tick {
    /// State changes `(id, from, to)`, by id.
    pub changes: Vec<(String, NodeState, NodeState)>,
    /// Nodes held short of down because the scheduler was losing reports.
    pub held: usize,
}

/// All nodes, by id.
#[derive(Debug, Default)]
pub struct Registry {
    nodes: DashMap<String, NodeEntry>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, entry: NodeEntry) {
        self.nodes.insert(entry.id.clone(), entry);
    }

    pub fn contains(&self, id: &str) -> bool {
        self.nodes.contains_key(id)
    }

    /// Runs `f` on a node's entry, if it exists.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&NodeEntry) -> R) -> Option<R> {
        self.nodes.get(id).map(|e| f(&e))
    }

    /// Runs `f` on a node's entry mutably, if it exists.
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut NodeEntry) -> R) -> Option<R> {
        self.nodes.get_mut(id).map(|mut e| f(&mut e))
    }

    /// Inserts with `make` when missing, then runs `f`.
    pub fn upsert<R>(
        &self,
        id: &str,
        make: impl FnOnce() -> NodeEntry,
        f: impl FnOnce(&mut NodeEntry) -> R,
    ) -> R {
        let mut e = self.nodes.entry(id.to_owned()).or_insert_with(make);
        f(&mut e)
    }

    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node as the last plan saw it (the planned inputs; the latest
    /// smoothed ones for a node not planned yet), sorted by id: what the
    /// API's score explanations are computed from.
    pub fn views(&self) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self.nodes.iter().map(|e| e.planned_view()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The planner's input: [`NodeEntry::planning_view`] of every node,
    /// sorted by id (and recorded as what the plan saw).
    pub fn planning_views(&self, rules: &Rules<'_>) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self
            .nodes
            .iter_mut()
            .map(|mut e| e.planning_view(rules))
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Whether any node's planner inputs left the deadband since the last
    /// [`Registry::planning_views`] (a node never planned counts as moved).
    pub fn inputs_moved(&self, rules: &Rules<'_>) -> bool {
        self.nodes.iter().any(|e| e.inputs_moved(rules))
    }

    /// Runs `f` on every entry without cloning (one shard lock at a time,
    /// in no particular order).
    pub fn for_each(&self, mut f: impl FnMut(&NodeEntry)) {
        for e in self.nodes.iter() {
            f(&e);
        }
    }

    /// Clones of every entry, sorted by id (API, dashboard).
    pub fn entries(&self) -> Vec<NodeEntry> {
        let mut v: Vec<NodeEntry> = self.nodes.iter().map(|e| e.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Sessions of nodes that are down and have sent nothing for `grace_ms`
    /// (the caller closes them). A session younger than the grace is never
    /// silent: an agent still enrolling, or just welcomed, has not had the
    /// chance to report.
    pub fn silent_sessions(&self, now_ms: i64, grace_ms: i64) -> Vec<crate::ingest::SessionLink> {
        let silent_since = |t: i64| now_ms.saturating_sub(t) > grace_ms;
        self.nodes
            .iter()
            .filter(|e| e.state == NodeState::Down)
            .filter(|e| e.last_report_ms.is_none_or(silent_since))
            .filter_map(|e| {
                let s = e.session.as_ref()?;
                silent_since(s.started_ms).then(|| s.connection.clone())?
            })
            .collect()
    }

    /// Re-evaluates every node's state, with no local loss. Returns the
    /// transitions `(id, from, to)`.
    pub fn tick(&self, now_ms: i64, interval_ms: i64) -> Vec<(String, NodeState, NodeState)> {
        self.tick_aware(now_ms, interval_ms, || false).changes
    }

    /// Re-evaluates every node's state, holding nodes short of down while
    /// `local_loss` (asked at most once, and only when a node would go
    /// down) says the scheduler dropped reports itself: see
    /// [`NodeEntry::evaluate`].
    pub fn tick_aware(
        &self,
        now_ms: i64,
        interval_ms: i64,
        mut local_loss: impl FnMut() -> bool,
    ) -> Tick {
        let mut lossy: Option<bool> = None;
        let mut held = 0;
        // Asked only for a node that would go down and can be held.
        let mut hold = || {
            let lossy = *lossy.get_or_insert_with(&mut local_loss);
            held += usize::from(lossy);
            lossy
        };
        let mut changes = Vec::new();
        for mut e in self.nodes.iter_mut() {
            let next = e.evaluate(now_ms, interval_ms, &mut hold);
            if next != e.state {
                changes.push((e.id.clone(), e.state, next));
                e.state = next;
                e.state_since_ms = now_ms;
            }
        }
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        Tick { changes, held }
    }

    /// Count of nodes per state.
    pub fn state_counts(&self) -> BTreeMap<&'static str, i64> {
        let mut m: BTreeMap<&'static str, i64> =
            NodeState::ALL.iter().map(|s| (s.label(), 0)).collect();
        for e in self.nodes.iter() {
            *m.entry(e.state.label()).or_default() += 1;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            region: "eu".into(),
            coord: Coord::new(48.0, 2.0),
            capacity_mbps: 100.0,
            public_url: "http://a:8080".into(),
            probe_addr: "a:7402".into(),
            agent_version: "0".into(),
            static_origins: BTreeMap::new(),
        }
    }

    /// A node `id` with a session and one report at `report_ms`.
    fn connected(reg: &Registry, id: &str, report_ms: i64) {
        let mut e = NodeEntry::new(id.into(), info(), 0);
        e.session = Some(Session {
            id: "s".into(),
            started_ms: 0,
            remote: "x".into(),
            connection: None,
        });
        reg.insert(e);
        reg.update(id, |e| {
            e.apply_report(Report::default(), report_ms);
        });
    }

    #[test]
    fn up_suspect_down_by_missed_intervals() {
        let reg = Registry::new();
        connected(&reg, "a", 1_000);
        assert_eq!(
            reg.tick(1_500, 1_000),
            vec![("a".into(), NodeState::Down, NodeState::Up)]
        );
        assert!(reg.tick(3_000, 1_000).is_empty());
        assert_eq!(reg.tick(3_001, 1_000)[0].2, NodeState::Suspect);
        assert_eq!(reg.tick(4_001, 1_000)[0].2, NodeState::Down);
        reg.update("a", |e| {
            e.draining = true;
            e.apply_report(Report::default(), 5_000);
        });
        assert_eq!(reg.tick(5_100, 1_000)[0].2, NodeState::Draining);
        assert_eq!(reg.state_counts()["draining"], 1);
    }

    #[test]
    fn local_loss_holds_connected_nodes_short_of_down() {
        let reg = Registry::new();
        for id in ["a", "b"] {
            connected(&reg, id, 1_000);
        }
        let lossy = || true;
        assert_eq!(reg.tick_aware(1_500, 1_000, lossy).changes.len(), 2);
        // b's connection ends (its agent died: QUIC idle timeout).
        reg.update("b", |e| e.session = None);
        // 3 intervals missed: the connected node is held at suspect, the
        // one without a connection goes down.
        let t = reg.tick_aware(4_001, 1_000, lossy);
        assert_eq!(
            t.changes,
            vec![
                ("a".into(), NodeState::Up, NodeState::Suspect),
                ("b".into(), NodeState::Up, NodeState::Down),
            ]
        );
        assert_eq!(t.held, 1);
        // Held at most held_down_after_ms.
        let limit = 1_000 + held_down_after_ms(1_000);
        assert!(reg.tick_aware(limit, 1_000, lossy).changes.is_empty());
        let t = reg.tick_aware(limit + 1, 1_000, lossy);
        assert_eq!(
            t.changes,
            vec![("a".into(), NodeState::Suspect, NodeState::Down)]
        );
        assert_eq!(t.held, 0);
        // Once down, a lossy scheduler does not bring it back.
        assert!(reg.tick_aware(limit + 2, 1_000, lossy).changes.is_empty());
        // Without local loss the same node goes down after 3 intervals, and
        // the loss check is not even asked while no node would go down.
        reg.update("a", |e| {
            e.apply_report(Report::default(), 20_000);
        });
        let never = || -> bool { panic!("asked without a node going down") };
        assert_eq!(
            reg.tick_aware(20_100, 1_000, never).changes[0].2,
            NodeState::Up
        );
        let t = reg.tick_aware(23_001, 1_000, || false);
        assert_eq!(
            t.changes,
            vec![("a".into(), NodeState::Up, NodeState::Down)]
        );
        assert_eq!(t.held, 0);
    }

    #[test]
    fn rollups_close_at_minute_boundaries() {
        let mut acc = RollupAcc::default();
        assert!(acc.add(60_000, 0.5, 0.1, 10.0, 3).is_none());
        assert!(acc.add(119_999, 0.7, 0.3, 30.0, 5).is_none());
        let done = acc.add(120_000, 0.1, 0.1, 1.0, 1).unwrap();
        let r = done.to_store("a");
        assert_eq!((r.minute_ms, r.reports, r.viewers_max), (60_000, 2, 5));
        assert!((r.cpu_avg - 0.6).abs() < 1e-9 && (r.egress_mbps_avg - 20.0).abs() < 1e-9);
        assert_eq!(acc.reports, 1);
    }

    #[test]
    fn view_exposes_published_streams_and_utilisation() {
        let mut e = NodeEntry::new("a".into(), info(), 0);
        e.apply_report(
            Report {
                load: Some(Load {
                    egress_mbps: 50.0,
                    ..Default::default()
                }),
                streams: vec![
                    StreamState {
                        key: "live/x".into(),
                        role: StreamRole::Origin as i32,
                        bitrate_kbps: 2000.0,
                        gop_cache_ms: 2000.0,
                        ..Default::default()
                    },
                    StreamState {
                        key: "live/y".into(),
                        role: StreamRole::Relay as i32,
                        gop_cache_ms: 1000.0,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            10,
        );
        let v = e.view();
        assert_eq!(v.utilisation(), 0.5);
        assert_eq!(v.published.len(), 1);
        assert_eq!(v.buffer_ms, Some(1500.0));
    }
}
