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
//!
//! **Trends.** Each figure also keeps a fast mean (a quarter of the
//! half-life). For a figure moving linearly, an exponentially weighted
//! mean lags by its mean age `τ = half_life / ln 2`, so the slope is
//! `(fast − slow) / (τ_slow − τ_fast)`; when the figure is getting worse
//! (RTT, loss, stalls up; buffer, delivery rate down) the estimate is the
//! fast mean projected `horizon` ahead (`fast + slope·(τ_fast + horizon)`),
//! else the fast mean: a path that creeps towards trouble loses new
//! viewers before its average shows it.
//!
//! **Node-wide estimates.** The same figures over all groups a node
//! serves: what the ranking assumes of a node for a group that has no
//! estimate of its own there (a lossy peering or a stalling node shows in
//! every group it serves).

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

/// A figure's slow and fast decaying means.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tracked {
    slow: Mean,
    fast: Mean,
}

/// The fast mean's half-life as a share of the estimate's.
const FAST_SHARE: f64 = 0.25;

impl Tracked {
    fn add(&mut self, d_slow: f64, d_fast: f64, x: Option<f64>, w: f64) {
        self.slow.add(d_slow, x, w);
        self.fast.add(d_fast, x, w);
    }

    /// The value: fast, projected `horizon_ms` ahead when it worsens
    /// (`worse_up`: larger is worse).
    fn get(&self, half_life_ms: i64, horizon_ms: i64, worse_up: bool) -> Option<f64> {
        let (slow, fast) = (self.slow.get()?, self.fast.get().or(self.slow.get())?);
        let tau_slow = half_life_ms.max(1) as f64 / std::f64::consts::LN_2;
        let tau_fast = tau_slow * FAST_SHARE;
        let slope = (fast - slow) / (tau_slow - tau_fast);
        let worsening = if worse_up { slope > 0.0 } else { slope < 0.0 };
        Some(if worsening && horizon_ms > 0 {
            (fast + slope * (tau_fast + horizon_ms as f64)).max(0.0)
        } else {
            fast
        })
    }
}

/// What one node's viewers of one group experienced, decaying.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupEstimate {
    pub updated_ms: i64,
    /// Decayed sample weight at `updated_ms`.
    pub weight: f64,
    rtt_ms: Tracked,
    retransmit_rate: Tracked,
    stall_rate: Tracked,
    buffer_ms: Tracked,
    delivery_mbps: Tracked,
}

/// An estimate seen at a given time (trend-projected, see the module
/// docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupObservation {
    /// Effective samples after decay.
    pub samples: f64,
    pub rtt_ms: Option<f64>,
    pub retransmit_rate: Option<f64>,
    pub stall_rate: Option<f64>,
    pub buffer_ms: Option<f64>,
    /// Mean TCP delivery rate of the group's connections, Mbps.
    pub delivery_mbps: Option<f64>,
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
        let dt = now_ms - self.updated_ms;
        let d = decay(dt, half_life_ms);
        let df = decay(dt, ((half_life_ms as f64) * FAST_SHARE) as i64);
        let w = f64::from(if g.samples > 0 { g.samples } else { g.viewers });
        self.updated_ms = self.updated_ms.max(now_ms);
        self.weight *= d;
        if w <= 0.0 {
            for m in [
                &mut self.rtt_ms,
                &mut self.retransmit_rate,
                &mut self.stall_rate,
                &mut self.buffer_ms,
                &mut self.delivery_mbps,
            ] {
                m.add(d, df, None, 0.0);
            }
            return;
        }
        self.weight += w;
        // 0 means "not measured" for RTT (TCP_INFO), delivery rate and
        // buffer (CMCD `bl`), unless stalls were seen: then an empty
        // buffer is the point.
        let rtt = (g.tcp_rtt_ms > 0.0).then_some(g.tcp_rtt_ms);
        let buffer = (g.buffer_ms > 0.0 || g.stall_rate > 0.0).then_some(g.buffer_ms);
        let rate = (g.delivery_rate_mbps > 0.0).then_some(g.delivery_rate_mbps);
        self.rtt_ms.add(d, df, rtt, w);
        self.retransmit_rate
            .add(d, df, Some(g.retransmit_rate.clamp(0.0, 1.0)), w);
        self.stall_rate
            .add(d, df, Some(g.stall_rate.clamp(0.0, 1.0)), w);
        self.buffer_ms.add(d, df, buffer, w);
        self.delivery_mbps.add(d, df, rate, w);
    }

    /// The estimate as seen at `now_ms`, without trend projection.
    pub fn at(&self, now_ms: i64, half_life_ms: i64) -> GroupObservation {
        self.projected(now_ms, half_life_ms, 0)
    }

    /// The estimate as seen at `now_ms`, each figure that is getting worse
    /// projected `horizon_ms` ahead.
    pub fn projected(&self, now_ms: i64, half_life_ms: i64, horizon_ms: i64) -> GroupObservation {
        let (h, t) = (half_life_ms, horizon_ms);
        GroupObservation {
            samples: self.weight * decay(now_ms - self.updated_ms, half_life_ms),
            rtt_ms: self.rtt_ms.get(h, t, true),
            retransmit_rate: self.retransmit_rate.get(h, t, true).map(|x| x.min(1.0)),
            stall_rate: self.stall_rate.get(h, t, true).map(|x| x.min(1.0)),
            buffer_ms: self.buffer_ms.get(h, t, false),
            delivery_mbps: self.delivery_mbps.get(h, t, false),
        }
    }
}

