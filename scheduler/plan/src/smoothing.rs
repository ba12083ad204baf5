//! From reports to fresh planner inputs: the smoothing the scheduler's
//! registry applies to each node's reports before the planning session
//! sees them (the session then holds them inside its deadband,
//! [`crate::inputs`]). Shared with the simulator, so both turn the same
//! reports into the same inputs.
//!
//! Per node, over its reports in arrival order:
//!
//! * **load**: what a report's load counts as ([`load_mbps`]: its egress,
//!   or the share of the box live comments fill, whichever is larger);
//! * **egress**: the utilisation (that load / capacity) of each report into an
//!   EWMA with weight [`LOAD_SMOOTHING`]; the planner gets EWMA ×
//!   capacity (the latest egress as reported when the capacity is not
//!   positive);
//! * **paths**: per peer, the report's RTT — the window's median, else its
//!   EWMA ([`PathReport::rtt_ms`]) — and loss, each into an EWMA with
//!   weight [`PATH_SMOOTHING`]; the sample count is the latest report's. A
//!   peer a report does not name (the agent no longer probes it: its probe
//!   targets rotated, or it stopped being a candidate) keeps its last
//!   values for [`PATH_RETENTION_MS`], then is forgotten. Without that
//!   retention, a path that stops being probed falls back to the distance
//!   model, which can look better than the measurement, so the planner
//!   switches back to it, probes it again, and flaps (seen in the
//!   simulator: a route flipping 190 times in 15 minutes).

use crate::inputs::PATH_SMOOTHING;
use crate::node::PathStat;
use std::collections::BTreeMap;
use vantage_proto::v1::{Load, PathMeasurement};
use vantage_shared::estimate::Ewma;

/// EWMA weight of a new report in a node's smoothed utilisation (the same
/// as [`PATH_SMOOTHING`]).
pub const LOAD_SMOOTHING: f64 = 0.3;

/// How long a path no report names keeps its last values: the default
/// probe rotation (random probe targets change every 5 minutes).
pub const PATH_RETENTION_MS: i64 = 300_000;

/// What a report says about one path, as far as planning is concerned (the
/// planning fields of a [`PathMeasurement`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathReport {
    /// Median RTT of the agent's window (0: none).
    pub rtt_p50_ms: f64,
    /// The agent's RTT EWMA.
    pub rtt_ewma_ms: f64,
    /// Loss ratio over the agent's loss window.
    pub loss: f64,
    /// Probes resolved within that window.
    pub samples: u32,
}

impl PathReport {
    /// The path's RTT as the planner uses it: the window's median, else
    /// the EWMA.
    pub fn rtt_ms(&self) -> f64 {
        if self.rtt_p50_ms > 0.0 {
            self.rtt_p50_ms
        } else {
            self.rtt_ewma_ms
        }
    }
}

impl PathReport {
    /// This report alone as a path measurement (no smoothing).
    pub fn stat_now(&self) -> PathStat {
        PathStat {
            rtt_ms: self.rtt_ms(),
            loss: self.loss,
            samples: self.samples,
        }
    }
}

impl From<&PathMeasurement> for PathReport {
    fn from(p: &PathMeasurement) -> Self {
        PathReport {
            rtt_p50_ms: p.rtt_p50_ms,
            rtt_ewma_ms: p.rtt_ewma_ms,
            loss: p.loss,
            samples: p.samples,
        }
    }
}

/// One peer's latest report and its smoothed RTT and loss.
#[derive(Debug, Clone)]
pub struct SmoothedPath {
    pub latest: PathReport,
    /// When a report last named this peer.
    pub reported_ms: i64,
    rtt_ms: Ewma,
    loss: Ewma,
}

impl SmoothedPath {
    fn new(latest: PathReport, now_ms: i64) -> Self {
        let mut p = SmoothedPath {
            latest,
            reported_ms: now_ms,
            rtt_ms: Ewma::new(PATH_SMOOTHING),
            loss: Ewma::new(PATH_SMOOTHING),
        };
        p.observe(latest, now_ms);
        p
    }

    fn observe(&mut self, r: PathReport, now_ms: i64) {
        self.latest = r;
        self.reported_ms = now_ms;
        self.rtt_ms.observe(r.rtt_ms());
        self.loss.observe(r.loss);
    }

    /// The path as the planner is offered it: smoothed RTT and loss (the
    /// latest report's where nothing finite was smoothed yet), latest
    /// sample count; `smoothed == false`: the latest report as it is.
    pub fn stat(&self, smoothed: bool) -> PathStat {
        let (mut rtt_ms, mut loss) = (self.latest.rtt_ms(), self.latest.loss);
        if smoothed {
            rtt_ms = self.rtt_ms.value().unwrap_or(rtt_ms);
            loss = self.loss.value().unwrap_or(loss);
        }
        PathStat {
            rtt_ms,
            loss,
            samples: self.latest.samples,
        }
    }
}

