//! Capturing a step of a [`PlanSession`] for a trace: what the session
//! was given since the step before ([`StepInputs`], read just before
//! [`step`](PlanSession::step)) and what it decided ([`StepCapture`], read
//! just after). Both are owned values: a recorder hands them to a writer
//! thread, which turns them into a [`StepLine`] with
//! [`StepCapture::to_line`].
//!
//! Nothing is kept for this in the session: a caller that does not record
//! never calls these and pays nothing.

use super::format::{Decisions, NodeLine, SettingsLine, StepLine, decision_of, snapshot_line};
use crate::node::NodeView;
use crate::session::{PlanSession, RouteEntry, StepReport};
use crate::settings::PlanSettings;
use vantage_proto::v1::RouteTable;

/// What the session took since the step before, read before a step.
///
/// *Whole* inputs hold every node and the routes (the hysteresis state)
/// instead: the start of a self-contained step line, which replays
/// without any line before it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInputs {
    /// The views the session took (after the deadband), by id; every
    /// planned view when whole.
    pub nodes: Vec<NodeView>,
    pub removed: Vec<String>,
    /// The routes before the step (whole inputs only).
    pub snapshot: Option<Vec<RouteEntry>>,
}

impl StepInputs {
    /// Reads the session's pending inputs (`whole`: every node and the
    /// routes). Call right before [`PlanSession::step`].
    pub fn capture(session: &PlanSession, whole: bool) -> Self {
        let removed = session.pending_removals().map(str::to_owned).collect();
        if whole {
            StepInputs {
                nodes: session.planned_views(),
                removed,
                snapshot: Some(session.routes()),
            }
        } else {
            StepInputs {
                nodes: session.pending_views().cloned().collect(),
                removed,
                snapshot: None,
            }
        }
    }

    pub fn is_whole(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Adds what the step decided: the tables of the nodes whose table
    /// changed (of every node when whole) and the settings it ran with.
    /// Call right after [`PlanSession::step`] with its report.
    pub fn complete(
        self,
        session: &PlanSession,
        report: &StepReport,
        at_ms: i64,
        duration_us: u64,
    ) -> StepCapture {
        let tables: Vec<RouteTable> = if self.is_whole() {
            session
                .node_ids()
                .filter_map(|id| session.own_table(id))
                .collect()
        } else {
            report
                .changed
                .iter()
                .filter_map(|id| session.own_table(id))
                .collect()
        };
        StepCapture {
            at_ms,
            duration_us,
            full: report.full,
            settings: session.settings().clone(),
            inputs: self,
            tables,
        }
    }
}

/// One step, captured: owned, ready to become a [`StepLine`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepCapture {
    pub at_ms: i64,
    pub duration_us: u64,
    /// The step re-indexed and planned everything.
    pub full: bool,
    pub settings: PlanSettings,
    pub inputs: StepInputs,
    /// Tables (without directory) of the nodes whose table changed.
    pub tables: Vec<RouteTable>,
}

impl StepCapture {
    /// Whether the line will be self-contained.
    pub fn is_whole(&self) -> bool {
        self.inputs.is_whole()
    }

    /// The trace line of step `step_seq`. `previous` holds the settings of
    /// the step line before it in the same file (`None` at the start of a
    /// file): settings equal to those are written as `null`. It is
    /// updated to this step's settings.
    pub fn to_line(&self, step_seq: u64, previous: &mut Option<SettingsLine>) -> StepLine {
        let settings = SettingsLine::from(&self.settings);
        let written = if !self.is_whole() && previous.as_ref() == Some(&settings) {
            None
        } else {
            Some(settings.clone())
        };
        *previous = Some(settings);
        let decisions: Decisions = self
            .tables
            .iter()
            .map(|t| (t.node_id.clone(), decision_of(t)))
            .collect();
        StepLine {
            at_ms: self.at_ms,
            step_seq,
            duration_us: self.duration_us,
            full: self.full,
            settings: written,
            nodes: self.inputs.nodes.iter().map(NodeLine::from).collect(),
            removed: self.inputs.removed.clone(),
            snapshot: self.inputs.snapshot.as_deref().map(snapshot_line),
            decisions,
        }
    }
}
