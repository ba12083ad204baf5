//! Scheduler traces: what `vantage-scheduler --record DIR` wrote, read back
//! and replayed through the same [`PlanSession`](crate::PlanSession).
//!
//! A trace directory holds rotating JSON-lines files
//! (`trace-00000001.jsonl`, …), each beginning with a header. Besides what
//! the scheduler was told (agent reports, node events, alerts, weight
//! changes, viewer resolves) they hold one `step` line per step of the
//! planning session ([`format`](mod@format), `docs/simulator-traces.md`):
//!
//! * the settings, the node views the session took since the step before
//!   (after the deadband) and the nodes removed — with the `now` given to
//!   the step, everything a session needs to take the same step again;
//! * on the first step line of every file, every node and every route
//!   before the step (the hysteresis state), so each file replays on its
//!   own;
//! * the decisions — routes and probe targets — of every node whose table
//!   changed.
//!
//! Entry points: [`StepInputs::capture`] and [`StepInputs::complete`] around
//! a step make a [`StepCapture`] (the scheduler's recorder turns it into a
//! line on its writer thread); [`Trace::load`] reads a directory (the only
//! I/O of this crate); [`replay()`] re-runs every recorded step and
//! compares.

pub mod capture;
mod decisions;
pub mod format;
pub mod replay;

#[cfg(test)]
mod tests;

pub use capture::{StepCapture, StepInputs};
pub use format::{Decisions, Line, NodeDecision, StepLine};
pub use replay::{Difference, PreviousMode, ReplayOptions, ReplayReport, replay};

use crate::node::NodeView;
use crate::session::RouteEntry;
use crate::settings::PlanSettings;
use base64::Engine;
use format::{AlertLine, Header, InputError, NodeEvent, ResolveLine, WeightsLine};
use prost::Message;
use std::path::{Path, PathBuf};
use vantage_proto::v1::Report;
use vantage_shared::score::Weights;

/// Trace file name for sequence number `seq`.
pub fn file_name(seq: u64) -> String {
    format!("trace-{seq:08}.jsonl")
}

/// The sequence number of a trace file name, if it is one.
pub fn file_seq(name: &str) -> Option<u64> {
    name.strip_prefix("trace-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// Trace files in `dir`, oldest first.
pub fn trace_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            file_seq(name.to_str()?).map(|s| (s, e.path()))
        })
        .collect();
    v.sort();
    Ok(v)
}

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
    #[error("{path}:{line}: {}", version_text(.format, *.version))]
    Version {
        path: PathBuf,
        line: usize,
        format: String,
        version: u32,
    },
}

fn version_text(format: &str, version: u32) -> String {
    if format != format::FORMAT {
        return format!("not a Vantage trace (format {format:?})");
    }
    let why = if version == 1 {
        " (version 1 recorded whole plans, which the incremental planning \
         session cannot re-run; replay it with the vantage-sim of its release)"
    } else {
        ""
    };
    format!(
        "trace format version {version} is not supported: this reader reads version {}{why}",
        format::VERSION
    )
}

/// A recorded step with its inputs resolved (settings filled in, views and
/// routes parsed).
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub at_ms: i64,
    pub step_seq: u64,
    pub duration_us: u64,
    /// The step re-indexed and planned everything.
    pub full: bool,
    /// Sequence number of the file it came from.
    pub file_seq: u64,
    /// The settings in force (the probe key is empty: never recorded).
    pub settings: PlanSettings,
    pub nodes: Vec<NodeView>,
    pub removed: Vec<String>,
    /// The routes before the step: self-contained lines only.
    pub snapshot: Option<Vec<RouteEntry>>,
    pub decisions: Decisions,
}

impl StepRecord {
    /// Whether the line replays on its own (it holds every node and the
    /// routes before the step).
    pub fn is_whole(&self) -> bool {
        self.snapshot.is_some()
    }
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
    Step(Box<StepRecord>),
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
            Record::Step(s) => s.at_ms,
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
        let files = trace_files(dir).map_err(|source| TraceError::Io {
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

    /// Parses one file's text (exposed for tests and tools). A partial
    /// last line (no final newline) is skipped; anything else malformed is
    /// an error naming the file and line.
    pub fn add_file(&mut self, seq: u64, path: &Path, text: &str) -> Result<(), TraceError> {
        let perr = |line: usize, message: String| TraceError::Parse {
            path: path.to_owned(),
            line,
            message,
        };
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        let mut header_seen = false;
        let mut settings: Option<PlanSettings> = None;
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
                // Say which version a file of another one is, rather than
                // what its first unknown line does not parse as.
                Err(e) => {
                    return Err(
                        header_error(path, n, raw).unwrap_or_else(|| perr(n, e.to_string()))
                    );
                }
            };
            if !header_seen && !matches!(line, Line::Header(_)) {
                return Err(perr(n, "the file does not begin with a header".into()));
            }
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
                    header_seen = true;
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
                Line::Step(s) => {
                    let step = step_record(*s, seq, &mut settings)
                        .map_err(|e: InputError| perr(n, e.to_string()))?;
                    Record::Step(Box::new(step))
                }
            };
            self.records.push(rec);
        }
        Ok(())
    }

    /// The step records, in order.
    pub fn steps(&self) -> impl Iterator<Item = &StepRecord> {
        self.records.iter().filter_map(|r| match r {
            Record::Step(s) => Some(s.as_ref()),
            _ => None,
        })
    }

    /// Weight versions in force over the trace's steps, in order of first
    /// use.
    pub fn weights_recorded(&self) -> Vec<(u64, Weights)> {
        let mut out: Vec<(u64, Weights)> = Vec::new();
        for s in self.steps() {
            let w = (s.settings.weights_version, s.settings.weights);
            if out.last() != Some(&w) {
                out.push(w);
            }
        }
        out
    }
}

/// A version error for a line that is a header of another format or
/// version but does not parse as this version's header.
fn header_error(path: &Path, line: usize, raw: &str) -> Option<TraceError> {
    let v: serde_json::Value = serde_json::from_str(raw).ok()?;
    if v.get("type")?.as_str()? != "header" {
        return None;
    }
    let format = v.get("format")?.as_str()?.to_owned();
    let version = u32::try_from(v.get("version")?.as_u64()?).ok()?;
    Some(TraceError::Version {
        path: path.to_owned(),
        line,
        format,
        version,
    })
}

/// A step line resolved: `settings` holds the settings of the step line
/// before in the same file and is updated.
fn step_record(
    s: StepLine,
    file_seq: u64,
    settings: &mut Option<PlanSettings>,
) -> Result<StepRecord, InputError> {
    let st = match &s.settings {
        Some(line) => line.to_settings()?,
        None => settings.clone().ok_or(InputError::NoSettings)?,
    };
    *settings = Some(st.clone());
    for (node, d) in &s.decisions {
        d.check(node)?;
    }
    Ok(StepRecord {
        at_ms: s.at_ms,
        step_seq: s.step_seq,
        duration_us: s.duration_us,
        full: s.full,
        file_seq,
        settings: st,
        nodes: s
            .nodes
            .iter()
            .map(format::NodeLine::to_view)
            .collect::<Result<_, _>>()?,
        removed: s.removed,
        snapshot: s
            .snapshot
            .as_ref()
            .map(format::snapshot_routes)
            .transpose()?,
        decisions: s.decisions,
    })
}
