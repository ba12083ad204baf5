//! What the planner sees of a node's telemetry: smoothed, and moved only
//! when it moves by more than a deadband.
//!
//! Reports wobble: a path's p50 RTT or a node's egress changes by a few
//! per cent from one second to the next without anything having happened.
//! Fed raw into a full replan every second, that wobble re-plans the whole
//! cluster for nothing and, where two candidates are close, flips choices
//! and re-versions tables. So the scheduler keeps, per node, the inputs of
//! the last plan ([`Planned`]) and hands the planner a fresh value only
//! when it left the [`Deadband`] around the planned one ([`Rules::hold`]); path RTT and loss
//! are smoothed first (EWMA, [`PATH_SMOOTHING`]), egress is the registry's
//! utilisation EWMA. When no node's inputs
//! moved, the periodic replan is skipped (`App::run_planner`): a plan of
//! identical inputs would only reproduce the tables in force.
//!
//! Structural facts are never held back: health, eligibility (utilisation
//! crossing the hard limit), the set of published streams and of measured
//! peers, and a path crossing the minimum-samples threshold.

use crate::node::{Health, NodeView, PathStat};
use std::collections::BTreeMap;
use vantage_shared::score::Ranges;
use vantage_shared::stream::StreamKey;

/// EWMA weight of a new report in a path's smoothed RTT and loss (the same
/// as the registry's utilisation EWMA).
pub const PATH_SMOOTHING: f64 = 0.3;

/// How far an input may move before the planner sees the new value
/// (config file section `[deadband]`). Each bound is "changed by at least":
/// an input moves when it reaches the bound.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deadband {
    /// Path RTT: moves when it changed by at least this share of the
    /// planned value...
    pub rtt_rel: f64,
    /// ...and by at least this many milliseconds.
    pub rtt_ms: f64,
    /// Path loss ratio, absolute (0.005 = half a percentage point).
    pub loss: f64,
    /// Utilisation (egress / capacity), absolute; or...
    pub utilisation: f64,
    /// ...the load penalty `P(utilisation)` (steep near the hard limit),
    /// absolute.
    pub load_penalty: f64,
    /// Mean GOP-cache buffer, milliseconds.
    pub buffer_ms: f64,
    /// Bit rate of a published stream, share of the planned value.
    pub bitrate_rel: f64,
}

impl Default for Deadband {
    fn default() -> Self {
        Self {
            rtt_rel: 0.10,
            rtt_ms: 2.0,
            loss: 0.005,
            utilisation: 0.05,
            load_penalty: 0.05,
            buffer_ms: 250.0,
            bitrate_rel: 0.10,
        }
    }
}

/// The inputs of one node as the last plan saw them.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub health: Health,
    pub egress_mbps: f64,
    pub buffer_ms: Option<f64>,
    /// By peer id.
    pub paths: BTreeMap<String, PathStat>,
    /// Streams published to this node, with bit rate.
    pub published: BTreeMap<StreamKey, f64>,
    /// When each was first seen published here ([`NodeView::published_since`]).
    pub published_since: BTreeMap<StreamKey, i64>,
}

impl Planned {
    /// The inputs a planning view carries, moved out of it (the simulator
    /// builds views directly; the scheduler's registry keeps `Planned` per
    /// node). [`Planned::write_to`] puts inputs back.
    pub fn take_from(v: &mut NodeView) -> Planned {
        Planned {
            health: v.health,
            egress_mbps: v.egress_mbps,
            buffer_ms: v.buffer_ms,
            paths: std::mem::take(&mut v.paths),
            published: std::mem::take(&mut v.published),
            published_since: std::mem::take(&mut v.published_since),
        }
    }

    /// Puts these inputs into `v`.
    pub fn write_to(&self, v: &mut NodeView) {
        v.health = self.health;
        v.egress_mbps = self.egress_mbps;
        v.buffer_ms = self.buffer_ms;
        v.paths.clone_from(&self.paths);
        v.published.clone_from(&self.published);
        v.published_since.clone_from(&self.published_since);
    }
}

/// The cluster-wide settings [`Rules::hold`] applies.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub band: &'a Deadband,
    pub ranges: &'a Ranges,
    pub min_path_samples: u32,
}

impl Deadband {
    /// A band that holds nothing back: every change reaches the planner.
    pub fn zero() -> Self {
        Deadband {
            rtt_rel: 0.0,
            rtt_ms: 0.0,
            loss: 0.0,
            utilisation: 0.0,
            load_penalty: 0.0,
            buffer_ms: 0.0,
            bitrate_rel: 0.0,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("rtt_rel", self.rtt_rel),
            ("rtt_ms", self.rtt_ms),
            ("loss", self.loss),
            ("utilisation", self.utilisation),
            ("load_penalty", self.load_penalty),
            ("buffer_ms", self.buffer_ms),
            ("bitrate_rel", self.bitrate_rel),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a finite number >= 0"));
            }
        }
        Ok(())
    }
}

