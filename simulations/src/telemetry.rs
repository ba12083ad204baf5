//! What agents report, and the picture the simulated scheduler builds from
//! the reports.
//!
//! Every `report_interval_ms` each live node that is not under a
//! telemetry-loss event produces a [`Report`] from the ground truth with
//! noise: utilisation and egress, buffer health of its feeds, per client
//! group aggregates **only for groups it actually served** in the
//! interval, and what its probes measured towards the targets its route
//! table names ([`PathReport`]: the agent's RTT median and EWMA, loss over
//! its window). Reports travel on the agent's telemetry stream: they
//! arrive `delay_ms` later, in order.
//!
//! The [`View`] is the scheduler's registry in miniature, and runs the
//! planning core's own rules on it:
//!
//! * liveness: [`vantage_plan::liveness::evaluate`] on the time the last
//!   report *arrived* (not when the agent generated it), with each node's
//!   state kept from one evaluation to the next, as the registry keeps it;
//!   the simulated scheduler's liveness loop runs every
//!   [`LIVENESS_TICK_MS`];
//! * smoothing: [`vantage_plan::smoothing::Smoother`] turns each node's
//!   reports into fresh planner inputs (path RTT and loss EWMAs, smoothed
//!   utilisation), as the registry does before offering them to the
//!   planning session.
//!
//! Nodes ran before the run: each starts `up`, as if the report its agent
//! generated at time 0 arrived after the telemetry delay — liveness starts
//! in its steady state, whatever the delay.

use std::collections::{BTreeMap, HashMap};
use vantage_plan::liveness::{self, Liveness};
use vantage_plan::smoothing::{PathReport, Smoother};
use vantage_plan::{Health, NodeView};

/// How often the simulated scheduler re-evaluates liveness (the
/// scheduler's liveness loop period).
pub const LIVENESS_TICK_MS: u64 = 50;

/// One client group's aggregate in a report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupAgg {
    pub viewers: u32,
    pub rtt_ms: f64,
    pub loss: f64,
    pub buffer_ms: f64,
    pub stall_rate: f64,
    /// Mean TCP delivery rate of the group's connections, Mbps.
    pub delivery_mbps: f64,
}

/// A node's report.
#[derive(Debug, Clone)]
pub struct Report {
    pub node: u16,
    pub generated_ms: u64,
    pub egress_mbps: f64,
    pub utilisation: f64,
    pub buffer_ms: Option<f64>,
    /// By city index (the client group).
    pub groups: Vec<(u32, GroupAgg)>,
    /// What the agent's probes measured, by peer node.
    pub paths: Vec<(u16, PathReport)>,
    /// GOP-cache depth per stream the node holds (`StreamState.gop_cache_ms`),
    /// by stream slot, ascending.
    pub streams: Vec<(u32, f64)>,
}

/// What a baseline (lowest-rtt) knows about a group on a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupObs {
    pub rtt_ms: f64,
    pub loss: f64,
    pub buffer_ms: f64,
    pub stall_rate: f64,
    pub samples: u32,
    pub at_ms: u64,
}

/// The observed picture: per node, what its last report said, its
/// liveness state and its smoothed planner inputs.
#[derive(Debug)]
pub struct View {
    pub report_interval_ms: u64,
    capacity_mbps: Vec<f64>,
    /// Liveness state, as of the last evaluation.
    health: Vec<Health>,
    /// When the last report arrived.
    last_arrival_ms: Vec<Option<i64>>,
    /// Reports applied per node.
    pub reports: Vec<u64>,
    /// Per node: changed since the planning session was last offered it.
    touched: Vec<bool>,
    smoothers: Vec<Smoother<u16>>,
    /// Latest report: utilisation, egress, buffer health, group aggregates.
    pub utilisation: Vec<f64>,
    pub egress_mbps: Vec<f64>,
    pub buffer_ms: Vec<Option<f64>>,
    pub latest_groups: Vec<Vec<(u32, GroupAgg)>>,
    pub latest_streams: Vec<Vec<(u32, f64)>>,
    /// Per (node, city) estimates of the lowest-rtt baseline.
    pub groups: HashMap<(u16, u32), GroupObs>,
    track_groups: bool,
}

impl View {
    /// `delay_ms`: the telemetry delay (when the reports agents generated
    /// at time 0 would arrive); `track_groups`: keep the lowest-rtt
    /// baseline's per-group estimates.
    pub fn new(
        capacity_mbps: Vec<f64>,
        report_interval_ms: u64,
        delay_ms: u64,
        track_groups: bool,
    ) -> Self {
        let n = capacity_mbps.len();
        Self {
            report_interval_ms,
            capacity_mbps,
            health: vec![Health::Up; n],
            last_arrival_ms: vec![Some(delay_ms as i64); n],
            reports: vec![0; n],
            touched: vec![true; n],
            smoothers: vec![Smoother::new(); n],
            utilisation: vec![0.0; n],
            egress_mbps: vec![0.0; n],
            buffer_ms: vec![None; n],
            latest_groups: vec![Vec::new(); n],
            latest_streams: vec![Vec::new(); n],
            groups: HashMap::new(),
            track_groups,
        }
    }

    /// The node's liveness state as the scheduler holds it.
    pub fn health(&self, node: usize) -> Health {
        self.health[node]
    }

    pub fn is_up(&self, node: usize) -> bool {
        self.health[node] == Health::Up
    }

    /// The node's egress as viewer admission counts it
    /// ([`Smoother::admission_egress_mbps`]).
    pub fn admission_egress_mbps(&self, node: usize) -> f64 {
        self.smoothers[node].admission_egress_mbps(self.capacity_mbps[node])
    }

