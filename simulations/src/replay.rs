//! `vantage-sim replay DIR`: re-plans a trace recorded by
//! `vantage-scheduler --record DIR` with the scheduler's replay library
//! (`vantage_scheduler::record`), under the recorded weights or others.
//! A thin wrapper: loading, re-planning and comparing live in the
//! scheduler crate so the replay runs exactly the production planner.

use crate::error::SimError;
use std::path::Path;
use vantage_scheduler::record::{self, PreviousMode, ReplayOptions, ReplayReport, Trace};
use vantage_shared::score::Weights;

/// Loads the trace in `dir` and re-plans every recorded plan.
///
/// `weights`: `None` = the weights recorded with each plan (the replay then
/// reproduces the recorded decisions); `Some("latency=0.5,...")` = the
/// first recorded weight set patched with these values (or the defaults
/// when the trace recorded none), used for every plan.
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
    Ok(record::replay(&trace, &opts))
}
