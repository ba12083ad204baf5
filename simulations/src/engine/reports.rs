//! What the agents report each interval: load, buffer health, client
//! groups and probe paths, with noise, delay and loss applied. Reports
//! travel on each agent's telemetry stream: in order, so one never
//! arrives before an earlier one.

use super::*;
use vantage_plan::smoothing::PathReport;

impl Engine<'_> {
    fn gauss(&mut self) -> f64 {
        // Box–Muller.
        let u1: f64 = self.noise.random::<f64>().max(1e-12);
        let u2: f64 = self.noise.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn noisy(&mut self, x: f64) -> f64 {
        let k = self.s.telemetry.noise;
        (x * (1.0 + k * self.gauss())).max(0.0)
    }

    pub(super) fn reports(&mut self) {
        let tel = self.s.telemetry.clone();
        // Group aggregates from the sessions each node served (summed in
        // `advance`), in a fixed order.
        let mut groups: Vec<Vec<(u32, GroupAgg)>> = vec![Vec::new(); self.n];
        let mut agg: Vec<((u16, u32), Sums)> = self.agg.drain().collect();
        agg.sort_unstable_by_key(|(k, _)| *k);
        for ((node, city), (k, rtt, loss, buf, stalled, rate)) in agg {
            let kf = f64::from(k);
            let g = GroupAgg {
                viewers: k,
                rtt_ms: self.noisy(rtt / kf),
                loss: (loss / kf).min(1.0),
                buffer_ms: buf / kf,
                stall_rate: f64::from(stalled) / kf,
                delivery_mbps: self.noisy(rate / kf),
            };
            groups[usize::from(node)].push((city, g));
        }
        let t_s = self.now as f64 / 1000.0;
        let extra: f64 = self
            .telemetry_delay
            .iter()
            .map(|&(i, d)| f64::from(d) * self.s.events[i].get_ref().strength(t_s))
            .sum();
        let extra = extra.round() as u32;
        let delay = u64::from(tel.delay_ms + extra);
        let planned = self.kind.plans_upstreams();
        for (node, node_groups) in groups.iter_mut().enumerate() {
            let mut lost = false;
            for &(i, p) in &self.telemetry_loss {
                if p.is_none_or(|p| usize::from(p) == node) {
                    let share = self.s.events[i].get_ref().strength(t_s);
                    lost |= share >= 1.0 || self.noise.random::<f64>() < share;
                }
            }
            let dropped =
                tel.loss_probability > 0.0 && self.noise.random::<f64>() < tel.loss_probability;
            if !self.up[node] || lost || dropped {
                continue;
            }
            let egress = self.egress(node);
            let cap = self.w.nodes[node].capacity_mbps;
            let egress_seen = self.noisy(egress);
            let (buffer_ms, streams) = if self.kind == PolicyKind::Qoe {
                self.stream_health(node)
            } else {
                (self.buffer_health(node), Vec::new())
            };
            let paths = if planned {
                self.probe(node)
            } else {
                Vec::new()
            };
            let r = Report {
                node: node as u16,
                generated_ms: self.now,
                egress_mbps: egress_seen,
                utilisation: egress_seen / cap,
                buffer_ms,
                groups: std::mem::take(node_groups),
                paths,
                streams,
            };
            let at = (self.now + delay).max(self.delivered_at[node]);
            self.delivered_at[node] = at;
            self.push(at, Ev::Deliver(Box::new(r)));
        }
    }

    /// Mean GOP-cache depth of a node's feeds: a full GOP when the upstream
    /// keeps up, less in proportion when it does not.
    pub(super) fn buffer_health(&mut self, node: usize) -> Option<f64> {
        let mut sum = 0.0;
        let mut k = 0u32;
        for stream in 0..self.streams {
            if self.feeds[node * self.streams + stream].active
                || usize::from(self.w.stream_origin[stream]) == node
                    && self.feeds[node * self.streams + stream].downstream > 0
            {
                let r = self.feed_ratio_top(node, stream);
                sum += self.w.gop_ms * r;
                k += 1;
            }
        }
        (k > 0).then(|| sum / f64::from(k))
    }

    /// [`Self::buffer_health`] and the GOP-cache depth of each stream the
    /// node holds (what the agent reports per stream).
    pub(super) fn stream_health(&mut self, node: usize) -> (Option<f64>, Vec<(u32, f64)>) {
        let mut out = Vec::new();
        for stream in 0..self.streams {
            let f = self.feeds[node * self.streams + stream];
            if f.active || usize::from(self.w.stream_origin[stream]) == node && f.downstream > 0 {
                let r = self.feed_ratio_top(node, stream);
                out.push((stream as u32, self.w.gop_ms * r));
            }
        }
        let mean =
            (!out.is_empty()).then(|| out.iter().map(|x| x.1).sum::<f64>() / out.len() as f64);
        (mean, out)
    }

    /// What `node`'s agent measured towards its table's probe targets this
    /// interval (see [`super::probe::AgentProbe`]). Targets that left the table are
    /// forgotten; dead targets answer nothing and are left out.
    fn probe(&mut self, node: usize) -> Vec<(u16, PathReport)> {
        let targets: Vec<u16> = self.policy.probe_targets(node).to_vec();
        self.probes[node].retain(|t, _| targets.contains(t));
        let k = self.s.telemetry.probes_per_interval.max(1);
        let interval = u64::from(self.s.telemetry.report_interval_ms).max(1);
        let (rtt_window, loss_window) = probe::windows(interval);
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let u = usize::from(t);
            if !self.up[u] {
                continue;
            }
            let (xr, xl) = self.pair_degrade(u, node);
            let rtt_true = self.w.rtt(u, node) + self.cong[u].queue_ms + xr;
            let loss_true =
                (network::relay_loss(&self.s.network, self.w.km(u, node)) + self.cong[u].loss + xl)
                    .min(0.9);
            let jitter = self.w.jitter(u, node);
            let rtt = (rtt_true + jitter * self.gauss().abs()).max(0.1);
            let lost = (0..k)
                .filter(|_| self.noise.random::<f64>() < loss_true)
                .count() as u32;
            let p = self.probes[node].entry(t).or_default();
            p.observe(rtt, k, lost, (rtt_window, loss_window));
            out.push((t, p.report()));
        }
        out
    }
}
