//! Group-based learning (C3, Pytheas): per (node, client group) estimates of
//! what that node's viewers in that group experience, from the agents'
//! per-group aggregates (`Report.groups`): `TCP_INFO` RTT, retransmit rate,
//! stall rate, CMCD buffer level. Pure; time is an argument.
//!
//! Each figure is a weighted mean whose weights decay with a half-life: a
//! report contributes with weight = its sample count (viewers when it has
//! none), and everything earlier counts `0.5^(Δt / half_life)` as much.
//! The decayed total weight is the estimate's effective sample count; the
//! ranking trusts an estimate once that count reaches `min_group_samples`
//! and falls back to the distance model when it decays below.

use std::collections::HashMap;
use std::sync::Arc;
use vantage_proto::v1::GroupQoe;

/// Groups kept at most; reports for further groups are ignored (counted).
pub const DEFAULT_MAX_GROUPS: usize = 1_000_000;

/// A weighted mean with decaying weight.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Mean {
    weight: f64,
    value: f64,
}

impl Mean {
    fn add(&mut self, decay: f64, x: Option<f64>, w: f64) {
        self.weight *= decay;
        let Some(x) = x.filter(|x| x.is_finite() && *x >= 0.0) else {
            return;
        };
        let total = self.weight + w;
        if total > 0.0 {
            self.value = (self.value * self.weight + x * w) / total;
            self.weight = total;
        }
    }

    fn get(&self) -> Option<f64> {
        (self.weight > 0.0).then_some(self.value)
    }
}

/// What one node's viewers of one group experienced, decaying.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupEstimate {
    pub updated_ms: i64,
    /// Decayed sample weight at `updated_ms`.
    pub weight: f64,
    rtt_ms: Mean,
    retransmit_rate: Mean,
    stall_rate: Mean,
    buffer_ms: Mean,
}

/// An estimate seen at a given time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupObservation {
    /// Effective samples after decay.
    pub samples: f64,
    pub rtt_ms: Option<f64>,
    pub retransmit_rate: Option<f64>,
    pub stall_rate: Option<f64>,
    pub buffer_ms: Option<f64>,
}

fn decay(dt_ms: i64, half_life_ms: i64) -> f64 {
    if dt_ms <= 0 {
        return 1.0;
    }
    0.5f64.powf(dt_ms as f64 / half_life_ms.max(1) as f64)
}

impl GroupEstimate {
    /// Folds in one report's aggregate for this (node, group).
    pub fn observe(&mut self, g: &GroupQoe, now_ms: i64, half_life_ms: i64) {
        let d = decay(now_ms - self.updated_ms, half_life_ms);
        let w = f64::from(if g.samples > 0 { g.samples } else { g.viewers });
        self.updated_ms = self.updated_ms.max(now_ms);
        self.weight *= d;
        if w <= 0.0 {
            for m in [
                &mut self.rtt_ms,
                &mut self.retransmit_rate,
                &mut self.stall_rate,
                &mut self.buffer_ms,
            ] {
                m.add(d, None, 0.0);
            }
            return;
        }
        self.weight += w;
        // 0 means "not measured" for RTT (TCP_INFO) and buffer (CMCD `bl`),
        // unless stalls were seen: then an empty buffer is the point.
        let rtt = (g.tcp_rtt_ms > 0.0).then_some(g.tcp_rtt_ms);
        let buffer = (g.buffer_ms > 0.0 || g.stall_rate > 0.0).then_some(g.buffer_ms);
        self.rtt_ms.add(d, rtt, w);
        self.retransmit_rate
            .add(d, Some(g.retransmit_rate.clamp(0.0, 1.0)), w);
        self.stall_rate
            .add(d, Some(g.stall_rate.clamp(0.0, 1.0)), w);
        self.buffer_ms.add(d, buffer, w);
    }

    /// The estimate as seen at `now_ms`.
    pub fn at(&self, now_ms: i64, half_life_ms: i64) -> GroupObservation {
        GroupObservation {
            samples: self.weight * decay(now_ms - self.updated_ms, half_life_ms),
            rtt_ms: self.rtt_ms.get(),
            retransmit_rate: self.retransmit_rate.get(),
            stall_rate: self.stall_rate.get(),
            buffer_ms: self.buffer_ms.get(),
        }
    }
}

/// All (node, group) estimates, by group label then node.
#[derive(Debug, Clone)]
pub struct Learner {
    half_life_ms: i64,
    max_groups: usize,
    groups: HashMap<Arc<str>, Vec<(Arc<str>, GroupEstimate)>>,
    /// Reports for groups beyond `max_groups`.
    pub dropped: u64,
}

impl Learner {
    pub fn new(half_life_ms: i64, max_groups: usize) -> Self {
        Self {
            half_life_ms: half_life_ms.max(1),
            max_groups,
            groups: HashMap::new(),
            dropped: 0,
        }
    }

    pub fn half_life_ms(&self) -> i64 {
        self.half_life_ms
    }

    /// Folds in the group aggregates of one report of `node`.
    pub fn observe(&mut self, node: &str, groups: &[GroupQoe], now_ms: i64) {
        for g in groups {
            if g.group.is_empty() || g.group == "other" {
                continue;
            }
            if !self.groups.contains_key(g.group.as_str()) {
                if self.groups.len() >= self.max_groups {
                    self.dropped += 1;
                    continue;
                }
                self.groups.insert(Arc::from(g.group.as_str()), Vec::new());
            }
            let Some(list) = self.groups.get_mut(g.group.as_str()) else {
                continue;
            };
            let est = match list.iter().position(|(n, _)| &**n == node) {
                Some(i) => &mut list[i].1,
                None => {
                    list.push((
                        Arc::from(node),
                        GroupEstimate {
                            updated_ms: now_ms,
                            ..GroupEstimate::default()
                        },
                    ));
                    let last = list.len() - 1;
                    &mut list[last].1
                }
            };
            est.observe(g, now_ms, self.half_life_ms);
        }
    }

    /// Estimates of every node that served `group`.
    pub fn group(&self, group: &str) -> &[(Arc<str>, GroupEstimate)] {
        self.groups.get(group).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, group: &str, node: &str) -> Option<&GroupEstimate> {
        self.group(group)
            .iter()
            .find(|(n, _)| &**n == node)
            .map(|(_, e)| e)
    }

    /// Forgets estimates whose effective weight decayed below `min_weight`
    /// and those of nodes that no longer exist.
    pub fn prune(&mut self, now_ms: i64, min_weight: f64, keep_node: impl Fn(&str) -> bool) {
        let hl = self.half_life_ms;
        self.groups.retain(|_, list| {
            list.retain(|(n, e)| keep_node(n) && e.at(now_ms, hl).samples >= min_weight);
            !list.is_empty()
        });
    }

    /// Groups known.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// (node, group) pairs known.
    pub fn pairs(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }
}
