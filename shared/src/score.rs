//! The weighted QoE score of DESIGN §5. Lower is better.
//!
//! ```text
//! score = Σ wᵢ·termᵢ / Σ wᵢ
//! terms: latency  N(rtt_ms)            loss     N(loss)
//!        buffer   1 − N(buffer_ms)     load     P(utilisation)
//!        distance N(km)                throughput 1 − N(deliverable / bit rate)
//! ```
//!
//! `N(x) = clamp((x − lo)/(hi − lo), 0, 1)` over a configurable [`Ranges`];
//! `P(u)` is the M/M/1 queue-length curve `u/(1−u)` scaled so that it reaches
//! 1 at the hard utilisation limit: gentle at half load, steep near capacity.
//! Dividing by the weight sum keeps every score in [0, 1] whatever the
//! weights' scale. Every call returns a [`Breakdown`] with each term's input,
//! normalised value, weight, contribution and whether the input was measured
//! or modelled.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Weights of the six terms. Non-negative and finite, not all zero.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    pub latency: f64,
    pub loss: f64,
    pub buffer: f64,
    pub load: f64,
    pub distance: f64,
    /// Deliverable throughput against the stream's bit rate (a weight set
    /// written before the term existed gets the default).
    #[serde(default = "default_throughput_weight")]
    pub throughput: f64,
}

/// Default weight of the throughput term (docs/qoe.md: a path that
/// cannot carry the bit rate stalls whatever its RTT).
pub const DEFAULT_THROUGHPUT_WEIGHT: f64 = 0.25;

fn default_throughput_weight() -> f64 {
    DEFAULT_THROUGHPUT_WEIGHT
}

impl Default for Weights {
    /// Buffering hurts live engagement most after raw latency (DESIGN §5);
    /// a path that cannot deliver the bit rate stalls (issue 16).
    fn default() -> Self {
        Self {
            latency: 0.35,
            loss: 0.15,
            buffer: 0.25,
            load: 0.15,
            distance: 0.10,
            throughput: DEFAULT_THROUGHPUT_WEIGHT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    #[error("weight `{0}` must be a finite number ≥ 0, got {1}")]
    OutOfRange(&'static str, f64),
    #[error("at least one weight must be greater than 0")]
    AllZero,
}

impl Weights {
    pub fn validate(&self) -> Result<(), WeightsError> {
        for (name, w) in self.named() {
            if !w.is_finite() || !(0.0..=1e6).contains(&w) {
                return Err(WeightsError::OutOfRange(name, w));
            }
        }
        if self.sum() <= 0.0 {
            return Err(WeightsError::AllZero);
        }
        Ok(())
    }

    pub fn sum(&self) -> f64 {
        self.latency + self.loss + self.buffer + self.load + self.distance + self.throughput
    }

    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("latency", self.latency),
            ("loss", self.loss),
            ("buffer", self.buffer),
            ("load", self.load),
            ("distance", self.distance),
            ("throughput", self.throughput),
        ]
    }
}

/// Normalisation range `[lo, hi]` of one input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub lo: f64,
    pub hi: f64,
}

impl Range {
    pub const fn new(lo: f64, hi: f64) -> Self {
        Self { lo, hi }
    }

