//! Viewers: arrivals, connecting to an edge (the policy's answer), and
//! what a viewer's path and its edge's feed deliver.

use super::*;

impl Engine<'_> {
    pub(super) fn arrival(&mut self) {
        let Some(a) = self.arrivals.pop() else {
            return;
        };
        let mut s = Session {
            a,
            node: NONE,
            phase: Phase::Waiting { until_ms: a.at_ms },
            player: Player {
                buffer_ms: 0.0,
                lag_ms: 0.0,
                stalled: false,
            },
            joined: false,
            join_ms: 0.0,
            stalls: 0,
            stall_ms: 0.0,
            play_ms: 0.0,
            lat_sum: 0.0,
            lat_w: 0.0,
            failed: NONE,
            moves: 0,
            skips: 0,
        };
        self.connect(&mut s, a.at_ms);
        self.sessions.push(s);
    }

    /// Asks the policy for an edge and starts connecting (or waits).
    pub(super) fn connect(&mut self, s: &mut Session, at: u64) {
        let exclude = (s.failed != NONE).then_some(s.failed);
        let choice = self.ask(s.a.city, s.a.stream, exclude);
        let p = &self.s.player;
        let Some(node) = choice else {
            s.phase = Phase::Waiting {
                until_ms: at + p.reconnect_timeout_ms as u64,
            };
            return;
        };
        if !self.up[node] {
            // The policy picked a dead edge: the connection times out.
            s.failed = node as u16;
            s.phase = Phase::Waiting {
                until_ms: at + p.reconnect_timeout_ms as u64,
            };
            return;
        }
        if s.node != NONE && usize::from(s.node) != node {
            s.moves += 1;
        }
        s.node = node as u16;
        self.viewers_at[node] += 1;
        let stream = s.a.stream as usize;
        self.feeds[node * self.streams + stream].viewers += 1;
        let cold_ms = self.ensure_feed(node, stream, 0);
        self.util_now[node] = self.egress(node) / self.w.nodes[node].capacity_mbps;
        let (rtt, _) = self.viewer_path(s.a.city as usize, node);
        let r = self.delivery_ratio(s, node);
        let u = self.rng.as_mut().map_or(0.5, |r| r.random::<f64>());
        let cached = u * self.w.gop_ms;
        let (t_dl, player) = player::join(cached, p.startup_buffer_ms, r.max(0.05));
        let setup = p.redirect_rtt_ms + 2.0 * rtt + cold_ms + t_dl;
        s.player = player;
        s.phase = Phase::Connecting {
            ready_ms: at + setup.max(1.0) as u64,
        };
    }

    fn ask(&mut self, city: u32, stream: u32, exclude: Option<u16>) -> Option<usize> {
        // The policy and its RNG leave the engine for the call: the ask
        // borrows the rest of it.
        let mut policy = std::mem::replace(&mut self.policy, Policy::new(self.kind, None, None));
        let mut rng = self
            .rng
            .take()
            .unwrap_or_else(|| ChaCha8Rng::seed_from_u64(0));
        let choice = {
            let this: &Self = self;
            let stamp = this.stamp;
            let feed_ratio = |p: usize| this.prospective_ratio(p, stream as usize, stamp);
            let viewer_path = |p: usize| this.viewer_path(city as usize, p);
            let ask = Ask {
                world: this.w,
                view: &this.view,
                now_ms: this.now,
                city,
                stream,
                exclude,
                truth: Truth {
                    up: &this.up,
                    utilisation: &this.util_now,
                    feed_ratio: &feed_ratio,
                    viewer_path: &viewer_path,
                },
            };
            policy.choose(&ask, &mut rng)
        };
        self.policy = policy;
        self.rng = Some(rng);
        choice
    }

    /// Ground truth RTT (with queueing) and loss of a viewer path.
    pub(super) fn viewer_path(&self, city: usize, node: usize) -> (f64, f64) {
        let net = &self.s.network;
        let c = &self.cong[node];
        let (xr, xl) = self.access[node];
        let rtt = self.w.city_rtt(city, node) + net.access_rtt_ms + c.queue_ms + xr;
        let loss = network::path_loss(net, self.w.city_km(city, node)) + c.loss + xl;
        (rtt, loss.min(0.9))
    }

    /// Delivery ratio (media ms per ms) a session gets now.
    fn delivery_ratio(&mut self, s: &Session, node: usize) -> f64 {
        self.delivery(s, node).0
    }

    /// Delivery ratio, viewer path RTT and feed latency of a session.
    pub(super) fn delivery(&mut self, s: &Session, node: usize) -> (f64, f64, f64) {
        let (rtt, loss) = self.viewer_path(s.a.city as usize, node);
        let tcp = network::tcp_mbps(rtt, loss);
        let t_s = (self.now.saturating_sub(s.a.at_ms)) as f64 / 1000.0 + s.a.trace_offset_s;
        let last_mile =
            self.w.traces[usize::from(s.a.trace)].at(t_s) * self.s.network.throughput_scale;
        let r_v = tcp.min(last_mile) / self.w.bitrate_mbps;
        let (feed, feed_ms) = self.feed_ratio(node, s.a.stream as usize, 0);
        (
            r_v.min(f64::from(feed)) * self.cong[node].share,
            rtt,
            f64::from(feed_ms),
        )
    }

    /// Upstream health of `node`'s feed of `stream` (≤ 1) and its one-way
    /// latency from the origin (ms), memoised per load update.
    pub(super) fn feed_ratio(&mut self, node: usize, stream: usize, depth: u32) -> (f32, f32) {
        let origin = usize::from(self.w.stream_origin[stream]);
        if node == origin {
            return (if self.up[node] { 1.0 } else { 0.0 }, 0.0);
        }
        let idx = node * self.streams + stream;
        let memo = self.ratio_memo[idx];
        if memo.0 == self.stamp {
            return (memo.1, memo.2);
        }
        let f = self.feeds[idx];
        let out = if !f.active || f.upstream == NONE || depth > 6 {
            (0.0, 0.0)
        } else {
            let u = usize::from(f.upstream);
            if !self.up[u] || !self.up[node] {
                (0.0, 0.0)
            } else {
                let (hop_ratio, hop_ms) = self.hop(u, node);
                let (up_ratio, up_ms) = self.feed_ratio(u, stream, depth + 1);
                ((hop_ratio as f32).min(up_ratio), up_ms + hop_ms as f32)
            }
        };
        self.ratio_memo[idx] = (self.stamp, out.0, out.1);
        out
    }

    /// Ratio a node's (would-be) feed delivers, for the oracle: the
    /// current feed, or a pull straight from the origin.
    fn prospective_ratio(&self, node: usize, stream: usize, stamp: u64) -> f64 {
        let idx = node * self.streams + stream;
        let memo = self.ratio_memo[idx];
        if memo.0 == stamp && self.feeds[idx].active {
            return f64::from(memo.1);
        }
        let origin = usize::from(self.w.stream_origin[stream]);
        if node == origin {
            return 1.0;
        }
        if !self.up[origin] {
            return 0.0;
        }
        self.hop(origin, node).0
    }

    /// Delivery ratio (≤ 1) and one-way delay (ms) of the hop `u → v`.
    fn hop(&self, u: usize, v: usize) -> (f64, f64) {
        let net = &self.s.network;
        let c = &self.cong[u];
        let (xr, xl) = self.pair_degrade(u, v);
        let rtt = self.w.rtt(u, v) + c.queue_ms + xr;
        let loss = network::path_loss(net, self.w.km(u, v)) + c.loss + xl;
        let ratio =
            (network::tcp_mbps(rtt, loss.min(0.9)) / self.w.bitrate_mbps).min(1.0) * c.share;
        (ratio, rtt / 2.0 + net.hop_processing_ms)
    }

    pub(super) fn pair_degrade(&self, u: usize, v: usize) -> (f64, f64) {
        if self.pair.is_empty() {
            return (0.0, 0.0);
        }
        let key = (u.min(v) as u16, u.max(v) as u16);
        self.pair.get(&key).copied().unwrap_or((0.0, 0.0))
    }
}
