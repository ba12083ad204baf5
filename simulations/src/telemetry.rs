//! What agents report, and the picture policies build from the reports.
//!
//! Every `report_interval_ms` each live node that is not under a
//! telemetry-loss event produces a [`Report`] from the ground truth with
//! noise: utilisation and egress, buffer health of its feeds, per client
//! group aggregates **only for groups it actually served** in the
//! interval, and probe results towards the targets its route table names
//! (loss estimated from a handful of probe packets). Reports reach the
//! [`View`] after `delay_ms`. Liveness follows the scheduler: a node whose
//! last report is older than 2 intervals is suspect, 3 down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use vantage_scheduler::planner::{Health, PathStat};

/// One client group's aggregate in a report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupAgg {
    pub viewers: u32,
    pub rtt_ms: f64,
    pub loss: f64,
    pub buffer_ms: f64,
    pub stall_rate: f64,
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
    /// Probe results by peer node.
    pub paths: Vec<(u16, PathStat)>,
}

/// What the scheduler (and every non-oracle policy) knows about a group
/// on a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupObs {
    pub rtt_ms: f64,
    pub loss: f64,
    pub buffer_ms: f64,
    pub stall_rate: f64,
    pub samples: u32,
    pub at_ms: u64,
}

/// The observed picture.
#[derive(Debug)]
pub struct View {
    pub report_interval_ms: u64,
    pub last_report_ms: Vec<Option<u64>>,
    pub utilisation: Vec<f64>,
    pub egress_mbps: Vec<f64>,
    pub buffer_ms: Vec<Option<f64>>,
    pub groups: HashMap<(u16, u32), GroupObs>,
    pub paths: Vec<BTreeMap<u16, PathStat>>,
    /// Viewers sent to each node since its last delivered report
    /// (time, Mbps), for load accounting between reports.
    pub assigned: Vec<VecDeque<(u64, f64)>>,
    /// Whether per-group data is kept (only lowest-rtt reads it here; the
    /// qoe policy keeps its own in the scheduler's learner).
    track_groups: bool,
}

impl View {
    pub fn new(n: usize, report_interval_ms: u64, track_groups: bool) -> Self {
        Self {
            report_interval_ms,
            last_report_ms: vec![None; n],
            utilisation: vec![0.0; n],
            egress_mbps: vec![0.0; n],
            buffer_ms: vec![None; n],
            groups: HashMap::new(),
            paths: vec![BTreeMap::new(); n],
            assigned: vec![VecDeque::new(); n],
            track_groups,
        }
    }

    /// Liveness as the scheduler derives it from report age. Nodes start
    /// `Up` for the first 3 intervals (they joined at time 0).
    pub fn health(&self, node: usize, now_ms: u64) -> Health {
        let last = self.last_report_ms[node].unwrap_or(0);
        let age = now_ms.saturating_sub(last);
        if age > 3 * self.report_interval_ms {
            Health::Down
        } else if age > 2 * self.report_interval_ms {
            Health::Suspect
        } else {
            Health::Up
        }
    }

    pub fn is_up(&self, node: usize, now_ms: u64) -> bool {
        self.health(node, now_ms) == Health::Up
    }

    /// Applies a delivered report.
    pub fn apply(&mut self, r: &Report) {
        let i = usize::from(r.node);
        if self.last_report_ms[i].is_some_and(|t| t > r.generated_ms) {
            return; // reordered: an older report after a newer one
        }
        self.last_report_ms[i] = Some(r.generated_ms);
        self.utilisation[i] = r.utilisation;
        self.egress_mbps[i] = r.egress_mbps;
        self.buffer_ms[i] = r.buffer_ms;
        for (city, g) in r.groups.iter().filter(|_| self.track_groups) {
            let e = self.groups.entry((r.node, *city)).or_insert(GroupObs {
                rtt_ms: g.rtt_ms,
                loss: g.loss,
                buffer_ms: g.buffer_ms,
                stall_rate: g.stall_rate,
                samples: 0,
                at_ms: r.generated_ms,
            });
            // EWMA over reports (α = 0.3), as agents smooth per-group data.
            let a = 0.3;
            e.rtt_ms += a * (g.rtt_ms - e.rtt_ms);
            e.loss += a * (g.loss - e.loss);
            e.buffer_ms += a * (g.buffer_ms - e.buffer_ms);
            e.stall_rate += a * (g.stall_rate - e.stall_rate);
            e.samples = e.samples.saturating_add(g.viewers);
            e.at_ms = r.generated_ms;
        }
        for (peer, p) in &r.paths {
            self.paths[i].insert(*peer, *p);
        }
        let q = &mut self.assigned[i];
        while q.front().is_some_and(|(t, _)| *t <= r.generated_ms) {
            q.pop_front();
        }
    }

    /// Reported utilisation plus what was sent there since (load
    /// accounting between reports).
    pub fn projected_utilisation(&self, node: usize, capacity_mbps: f64) -> f64 {
        let extra: f64 = self.assigned[node].iter().map(|(_, m)| m).sum();
        self.utilisation[node] + extra / capacity_mbps.max(1e-9)
    }

    pub fn note_assigned(&mut self, node: usize, now_ms: u64, mbps: f64) {
        self.assigned[node].push_back((now_ms, mbps));
    }

    /// A group measurement fresh and rich enough to count as measured.
    pub fn group(&self, node: u16, city: u32, now_ms: u64, min_samples: u32) -> Option<&GroupObs> {
        self.groups
            .get(&(node, city))
            .filter(|g| g.samples >= min_samples && now_ms.saturating_sub(g.at_ms) < 300_000)
    }
}