    /// Maps `x` onto [0, 1]; NaN counts as the worst value.
    pub fn normalise(&self, x: f64) -> f64 {
        if x.is_nan() {
            return 1.0;
        }
        ((x - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }
}

/// Normalisation ranges and limits. Defaults documented in `docs/qoe.md`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ranges {
    /// RTT in ms: 0 is perfect, 300 ms (an intercontinental path) is worst.
    pub rtt_ms: Range,
    /// Loss ratio: 0 perfect, 5 % worst (TCP throughput collapses beyond).
    pub loss: Range,
    /// Buffer health in ms of media: 0 worst, 2 s or more healthy.
    pub buffer_ms: Range,
    /// Distance in km: 0 perfect, 10,000 km worst.
    pub km: Range,
    /// Deliverable throughput over the stream's bit rate: below 1 the path
    /// cannot carry the stream (worst), from 2 on it carries it twice over
    /// (no penalty).
    #[serde(default = "default_throughput_range")]
    pub throughput_ratio: Range,
    /// Utilisation at which a node stops being eligible (default 0.95).
    pub hard_utilisation: f64,
}

fn default_throughput_range() -> Range {
    Range::new(1.0, 2.0)
}

impl Default for Ranges {
    fn default() -> Self {
        Self {
            rtt_ms: Range::new(0.0, 300.0),
            loss: Range::new(0.0, 0.05),
            buffer_ms: Range::new(0.0, 2000.0),
            km: Range::new(0.0, 10_000.0),
            throughput_ratio: default_throughput_range(),
            hard_utilisation: 0.95,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("range `{0}` must have finite lo < hi")]
pub struct RangesError(pub &'static str);

impl Ranges {
    pub fn validate(&self) -> Result<(), RangesError> {
        for (name, r) in [
            ("rtt_ms", self.rtt_ms),
            ("loss", self.loss),
            ("buffer_ms", self.buffer_ms),
            ("km", self.km),
            ("throughput_ratio", self.throughput_ratio),
        ] {
            if !(r.lo.is_finite() && r.hi.is_finite() && r.lo < r.hi) {
                return Err(RangesError(name));
            }
        }
        if !(self.hard_utilisation > 0.0 && self.hard_utilisation < 1.0) {
            return Err(RangesError("hard_utilisation"));
        }
        Ok(())
    }

    /// Load penalty: `(u/(1−u)) / (h/(1−h))` clamped to [0, 1].
    pub fn load_penalty(&self, utilisation: f64) -> f64 {
        if utilisation.is_nan() {
            return 1.0;
        }
        let h = self.hard_utilisation;
        let u = utilisation.clamp(0.0, h);
        ((u / (1.0 - u)) / (h / (1.0 - h))).clamp(0.0, 1.0)
    }
}

/// Where an input value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Measured on this very pair (probes, viewer sockets, reports).
    Measured,
    /// Estimated from a model (RTT from distance) for lack of samples.
    Modelled,
    /// Not known; the neutral default was used.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Measured => "measured",
            Source::Modelled => "modelled",
            Source::Default => "default",
        })
    }
}

/// A value with its provenance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub value: f64,
    pub source: Source,
}

impl Input {
    pub fn measured(value: f64) -> Self {
        Self {
            value,
            source: Source::Measured,
        }
    }
    pub fn modelled(value: f64) -> Self {
        Self {
            value,
            source: Source::Modelled,
        }
    }
    pub fn default_value(value: f64) -> Self {
        Self {
            value,
            source: Source::Default,
        }
    }
}

/// Everything the formula needs about one candidate for one consumer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    pub rtt_ms: Input,
    pub loss: Input,
    pub buffer_ms: Input,
    pub utilisation: Input,
    pub km: Input,
    /// Deliverable throughput over the stream's bit rate (`default`: not
    /// known, no penalty).
    pub throughput_ratio: Input,
}

impl Inputs {
    /// The neutral throughput input: not known, no penalty.
    pub fn no_throughput(ranges: &Ranges) -> Input {
        Input::default_value(ranges.throughput_ratio.hi)
    }
}

/// One term of a score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Term {
    pub name: &'static str,
    pub input: f64,
    pub source: Source,
    /// Penalty in [0, 1] before weighting.
    pub penalty: f64,
    pub weight: f64,
    /// `weight · penalty / Σ weights`; the terms add up to the score.
    pub contribution: f64,
}

/// A score and its explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breakdown {
    pub score: f64,
    pub terms: Vec<Term>,
}

impl Breakdown {
    pub fn term(&self, name: &str) -> Option<&Term> {
        self.terms.iter().find(|t| t.name == name)
    }
}

/// The score alone, without allocating an explanation (planner hot path).
/// Always equal to `score(..).score`.
pub fn score_value(weights: &Weights, ranges: &Ranges, inputs: &Inputs) -> f64 {
    let sum = weights.sum().max(f64::MIN_POSITIVE);
    (weights.latency * ranges.rtt_ms.normalise(inputs.rtt_ms.value)
        + weights.loss * ranges.loss.normalise(inputs.loss.value)
        + weights.buffer * (1.0 - ranges.buffer_ms.normalise(inputs.buffer_ms.value))
        + weights.load * ranges.load_penalty(inputs.utilisation.value)
        + weights.distance * ranges.km.normalise(inputs.km.value)
        + weights.throughput
            * (1.0
                - ranges
                    .throughput_ratio
                    .normalise(inputs.throughput_ratio.value)))
        / sum
}