/// What a report's load counts as, in Mbps of a node of `capacity_mbps`:
/// the largest of its egress (video and comments) and the shares of the box
/// its live comments fill — connections open / the agent's connection limit,
/// deliveries per second / the fan-out it is sized for — each times the
/// capacity. An edge full of idle comment connections, or busy fanning
/// comments out, is loaded even when its bytes are few; a share whose limit
/// is not reported (0: an agent without comments) counts nothing.
pub fn load_mbps(l: &Load, capacity_mbps: f64) -> f64 {
    let share = |used: f64, limit: f64| {
        if limit > 0.0 && used.is_finite() && used > 0.0 {
            used / limit
        } else {
            0.0
        }
    };
    let comments = share(
        f64::from(l.comment_connections),
        f64::from(l.comment_connection_limit),
    )
    .max(share(
        l.comment_fanout_per_s,
        l.comment_fanout_capacity_per_s,
    ));
    let egress = if l.egress_mbps.is_finite() {
        l.egress_mbps.max(0.0)
    } else {
        0.0
    };
    if capacity_mbps > 0.0 {
        egress.max(comments * capacity_mbps)
    } else {
        egress
    }
}

/// A node's report smoothing; `K` names its peers (node ids in the
/// scheduler, node indices in the simulator).
#[derive(Debug, Clone)]
pub struct Smoother<K> {
    utilisation: Ewma,
    egress_mbps: Option<f64>,
    paths: BTreeMap<K, SmoothedPath>,
}

impl<K: Ord> Default for Smoother<K> {
    fn default() -> Self {
        Smoother {
            utilisation: Ewma::new(LOAD_SMOOTHING),
            egress_mbps: None,
            paths: BTreeMap::new(),
        }
    }
}

