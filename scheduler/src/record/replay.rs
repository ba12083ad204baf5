//! Reading traces back and re-planning them.
//!
//! [`Trace::load`] reads every `trace-*.jsonl` of a directory in sequence
//! order (the only I/O here). [`replay`] is pure: it re-runs
//! [`planner::plan`] on every recorded plan input — with the recorded
//! weights or others — and compares the decisions with the recorded ones.
//! With the recorded weights the planner is deterministic, so every plan
//! must come out identical; anything else is a bug (or a planner change
//! since the trace was made).

use super::format::{
    self, AlertLine, Decisions, Header, InputError, Line, NodeDecision, NodeEvent, Primaries,
    ResolveLine, UpstreamChoice, WeightsLine, backups_of, decisions_of, primaries_of,
};
use crate::planner::{self, PlanInput};
use base64::Engine;
use prost::Message;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use vantage_proto::v1::Report;
use vantage_shared::score::Weights;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no trace files (trace-*.jsonl) in {0}")]
    Empty(PathBuf),
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: unsupported trace format {format:?} version {version}")]
    Version {
        path: PathBuf,
        line: usize,
        format: String,
        version: u32,
    },
}

/// A recorded plan with its input resolved (`previous` filled in).
#[derive(Debug, Clone)]
pub struct PlanRecord {
    pub at_ms: i64,
    pub plan_seq: u64,
    pub duration_us: u64,
    /// Sequence number of the file it came from.
    pub file_seq: u64,
    pub input: PlanInput,
    pub decisions: Decisions,
}

/// One record of a trace.
#[derive(Debug, Clone)]
pub enum Record {
    Header(Header),
    Report {
        at_ms: i64,
        node_id: String,
        report: Box<Report>,
    },
    Node(NodeEvent),
    Alert(AlertLine),
    Weights(WeightsLine),
    Resolve(ResolveLine),
    Plan(Box<PlanRecord>),
}

impl Record {
    pub fn at_ms(&self) -> i64 {
        match self {
            Record::Header(h) => h.at_ms,
            Record::Report { at_ms, .. } => *at_ms,
            Record::Node(n) => n.at_ms,
            Record::Alert(a) => a.at_ms,
            Record::Weights(w) => w.at_ms,
            Record::Resolve(r) => r.at_ms,
            Record::Plan(p) => p.at_ms,
        }
    }
}

/// A trace directory, read.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub files: Vec<PathBuf>,
    pub records: Vec<Record>,
    /// Truncated last lines (a scheduler killed mid-write) that were skipped.
    pub truncated: usize,
}

impl Trace {
    /// Reads every trace file of `dir`, oldest first.
    pub fn load(dir: &Path) -> Result<Trace, TraceError> {
        let files = super::trace_files(dir).map_err(|source| TraceError::Io {
            path: dir.to_owned(),
            source,
        })?;
        if files.is_empty() {
            return Err(TraceError::Empty(dir.to_owned()));
        }
        let mut trace = Trace::default();
        for (seq, path) in files {
            let text = std::fs::read_to_string(&path).map_err(|source| TraceError::Io {
                path: path.clone(),
                source,
            })?;
            trace.add_file(seq, &path, &text)?;
            trace.files.push(path);
        }
        Ok(trace)
    }

