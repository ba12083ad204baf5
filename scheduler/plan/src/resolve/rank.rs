//! Pure ranking of edges for one viewer (DESIGN §5): no I/O, no clock, no
//! global state. `now_ms` and the random number generator are arguments, so
//! the simulator's `qoe` policy runs exactly this code.
//!
//! For every candidate edge the viewer's inputs to the QoE formula are:
//!
//! | input | measured (group estimate with ≥ `min_group_samples`) | otherwise |
//! |---|---|---|
//! | RTT | the group's mean `TCP_INFO` RTT on that edge | modelled from distance |
//! | loss | the group's retransmit rate on that edge | default 0 |
//! | buffer health | `buffer_ms · (1 − stall_rate)` | default healthy (`buffer_ms.hi`) |
//! | utilisation | (reported egress + load assigned since) / capacity | — |
//! | distance | — | modelled great-circle km (default mid-range when unknown) |
//!
//! Eligible: `up` (never suspect, down or draining), a public URL, a
//! positive capacity, and `(egress + assigned + viewer bit rate) / capacity`
//! below the hard utilisation limit. Then, best first:
//!
//! 1. sort by score (lower is better), ties by id;
//! 2. **exploration**: with probability `exploration_share` the answer is one
//!    of the `explore_candidates` runner-ups (only eligible ones, and only
//!    within `explore_max_gap` of the best), so per-group estimates of
//!    alternatives stay fresh (Pytheas' group-based E2);
//! 3. otherwise **spreading**: among candidates within `spread_band` of the
//!    best, power of two choices — two drawn at random, the one with lower
//!    projected utilisation wins — so a burst of joins does not herd.
//!
//! The caller accounts the viewer's bit rate to the chosen edge
//! ([`LoadLedger::assign`]) until that edge's next reports show it.

use super::learn::GroupEstimate;
use crate::node::Health;
use rand::Rng;
use serde::{Deserialize, Serialize};
use vantage_shared::place::{Coord, modelled_rtt_ms};
use vantage_shared::score::{
    Breakdown, Input, Inputs, Ranges, Source, Weights, score, score_value,
};

/// Tunables of viewer routing (`[resolve]` in the scheduler config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankParams {
    /// Effective (decayed) samples a (node, group) estimate needs before it
    /// replaces the distance model.
    pub min_group_samples: f64,
    /// Half-life of (node, group) estimates, ms.
    pub group_half_life_ms: i64,
    /// Candidates within this score of the best are near-equal: the choice
    /// among them is spread (power of two choices on utilisation).
    pub spread_band: f64,
    /// Share of decisions that go to a runner-up (0 disables exploration).
    pub exploration_share: f64,
    /// How many runner-ups exploration may pick from.
    pub explore_candidates: usize,
    /// Runner-ups worse than the best by more than this are never explored.
    pub explore_max_gap: f64,
}

impl Default for RankParams {
    fn default() -> Self {
        Self {
            min_group_samples: 5.0,
            group_half_life_ms: 120_000,
            spread_band: 0.003,
            exploration_share: 0.05,
            explore_candidates: 2,
            explore_max_gap: 0.10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("resolve setting `{0}` is out of range")]
pub struct RankParamsError(pub &'static str);

impl RankParams {
    pub fn validate(&self) -> Result<(), RankParamsError> {
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        if !finite_nonneg(self.min_group_samples) {
            return Err(RankParamsError("min_group_samples"));
        }
        if self.group_half_life_ms <= 0 {
            return Err(RankParamsError("group_half_life_ms"));
        }
        if !finite_nonneg(self.spread_band) {
            return Err(RankParamsError("spread_band"));
        }
        if !(0.0..=1.0).contains(&self.exploration_share) {
            return Err(RankParamsError("exploration_share"));
        }
        if !finite_nonneg(self.explore_max_gap) {
            return Err(RankParamsError("explore_max_gap"));
        }
        Ok(())
    }
}

/// One edge that might serve the viewer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub public_url: &'a str,
    pub health: Health,
    pub coord: Option<Coord>,
    pub capacity_mbps: f64,
    /// Egress in the node's last report.
    pub egress_mbps: f64,
    /// Bit rate of viewers this resolver sent there since that report.
    pub assigned_mbps: f64,
    /// What this node's viewers of the viewer's group experienced, if any.
    pub group: Option<&'a GroupEstimate>,
}

impl Candidate<'_> {
    /// Utilisation with the assigned load and `extra_mbps` more.
    pub fn projected_utilisation(&self, extra_mbps: f64) -> f64 {
        if self.capacity_mbps > 0.0 {
            (self.egress_mbps + self.assigned_mbps + extra_mbps) / self.capacity_mbps
        } else {
            f64::INFINITY
        }
    }
}

/// Why a candidate is not eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ineligible {
    /// Suspect, down or draining.
    NotUp,
    NoPublicUrl,
    /// This viewer would take it to or over the hard utilisation limit.
    OverLimit,
}