impl<K: Ord> Smoother<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A report's load: its egress, on a node of `capacity_mbps`.
    pub fn observe_load(&mut self, egress_mbps: f64, capacity_mbps: f64) {
        self.egress_mbps = Some(egress_mbps);
        let u = if capacity_mbps > 0.0 {
            egress_mbps / capacity_mbps
        } else {
            0.0
        };
        self.utilisation.observe(u);
    }

    /// A report's paths (each peer at most once), received at `now_ms`:
    /// smoothed into what was known; peers the report does not name keep
    /// their last values until [`PATH_RETENTION_MS`] after they were last
    /// reported.
    pub fn observe_paths(&mut self, paths: impl IntoIterator<Item = (K, PathReport)>, now_ms: i64) {
        for (peer, r) in paths {
            match self.paths.get_mut(&peer) {
                Some(p) => p.observe(r, now_ms),
                None => {
                    self.paths.insert(peer, SmoothedPath::new(r, now_ms));
                }
            }
        }
        self.paths
            .retain(|_, p| now_ms.saturating_sub(p.reported_ms) <= PATH_RETENTION_MS);
    }

    /// The latest egress as reported (0 before any report).
    pub fn latest_egress_mbps(&self) -> f64 {
        self.egress_mbps.unwrap_or(0.0)
    }

    /// Egress as viewer admission counts it: the larger of the latest
    /// report and the smoothed value. A rise shows at once (the latest
    /// report), while one report that reads low (measurement noise, an
    /// interval cut short) cannot open headroom the node does not have:
    /// only the smoothed value decides how fast reported load may fall.
    pub fn admission_egress_mbps(&self, capacity_mbps: f64) -> f64 {
        self.latest_egress_mbps()
            .max(self.egress_mbps(capacity_mbps))
    }

    /// Egress as the planner is offered it: the smoothed utilisation ×
    /// `capacity_mbps` (the latest egress when the capacity is not
    /// positive or nothing was reported).
    pub fn egress_mbps(&self, capacity_mbps: f64) -> f64 {
        match self.utilisation.value() {
            Some(u) if capacity_mbps > 0.0 => u * capacity_mbps,
            _ => self.latest_egress_mbps(),
        }
    }

    /// Every peer's path, by peer.
    pub fn paths(&self) -> impl Iterator<Item = (&K, &SmoothedPath)> {
        self.paths.iter()
    }

    pub fn path(&self, peer: &K) -> Option<&SmoothedPath> {
        self.paths.get(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(p50: f64, ewma: f64, loss: f64, samples: u32) -> PathReport {
        PathReport {
            rtt_p50_ms: p50,
            rtt_ewma_ms: ewma,
            loss,
            samples,
        }
    }

    #[test]
    fn path_rtt_and_loss_are_smoothed_from_the_median_else_the_ewma() {
        let mut s: Smoother<&str> = Smoother::new();
        s.observe_paths([("b", report(100.0, 90.0, 0.0, 10))], 0);
        assert_eq!(s.path(&"b").unwrap().stat(true).rtt_ms, 100.0);
        // No median in the second report: its EWMA counts.
        s.observe_paths([("b", report(0.0, 200.0, 0.1, 12))], 1_000);
        let st = s.path(&"b").unwrap().stat(true);
        assert!((st.rtt_ms - (100.0 + PATH_SMOOTHING * 100.0)).abs() < 1e-9);
        assert!((st.loss - PATH_SMOOTHING * 0.1).abs() < 1e-12);
        assert_eq!(st.samples, 12);
        // Unsmoothed: the latest report as it is.
        assert_eq!(s.path(&"b").unwrap().stat(false).rtt_ms, 200.0);
    }

    #[test]
    fn a_peer_left_out_of_reports_keeps_its_values_for_a_while_then_is_forgotten() {
        let mut s: Smoother<u16> = Smoother::new();
        s.observe_paths(
            [
                (1, report(50.0, 50.0, 0.0, 5)),
                (2, report(10.0, 10.0, 0.0, 5)),
            ],
            0,
        );
        // Not probed any more: still measured for the retention period...
        s.observe_paths([(2, report(20.0, 20.0, 0.0, 5))], 1_000);
        assert_eq!(s.path(&1).unwrap().stat(true).rtt_ms, 50.0);
        s.observe_paths([(2, report(20.0, 20.0, 0.0, 5))], PATH_RETENTION_MS);
        assert!(s.path(&1).is_some());
        // ...then forgotten, and started afresh when it is probed again.
        s.observe_paths([(2, report(20.0, 20.0, 0.0, 5))], PATH_RETENTION_MS + 1);
        assert!(s.path(&1).is_none());
        assert_eq!(s.paths().count(), 1);
        s.observe_paths([(1, report(80.0, 80.0, 0.0, 5))], PATH_RETENTION_MS + 2);
        assert_eq!(s.path(&1).unwrap().stat(true).rtt_ms, 80.0);
    }

    #[test]
    fn comment_connections_and_fan_out_count_as_load() {
        let mut l = Load {
            egress_mbps: 100.0,
            ..Default::default()
        };
        // No comment limits reported: egress alone.
        l.comment_connections = 50_000;
        assert_eq!(load_mbps(&l, 1_000.0), 100.0);
        // 90 % of the connection limit: 90 % of the capacity.
        l.comment_connection_limit = 55_555;
        let want = 50_000.0 / 55_555.0 * 1_000.0;
        assert!((load_mbps(&l, 1_000.0) - want).abs() < 1e-9);
        // Fan-out beyond the connection share takes over.
        l.comment_fanout_per_s = 1_900_000.0;
        l.comment_fanout_capacity_per_s = 2_000_000.0;
        assert!((load_mbps(&l, 1_000.0) - 950.0).abs() < 1e-9);
        // Egress above both stays.
        l.egress_mbps = 990.0;
        assert_eq!(load_mbps(&l, 1_000.0), 990.0);
        // No capacity: the egress as reported.
        assert_eq!(load_mbps(&l, 0.0), 990.0);
        // Nonsense never counts.
        l.egress_mbps = f64::NAN;
        l.comment_fanout_per_s = f64::INFINITY;
        assert!((load_mbps(&l, 1_000.0) - want).abs() < 1e-9);
    }

    #[test]
    fn egress_is_the_smoothed_utilisation_times_capacity() {
        let mut s: Smoother<u16> = Smoother::new();
        assert_eq!(s.egress_mbps(1_000.0), 0.0);
        s.observe_load(500.0, 1_000.0);
        s.observe_load(800.0, 1_000.0);
        let want = (0.5 + LOAD_SMOOTHING * 0.3) * 1_000.0;
        assert!((s.egress_mbps(1_000.0) - want).abs() < 1e-9);
        assert_eq!(s.latest_egress_mbps(), 800.0);
        // Without a capacity: the latest egress as reported.
        assert_eq!(s.egress_mbps(0.0), 800.0);
        // Admission takes a rise at once...
        assert_eq!(s.admission_egress_mbps(1_000.0), 800.0);
        // ...but one report that reads low lowers it only as far as the
        // smoothed value falls.
        let before = s.egress_mbps(1_000.0);
        s.observe_load(100.0, 1_000.0);
        let smoothed = before + LOAD_SMOOTHING * (100.0 - before);
        assert!((s.admission_egress_mbps(1_000.0) - smoothed).abs() < 1e-9);
    }

    #[test]
    fn a_measurement_converts_with_its_planning_fields() {
        let m = PathMeasurement {
            target_node_id: "x".into(),
            rtt_ewma_ms: 30.0,
            rtt_p50_ms: 0.0,
            loss: 0.02,
            samples: 7,
            ..PathMeasurement::default()
        };
        let r = PathReport::from(&m);
        assert_eq!((r.rtt_ms(), r.loss, r.samples), (30.0, 0.02, 7));
    }
}
