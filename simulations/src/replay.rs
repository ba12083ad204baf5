//! `vantage-sim replay DIR`: re-runs the planning steps of a trace
//! recorded by `vantage-scheduler --record DIR` through the planning
//! session (`vantage_plan::trace`), under the recorded weights or others.
//! A thin wrapper: loading, stepping and comparing live in the planning
//! core, so the replay runs exactly the production planner.

use crate::error::SimError;
use std::path::Path;
use vantage_plan::trace::{PreviousMode, ReplayOptions, ReplayReport, Trace};
use vantage_shared::score::Weights;

/// Loads the trace in `dir` and re-runs every recorded step.
///
/// `weights`: `None` = the weights recorded with each step (the replay then
/// reproduces the recorded decisions); `Some("latency=0.5,...")` = the
/// first recorded weight set patched with these values (or the defaults
/// when the trace recorded none), used for every step. `recorded_previous`:
/// every step starts from the recorded routes instead of the replay's own.
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
    Ok(vantage_plan::trace::replay(&trace, &opts))
}
