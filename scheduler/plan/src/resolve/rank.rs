//! Pure ranking of edges for one viewer (DESIGN §5): no I/O, no clock, no
//! global state. `now_ms` and the random number generator are arguments, so
//! the simulator's `qoe` policy runs exactly this code.
//!
//! For every candidate edge the viewer's inputs to the QoE formula are:
//!
//! | input | measured (group estimate with ≥ `min_group_samples`) | otherwise (the node's estimate over all its groups, when it has enough samples) | otherwise |
//! |---|---|---|---|
//! | RTT | the group's mean `TCP_INFO` RTT on that edge | modelled from distance | modelled from distance |
//! | loss | the group's retransmit rate on that edge | modelled: the node's retransmit rate | default 0 |
//! | buffer health | `buffer_ms · (1 − stall_rate)` | modelled: the node's | default healthy (`buffer_ms.hi`) |
//! | … and at most | the node's GOP-cache depth for this stream (its feed's health), measured, when it holds the stream | | |
//! | throughput | Padhye(the two above) / bit rate, or the group's mean `TCP_INFO` delivery rate / bit rate where that is higher (measured) | modelled: Padhye(modelled RTT, the node's loss) / bit rate | default: no penalty |
//! | utilisation | (reported egress — the larger of the latest and the smoothed, [`crate::smoothing::Smoother::admission_egress_mbps`] — + load assigned since + join rate × `admission_lag_ms`) / capacity | — | — |
//! | distance | — | modelled great-circle km (default mid-range when unknown) | |
//!
//! Estimates are trend-projected (`trend_horizon_ms`, see [`super::learn`]).
//! Eligible: `up` (never suspect, down or draining), a public URL, a
//! positive capacity, and `(egress + assigned + join rate × lag + viewer
//! bit rate) / capacity` below the hard utilisation limit — join-rate-aware
//! admission: a node taking a burst of joins keeps the headroom the burst
//! will have used by the time its reports show it. Then, best first:
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

use super::learn::{GroupEstimate, GroupObservation};
use crate::node::Health;
use rand::Rng;
use serde::{Deserialize, Serialize};
use vantage_shared::place::{Coord, modelled_rtt_ms};
use vantage_shared::score::{
    Breakdown, Input, Inputs, Ranges, Source, Weights, score, score_value,
};
use vantage_shared::tcp::padhye_mbps;

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
    /// Estimates that are getting worse are projected this far ahead, ms
    /// (0: no projection).
    pub trend_horizon_ms: i64,
    /// Join-rate-aware admission: a node is charged its recent join rate
    /// (Mbps assigned per second) times this, ms (0: off).
    pub admission_lag_ms: i64,
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
            trend_horizon_ms: 60_000,
            admission_lag_ms: 2_000,
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
        if !(0..=3_600_000).contains(&self.trend_horizon_ms) {
            return Err(RankParamsError("trend_horizon_ms"));
        }
        if !(0..=600_000).contains(&self.admission_lag_ms) {
            return Err(RankParamsError("admission_lag_ms"));
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
    /// Join-rate-aware admission: the node's join rate times the
    /// admission lag, Mbps ([`LoadLedger::charge`]).
    pub charge_mbps: f64,
    /// What this node's viewers of the viewer's group experienced, if any.
    pub group: Option<&'a GroupEstimate>,
    /// What this node's viewers of every group experienced, if any.
    pub node_wide: Option<&'a GroupEstimate>,
    /// The node's feed of the viewer's stream as a buffer input, ms, if it
    /// holds the stream: the healthy buffer × how well the feed keeps up
    /// (`Edges::stream_feed_ratio`).
    pub stream_buffer_ms: Option<f64>,
}

