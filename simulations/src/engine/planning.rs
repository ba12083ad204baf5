//! Planned policies: when to plan (period, liveness triggers) and the node
//! views the planner gets (observed by telemetry, or ground truth).

use super::*;

impl Engine<'_> {
    /// Whether a node went down or came back since the last tick, as the
    /// planner sees liveness. The scheduler replans at once on both (its
    /// down and join triggers) instead of waiting for the next period.
    pub(super) fn liveness_changed(&mut self) -> bool {
        if !self.kind.plans_upstreams() {
            return false;
        }
        let mut changed = false;
        for i in 0..self.n {
            let down = if self.kind == PolicyKind::Oracle {
                !self.up[i]
            } else {
                self.view.health(i, self.now) == Health::Down
            };
            changed |= std::mem::replace(&mut self.down_seen[i], down) != down;
        }
        changed
    }

    /// Plans when the period is over, or at once when `force`d (the first
    /// plan, a liveness change); a forced plan is never skipped by the
    /// deadband and restarts the period.
    pub(super) fn replan_if_due(&mut self, force: bool) {
        if !self.kind.plans_upstreams() || (!force && self.now < self.next_plan) {
            return;
        }
        self.next_plan = self.now + u64::from(self.s.telemetry.replan_interval_ms);
        let nodes = if self.kind == PolicyKind::Oracle {
            self.truth_views()
        } else {
            self.observed_views()
        };
        let interval = self.s.telemetry.report_interval_ms;
        if let Some(q) = self.policy.qoe.as_mut() {
            q.replan(nodes, self.now, interval, !force);
        }
    }

    fn base_view(&self, i: usize) -> NodeView {
        let node = &self.w.nodes[i];
        let mut published = BTreeMap::new();
        for (s, &o) in self.w.stream_origin.iter().enumerate() {
            if usize::from(o) == i
                && let Ok(k) = StreamKey::parse(&qoe::stream_key(s))
            {
                published.insert(k, self.w.bitrate_mbps * 1000.0);
            }
        }
        NodeView {
            id: node.id.clone(),
            health: Health::Up,
            coord: Some(node.coord),
            capacity_mbps: node.capacity_mbps,
            egress_mbps: 0.0,
            buffer_ms: None,
            public_url: format!("http://{}.sim/", node.id),
            probe_addr: format!("{}.sim:7402", node.id),
            paths: BTreeMap::new(),
            published,
            static_origins: BTreeMap::new(),
        }
    }

    /// What the scheduler knows: health from report age, reported load,
    /// buffer health and probe paths.
    fn observed_views(&self) -> Vec<NodeView> {
        (0..self.n)
            .map(|i| {
                let mut v = self.base_view(i);
                v.health = self.view.health(i, self.now);
                if v.health == Health::Down {
                    v.published.clear();
                }
                v.egress_mbps = self.view.egress_mbps[i];
                v.buffer_ms = self.view.buffer_ms[i];
                v.paths = self.view.paths[i]
                    .iter()
                    .map(|(p, s)| (self.w.nodes[usize::from(*p)].id.clone(), *s))
                    .collect();
                v
            })
            .collect()
    }

    /// Ground truth for the oracle: every path measured exactly.
    fn truth_views(&mut self) -> Vec<NodeView> {
        let mut out = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let mut v = self.base_view(i);
            v.health = if self.up[i] { Health::Up } else { Health::Down };
            if !self.up[i] {
                v.published.clear();
            }
            v.egress_mbps = self.egress(i);
            v.buffer_ms = self.buffer_health(i);
            for j in 0..self.n {
                if i == j {
                    continue;
                }
                let (xr, xl) = self.pair_degrade(i, j);
                let loss =
                    network::path_loss(&self.s.network, self.w.km(j, i)) + self.cong[j].loss + xl;
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
