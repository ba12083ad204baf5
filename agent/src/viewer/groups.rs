//! Viewer QoE aggregated per client group, pure (time is an argument).
//!
//! Each group keeps its live viewer count and 1 s buckets of what its
//! viewers' samples added up to over the last `window` (default 10 s):
//!
//! * `tcp_rtt_ms` — mean of the sampled smoothed RTTs;
//! * `retransmit_rate` — segments retransmitted / segments sent;
//! * `stall_rate` — time stalled / time watched (rebuffering ratio);
//! * `buffer_ms` — mean of the buffer levels reported (CMCD `bl`, or the
//!   relay's send lag);
//! * `delivery_rate_mbps` — mean of the sampled `TCP_INFO` delivery rates
//!   (Linux ≥ 4.9; 0 when none was seen);
//! * `samples` — `TCP_INFO` samples taken.
//!
//! At most `max_groups` groups are kept; viewers of further groups are
//! counted in the `"other"` group.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use vantage_proto::v1::GroupQoe;
use vantage_shared::group::GroupKey;

const BUCKET: Duration = Duration::from_secs(1);

/// Windows and limits of the viewer aggregation.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewerConfig {
    /// Span the reported figures cover.
    pub window: Duration,
    /// [`super::ViewerHandle::sample`] reads `TCP_INFO` at most this often.
    pub sample_interval: Duration,
    pub max_groups: usize,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            sample_interval: Duration::from_secs(1),
            max_groups: 256,
        }
    }
}

/// What one viewer contributed to a bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Contribution {
    pub rtt_ms: Option<f64>,
    /// `TCP_INFO` delivery rate, Mbps.
    pub delivery_mbps: Option<f64>,
    pub retransmitted: u64,
    pub segments: u64,
    pub watched: Duration,
    pub stalled: Duration,
    pub buffer_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    rtt_sum_ms: f64,
    rtt_n: u32,
    rate_sum_mbps: f64,
    rate_n: u32,
    retrans: u64,
    segs: u64,
    watch_ms: f64,
    stall_ms: f64,
    buffer_sum_ms: f64,
    buffer_n: u32,
}

impl Acc {
    fn add(&mut self, c: &Contribution) {
        if let Some(r) = c.rtt_ms.filter(|r| r.is_finite() && *r >= 0.0) {
            self.rtt_sum_ms += r;
            self.rtt_n = self.rtt_n.saturating_add(1);
        }
        if let Some(r) = c.delivery_mbps.filter(|r| r.is_finite() && *r >= 0.0) {
            self.rate_sum_mbps += r;
            self.rate_n = self.rate_n.saturating_add(1);
        }
        self.retrans = self.retrans.saturating_add(c.retransmitted);
        self.segs = self.segs.saturating_add(c.segments);
        self.watch_ms += c.watched.as_secs_f64() * 1000.0;
        self.stall_ms += c.stalled.as_secs_f64() * 1000.0;
        if let Some(b) = c.buffer_ms.filter(|b| b.is_finite() && *b >= 0.0) {
            self.buffer_sum_ms += b;
            self.buffer_n = self.buffer_n.saturating_add(1);
        }
    }

    fn merge(&mut self, o: &Acc) {
        self.rtt_sum_ms += o.rtt_sum_ms;
        self.rtt_n = self.rtt_n.saturating_add(o.rtt_n);
        self.rate_sum_mbps += o.rate_sum_mbps;
        self.rate_n = self.rate_n.saturating_add(o.rate_n);
        self.retrans = self.retrans.saturating_add(o.retrans);
        self.segs = self.segs.saturating_add(o.segs);
        self.watch_ms += o.watch_ms;
        self.stall_ms += o.stall_ms;
        self.buffer_sum_ms += o.buffer_sum_ms;
        self.buffer_n = self.buffer_n.saturating_add(o.buffer_n);
    }
}