/// The viewer being routed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Viewer {
    /// Location; `None` = unknown (distance and RTT default to mid-range).
    pub coord: Option<Coord>,
    /// Bit rate this viewer will pull (the stream's), Mbps.
    pub bitrate_mbps: f64,
}

/// Everything a ranking depends on besides the candidates and the RNG.
#[derive(Debug, Clone, Copy)]
pub struct RankInput<'a> {
    pub now_ms: i64,
    pub weights: &'a Weights,
    pub ranges: &'a Ranges,
    pub params: &'a RankParams,
    pub viewer: Viewer,
    /// Edges wanted in the answer (≥ 1).
    pub n: usize,
}

/// How the first edge was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The best score.
    Best,
    /// A near-equal candidate, by power of two choices.
    Spread,
    /// A runner-up, to keep its estimate for this group fresh.
    Explore,
}

/// One edge of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedEdge {
    /// Index into the candidate slice.
    pub index: usize,
    pub score: f64,
    pub breakdown: Breakdown,
}

/// The answer: `edges[0]` is the decision, the rest follow by score.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    pub edges: Vec<RankedEdge>,
    pub decision: Decision,
    /// Eligible candidates considered.
    pub eligible: usize,
}

impl Ranking {
    pub fn chosen(&self) -> Option<&RankedEdge> {
        self.edges.first()
    }
}

/// Whether `c` may take this viewer.
pub fn eligibility(c: &Candidate<'_>, ranges: &Ranges, viewer: &Viewer) -> Result<(), Ineligible> {
    if c.health != Health::Up {
        return Err(Ineligible::NotUp);
    }
    if c.public_url.is_empty() {
        return Err(Ineligible::NoPublicUrl);
    }
    let u = c.projected_utilisation(viewer.bitrate_mbps.max(0.0));
    // NaN compares false: not eligible.
    if u < ranges.hard_utilisation {
        Ok(())
    } else {
        Err(Ineligible::OverLimit)
    }
}

/// The formula's inputs for `c` serving `viewer`, with their sources.
pub fn inputs(c: &Candidate<'_>, input: &RankInput<'_>) -> Inputs {
    let ranges = input.ranges;
    let km = match (input.viewer.coord, c.coord) {
        (Some(a), Some(b)) => Input::modelled(a.km_to(&b)),
        _ => Input::default_value((ranges.km.lo + ranges.km.hi) / 2.0),
    };
    let model_rtt = Input {
        value: modelled_rtt_ms(km.value),
        source: if km.source == Source::Modelled {
            Source::Modelled
        } else {
            Source::Default
        },
    };
    let measured = c
        .group
        .map(|g| g.at(input.now_ms, input.params.group_half_life_ms))
        .filter(|g| g.samples >= input.params.min_group_samples.max(f64::MIN_POSITIVE));
    let (rtt_ms, loss, buffer_ms) = match measured {
        Some(g) => (
            g.rtt_ms.map_or(model_rtt, Input::measured),
            g.retransmit_rate
                .map_or(Input::default_value(0.0), Input::measured),
            if g.buffer_ms.is_some() || g.stall_rate.is_some() {
                let buffer = g.buffer_ms.unwrap_or(ranges.buffer_ms.hi);
                let stall = g.stall_rate.unwrap_or(0.0).clamp(0.0, 1.0);
                Input::measured(buffer * (1.0 - stall))
            } else {
                Input::default_value(ranges.buffer_ms.hi)
            },
        ),
        None => (
            model_rtt,
            Input::default_value(0.0),
            Input::default_value(ranges.buffer_ms.hi),
        ),
    };
    Inputs {
        rtt_ms,
        loss,
        buffer_ms,
        utilisation: Input::measured(c.projected_utilisation(0.0)),
        km,
    }
}

