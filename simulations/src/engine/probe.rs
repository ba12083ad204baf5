//! The agent's probe estimators, per (node, target), on the simulator's
//! report intervals (docs/measurement.md, `agent/src/probe/stats.rs`):
//!
//! * RTT: the median of the last 10 s and an EWMA (α = 0.25). One sample
//!   per interval stands for the interval's probes. A level shift — the
//!   agent's 5 consecutive samples all above `1.5·p95 + 5 ms` (or all below
//!   `(p5 − 5 ms)/1.5`) of the window before them — restarts the window and
//!   the EWMA from those samples; an interval's sample counts for its
//!   `probes_per_interval` probes, so with 5 or more probes per interval
//!   one interval out of range is a shift.
//! * Loss: probes sent and lost per interval over the last 30 s; the
//!   report's sample count is the probes resolved in that window.

use std::collections::VecDeque;
use vantage_plan::smoothing::PathReport;
use vantage_shared::estimate::quantile;

const RTT_WINDOW_MS: u64 = 10_000;
const LOSS_WINDOW_MS: u64 = 30_000;
const RTT_EWMA: f64 = 0.25;
/// Consecutive out-of-range probes that make a level shift.
const SHIFT_RUN: u32 = 5;
/// Added to the level-shift thresholds, ms.
const SHIFT_MARGIN_MS: f64 = 5.0;

/// The RTT and loss windows in report intervals of `interval_ms`.
pub(super) fn windows(interval_ms: u64) -> (usize, usize) {
    let n = |ms: u64| ms.div_ceil(interval_ms.max(1)).max(1) as usize;
    (n(RTT_WINDOW_MS), n(LOSS_WINDOW_MS))
}

/// What one agent's estimators hold about one probe target.
#[derive(Debug, Clone, Default)]
pub(super) struct AgentProbe {
    rtts: VecDeque<f64>,
    ewma: Option<f64>,
    /// Intervals in the current out-of-range run, and its direction.
    run: usize,
    run_up: bool,
    outcomes: VecDeque<(u32, u32)>,
}

impl AgentProbe {
    /// One interval: its RTT sample, probes sent and lost; `windows` from
    /// [`windows`].
    pub(super) fn observe(&mut self, rtt: f64, sent: u32, lost: u32, windows: (usize, usize)) {
        let shifted = self.track_shift(rtt, sent);
        if self.rtts.len() >= windows.0 {
            self.rtts.pop_front();
        }
        self.rtts.push_back(rtt);
        if shifted {
            let keep = self.run.min(self.rtts.len());
            self.rtts.drain(..self.rtts.len() - keep);
            self.ewma = None;
            for &x in &self.rtts {
                self.ewma = Some(self.ewma.map_or(x, |e| e + RTT_EWMA * (x - e)));
            }
            self.run = 0;
        } else {
            self.ewma = Some(self.ewma.map_or(rtt, |e| e + RTT_EWMA * (rtt - e)));
        }
        if self.outcomes.len() >= windows.1 {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((sent, lost));
    }

    /// Whether `rtt` completes a level shift (the reference is the window
    /// without the current run's intervals).
    fn track_shift(&mut self, rtt: f64, sent: u32) -> bool {
        let reference = self.rtts.len().saturating_sub(self.run);
        let values = || self.rtts.iter().take(reference).copied();
        let (Some(p5), Some(p95)) = (quantile(values(), 0.05), quantile(values(), 0.95)) else {
            self.run = 0;
            return false;
        };
        let up = rtt > p95 * 1.5 + SHIFT_MARGIN_MS;
        let down = rtt < (p5 - SHIFT_MARGIN_MS) / 1.5;
        if !(up || down) {
            self.run = 0;
            return false;
        }
        if self.run > 0 && self.run_up != up {
            self.run = 0;
        }
        self.run_up = up;
        self.run += 1;
        self.run as u64 * u64::from(sent.max(1)) >= u64::from(SHIFT_RUN)
    }

    /// The path measurement the agent reports.
    pub(super) fn report(&self) -> PathReport {
        let (sent, lost) = self
            .outcomes
            .iter()
            .fold((0u32, 0u32), |a, b| (a.0 + b.0, a.1 + b.1));
        PathReport {
            rtt_p50_ms: quantile(self.rtts.iter().copied(), 0.5).unwrap_or(0.0),
            rtt_ewma_ms: self.ewma.unwrap_or(0.0),
            loss: f64::from(lost) / f64::from(sent.max(1)),
            samples: sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_shift_shows_at_once_noise_does_not() {
        let w = windows(1_000);
        assert_eq!(w, (10, 30));
        let mut p = AgentProbe::default();
        for i in 0..10 {
            p.observe(30.0 + f64::from(i % 3), 10, 0, w);
        }
        assert_eq!(p.report().rtt_p50_ms, 31.0);
        // +60 ms with 10 probes an interval: the median moves at once.
        p.observe(91.0, 10, 0, w);
        assert_eq!(p.report().rtt_p50_ms, 91.0);
        assert_eq!(p.report().rtt_ewma_ms, 91.0);
        // With 2 probes an interval it takes 3 intervals (6 probes ≥ 5).
        let mut q = AgentProbe::default();
        for _ in 0..10 {
            q.observe(30.0, 2, 0, w);
        }
        q.observe(91.0, 2, 0, w);
        q.observe(91.0, 2, 0, w);
        assert_eq!(q.report().rtt_p50_ms, 30.0);
        q.observe(91.0, 2, 1, w);
        assert_eq!(q.report().rtt_p50_ms, 91.0);
        // Loss over the window, samples = probes in it.
        let r = q.report();
        assert_eq!(r.samples, 26);
        assert!((r.loss - 1.0 / 26.0).abs() < 1e-12);
    }
}
