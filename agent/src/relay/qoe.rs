//! Player-reported experience (CMCD) aggregated per client group.
//!
//! A viewer's client group is the geohash cell (precision 4, see
//! [`vantage_shared::group`]) of the `lat`/`lon` query parameters of its play
//! request, else its session's group ([`super::sessions`]), else
//! [`UNKNOWN_GROUP`]. CMCD samples (from the `CMCD=` query and `CMCD-*`
//! headers of served requests and from `POST /v1/cmcd` beacons, only those
//! of sessions this edge serves, at most one per session and second: see
//! [`super::sessions`]) are kept per
//! group for [`WINDOW_MS`]; a report carries, per group, the mean buffer
//! length (`bl`) and the share of stall signals: samples with buffer
//! starvation (`bs`) plus viewers whose send lag is over the stall
//! threshold, over samples plus viewers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use vantage_shared::cmcd::Cmcd;
use vantage_shared::group::{DEFAULT_PRECISION as GROUP_PRECISION, geohash};

pub const UNKNOWN_GROUP: &str = "unknown";
/// Samples older than this are forgotten.
pub const WINDOW_MS: u64 = 10_000;
/// Samples kept per group.
const MAX_SAMPLES: usize = 512;
/// Groups tracked; samples of further groups are counted under "other".
const MAX_GROUPS: usize = 4096;
const OTHER_GROUP: &str = "other";

/// The group of a request from its query string (`lat=..&lon=..`):
/// the geohash cell of the position, `None` without a valid position.
pub fn group_from_query(query: Option<&str>) -> Option<String> {
    let q = query?;
    let mut lat = None;
    let mut lon = None;
    for pair in q.split('&') {
        match pair.split_once('=') {
            Some(("lat", v)) => lat = v.parse::<f64>().ok(),
            Some(("lon", v)) => lon = v.parse::<f64>().ok(),
            _ => {}
        }
    }
    geohash(lat?, lon?, GROUP_PRECISION)
}

/// What the aggregate keeps of one CMCD report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The session it came from ([`super::sessions`]).
    pub session: u64,
    pub at_ms: u64,
    /// Buffer length, ms.
    pub bl_ms: Option<f64>,
    /// Buffer starvation since the last report.
    pub stalled: bool,
}

impl Sample {
    /// `None` when the report says nothing about the buffer.
    pub fn from_cmcd(c: &Cmcd, session: u64, at_ms: u64) -> Option<Sample> {
        if c.bl.is_none() && c.bs.is_none() {
            return None;
        }
        Some(Sample {
            session,
            at_ms,
            bl_ms: c.bl.map(|v| v as f64),
            stalled: c.bs == Some(true),
        })
    }
}

/// One group's figures for a report.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupFigures {
    pub group: String,
    pub samples: u32,
    pub buffer_ms: f64,
    pub stalls: u32,
}

/// CMCD samples per group.
#[derive(Debug, Default)]
pub struct Qoe {
    groups: HashMap<Arc<str>, VecDeque<Sample>>,
}

impl Qoe {
    /// Marks the sample `session` took at `at_ms` in `group` stalled (a
    /// later report of the same interval said buffer starvation).
    pub fn mark_stalled(&mut self, group: &str, session: u64, at_ms: u64) {
        let key = if self.groups.contains_key(group) {
            group
        } else {
            OTHER_GROUP
        };
        if let Some(q) = self.groups.get_mut(key)
            && let Some(s) = q
                .iter_mut()
                .rev()
                .find(|s| s.session == session && s.at_ms == at_ms)
        {
            s.stalled = true;
        }
    }

    pub fn record(&mut self, group: &str, s: Sample) {
        let key: Arc<str> = if self.groups.contains_key(group) || self.groups.len() < MAX_GROUPS {
            Arc::from(group)
        } else {
            Arc::from(OTHER_GROUP)
        };
        let q = self.groups.entry(key).or_default();
        if q.len() == MAX_SAMPLES {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Per-group figures over the window; forgets older samples.
    pub fn figures(&mut self, now_ms: u64) -> Vec<GroupFigures> {
        let cutoff = now_ms.saturating_sub(WINDOW_MS);
        self.groups.retain(|_, q| {
            while q.front().is_some_and(|s| s.at_ms < cutoff) {
                q.pop_front();
            }
            !q.is_empty()
        });
        let mut out: Vec<GroupFigures> = self
            .groups
            .iter()
            .map(|(g, q)| {
                let bl: Vec<f64> = q.iter().filter_map(|s| s.bl_ms).collect();
                GroupFigures {
                    group: g.to_string(),
                    samples: q.len() as u32,
                    buffer_ms: if bl.is_empty() {
                        0.0
                    } else {
                        bl.iter().sum::<f64>() / bl.len() as f64
                    },
                    stalls: q.iter().filter(|s| s.stalled).count() as u32,
                }
            })
            .collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_geohash_cells_of_the_query_position() {
        assert_eq!(
            group_from_query(Some("x=1&lat=48.8566&lon=2.3522")).as_deref(),
            Some("u09t")
        );
        assert_eq!(group_from_query(Some("lat=91&lon=0")), None);
        assert_eq!(group_from_query(Some("lat=1")), None);
        assert_eq!(group_from_query(None), None);
    }

    #[test]
    fn figures_average_buffer_and_count_stalls_in_the_window() {
        let mut q = Qoe::default();
        let s = |at, bl, stalled| Sample {
            session: 1,
            at_ms: at,
            bl_ms: Some(bl),
            stalled,
        };
        q.record("u09t", s(1_000, 1000.0, false));
        q.record("u09t", s(12_000, 3000.0, true));
        q.record("u09t", s(12_500, 5000.0, false));
        let f = q.figures(13_000);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].samples, 2, "the first sample is outside the window");
        assert_eq!(f[0].buffer_ms, 4000.0);
        assert_eq!(f[0].stalls, 1);
        // A later report of the same interval marks its sample stalled.
        q.mark_stalled("u09t", 1, 12_500);
        assert_eq!(q.figures(13_000)[0].stalls, 2);
        assert!(q.figures(60_000).is_empty());
    }

    #[test]
    fn samples_come_from_bl_and_bs() {
        let c = Cmcd {
            bl: Some(2100),
            bs: Some(true),
            ..Default::default()
        };
        let s = Sample::from_cmcd(&c, 1, 5).unwrap();
        assert_eq!(s.bl_ms, Some(2100.0));
        assert!(s.stalled);
        assert!(Sample::from_cmcd(&Cmcd::default(), 1, 5).is_none());
    }
}
