//! Re-running recorded steps through a [`PlanSession`] and comparing.
//!
//! The replay builds a fresh session from a self-contained step line (its
//! settings with an empty probe key, every node's view taken as it is with
//! [`set_planned`](PlanSession::set_planned), the routes before the step
//! as the previous decisions with [`seed_routes`](PlanSession::seed_routes)),
//! steps it at the recorded `now`, then for every following step line of
//! the chain applies the settings, views and removals recorded and steps
//! again. After each step the decisions of every node whose table changed
//! — in the recording or in the replay; every node when the weights are
//! not the recorded ones — are compared with the recorded state.
//!
//! The session is deterministic, so with the recorded weights every step
//! must come out identical; anything else is a bug, or a planner change
//! since the trace was made. Pure: the trace is already in memory.

use super::format::{Decisions, NodeDecision, UpstreamChoice, decision_of};
use super::{StepRecord, Trace};
use crate::session::{PlanSession, RouteEntry};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use vantage_shared::score::Weights;

/// Where a replayed step's hysteresis input (the routes before it) comes
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviousMode {
    /// The replay's own routes, chained from step to step: the
    /// counterfactual ("what would these weights have done over time").
    /// Restarts from the recorded routes where the chain breaks (a step
    /// that was not recorded, a scheduler restart).
    #[default]
    Replayed,
    /// The recorded routes before every step (each step judged on its
    /// own).
    Recorded,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayOptions {
    /// Weights for every step; `None` = the weights recorded with each.
    pub weights: Option<Weights>,
    pub previous: PreviousMode,
    /// How many [`Difference`]s to keep.
    pub max_differences: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            weights: None,
            previous: PreviousMode::Replayed,
            max_differences: 20,
        }
    }
}

/// One node whose replayed decisions differ from the recorded ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub step_seq: u64,
    pub at_ms: i64,
    pub node_id: String,
    /// The first differing route (`origin:ID` or `pattern:P`); `None` =
    /// the probe targets differ.
    pub route: Option<String>,
    pub recorded: String,
    pub replayed: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplayReport {
    pub options: Option<ReplayOptions>,
    /// Steps replayed.
    pub plans: usize,
    /// Steps whose every compared node decision (upstreams, order, hops,
    /// scores, probe targets) is identical.
    pub equal: usize,
    pub different: usize,
    /// Steps where at least one primary upstream differs.
    pub choices_different: usize,
    /// Node decisions compared (summed over steps) and how many differ.
    pub node_decisions: usize,
    pub node_decisions_different: usize,
    /// (node, route) primaries compared and how many differ.
    pub primaries: usize,
    pub primaries_different: usize,
    pub first_differences: Vec<Difference>,
    pub weights_recorded: Vec<(u64, Weights)>,
    pub weights_used: Option<Weights>,
    /// Breaks in the chain of steps (steps not recorded, restarts).
    pub gaps: usize,
    /// Step lines that could not be replayed: they hold only what moved
    /// since a step the trace does not have.
    pub skipped: usize,
}

/// The replay's session and the recorded state it is compared with.
struct Chain {
    session: PlanSession,
    /// Every node's decisions as last recorded.
    recorded: Decisions,
    /// (file, step) of the last step replayed.
    last: (u64, u64),
}

impl Chain {
    /// A session that starts where self-contained step `p` starts.
    fn start(p: &StepRecord, opts: &ReplayOptions, threads: usize) -> Chain {
        let mut session = PlanSession::new(settings_of(p, opts), threads);
        for v in &p.nodes {
            session.set_planned(v.clone());
        }
        session.seed_routes(p.snapshot.clone().unwrap_or_default());
        Chain {
            session,
            recorded: Decisions::new(),
            last: (p.file_seq, p.step_seq),
        }
    }