/// One report's groups as one aggregate (sample-weighted means; the
/// `"other"` overflow group and the agent's own segmenter reader count
/// too: they are viewers of the node).
fn node_wide(groups: &[GroupQoe]) -> Option<GroupQoe> {
    let mut out = GroupQoe::default();
    let (mut w_all, mut w_rtt, mut w_buf, mut w_rate) = (0.0, 0.0, 0.0, 0.0);
    for g in groups {
        let w = f64::from(if g.samples > 0 { g.samples } else { g.viewers });
        if w <= 0.0 {
            continue;
        }
        w_all += w;
        out.retransmit_rate += w * g.retransmit_rate.clamp(0.0, 1.0);
        out.stall_rate += w * g.stall_rate.clamp(0.0, 1.0);
        if g.tcp_rtt_ms > 0.0 {
            w_rtt += w;
            out.tcp_rtt_ms += w * g.tcp_rtt_ms;
        }
        if g.buffer_ms > 0.0 || g.stall_rate > 0.0 {
            w_buf += w;
            out.buffer_ms += w * g.buffer_ms;
        }
        if g.delivery_rate_mbps > 0.0 {
            w_rate += w;
            out.delivery_rate_mbps += w * g.delivery_rate_mbps;
        }
        out.viewers = out.viewers.saturating_add(g.viewers);
        out.samples = out.samples.saturating_add(g.samples);
    }
    if w_all <= 0.0 {
        return None;
    }
    let div = |x: f64, w: f64| if w > 0.0 { x / w } else { 0.0 };
    out.retransmit_rate /= w_all;
    out.stall_rate /= w_all;
    out.tcp_rtt_ms = div(out.tcp_rtt_ms, w_rtt);
    out.buffer_ms = div(out.buffer_ms, w_buf);
    out.delivery_rate_mbps = div(out.delivery_rate_mbps, w_rate);
    if out.samples == 0 {
        out.samples = out.viewers;
    }
    Some(out)
}

/// All (node, group) estimates, by group label then node.
#[derive(Debug, Clone)]
pub struct Learner {
    half_life_ms: i64,
    max_groups: usize,
    groups: HashMap<Arc<str>, Vec<(Arc<str>, GroupEstimate)>>,
    /// Node-wide estimates: every group of a node's reports together.
    nodes: HashMap<Arc<str>, GroupEstimate>,
    /// Reports for groups beyond `max_groups`.
    pub dropped: u64,
}

impl Learner {
    pub fn new(half_life_ms: i64, max_groups: usize) -> Self {
        Self {
            half_life_ms: half_life_ms.max(1),
            max_groups,
            groups: HashMap::new(),
            nodes: HashMap::new(),
            dropped: 0,
        }
    }

    pub fn half_life_ms(&self) -> i64 {
        self.half_life_ms
    }

    /// Folds in the group aggregates of one report of `node`.
    pub fn observe(&mut self, node: &str, groups: &[GroupQoe], now_ms: i64) {
        if let Some(all) = node_wide(groups) {
            let est = self
                .nodes
                .entry(Arc::from(node))
                .or_insert_with(|| GroupEstimate {
                    updated_ms: now_ms,
                    ..GroupEstimate::default()
                });
            est.observe(&all, now_ms, self.half_life_ms);
        }
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

    /// The node-wide estimate of `node` (all groups it served).
    pub fn node(&self, node: &str) -> Option<&GroupEstimate> {
        self.nodes.get(node)
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
        self.nodes
            .retain(|n, e| keep_node(n) && e.at(now_ms, hl).samples >= min_weight);
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