/// Ranks the eligible candidates for one viewer. See the module docs.
pub fn rank<R: Rng + ?Sized>(
    input: &RankInput<'_>,
    candidates: &[Candidate<'_>],
    rng: &mut R,
) -> Ranking {
    let mut scored: Vec<(usize, f64)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| eligibility(c, input.ranges, &input.viewer).is_ok())
        .map(|(i, c)| {
            (
                i,
                score_value(input.weights, input.ranges, &inputs(c, input)),
            )
        })
        .collect();
    scored.sort_by(|a, b| {
        a.1.total_cmp(&b.1)
            .then_with(|| candidates[a.0].id.cmp(candidates[b.0].id))
    });
    let eligible = scored.len();
    let Some(&(_, best)) = scored.first() else {
        return Ranking {
            edges: Vec::new(),
            decision: Decision::Best,
            eligible,
        };
    };
    let p = input.params;
    let mut chosen = 0usize;
    let mut decision = Decision::Best;
    let runner_ups = scored
        .iter()
        .skip(1)
        .take(p.explore_candidates)
        .take_while(|(_, s)| s - best <= p.explore_max_gap)
        .count();
    if runner_ups > 0 && p.exploration_share > 0.0 && rng.random::<f64>() < p.exploration_share {
        chosen = 1 + rng.random_range(0..runner_ups);
        decision = Decision::Explore;
    } else {
        let band = scored
            .iter()
            .take_while(|(_, s)| s - best <= p.spread_band)
            .count();
        if band >= 2 {
            let a = rng.random_range(0..band);
            let mut b = rng.random_range(0..band - 1);
            if b >= a {
                b += 1;
            }
            let key = |k: usize| {
                let (i, s) = scored[k];
                (
                    candidates[i].projected_utilisation(0.0),
                    s,
                    candidates[i].id,
                )
            };
            let (ka, kb) = (key(a), key(b));
            let a_wins =
                ka.0.total_cmp(&kb.0)
                    .then_with(|| ka.1.total_cmp(&kb.1))
                    .then_with(|| ka.2.cmp(kb.2))
                    .is_le();
            chosen = if a_wins { a } else { b };
            if chosen != 0 {
                decision = Decision::Spread;
            }
        }
    }
    let first = scored.remove(chosen);
    scored.insert(0, first);
    let edges = scored
        .into_iter()
        .take(input.n.max(1))
        .map(|(index, s)| {
            let breakdown = score(
                input.weights,
                input.ranges,
                &inputs(&candidates[index], input),
            );
            debug_assert!((breakdown.score - s).abs() < 1e-9);
            RankedEdge {
                index,
                score: s,
                breakdown,
            }
        })
        .collect();
    Ranking {
        edges,
        decision,
        eligible,
    }
}

/// Load a resolver assigned to one node that the node's reports may not show
/// yet. Assignments survive the next report (viewers take a moment to
/// connect and to appear in the egress rate) and are dropped at the one after.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadLedger {
    /// Assigned since the last report.
    pub recent_mbps: f64,
    /// Assigned in the interval before that.
    pub previous_mbps: f64,
}

impl LoadLedger {
    pub fn assign(&mut self, mbps: f64) {
        if mbps.is_finite() && mbps > 0.0 {
            self.recent_mbps += mbps;
        }
    }

    /// A new report from the node arrived.
    pub fn on_report(&mut self) {
        self.previous_mbps = self.recent_mbps;
        self.recent_mbps = 0.0;
    }

    /// What goes into [`Candidate::assigned_mbps`].
    pub fn total(&self) -> f64 {
        self.recent_mbps + self.previous_mbps
    }
}
