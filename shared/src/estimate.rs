//! Estimators for noisy measurements: an EWMA, a sliding-window quantile,
//! a loss ratio over a window and the RFC 3550 interarrival jitter.
//!
//! All of them ignore non-finite samples instead of poisoning their state.

use std::collections::VecDeque;

/// Exponentially weighted moving average: `v ← v + α·(x − v)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    alpha: f64,
    value: Option<f64>,
    samples: u64,
}

impl Ewma {
    /// `alpha` in (0, 1]; larger reacts faster. Out-of-range values are clamped.
    pub fn new(alpha: f64) -> Self {
        let alpha = if alpha.is_finite() {
            alpha.clamp(1e-6, 1.0)
        } else {
            1.0
        };
        Self {
            alpha,
            value: None,
            samples: 0,
        }
    }

    pub fn observe(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.samples += 1;
        self.value = Some(match self.value {
            None => x,
            Some(v) => v + self.alpha * (x - v),
        });
    }

    pub fn value(&self) -> Option<f64> {
        self.value
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// Quantiles over the last `capacity` samples (exact, by sorting a copy).
#[derive(Debug, Clone)]
pub struct WindowQuantile {
    capacity: usize,
    samples: VecDeque<f64>,
}

impl WindowQuantile {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            samples: VecDeque::with_capacity(capacity.max(1)),
        }
    }

    pub fn observe(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(x);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Nearest-rank quantile, `q` in [0, 1]. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(self.samples.iter().copied(), q)
    }
}

/// Nearest-rank quantile of any set of finite samples.
pub fn quantile(samples: impl IntoIterator<Item = f64>, q: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = if q.is_finite() {
        q.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Loss ratio over the last `capacity` outcomes (true = delivered).
#[derive(Debug, Clone)]
pub struct LossWindow {
    capacity: usize,
    outcomes: VecDeque<bool>,
    lost: usize,
}

impl LossWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            outcomes: VecDeque::with_capacity(capacity.max(1)),
            lost: 0,
        }
    }

    pub fn record(&mut self, delivered: bool) {
        if self.outcomes.len() == self.capacity
            && let Some(false) = self.outcomes.pop_front()
        {
            self.lost -= 1;
        }
        if !delivered {
            self.lost += 1;
        }
        self.outcomes.push_back(delivered);
    }

    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// Share lost, 0..1; `None` before the first outcome.
    pub fn ratio(&self) -> Option<f64> {
        if self.outcomes.is_empty() {
            None
        } else {
            Some(self.lost as f64 / self.outcomes.len() as f64)
        }
    }
}

/// RFC 3550 §6.4.1 interarrival jitter: `J ← J + (|D(i−1,i)| − J)/16`, where
/// `D` is the difference of transit times (receive − send) of consecutive
/// packets. Units are those of the timestamps given (milliseconds here).
#[derive(Debug, Clone, Copy, Default)]
pub struct Jitter {
    last_transit: Option<f64>,
    jitter: f64,
}

impl Jitter {
    pub fn observe(&mut self, send: f64, receive: f64) {
        if !send.is_finite() || !receive.is_finite() {
            return;
        }
        let transit = receive - send;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub fn value(&self) -> f64 {
        self.jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ewma_converges_and_ignores_nan() {
        let mut e = Ewma::new(0.5);
        assert_eq!(e.value(), None);
        e.observe(10.0);
        e.observe(f64::NAN);
        e.observe(20.0);
        assert_eq!(e.value(), Some(15.0));
        assert_eq!(e.samples(), 2);
    }

    #[test]
    fn window_quantile_forgets_old_samples() {
        let mut w = WindowQuantile::new(4);
        for x in [100.0, 1.0, 2.0, 3.0, 4.0] {
            w.observe(x);
        }
        assert_eq!(w.quantile(1.0), Some(4.0));
        assert_eq!(w.quantile(0.5), Some(2.0));
    }

    #[test]
    fn loss_window_counts() {
        let mut l = LossWindow::new(10);
        for i in 0..20 {
            l.record(i % 5 != 0);
        }
        assert_eq!(l.ratio(), Some(0.2));
    }

    #[test]
    fn jitter_of_constant_delay_is_zero_and_grows_with_variation() {
        let mut j = Jitter::default();
        for i in 0..100 {
            j.observe(i as f64 * 20.0, i as f64 * 20.0 + 30.0);
        }
        assert_eq!(j.value(), 0.0);
        let mut j = Jitter::default();
        for i in 0..1000 {
            let extra = if i % 2 == 0 { 0.0 } else { 10.0 };
            j.observe(i as f64 * 20.0, i as f64 * 20.0 + 30.0 + extra);
        }
        assert!((j.value() - 10.0).abs() < 0.5, "{}", j.value());
    }

    proptest! {
        #[test]
        fn ewma_stays_within_sample_range(xs in prop::collection::vec(-1e6f64..1e6, 1..200), a in 0.01f64..1.0) {
            let mut e = Ewma::new(a);
            for &x in &xs { e.observe(x); }
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let v = e.value().unwrap_or(f64::NAN);
            prop_assert!(v >= lo - 1e-6 && v <= hi + 1e-6);
        }

        #[test]
        fn quantiles_are_monotonic(xs in prop::collection::vec(-1e3f64..1e3, 1..100)) {
            let p50 = quantile(xs.iter().copied(), 0.5).unwrap_or(f64::NAN);
            let p95 = quantile(xs.iter().copied(), 0.95).unwrap_or(f64::NAN);
            prop_assert!(p50 <= p95);
            prop_assert!(xs.contains(&p50));
        }

        #[test]
        fn loss_ratio_in_unit_interval(outcomes in prop::collection::vec(any::<bool>(), 1..300)) {
            let mut l = LossWindow::new(50);
            for o in outcomes { l.record(o); }
            let r = l.ratio().unwrap_or(-1.0);
            prop_assert!((0.0..=1.0).contains(&r));
        }
    }
}
