//! `vantage-sim replay DIR`: re-plans a trace recorded by
//! `vantage-scheduler --record DIR` with the planning core's replay
//! library (`vantage_plan::trace`), under the recorded weights or others.
//! A thin wrapper: loading, re-planning and comparing live in the planning
//! core so the replay runs exactly the production planner.

use crate::error::SimError;
use std::path::Path;
use vantage_shared::score::Weights;

// TRACE SHIM (issue 15): trace replay is moving into `vantage_plan::trace`
// on another branch. Until it is merged, these two lines stand in for
//     use vantage_plan::trace::{self, PreviousMode, ReplayOptions, ReplayReport, Trace};
// (swap them back, delete src/replay/shim.rs and the `allow` on `run`).
mod shim;
use shim::{self as trace, PreviousMode, ReplayOptions, ReplayReport, Trace};

/// Loads the trace in `dir` and re-plans every recorded plan.
///
/// `weights`: `None` = the weights recorded with each plan (the replay then
/// reproduces the recorded decisions); `Some("latency=0.5,...")` = the
/// first recorded weight set patched with these values (or the defaults
/// when the trace recorded none), used for every plan.
#[allow(unreachable_code)] // TRACE SHIM: no trace loads until replay is back
pub fn run(
    dir: &Path,
    weights: Option<&str>,
    recorded_previous: bool,
) -> Result<ReplayReport, SimError> {
    let trace = Trace::load(dir).map_err(|e| SimError::Replay(e.to_string()))?;
    let weights = match weights {
        None => None,
        Some(text) => {
            let base: Weights = trace
                .weights_recorded()
                .first()
                .map(|(_, w)| *w)
                .unwrap_or_default();
            Some(crate::parse_weights(text, base).map_err(SimError::Replay)?)
        }
    };
    let opts = ReplayOptions {
        weights,
        previous: if recorded_previous {
            PreviousMode::Recorded
        } else {
            PreviousMode::Replayed
        },
        ..ReplayOptions::default()
    };
    Ok(trace::replay(&trace, &opts))
}
