//! TRACE SHIM (issue 15) — delete when `vantage_plan::trace` is merged.
//!
//! Trace replay is being rebuilt in the planning core
//! (`vantage_plan::trace`, same API shape as the scheduler's former
//! `record` module). Until then this module has that shape so
//! [`super::run`] compiles unchanged, and every replay ends in a clear
//! error: [`Trace::load`] always fails, and the other types are
//! uninhabited, so nothing here can run without a trace.

use serde::Serialize;
use std::path::{Path, PathBuf};
use vantage_shared::score::Weights;

/// Why a trace cannot be loaded: replay is being rebuilt.
#[derive(Debug, thiserror::Error)]
#[error(
    "trace replay is being rebuilt (moving into the planning core, vantage_plan::trace); this build cannot replay {}",
    dir.display()
)]
pub struct TraceError {
    dir: PathBuf,
}

/// A loaded trace: none can exist in this build.
#[derive(Debug)]
pub enum Trace {}

impl Trace {
    pub fn load(dir: &Path) -> Result<Trace, TraceError> {
        Err(TraceError {
            dir: dir.to_path_buf(),
        })
    }

    pub fn weights_recorded(&self) -> Vec<(u64, Weights)> {
        match *self {}
    }
}

/// Which previous decisions a replayed plan gets.
#[derive(Debug, Clone, Copy, Default)]
pub enum PreviousMode {
    #[default]
    Replayed,
    Recorded,
}

#[derive(Debug, Clone, Default)]
#[allow(dead_code)] // read by the real replay only
pub struct ReplayOptions {
    pub weights: Option<Weights>,
    pub previous: PreviousMode,
    pub max_differences: usize,
}

/// A replay's outcome: none can exist in this build.
#[derive(Debug, Serialize)]
pub enum ReplayReport {}

impl ReplayReport {
    pub fn to_text(&self) -> String {
        match *self {}
    }
}

pub fn replay(trace: &Trace, _opts: &ReplayOptions) -> ReplayReport {
    match *trace {}
}
