//! Planned policies: the simulated scheduler's planning and liveness loops
//! around the planning core, and the node views the planning session is
//! offered (observed by telemetry for `qoe`, ground truth for `oracle`).

use super::*;
use crate::telemetry::LIVENESS_TICK_MS;

impl Engine<'_> {
    /// The facts every node view starts from: placement, capacity, URLs,
    /// the streams the node is the origin of.
    pub(super) fn base_views(w: &World) -> Vec<NodeView> {
        (0..w.n())
            .map(|i| {
                let node = &w.nodes[i];
                let mut v = NodeView::new(node.id.clone());
                v.coord = Some(node.coord);
                v.capacity_mbps = node.capacity_mbps;
                v.public_url = format!("http://{}.sim/", node.id);
                v.probe_addr = format!("{}.sim:7402", node.id);
                for (s, &o) in w.stream_origin.iter().enumerate() {
                    if usize::from(o) == i
                        && let Ok(k) = StreamKey::parse(&stream_key(s))
                    {
                        v.published.insert(k, w.bitrate_mbps * 1000.0);
                    }
                }
                v
            })
            .collect()
    }

    /// A planning round at `at` (planned policies): the session is offered
    /// the fresh inputs of the nodes that changed since the last round
    /// (`qoe`) or the ground truth of every node (`oracle`), and steps if a
    /// plan is due.
    pub(super) fn plan_round(&mut self, at: u64) {
        if self.policy.planning.is_none() {
            return;
        }
        let views = if self.kind == PolicyKind::Oracle {
            self.truth_views()
        } else {
            self.observed_views()
        };
        if let Some(p) = self.policy.planning.as_mut() {
            p.round(views, at);
        }
    }

    /// The liveness loop at `at`: node states from report arrivals; a
    /// change invalidates the resolver's snapshot (rebuilt once a second
    /// otherwise) and starts a planning round at once, as the scheduler's
    /// liveness loop wakes its planning loop. Runs every
    /// [`LIVENESS_TICK_MS`].
    pub(super) fn liveness_tick(&mut self, at: u64) {
        let changed = self.view.evaluate(at);
        if let Some(q) = self.policy.qoe.as_mut() {
            if changed {
                q.invalidate();
            }
            q.maybe_refresh(&self.view, self.w, at);
        }
        if changed && self.kind == PolicyKind::Qoe {
            self.plan_round(at);
        }
        self.push(at + LIVENESS_TICK_MS, Ev::Liveness);
    }

    /// What the scheduler's registry offers: the fresh view of every node
    /// changed since the last round.
    fn observed_views(&mut self) -> Vec<NodeView> {
        let Some(p) = self.policy.planning.as_ref() else {
            return Vec::new();
        };
        let ids = p.ids();
        self.view
            .take_touched()
            .into_iter()
            .map(|i| {
                let mut v = self.base[i].clone();
                self.view.fill_fresh(i, ids, &mut v);
                v
            })
            .collect()
    }

    /// Ground truth for the oracle: health, egress and buffer health as
    /// they are, every path measured exactly.
    fn truth_views(&mut self) -> Vec<NodeView> {
        let mut out = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let mut v = self.base[i].clone();
            v.health = if self.up[i] { Health::Up } else { Health::Down };
            v.egress_mbps = self.egress(i);
            v.buffer_ms = self.buffer_health(i);
            for j in 0..self.n {
                if i == j {
                    continue;
                }
                let (xr, xl) = self.pair_degrade(i, j);
                let loss =
                    network::relay_loss(&self.s.network, self.w.km(j, i)) + self.cong[j].loss + xl;
                v.paths.insert(
                    self.w.nodes[j].id.clone(),
                    PathStat {
                        rtt_ms: self.w.rtt(j, i) + self.cong[j].queue_ms + xr,
                        loss: loss.min(0.9),
                        samples: 1000,
                    },
                );
            }
            out.push(v);
        }
        out
    }
}