    /// Applies what step `p` was given since the step before.
    fn apply(&mut self, p: &StepRecord, opts: &ReplayOptions) {
        self.session.set_settings(settings_of(p, opts));
        for id in &p.removed {
            self.session.remove(id);
        }
        for v in &p.nodes {
            self.session.set_planned(v.clone());
        }
        if opts.previous == PreviousMode::Recorded {
            self.session.seed_routes(self.recorded_routes());
        }
        self.last = (p.file_seq, p.step_seq);
    }

    /// The recorded routes, and an empty route for every route the
    /// replay holds that the recording does not: seeds that define the
    /// whole previous state.
    fn recorded_routes(&self) -> Vec<RouteEntry> {
        let mut seeds: Vec<RouteEntry> = self
            .recorded
            .iter()
            .flat_map(|(node, d)| d.route_entries(node))
            .collect();
        let held: BTreeSet<(&str, &crate::SourceKey)> =
            seeds.iter().map(|e| (e.node.as_str(), &e.source)).collect();
        let extra: Vec<RouteEntry> = self
            .session
            .routes()
            .into_iter()
            .filter(|e| !held.contains(&(e.node.as_str(), &e.source)))
            .map(|e| RouteEntry {
                upstreams: Vec::new(),
                ..e
            })
            .collect();
        seeds.extend(extra);
        seeds
    }

    /// Takes step `p`'s recorded decisions into the recorded state.
    fn record(&mut self, p: &StepRecord) {
        if p.is_whole() {
            self.recorded.clear();
        }
        for id in &p.removed {
            self.recorded.remove(id);
        }
        for (id, d) in &p.decisions {
            self.recorded.insert(id.clone(), d.clone());
        }
    }
}

/// The step's settings, with the replay's weights when given.
fn settings_of(p: &StepRecord, opts: &ReplayOptions) -> crate::PlanSettings {
    let mut st = p.settings.clone();
    if let Some(w) = opts.weights {
        st.weights = w;
    }
    st
}

