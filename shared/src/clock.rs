//! Wall-clock time in unix milliseconds.
//!
//! Scoring, planning and estimators take `now_ms` as an argument; only the
//! binaries call [`now_ms`], so the simulator can drive the same code on
//! virtual time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