    /// Parses one file's text (exposed for tests and tools).
    pub fn add_file(&mut self, seq: u64, path: &Path, text: &str) -> Result<(), TraceError> {
        let perr = |line: usize, message: String| TraceError::Parse {
            path: path.to_owned(),
            line,
            message,
        };
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        let mut chained: Primaries = BTreeMap::new();
        let mut chained_backups: planner::Backups = BTreeMap::new();
        for (i, raw) in lines.iter().enumerate() {
            let n = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let line: Line = match serde_json::from_str(raw) {
                Ok(l) => l,
                Err(_) if n == lines.len() && !complete => {
                    self.truncated += 1;
                    break;
                }
                Err(e) => return Err(perr(n, e.to_string())),
            };
            let rec = match line {
                Line::Header(h) => {
                    if h.format != format::FORMAT || h.version != format::VERSION {
                        return Err(TraceError::Version {
                            path: path.to_owned(),
                            line: n,
                            format: h.format,
                            version: h.version,
                        });
                    }
                    Record::Header(h)
                }
                Line::Report(r) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(&r.report_pb)
                        .map_err(|e| perr(n, format!("report_pb: {e}")))?;
                    let report = Report::decode(bytes.as_slice())
                        .map_err(|e| perr(n, format!("report_pb: {e}")))?;
                    Record::Report {
                        at_ms: r.at_ms,
                        node_id: r.node_id,
                        report: Box::new(report),
                    }
                }
                Line::Node(e) => Record::Node(e),
                Line::Alert(a) => Record::Alert(a),
                Line::Weights(w) => Record::Weights(w),
                Line::Resolve(r) => Record::Resolve(r),
                Line::Plan(p) => {
                    let input = p
                        .input
                        .to_input(&chained, &chained_backups)
                        .map_err(|e: InputError| perr(n, e.to_string()))?;
                    chained = primaries_of(&p.decisions);
                    chained_backups = backups_of(&p.decisions);
                    Record::Plan(Box::new(PlanRecord {
                        at_ms: p.at_ms,
                        plan_seq: p.plan_seq,
                        duration_us: p.duration_us,
                        file_seq: seq,
                        input,
                        decisions: p.decisions,
                    }))
                }
            };
            self.records.push(rec);
        }
        Ok(())
    }

    pub fn plans(&self) -> impl Iterator<Item = &PlanRecord> {
        self.records.iter().filter_map(|r| match r {
            Record::Plan(p) => Some(p.as_ref()),
            _ => None,
        })
    }

    /// Weight versions in force over the trace, in order of first use.
    pub fn weights_recorded(&self) -> Vec<(u64, Weights)> {
        let mut out: Vec<(u64, Weights)> = Vec::new();
        for p in self.plans() {
            let w = (p.input.weights_version, p.input.weights);
            if out.last() != Some(&w) {
                out.push(w);
            }
        }
        out
    }
}