/// Replays every step of `trace` and compares. Pure.
pub fn replay(trace: &Trace, opts: &ReplayOptions) -> ReplayReport {
    let mut r = ReplayReport {
        options: Some(opts.clone()),
        weights_recorded: trace.weights_recorded(),
        weights_used: opts.weights,
        ..Default::default()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut chain: Option<Chain> = None;
    for p in trace.steps() {
        let follows = chain
            .as_ref()
            .is_some_and(|c| c.last.0 <= p.file_seq && p.step_seq.checked_sub(1) == Some(c.last.1));
        if !follows && chain.is_some() {
            r.gaps += 1;
        }
        let restart = !follows || (p.is_whole() && opts.previous == PreviousMode::Recorded);
        if !restart {
            if let Some(c) = chain.as_mut() {
                c.apply(p, opts);
            }
        } else if p.is_whole() {
            chain = Some(Chain::start(p, opts, threads));
        } else {
            // Only what moved since a step the trace does not have.
            chain = None;
            r.skipped += 1;
            continue;
        }
        let Some(c) = chain.as_mut() else { continue };
        let step = c.session.step(p.at_ms);
        c.record(p);
        let mut nodes: BTreeSet<&str> = p.decisions.keys().map(String::as_str).collect();
        nodes.extend(step.changed.iter().map(|id| id.as_ref()));
        if opts.weights.is_some() {
            nodes.extend(c.session.node_ids());
            nodes.extend(c.recorded.keys().map(String::as_str));
        }
        compare(&mut r, opts, p, c, &nodes);
    }
    r
}

/// Compares the replayed decisions of `nodes` with the recorded state
/// after step `p`: whole decisions for the nodes `p` recorded, choices
/// without scores for the others (a table that kept its version may hold
/// other scores than those last recorded).
fn compare(
    r: &mut ReplayReport,
    opts: &ReplayOptions,
    p: &StepRecord,
    c: &Chain,
    nodes: &BTreeSet<&str>,
) {
    let empty = NodeDecision::default();
    let mut step_equal = true;
    let mut primaries_differ = false;
    for &node in nodes {
        let rec = c.recorded.get(node).unwrap_or(&empty);
        let got = c
            .session
            .own_table(node)
            .map(|t| decision_of(&t))
            .unwrap_or_default();
        let (a, b) = (primaries_of(rec), primaries_of(&got));
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        r.primaries += keys.len();
        let differing = keys.iter().filter(|k| a.get(**k) != b.get(**k)).count();
        r.primaries_different += differing;
        primaries_differ |= differing > 0;
        r.node_decisions += 1;
        let same = if p.decisions.contains_key(node) {
            *rec == got
        } else {
            rec.same_choices(&got)
        };
        if same {
            continue;
        }
        step_equal = false;
        r.node_decisions_different += 1;
        if r.first_differences.len() < opts.max_differences {
            r.first_differences
                .push(first_difference(p, node, rec, &got));
        }
    }
    r.plans += 1;
    if step_equal {
        r.equal += 1;
    } else {
        r.different += 1;
    }
    if primaries_differ {
        r.choices_different += 1;
    }
}

/// The first upstream of every route, by route.
fn primaries_of(d: &NodeDecision) -> BTreeMap<String, String> {
    d.routes()
        .filter_map(|(k, ups)| Some((k, ups.first()?.node.clone())))
        .collect()
}

fn upstreams_text(ups: Option<&[UpstreamChoice]>) -> String {
    match ups {
        None => "(no route)".to_owned(),
        Some(v) => v
            .iter()
            .map(|u| {
                let who = if u.node.is_empty() {
                    "origin"
                } else {
                    u.node.as_str()
                };
                format!("{who}({:.3},h{})", u.score, u.hops)
            })
            .collect::<Vec<_>>()
            .join(" > "),
    }
}

fn first_difference(
    p: &StepRecord,
    node: &str,
    rec: &NodeDecision,
    rep: &NodeDecision,
) -> Difference {
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = (rec.routes().collect(), rep.routes().collect());
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let route = keys.into_iter().find(|k| a.get(*k) != b.get(*k));
    let (route, recorded, replayed) = match route {
        Some(k) => (
            Some(k.clone()),
            upstreams_text(a.get(k).copied()),
            upstreams_text(b.get(k).copied()),
        ),
        None => {
            let t = |d: &NodeDecision| {
                d.probes
                    .iter()
                    .map(|x| format!("{}:{}", x.node, x.reason))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            (None, t(rec), t(rep))
        }
    };
    Difference {
        step_seq: p.step_seq,
        at_ms: p.at_ms,
        node_id: node.to_owned(),
        route,
        recorded,
        replayed,
    }
}

fn weights_text(w: &Weights) -> String {
    format!(
        "latency={} loss={} buffer={} load={} distance={}",
        w.latency, w.loss, w.buffer, w.load, w.distance
    )
}

impl ReplayReport {
    /// Whether every replayed step equals the recorded one.
    pub fn identical(&self) -> bool {
        self.different == 0
    }

    /// A human summary (the CLI prints this).
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "steps replayed: {}  identical: {}  different: {}  (primary choices changed in {})",
            self.plans, self.equal, self.different, self.choices_different
        );
        let _ = writeln!(
            s,
            "node decisions: {} compared, {} different; primaries: {} compared, {} different; \
             gaps in the trace: {}; steps skipped: {}",
            self.node_decisions,
            self.node_decisions_different,
            self.primaries,
            self.primaries_different,
            self.gaps,
            self.skipped
        );
        for (v, w) in &self.weights_recorded {
            let _ = writeln!(s, "recorded weights v{v}: {}", weights_text(w));
        }
        match &self.weights_used {
            Some(w) => {
                let _ = writeln!(s, "replayed with: {}", weights_text(w));
            }
            None => {
                let _ = writeln!(s, "replayed with: the recorded weights");
            }
        }
        for d in &self.first_differences {
            let _ = writeln!(
                s,
                "step {} node {} {}:\n  recorded: {}\n  replayed: {}",
                d.step_seq,
                d.node_id,
                d.route.as_deref().unwrap_or("probes"),
                d.recorded,
                d.replayed
            );
        }
        s
    }
}
