//! Per-target path estimators, pure (time is an argument).
//!
//! * RTT: EWMA (α = 0.25) and nearest-rank p50/p95 over the samples of the
//!   last 10 s (at most 200). A level shift — 5 consecutive samples all
//!   above `1.5·p95 + 5 ms` or all below `(p5 − 5 ms)/1.5` — restarts the
//!   window and the EWMA from those 5 samples, so a path that goes from
//!   20 ms to 200 ms shows it within about a second instead of half a
//!   window.
//! * Loss: probes resolved (answered, or unanswered after the timeout) in
//!   the last 30 s, counted in 1 s buckets.
//! * Jitter: RFC 3550 interarrival jitter of the forward (T2 − T1) and the
//!   reverse (T4 − T3) one-way transit times, each with its own clock
//!   offset that cancels in the differences; the larger of the two is
//!   reported (robust to jitter on one direction only).

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use vantage_shared::estimate::{Ewma, Jitter, quantile};

/// Added to the level-shift thresholds so sub-millisecond paths (loopback,
/// same rack) do not see scheduling noise as a shift.
const SHIFT_MARGIN_MS: f64 = 5.0;
/// Granularity of the loss window.
const LOSS_BUCKET: Duration = Duration::from_secs(1);

/// Windows and gains of the estimators.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    pub ewma_alpha: f64,
    /// Samples older than this (relative to the newest) leave the RTT window.
    pub rtt_window: Duration,
    pub rtt_window_samples: usize,
    pub loss_window: Duration,
    /// Consecutive out-of-range samples that count as a level shift.
    pub shift_run: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            ewma_alpha: 0.25,
            rtt_window: Duration::from_secs(10),
            rtt_window_samples: 200,
            loss_window: Duration::from_secs(30),
            shift_run: 5,
        }
    }
}

/// One reply's timestamps in milliseconds: T1 and T4 on our clock, T2 and
/// T3 on the reflector's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timestamps {
    pub t1: f64,
    pub t2: f64,
    pub t3: f64,
    pub t4: f64,
}

/// Everything measured about one path.
#[derive(Debug, Clone)]
pub struct PathStats {
    cfg: StatsConfig,
    epoch: Instant,
    ewma: Ewma,
    rtts: VecDeque<(Instant, f64)>,
    run: usize,
    run_up: bool,
    loss: VecDeque<(u64, u32, u32)>,
    fwd: Jitter,
    rev: Jitter,
    replies: u64,
    lost: u64,
    last_reply: Option<Instant>,
}

impl PathStats {
    /// `epoch` anchors the loss buckets; any fixed instant works.
    pub fn new(cfg: StatsConfig, epoch: Instant) -> Self {
        Self {
            ewma: Ewma::new(cfg.ewma_alpha),
            cfg,
            epoch,
            rtts: VecDeque::new(),
            run: 0,
            run_up: false,
            loss: VecDeque::new(),
            fwd: Jitter::default(),
            rev: Jitter::default(),
            replies: 0,
            lost: 0,
            last_reply: None,
        }
    }