impl Rules<'_> {
    /// `fresh`, with every value that stayed inside the band around its
    /// `planned` counterpart replaced by the planned value. Without a
    /// previous plan everything is fresh. `capacity_mbps` is the node's.
    pub fn hold(
        &self,
        capacity_mbps: f64,
        planned: Option<&Planned>,
        mut fresh: Planned,
    ) -> Planned {
        let Some(p) = planned else { return fresh };
        let band = self.band;
        if !self.load_moved(capacity_mbps, p.egress_mbps, fresh.egress_mbps) {
            fresh.egress_mbps = p.egress_mbps;
        }
        if let (Some(old), Some(new)) = (p.buffer_ms, fresh.buffer_ms)
            && (new - old).abs() < band.buffer_ms
        {
            fresh.buffer_ms = Some(old);
        }
        for (peer, new) in &mut fresh.paths {
            if let Some(old) = p.paths.get(peer)
                && !self.path_moved(old, new)
            {
                *new = *old;
            }
        }
        for (key, new) in &mut fresh.published {
            if let Some(&old) = p.published.get(key)
                && (*new - old).abs() < band.bitrate_rel * old.abs()
            {
                *new = old;
            }
        }
        fresh
    }

    /// [`Rules::hold`] on whole views, without copying the planned one:
    /// every input of `fresh` that stayed inside the band around
    /// `planned`'s is replaced by the planned value. Facts (coordinates,
    /// URLs, static origins) are left as `fresh` has them.
    pub fn hold_view(&self, planned: &NodeView, fresh: &mut NodeView) {
        let band = self.band;
        if !self.load_moved(fresh.capacity_mbps, planned.egress_mbps, fresh.egress_mbps) {
            fresh.egress_mbps = planned.egress_mbps;
        }
        if let (Some(old), Some(new)) = (planned.buffer_ms, fresh.buffer_ms)
            && (new - old).abs() < band.buffer_ms
        {
            fresh.buffer_ms = Some(old);
        }
        for (peer, new) in &mut fresh.paths {
            if let Some(old) = planned.paths.get(peer)
                && !self.path_moved(old, new)
            {
                *new = *old;
            }
        }
        for (key, new) in &mut fresh.published {
            if let Some(&old) = planned.published.get(key)
                && (*new - old).abs() < band.bitrate_rel * old.abs()
            {
                *new = old;
            }
        }
    }

    fn load_moved(&self, capacity_mbps: f64, old: f64, new: f64) -> bool {
        let util = |mbps: f64| {
            if capacity_mbps > 0.0 {
                mbps / capacity_mbps
            } else {
                1.0
            }
        };
        let (u0, u1) = (util(old), util(new));
        let eligible = |u: f64| u < self.ranges.hard_utilisation;
        eligible(u0) != eligible(u1)
            || (u1 - u0).abs() >= self.band.utilisation
            || (self.ranges.load_penalty(u1) - self.ranges.load_penalty(u0)).abs()
                >= self.band.load_penalty
    }

    fn path_moved(&self, old: &PathStat, new: &PathStat) -> bool {
        let band = self.band;
        let measured = |p: &PathStat| p.samples >= self.min_path_samples;
        let d_rtt = (new.rtt_ms - old.rtt_ms).abs();
        measured(old) != measured(new)
            || (d_rtt >= band.rtt_ms && d_rtt >= band.rtt_rel * old.rtt_ms.abs())
            || (new.loss - old.loss).abs() >= band.loss
            || !(new.rtt_ms.is_finite() && new.loss.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(egress: f64, rtt: f64, loss: f64, samples: u32) -> Planned {
        Planned {
            health: Health::Up,
            egress_mbps: egress,
            buffer_ms: Some(2_000.0),
            paths: [(
                "peer".to_owned(),
                PathStat {
                    rtt_ms: rtt,
                    loss,
                    samples,
                },
            )]
            .into(),
            published: [(StreamKey::parse("live/a").unwrap(), 4_000.0)].into(),
            published_since: BTreeMap::new(),
        }
    }

    const CAPACITY: f64 = 1_000.0;

    fn rules<'a>(band: &'a Deadband, ranges: &'a Ranges) -> Rules<'a> {
        Rules {
            band,
            ranges,
            min_path_samples: 5,
        }
    }

    #[test]
    fn wobble_inside_the_band_keeps_the_planned_values() {
        let ranges = Ranges::default();
        let d = Deadband::default();
        let old = planned(300.0, 100.0, 0.001, 20);
        let mut fresh = planned(330.0, 108.0, 0.004, 18);
        fresh.buffer_ms = Some(1_800.0);
        fresh
            .published
            .insert(StreamKey::parse("live/a").unwrap(), 4_300.0);
        assert_eq!(rules(&d, &ranges).hold(CAPACITY, Some(&old), fresh), old);
    }

    #[test]
    fn a_value_leaving_the_band_is_taken_and_the_rest_held() {
        let ranges = Ranges::default();
        let d = Deadband::default();
        let old = planned(300.0, 100.0, 0.001, 20);
        // RTT +12 % (> 10 % and > 2 ms): taken; egress +3 %: held.
        let held = rules(&d, &ranges).hold(CAPACITY, Some(&old), planned(309.0, 112.0, 0.001, 20));
        assert_eq!(held.paths["peer"].rtt_ms, 112.0);
        assert_eq!(held.egress_mbps, 300.0);
        // A short path: +50 % is only 1 ms, under the absolute bound.
        let short = planned(300.0, 2.0, 0.0, 20);
        let held = rules(&d, &ranges).hold(CAPACITY, Some(&short), planned(300.0, 3.0, 0.0, 20));
        assert_eq!(held.paths["peer"].rtt_ms, 2.0);
        // Loss +0.5 pp: taken.
        let held = rules(&d, &ranges).hold(CAPACITY, Some(&old), planned(300.0, 100.0, 0.006, 20));
        assert_eq!(held.paths["peer"].loss, 0.006);
    }

    #[test]
    fn structural_changes_always_pass() {
        let ranges = Ranges::default();
        let d = Deadband::default();
        // Near the hard limit the load penalty is steep: +1 pp of
        // utilisation is a clear change there.
        let old = planned(900.0, 100.0, 0.0, 20);
        let held = rules(&d, &ranges).hold(CAPACITY, Some(&old), planned(910.0, 100.0, 0.0, 20));
        assert_eq!(held.egress_mbps, 910.0);
        // Crossing the hard limit (eligibility) by a hair.
        let old = planned(949.0, 100.0, 0.0, 20);
        let held = rules(&d, &ranges).hold(CAPACITY, Some(&old), planned(951.0, 100.0, 0.0, 20));
        assert_eq!(held.egress_mbps, 951.0);
        // A path becoming measured, a new peer, a new stream, health.
        let old = planned(300.0, 100.0, 0.0, 4);
        let mut fresh = planned(300.0, 100.5, 0.0, 5);
        fresh.health = Health::Suspect;
        fresh.paths.insert(
            "new".into(),
            PathStat {
                rtt_ms: 7.0,
                loss: 0.0,
                samples: 9,
            },
        );
        fresh
            .published
            .insert(StreamKey::parse("live/b").unwrap(), 1.0);
        let held = rules(&d, &ranges).hold(CAPACITY, Some(&old), fresh.clone());
        assert_eq!(held, fresh);
        // Nothing planned yet: everything is fresh.
        assert_eq!(
            rules(&d, &ranges).hold(CAPACITY, None, fresh.clone()),
            fresh
        );
    }

    #[test]
    fn holding_views_is_holding_inputs() {
        let ranges = Ranges::default();
        let d = Deadband::default();
        let r = rules(&d, &ranges);
        let view = |p: Planned| {
            let mut v = NodeView {
                capacity_mbps: CAPACITY,
                ..NodeView::new("n")
            };
            p.write_to(&mut v);
            v
        };
        let old = planned(300.0, 100.0, 0.001, 20);
        for fresh in [
            planned(330.0, 108.0, 0.004, 18),
            planned(309.0, 112.0, 0.001, 20),
            planned(951.0, 100.0, 0.0, 4),
            planned(300.5, 100.1, 0.02, 20),
        ] {
            let mut v = view(fresh.clone());
            r.hold_view(&view(old.clone()), &mut v);
            assert_eq!(v, view(r.hold(CAPACITY, Some(&old), fresh)));
        }
    }

    #[test]
    fn a_zero_band_holds_nothing_back() {
        let ranges = Ranges::default();
        let d = Deadband {
            rtt_rel: 0.0,
            rtt_ms: 0.0,
            loss: 0.0,
            utilisation: 0.0,
            load_penalty: 0.0,
            buffer_ms: 0.0,
            bitrate_rel: 0.0,
        };
        let old = planned(300.0, 100.0, 0.001, 20);
        let fresh = planned(300.5, 100.1, 0.001, 20);
        assert_eq!(
            rules(&d, &ranges).hold(CAPACITY, Some(&old), fresh.clone()),
            fresh
        );
        assert!(d.validate().is_ok());
        assert!(
            Deadband {
                rtt_ms: f64::NAN,
                ..d
            }
            .validate()
            .is_err()
        );
    }
}