/// Where a replayed plan's hysteresis input (`previous`) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviousMode {
    /// The primaries of the previous *replayed* plan: the counterfactual
    /// ("what would these weights have done over time"). Falls back to the
    /// recorded map where plans are missing (a `plan_seq` gap, a restart).
    #[default]
    Replayed,
    /// Always the recorded map (each plan judged on its own).
    Recorded,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayOptions {
    /// Weights for every plan; `None` = the weights recorded with each plan.
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
    pub plan_seq: u64,
    pub at_ms: i64,
    pub node_id: String,
    /// The first differing route; `None` = the probe targets differ.
    pub route: Option<String>,
    pub recorded: String,
    pub replayed: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplayReport {
    pub options: Option<ReplayOptions>,
    pub plans: usize,
    /// Plans whose every node decision (upstreams, order, scores, hops,
    /// probe targets) is identical.
    pub equal: usize,
    pub different: usize,
    /// Plans where at least one primary upstream differs.
    pub choices_different: usize,
    /// Node decisions compared (nodes × plans) and how many differ.
    pub node_decisions: usize,
    pub node_decisions_different: usize,
    /// (node, route) primaries compared and how many differ.
    pub primaries: usize,
    pub primaries_different: usize,
    pub first_differences: Vec<Difference>,
    pub weights_recorded: Vec<(u64, Weights)>,
    pub weights_used: Option<Weights>,
    /// `plan_seq` gaps (plans dropped while recording).
    pub gaps: usize,
}

/// Re-runs the planner on one recorded plan with `weights` (or the
/// recorded ones) and `previous` primaries and backups (or the recorded maps).
pub fn replay_plan(
    p: &PlanRecord,
    weights: Option<Weights>,
    previous: Option<(&Primaries, &planner::Backups)>,
) -> Decisions {
    let mut input = p.input.clone();
    if let Some(w) = weights {
        input.weights = w;
    }
    if let Some((prev, backups)) = previous {
        input.previous = prev.clone();
        input.previous_backups = backups.clone();
    }
    decisions_of(&planner::plan(&input))
}

/// Replays every plan of `trace` and compares. Pure.
pub fn replay(trace: &Trace, opts: &ReplayOptions) -> ReplayReport {
    let mut r = ReplayReport {
        options: Some(opts.clone()),
        weights_recorded: trace.weights_recorded(),
        weights_used: opts.weights,
        ..Default::default()
    };
    let mut last: Option<(u64, Primaries, planner::Backups)> = None;
    for p in trace.plans() {
        let consecutive = last.as_ref().is_some_and(|(s, _, _)| s + 1 == p.plan_seq);
        if last.is_some() && !consecutive {
            r.gaps += 1;
        }
        let previous = match (&opts.previous, &last) {
            (PreviousMode::Replayed, Some((_, prev, backups))) if consecutive => {
                Some((prev, backups))
            }
            _ => None,
        };
        let got = replay_plan(p, opts.weights, previous);
        let mut plan_equal = true;
        let nodes: BTreeSet<&String> = p.decisions.keys().chain(got.keys()).collect();
        let empty = NodeDecision::default();
        for node in nodes {
            let rec = p.decisions.get(node).unwrap_or(&empty);
            let rep = got.get(node).unwrap_or(&empty);
            r.node_decisions += 1;
            if rec == rep {
                continue;
            }
            plan_equal = false;
            r.node_decisions_different += 1;
            if r.first_differences.len() < opts.max_differences {
                r.first_differences
                    .push(first_difference(p, node, rec, rep));
            }
        }
        let (a, b) = (primaries_of(&p.decisions), primaries_of(&got));
        let keys: BTreeSet<&(String, String)> = a.keys().chain(b.keys()).collect();
        r.primaries += keys.len();
        let differing = keys.iter().filter(|k| a.get(k) != b.get(k)).count();
        r.primaries_different += differing;
        if differing > 0 {
            r.choices_different += 1;
        }
        r.plans += 1;
        if plan_equal {
            r.equal += 1;
        } else {
            r.different += 1;
        }
        last = Some((p.plan_seq, b, backups_of(&got)));
    }
    r
}

fn upstreams_text(ups: Option<&Vec<UpstreamChoice>>) -> String {
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
    p: &PlanRecord,
    node: &str,
    rec: &NodeDecision,
    rep: &NodeDecision,
) -> Difference {
    let routes: BTreeSet<&String> = rec.streams.keys().chain(rep.streams.keys()).collect();
    let route = routes
        .into_iter()
        .find(|k| rec.streams.get(*k) != rep.streams.get(*k));
    let (route, recorded, replayed) = match route {
        Some(k) => (
            Some(k.clone()),
            upstreams_text(rec.streams.get(k)),
            upstreams_text(rep.streams.get(k)),
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
        plan_seq: p.plan_seq,
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
    /// Whether every replayed plan equals the recorded one.
    pub fn identical(&self) -> bool {
        self.different == 0
    }

    /// A human summary (the CLI prints this).
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "plans replayed: {}  identical: {}  different: {}  (primary choices changed in {})",
            self.plans, self.equal, self.different, self.choices_different
        );
        let _ = writeln!(
            s,
            "node decisions: {} compared, {} different; primaries: {} compared, {} different; gaps in the trace: {}",
            self.node_decisions,
            self.node_decisions_different,
            self.primaries,
            self.primaries_different,
            self.gaps
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
                "plan {} node {} {}:\n  recorded: {}\n  replayed: {}",
                d.plan_seq,
                d.node_id,
                d.route.as_deref().unwrap_or("probes"),
                d.recorded,
                d.replayed
            );
        }
        s
    }
}