    /// A reply with round-trip time `rtt_ms` arrived at `now`.
    pub fn on_reply(&mut self, now: Instant, rtt_ms: f64, ts: Timestamps) {
        if !rtt_ms.is_finite() || rtt_ms < 0.0 {
            return;
        }
        self.replies += 1;
        self.last_reply = Some(now);
        self.record_outcome(now, true);
        self.fwd.observe(ts.t1, ts.t2);
        self.rev.observe(ts.t3, ts.t4);

        let shifted = self.track_shift(rtt_ms);
        self.rtts.push_back((now, rtt_ms));
        while self.rtts.len() > self.cfg.rtt_window_samples.max(1) {
            self.rtts.pop_front();
        }
        while self
            .rtts
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.cfg.rtt_window)
        {
            self.rtts.pop_front();
        }
        self.ewma.observe(rtt_ms);
        if shifted {
            let keep = self.cfg.shift_run.min(self.rtts.len());
            let drop = self.rtts.len() - keep;
            self.rtts.drain(..drop);
            self.ewma = Ewma::new(self.cfg.ewma_alpha);
            for (_, x) in &self.rtts {
                self.ewma.observe(*x);
            }
            self.run = 0;
        }
    }

    /// Whether `x` completes a level shift.
    fn track_shift(&mut self, x: f64) -> bool {
        // The reference is the window without the current run's samples.
        let reference = self.rtts.len().saturating_sub(self.run);
        if self.cfg.shift_run == 0 || reference < self.cfg.shift_run {
            self.run = 0;
            return false;
        }
        let values = || self.rtts.iter().take(reference).map(|(_, v)| *v);
        let (Some(p5), Some(p95)) = (quantile(values(), 0.05), quantile(values(), 0.95)) else {
            return false;
        };
        let up = x > p95 * 1.5 + SHIFT_MARGIN_MS;
        let down = x < (p5 - SHIFT_MARGIN_MS) / 1.5;
        if !(up || down) {
            self.run = 0;
            return false;
        }
        if self.run > 0 && self.run_up != up {
            self.run = 0;
        }
        self.run_up = up;
        self.run += 1;
        self.run >= self.cfg.shift_run
    }

    /// A probe went unanswered past the timeout.
    pub fn on_loss(&mut self, now: Instant) {
        self.lost += 1;
        self.record_outcome(now, false);
    }

    fn bucket(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.epoch);
        u64::try_from(d.as_millis() / LOSS_BUCKET.as_millis()).unwrap_or(u64::MAX)
    }

    fn span(&self) -> u64 {
        let n = self.cfg.loss_window.as_millis() / LOSS_BUCKET.as_millis();
        u64::try_from(n).unwrap_or(u64::MAX).max(1)
    }

    fn record_outcome(&mut self, now: Instant, delivered: bool) {
        let b = self.bucket(now);
        match self.loss.back_mut() {
            Some((last, ok, lost)) if *last == b => {
                if delivered {
                    *ok += 1;
                } else {
                    *lost += 1;
                }
            }
            _ => self
                .loss
                .push_back((b, u32::from(delivered), u32::from(!delivered))),
        }
        let oldest = b.saturating_sub(self.span() - 1);
        while self.loss.front().is_some_and(|(s, _, _)| *s < oldest) {
            self.loss.pop_front();
        }
    }

    /// (answered, lost) probes resolved within the loss window.
    pub fn outcomes(&self, now: Instant) -> (u32, u32) {
        let oldest = self.bucket(now).saturating_sub(self.span() - 1);
        self.loss
            .iter()
            .filter(|(s, _, _)| *s >= oldest)
            .fold((0u32, 0u32), |(a, l), (_, ok, lost)| {
                (a.saturating_add(*ok), l.saturating_add(*lost))
            })
    }

    /// Share of probes lost within the window; `None` before any outcome.
    pub fn loss_ratio(&self, now: Instant) -> Option<f64> {
        let (ok, lost) = self.outcomes(now);
        let n = u64::from(ok) + u64::from(lost);
        (n > 0).then(|| lost as f64 / n as f64)
    }

    pub fn rtt_ewma(&self) -> Option<f64> {
        self.ewma.value()
    }

    /// Quantile of the RTT window (the last window's samples are kept when
    /// no new ones arrive).
    pub fn rtt_quantile(&self, q: f64) -> Option<f64> {
        quantile(self.rtts.iter().map(|(_, v)| *v), q)
    }

    pub fn jitter_ms(&self) -> f64 {
        self.fwd.value().max(self.rev.value())
    }

    pub fn replies(&self) -> u64 {
        self.replies
    }

    pub fn lost(&self) -> u64 {
        self.lost
    }

    pub fn last_reply(&self) -> Option<Instant> {
        self.last_reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ts(t1: f64, rtt: f64) -> Timestamps {
        Timestamps {
            t1,
            t2: t1 + rtt / 2.0 + 1000.0,
            t3: t1 + rtt / 2.0 + 1000.0,
            t4: t1 + rtt,
        }
    }

    /// Feeds replies every 200 ms with the RTTs given.
    fn feed(s: &mut PathStats, start: Instant, from: u64, rtts: &[f64]) -> Instant {
        let mut now = start;
        for (i, &r) in rtts.iter().enumerate() {
            now = start + ms((from + i as u64) * 200);
            s.on_reply(now, r, ts(now.duration_since(start).as_millis() as f64, r));
        }
        now
    }

    #[test]
    fn quantiles_ewma_and_window() {
        let t0 = Instant::now();
        let mut s = PathStats::new(StatsConfig::default(), t0);
        let rtts: Vec<f64> = (0..100).map(|i| 40.0 + (i % 11) as f64 - 5.0).collect();
        let now = feed(&mut s, t0, 0, &rtts);
        let p50 = s.rtt_quantile(0.5).unwrap();
        assert!((39.0..=41.0).contains(&p50), "{p50}");
        assert!(s.rtt_quantile(0.95).unwrap() >= 44.0);
        assert!((s.rtt_ewma().unwrap() - 40.0).abs() < 5.0);
        // 10 s window at 5 Hz keeps ~50 samples.
        assert!(s.rtts.len() <= 51, "{}", s.rtts.len());
        assert_eq!(s.loss_ratio(now), Some(0.0));
        assert_eq!(s.replies(), 100);
    }

    #[test]
    fn level_shift_is_followed_within_five_samples() {
        let t0 = Instant::now();
        let mut s = PathStats::new(StatsConfig::default(), t0);
        let base: Vec<f64> = (0..50).map(|i| 20.0 + (i % 3) as f64).collect();
        feed(&mut s, t0, 0, &base);
        feed(&mut s, t0, 50, &[200.0, 201.0, 199.0, 200.0]);
        assert!(s.rtt_quantile(0.5).unwrap() < 30.0, "not yet a shift");
        feed(&mut s, t0, 54, &[202.0]);
        assert!(s.rtt_quantile(0.5).unwrap() >= 199.0);
        assert!(s.rtt_ewma().unwrap() >= 199.0);
        // And back down.
        feed(&mut s, t0, 55, &[20.0; 5]);
        assert_eq!(s.rtt_quantile(0.5), Some(20.0));
    }

    #[test]
    fn isolated_outliers_are_not_shifts() {
        let t0 = Instant::now();
        let mut s = PathStats::new(StatsConfig::default(), t0);
        let mut rtts = vec![30.0; 20];
        for i in 0..30 {
            rtts.push(if i % 4 == 0 { 500.0 } else { 30.0 });
        }
        feed(&mut s, t0, 0, &rtts);
        assert_eq!(s.rtt_quantile(0.5), Some(30.0));
        assert!(
            s.rtt_quantile(0.95).unwrap() >= 500.0,
            "outliers stay in the window"
        );
    }

    #[test]
    fn loss_window_forgets_after_thirty_seconds() {
        let t0 = Instant::now();
        let mut s = PathStats::new(StatsConfig::default(), t0);
        for i in 0..10 {
            s.on_loss(t0 + ms(i * 100));
        }
        for i in 10..20 {
            let now = t0 + ms(i * 100);
            s.on_reply(now, 1.0, ts(i as f64, 1.0));
        }
        assert_eq!(s.loss_ratio(t0 + ms(2000)), Some(0.5));
        assert_eq!(s.outcomes(t0 + ms(2000)), (10, 10));
        // 30 s later the losses have left the window, the window is empty.
        assert_eq!(s.loss_ratio(t0 + ms(31_500)), None);
        s.on_reply(t0 + ms(31_600), 1.0, ts(0.0, 1.0));
        assert_eq!(s.loss_ratio(t0 + ms(31_600)), Some(0.0));
        assert_eq!(s.lost(), 10);
    }

    #[test]
    fn jitter_uses_the_larger_direction() {
        let t0 = Instant::now();
        let mut s = PathStats::new(StatsConfig::default(), t0);
        for i in 0..2000u64 {
            let t1 = i as f64 * 200.0;
            let extra = if i % 2 == 0 { 0.0 } else { 8.0 };
            // Jitter only on the reverse path; reflector clock offset 5000.
            let t2 = t1 + 10.0 + 5000.0;
            let t3 = t2 + 0.1;
            let t4 = t1 + 20.1 + extra;
            s.on_reply(
                t0 + ms(i * 200),
                t4 - t1 - 0.1,
                Timestamps { t1, t2, t3, t4 },
            );
        }
        assert!((s.jitter_ms() - 8.0).abs() < 0.5, "{}", s.jitter_ms());
        assert_eq!(s.fwd.value(), 0.0);
    }

    proptest! {
        #[test]
        fn estimates_stay_in_range(
            events in prop::collection::vec((any::<bool>(), 0.0f64..2000.0, 0u64..400), 1..300)
        ) {
            let t0 = Instant::now();
            let mut s = PathStats::new(StatsConfig::default(), t0);
            let mut now = t0;
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for (ok, rtt, step) in events {
                now += ms(step);
                if ok {
                    lo = lo.min(rtt);
                    hi = hi.max(rtt);
                    s.on_reply(now, rtt, ts(0.0, rtt));
                } else {
                    s.on_loss(now);
                }
            }
            if let Some(r) = s.loss_ratio(now) {
                prop_assert!((0.0..=1.0).contains(&r));
            }
            for q in [0.5, 0.95] {
                if let Some(v) = s.rtt_quantile(q) {
                    prop_assert!(v >= lo && v <= hi);
                }
            }
            if let Some(e) = s.rtt_ewma() {
                prop_assert!(e >= lo - 1e-9 && e <= hi + 1e-9);
            }
            prop_assert!(s.jitter_ms() >= 0.0 && s.jitter_ms().is_finite());
        }
    }
}