#[derive(Debug, Default)]
struct Group {
    viewers: u32,
    buckets: VecDeque<(u64, Acc)>,
}

/// All groups of one agent.
#[derive(Debug)]
pub struct Groups {
    cfg: ViewerConfig,
    epoch: Instant,
    groups: HashMap<GroupKey, Group>,
}

impl Groups {
    pub fn new(cfg: ViewerConfig, epoch: Instant) -> Self {
        Self {
            cfg,
            epoch,
            groups: HashMap::new(),
        }
    }

    pub fn config(&self) -> &ViewerConfig {
        &self.cfg
    }

    fn slot(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.epoch);
        u64::try_from(d.as_millis() / BUCKET.as_millis()).unwrap_or(u64::MAX)
    }

    fn span(&self) -> u64 {
        let n = self.cfg.window.as_millis() / BUCKET.as_millis();
        u64::try_from(n).unwrap_or(u64::MAX).max(1)
    }

    /// A viewer joins `key`; returns the group it is counted in (`"other"`
    /// when the group limit is reached).
    pub fn join(&mut self, key: GroupKey) -> GroupKey {
        let key = if !self.groups.contains_key(&key) && self.groups.len() >= self.cfg.max_groups {
            GroupKey::other()
        } else {
            key
        };
        let g = self.groups.entry(key.clone()).or_default();
        g.viewers = g.viewers.saturating_add(1);
        key
    }

    /// A viewer of `key` left.
    pub fn leave(&mut self, key: &GroupKey) {
        if let Some(g) = self.groups.get_mut(key) {
            g.viewers = g.viewers.saturating_sub(1);
        }
    }

    /// Adds a viewer's contribution at `now`.
    pub fn record(&mut self, key: &GroupKey, now: Instant, c: &Contribution) {
        let slot = self.slot(now);
        let oldest = slot.saturating_sub(self.span() - 1);
        let Some(g) = self.groups.get_mut(key) else {
            return;
        };
        match g.buckets.back_mut() {
            Some((s, acc)) if *s == slot => acc.add(c),
            _ => {
                let mut acc = Acc::default();
                acc.add(c);
                g.buckets.push_back((slot, acc));
            }
        }
        while g.buckets.front().is_some_and(|(s, _)| *s < oldest) {
            g.buckets.pop_front();
        }
    }

    /// Live viewers in all groups.
    pub fn viewers(&self) -> u32 {
        self.groups.values().map(|g| g.viewers).sum()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every group with viewers or samples in the window, sorted by label;
    /// groups with neither are forgotten.
    pub fn snapshot(&mut self, now: Instant) -> Vec<GroupQoe> {
        let oldest = self.slot(now).saturating_sub(self.span() - 1);
        self.groups.retain(|_, g| {
            g.buckets.retain(|(s, _)| *s >= oldest);
            g.viewers > 0 || !g.buckets.is_empty()
        });
        let mut out: Vec<GroupQoe> = self
            .groups
            .iter()
            .map(|(key, g)| {
                let mut a = Acc::default();
                for (_, b) in &g.buckets {
                    a.merge(b);
                }
                let ratio = |num: f64, den: f64| {
                    if den > 0.0 {
                        (num / den).clamp(0.0, 1.0)
                    } else {
                        0.0
                    }
                };
                GroupQoe {
                    group: key.to_string(),
                    viewers: g.viewers,
                    tcp_rtt_ms: if a.rtt_n > 0 {
                        a.rtt_sum_ms / f64::from(a.rtt_n)
                    } else {
                        0.0
                    },
                    retransmit_rate: ratio(a.retrans as f64, a.segs as f64),
                    stall_rate: ratio(a.stall_ms, a.watch_ms),
                    buffer_ms: if a.buffer_n > 0 {
                        a.buffer_sum_ms / f64::from(a.buffer_n)
                    } else {
                        0.0
                    },
                    samples: a.rtt_n,
                    delivery_rate_mbps: if a.rate_n > 0 {
                        a.rate_sum_mbps / f64::from(a.rate_n)
                    } else {
                        0.0
                    },
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

    fn paris() -> GroupKey {
        "u09t".parse().unwrap()
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn aggregates_rtt_retransmits_stalls_and_buffer() {
        let t0 = Instant::now();
        let mut g = Groups::new(ViewerConfig::default(), t0);
        let k = g.join(paris());
        g.join(paris());
        g.record(
            &k,
            t0,
            &Contribution {
                rtt_ms: Some(20.0),
                delivery_mbps: Some(8.0),
                retransmitted: 1,
                segments: 100,
                watched: s(1),
                stalled: Duration::from_millis(100),
                buffer_ms: Some(2000.0),
            },
        );
        g.record(
            &k,
            t0 + s(1),
            &Contribution {
                rtt_ms: Some(40.0),
                retransmitted: 3,
                segments: 100,
                watched: s(1),
                ..Default::default()
            },
        );
        let snap = g.snapshot(t0 + s(2));
        assert_eq!(snap.len(), 1);
        let q = &snap[0];
        assert_eq!(q.group, "u09t");
        assert_eq!(q.viewers, 2);
        assert_eq!(q.tcp_rtt_ms, 30.0);
        assert_eq!(q.retransmit_rate, 0.02);
        assert_eq!(q.stall_rate, 0.05);
        assert_eq!(q.buffer_ms, 2000.0);
        assert_eq!(q.samples, 2);
        // The one delivery-rate sample (the other viewer had none).
        assert_eq!(q.delivery_rate_mbps, 8.0);
        assert!(
            vantage_shared::validate::report(&vantage_proto::v1::Report {
                groups: snap,
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn window_forgets_and_empty_groups_disappear() {
        let t0 = Instant::now();
        let mut g = Groups::new(ViewerConfig::default(), t0);
        let k = g.join(paris());
        g.record(
            &k,
            t0,
            &Contribution {
                rtt_ms: Some(10.0),
                ..Default::default()
            },
        );
        g.leave(&k);
        assert_eq!(g.snapshot(t0 + s(5))[0].samples, 1, "in the window");
        assert!(g.snapshot(t0 + s(11)).is_empty(), "gone after the window");
        assert!(g.is_empty());
    }

    #[test]
    fn groups_are_bounded() {
        let t0 = Instant::now();
        let mut g = Groups::new(
            ViewerConfig {
                max_groups: 2,
                ..Default::default()
            },
            t0,
        );
        assert_eq!(g.join(paris()), paris());
        assert_eq!(g.join(GroupKey::unknown()), GroupKey::unknown());
        assert_eq!(g.join("r3gx".parse().unwrap()), GroupKey::other());
        assert_eq!(g.join(paris()), paris(), "known groups still count");
        assert_eq!(g.viewers(), 4);
        let labels: Vec<String> = g.snapshot(t0).into_iter().map(|q| q.group).collect();
        assert_eq!(labels, ["other", "u09t", "unknown"]);
    }

    #[test]
    fn ratios_are_clamped_and_nan_ignored() {
        let t0 = Instant::now();
        let mut g = Groups::new(ViewerConfig::default(), t0);
        let k = g.join(paris());
        g.record(
            &k,
            t0,
            &Contribution {
                rtt_ms: Some(f64::NAN),
                delivery_mbps: Some(f64::INFINITY),
                retransmitted: 5,
                segments: 1,
                stalled: s(3),
                watched: s(1),
                buffer_ms: Some(-1.0),
            },
        );
        let q = &g.snapshot(t0)[0];
        assert_eq!((q.retransmit_rate, q.stall_rate), (1.0, 1.0));
        assert_eq!((q.tcp_rtt_ms, q.samples, q.buffer_ms), (0.0, 0, 0.0));
    }
}