    /// When the node's last report arrived (before any: when the one
    /// generated at time 0 would).
    pub fn last_arrival_ms(&self, node: usize) -> Option<i64> {
        self.last_arrival_ms[node]
    }

    /// A report arrived at `arrived_ms`: applied as the registry applies
    /// one (its liveness state moves at the next evaluation).
    pub fn apply(&mut self, r: Report, arrived_ms: u64) {
        let i = usize::from(r.node);
        self.last_arrival_ms[i] = Some(arrived_ms as i64);
        self.reports[i] += 1;
        self.touched[i] = true;
        let s = &mut self.smoothers[i];
        s.observe_load(r.egress_mbps, self.capacity_mbps[i]);
        s.observe_paths(r.paths, arrived_ms as i64);
        self.utilisation[i] = r.utilisation;
        self.egress_mbps[i] = r.egress_mbps;
        self.buffer_ms[i] = r.buffer_ms;
        if self.track_groups {
            for (city, g) in &r.groups {
                let e = self.groups.entry((r.node, *city)).or_insert(GroupObs {
                    rtt_ms: g.rtt_ms,
                    loss: g.loss,
                    buffer_ms: g.buffer_ms,
                    stall_rate: g.stall_rate,
                    samples: 0,
                    at_ms: arrived_ms,
                });
                // EWMA over reports (α = 0.3): the baseline's own estimate.
                let a = 0.3;
                e.rtt_ms += a * (g.rtt_ms - e.rtt_ms);
                e.loss += a * (g.loss - e.loss);
                e.buffer_ms += a * (g.buffer_ms - e.buffer_ms);
                e.stall_rate += a * (g.stall_rate - e.stall_rate);
                e.samples = e.samples.saturating_add(g.viewers);
                e.at_ms = arrived_ms;
            }
        }
        self.latest_groups[i] = r.groups;
        self.latest_streams[i] = r.streams;
    }

    /// The liveness loop at `now_ms`: every node's state by the planning
    /// core's rule. Returns whether any state changed. The simulated
    /// scheduler never loses reports itself (nothing is held short of
    /// down) and every node that reports has its connection.
    pub fn evaluate(&mut self, now_ms: u64) -> bool {
        let interval = self.report_interval_ms as i64;
        let mut changed = false;
        for i in 0..self.health.len() {
            let node = Liveness {
                last_report_ms: self.last_arrival_ms[i],
                state: self.health[i],
                connected: true,
                draining: false,
            };
            let next = liveness::evaluate(
                &node,
                now_ms as i64,
                interval,
                liveness::held_down_after_ms(interval, 0),
                &mut || false,
            );
            if next != self.health[i] {
                self.health[i] = next;
                self.touched[i] = true;
                changed = true;
            }
        }
        changed
    }

    /// Nodes changed since the last call (the planning loop offers them
    /// again), in index order.
    pub fn take_touched(&mut self) -> Vec<usize> {
        let out = (0..self.touched.len())
            .filter(|&i| self.touched[i])
            .collect();
        self.touched.fill(false);
        out
    }

    /// Writes the node's fresh planner inputs into `v` (the registry's
    /// `fresh_view`): health, smoothed egress and paths (peers named by
    /// `ids`), buffer health of the last report.
    pub fn fill_fresh(&self, node: usize, ids: &[String], v: &mut NodeView) {
        let s = &self.smoothers[node];
        v.health = self.health[node];
        v.egress_mbps = s.egress_mbps(self.capacity_mbps[node]);
        v.buffer_ms = self.buffer_ms[node];
        v.paths = s
            .paths()
            .map(|(&peer, p)| (ids[usize::from(peer)].clone(), p.stat(true)))
            .collect::<BTreeMap<_, _>>();
    }

    /// A group measurement fresh and rich enough to count as measured.
    pub fn group(&self, node: u16, city: u32, now_ms: u64, min_samples: u32) -> Option<&GroupObs> {
        self.groups
            .get(&(node, city))
            .filter(|g| g.samples >= min_samples && now_ms.saturating_sub(g.at_ms) < 300_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: u16, at: u64) -> Report {
        Report {
            node,
            generated_ms: at,
            egress_mbps: 100.0,
            utilisation: 0.1,
            buffer_ms: None,
            groups: Vec::new(),
            paths: Vec::new(),
            streams: Vec::new(),
        }
    }

    #[test]
    fn liveness_counts_from_arrival_not_generation() {
        let mut v = View::new(vec![1_000.0; 2], 1_000, 2_500, false);
        // Reports generated every second but delayed by 2.5 s: they arrive
        // every second, so the node stays up (age from generation would be
        // over 2 intervals all the time).
        for k in 1..=10u64 {
            v.apply(report(0, k * 1_000), k * 1_000 + 2_500);
            v.apply(report(1, k * 1_000), k * 1_000 + 2_500);
            v.evaluate(k * 1_000 + 2_550);
            assert_eq!(v.health(0), Health::Up);
        }
        // Node 1 stops: suspect after 2 intervals without a report arriving,
        // down after 3.
        let mut states = Vec::new();
        for k in 11..=13u64 {
            v.apply(report(0, k * 1_000), k * 1_000 + 2_500);
            v.evaluate(k * 1_000 + 2_550);
            states.push(v.health(1));
        }
        assert_eq!(states, [Health::Up, Health::Suspect, Health::Down]);
        assert_eq!(v.health(0), Health::Up);
        assert_eq!(v.take_touched(), vec![0, 1]);
        assert!(v.take_touched().is_empty());
    }
}