/// Scores one candidate. `weights` must have passed [`Weights::validate`].
pub fn score(weights: &Weights, ranges: &Ranges, inputs: &Inputs) -> Breakdown {
    let penalties = [
        (
            "latency",
            inputs.rtt_ms,
            ranges.rtt_ms.normalise(inputs.rtt_ms.value),
        ),
        (
            "loss",
            inputs.loss,
            ranges.loss.normalise(inputs.loss.value),
        ),
        (
            "buffer",
            inputs.buffer_ms,
            1.0 - ranges.buffer_ms.normalise(inputs.buffer_ms.value),
        ),
        (
            "load",
            inputs.utilisation,
            ranges.load_penalty(inputs.utilisation.value),
        ),
        ("distance", inputs.km, ranges.km.normalise(inputs.km.value)),
        (
            "throughput",
            inputs.throughput_ratio,
            1.0 - ranges
                .throughput_ratio
                .normalise(inputs.throughput_ratio.value),
        ),
    ];
    let sum = weights.sum().max(f64::MIN_POSITIVE);
    let terms: Vec<Term> = penalties
        .into_iter()
        .zip(weights.named())
        .map(|((name, input, penalty), (_, weight))| Term {
            name,
            input: input.value,
            source: input.source,
            penalty,
            weight,
            contribution: weight * penalty / sum,
        })
        .collect();
    Breakdown {
        score: terms.iter().map(|t| t.contribution).sum(),
        terms,
    }
}

/// Stability rules applied when a current choice exists.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stability {
    /// Keep the current choice unless the best is better by at least this
    /// much in absolute score...
    pub switch_margin_abs: f64,
    /// ...and by this share of the current score.
    pub switch_margin_rel: f64,
    /// Candidates within this score of the best are "near-equal" and the
    /// load is spread among them.
    pub near_equal: f64,
}

impl Default for Stability {
    fn default() -> Self {
        Self {
            switch_margin_abs: 0.02,
            switch_margin_rel: 0.10,
            near_equal: 0.01,
        }
    }
}

impl Stability {
    /// Hysteresis: should a consumer move from a healthy `current` choice to
    /// `best`? Only for a clear improvement.
    pub fn should_switch(&self, current: f64, best: f64) -> bool {
        let gain = current - best;
        gain > self.switch_margin_abs && gain > self.switch_margin_rel * current
    }
}

/// Orders `(id, score)` candidates best first with deterministic spreading:
/// candidates within `near_equal` of the best are ordered by a rendezvous
/// hash of `(id, salt)` so different consumers (salts) prefer different
/// near-equal candidates instead of herding onto one. Ties beyond the band
/// break by id. Pure and deterministic.
pub fn rank_with_spreading<T, F>(candidates: &mut [T], key: F, near_equal: f64, salt: &str)
where
    F: Fn(&T) -> (&str, f64),
{
    candidates.sort_by(|a, b| {
        let (ia, sa) = key(a);
        let (ib, sb) = key(b);
        sa.total_cmp(&sb).then_with(|| ia.cmp(ib))
    });
    let Some(best) = candidates.first().map(|c| key(c).1) else {
        return;
    };
    let band = candidates
        .iter()
        .take_while(|c| key(c).1 - best <= near_equal)
        .count();
    candidates[..band].sort_by(|a, b| {
        let (ia, _) = key(a);
        let (ib, _) = key(b);
        rendezvous(ib, salt)
            .cmp(&rendezvous(ia, salt))
            .then_with(|| ia.cmp(ib))
    });
}

/// FNV-1a of `id ⊕ salt`: a stable, dependency-free hash for spreading.
pub fn rendezvous(id: &str, salt: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain([0xff]).chain(salt.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalise (splitmix64) so nearby inputs spread well.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests;