impl Candidate<'_> {
    /// Utilisation with the assigned load and `extra_mbps` more.
    pub fn projected_utilisation(&self, extra_mbps: f64) -> f64 {
        if self.capacity_mbps > 0.0 {
            (self.egress_mbps + self.assigned_mbps + self.charge_mbps + extra_mbps)
                / self.capacity_mbps
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
    let p = input.params;
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
    let min = p.min_group_samples.max(f64::MIN_POSITIVE);
    let seen = |e: Option<&GroupEstimate>| {
        e.map(|g| g.projected(input.now_ms, p.group_half_life_ms, p.trend_horizon_ms))
            .filter(|g| g.samples >= min)
    };
    let bitrate = input.viewer.bitrate_mbps;
    let ratio = |mbps: f64| {
        if bitrate > 0.0 {
            mbps / bitrate
        } else {
            ranges.throughput_ratio.hi
        }
    };
    let buffer_of = |g: &GroupObservation| {
        let buffer = g.buffer_ms.unwrap_or(ranges.buffer_ms.hi);
        let stall = g.stall_rate.unwrap_or(0.0).clamp(0.0, 1.0);
        buffer * (1.0 - stall)
    };
    let (rtt_ms, loss, buffer_ms, throughput_ratio) = if let Some(g) = seen(c.group) {
        let rtt = g.rtt_ms.map_or(model_rtt, Input::measured);
        let loss = g
            .retransmit_rate
            .map_or(Input::default_value(0.0), Input::measured);
        let buffer = if g.buffer_ms.is_some() || g.stall_rate.is_some() {
            Input::measured(buffer_of(&g))
        } else {
            Input::default_value(ranges.buffer_ms.hi)
        };
        // What the path carries: Padhye from the group's own RTT and
        // retransmit rate, or more where its connections were seen to
        // deliver more (a delivery rate is a floor: it is also held down by
        // the viewers' own last miles, which no edge changes).
        let model = padhye_mbps(rtt.value, loss.value);
        let throughput = match g.delivery_mbps {
            Some(r) if r >= model => Input::measured(ratio(r)),
            _ => Input::modelled(ratio(model)),
        };
        (rtt, loss, buffer, throughput)
    } else if let Some(n) = seen(c.node_wide) {
        // The group has not been served here: what the node's viewers
        // see everywhere, over this group's (modelled) RTT.
        let loss = n.retransmit_rate.unwrap_or(0.0);
        let buffer = if n.buffer_ms.is_some() || n.stall_rate.is_some() {
            Input::modelled(buffer_of(&n))
        } else {
            Input::default_value(ranges.buffer_ms.hi)
        };
        (
            model_rtt,
            Input::modelled(loss),
            buffer,
            Input::modelled(ratio(padhye_mbps(model_rtt.value, loss))),
        )
    } else {
        (
            model_rtt,
            Input::default_value(0.0),
            Input::default_value(ranges.buffer_ms.hi),
            Inputs::no_throughput(ranges),
        )
    };
    // A feed of this very stream that does not keep up shows in the node's
    // GOP cache before any viewer stalls.
    let buffer_ms = match c.stream_buffer_ms {
        Some(b) if b.is_finite() && b < buffer_ms.value => Input::measured(b.max(0.0)),
        _ => buffer_ms,
    };
    Inputs {
        rtt_ms,
        loss,
        buffer_ms,
        utilisation: Input::measured(c.projected_utilisation(0.0)),
        km,
        throughput_ratio,
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
/// The ledger also keeps the node's join rate (Mbps assigned per second,
/// exponentially weighted over [`JOIN_RATE_TAU_MS`]) for join-rate-aware
/// admission.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadLedger {
    /// Assigned since the last report.
    pub recent_mbps: f64,
    /// Assigned in the interval before that.
    pub previous_mbps: f64,
    /// Join rate (Mbps per second) as of `rate_ms`.
    rate: f64,
    rate_ms: i64,
}

/// Time constant of a ledger's join rate, ms.
pub const JOIN_RATE_TAU_MS: f64 = 5_000.0;

impl LoadLedger {
    pub fn assign(&mut self, mbps: f64) {
        if mbps.is_finite() && mbps > 0.0 {
            self.recent_mbps += mbps;
        }
    }

    /// [`Self::assign`] at `now_ms`, counted in the join rate too.
    pub fn assign_at(&mut self, mbps: f64, now_ms: i64) {
        if !(mbps.is_finite() && mbps > 0.0) {
            return;
        }
        self.recent_mbps += mbps;
        self.rate = self.rate_at(now_ms) + mbps * 1000.0 / JOIN_RATE_TAU_MS;
        self.rate_ms = self.rate_ms.max(now_ms);
    }

    /// The join rate at `now_ms`, Mbps per second.
    pub fn rate_at(&self, now_ms: i64) -> f64 {
        let dt = (now_ms - self.rate_ms).max(0) as f64;
        self.rate * (-dt / JOIN_RATE_TAU_MS).exp()
    }

    /// Join-rate-aware admission: the join rate times `lag_ms`, Mbps.
    pub fn charge(&self, now_ms: i64, lag_ms: i64) -> f64 {
        self.rate_at(now_ms) * lag_ms.max(0) as f64 / 1000.0
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
