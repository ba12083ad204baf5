//! Viewers: arrivals, connecting to an edge (the policy's answer), and
//! what a viewer's path and its edge's feed deliver.

use super::*;

/// What a session's connection gets now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivery {
    /// What the viewer path carries for one connection: TCP over the
    /// path, the last mile, the edge's fair share, Mbps.
    pub path_mbps: f64,
    pub rtt_ms: f64,
    /// The edge's feed: its weakest hop's TCP throughput (Mbps) and its
    /// lowest fair share, its one-way latency from the origin (ms).
    pub chain_mbps: f64,
    pub chain_share: f64,
    pub feed_ms: f64,
}

impl Delivery {
    /// Share of a rendition of `mbps` the feed delivers (≤ 1).
    pub fn feed_ratio(&self, mbps: f64) -> f64 {
        (self.chain_mbps / mbps).min(1.0) * self.chain_share
    }

    /// What the feed lets through for a rendition of `mbps`, Mbps (no
    /// limit while it keeps up).
    pub fn feed_mbps(&self, mbps: f64) -> f64 {
        if self.feed_ratio(mbps) >= 1.0 {
            f64::INFINITY
        } else {
            self.chain_mbps * self.chain_share
        }
    }
}

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
            abr: Abr::new(if a.hls {
                player::DEFAULT_ESTIMATE_MBPS
            } else {
                // An HTTP-FLV app starts from what this line carried in
                // earlier sessions.
                f64::from(a.capacity_mbps).min(self.last_mile_now(&a, a.at_ms))
            }),
            rendition: 0,
            joined: false,
            join_ms: 0.0,
            stalls: 0,
            stall_ms: 0.0,
            play_ms: 0.0,
            lat_sum: 0.0,
            lat_w: 0.0,
            mbps_ms: 0.0,
            failed: NONE,
            moves: 0,
            skips: 0,
            switches: 0,
            window_stalls: 0,
            window_ms: a.at_ms,
            steer_ms: a.at_ms + self.s.player.steering_ttl_ms as u64,
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
        let k = s.abr.choose(&self.w.ladder_mbps, usize::from(s.rendition));
        if s.joined && k != usize::from(s.rendition) {
            s.switches += 1;
        }
        s.rendition = k as u8;
        let cold_ms = self.attach(s, node);
        let d = self.delivery(s, node);
        let b = self.w.ladder_mbps[k];
        let r = (d.path_mbps / b).min(d.feed_ratio(b));
        // What the edge already holds (GOP cache, LL-HLS parts) goes out at
        // the viewer path's rate; only live media waits for the feed.
        let burst = (d.path_mbps / b).max(0.05);
        let u = self.rng.as_mut().map_or(0.5, |r| r.random::<f64>());
        let (setup, player) = if s.a.hls {
            // hls.js: the multivariant and media playlists (one request
            // each), then parts from PART-HOLD-BACK (3 parts) behind the
            // live edge; playback starts with one part buffered.
            let hold_back = 3.0 * p.part_ms;
            let (t_dl, mut pl) = player::join(hold_back, p.part_ms, burst, r.max(0.05));
            pl.lag_ms = hold_back.max(pl.lag_ms - t_dl);
            (p.redirect_rtt_ms + 3.0 * d.rtt_ms + cold_ms + t_dl, pl)
        } else {
            // HTTP-FLV: the GOP cache's burst (uniform 0..GOP of media),
            // then live media; playback starts at `startup_buffer_ms`.
            let cached = u * self.w.gop_ms;
            let (t_dl, pl) = player::join(cached, p.startup_buffer_ms, burst, r.max(0.05));
            (p.redirect_rtt_ms + 2.0 * d.rtt_ms + cold_ms + t_dl, pl)
        };
        s.player = player;
        s.phase = Phase::Connecting {
            ready_ms: at + setup.max(1.0) as u64,
        };
    }

    /// Counts `s` (at its rendition) as a viewer of `node`; returns the
    /// setup time of cold feed hops.
    pub(super) fn attach(&mut self, s: &mut Session, node: usize) -> f64 {
        s.node = node as u16;
        let stream = s.a.stream as usize;
        let k = usize::from(s.rendition);
        self.viewers_at[node] += 1;
        self.viewer_mbps[node] += self.w.ladder_mbps[k];
        self.feeds[node * self.streams + stream].viewers += 1;
        let cold_ms = self.ensure_feed(node, stream, 0);
        self.add_need(node, stream, k);
        self.util_now[node] = self.egress(node) / self.capacity[node].max(1e-9);
        cold_ms
    }

    /// An LL-HLS player changes rendition at the next part.
    pub(super) fn switch_rendition(&mut self, s: &mut Session, k: usize) {
        let node = usize::from(s.node);
        let stream = s.a.stream as usize;
        let old = usize::from(s.rendition);
        self.viewer_mbps[node] += self.w.ladder_mbps[k] - self.w.ladder_mbps[old];
        self.add_need(node, stream, k);
        self.remove_need(node, stream, old);
        s.rendition = k as u8;
        s.switches += 1;
    }

    /// Content Steering: the player reloads the steering manifest; when the
    /// policy's pathway priority puts another edge first, the next part
    /// comes from there (no interruption: the buffer covers the move).
    pub(super) fn steer(&mut self, s: &mut Session) {
        let cur = usize::from(s.node);
        let Some(node) = self.ask_steer(s.a.city, s.a.stream, cur) else {
            return;
        };
        if node == cur || !self.up[node] {
            return;
        }
        self.detach(s);
        s.moves += 1;
        self.attach(s, node);
        s.phase = Phase::Active;
    }

    fn ask(&mut self, city: u32, stream: u32, exclude: Option<u16>) -> Option<usize> {
        self.ask_with(city, stream, exclude, None)
    }

    /// The steering answer for a viewer on `current`: another edge, or
    /// `current` (or None) to stay.
    fn ask_steer(&mut self, city: u32, stream: u32, current: usize) -> Option<usize> {
        self.ask_with(city, stream, None, Some(current))
    }

    fn ask_with(
        &mut self,
        city: u32,
        stream: u32,
        exclude: Option<u16>,
        steer_from: Option<usize>,
    ) -> Option<usize> {
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
            match steer_from {
                Some(cur) => policy.steer(&ask, cur),
                None => policy.choose(&ask, &mut rng),
            }
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

    /// A viewer's last-mile capacity at `now_ms`, Mbps.
    pub(super) fn last_mile_now(&self, a: &Arrival, now_ms: u64) -> f64 {
        crate::arrivals::last_mile_mbps(self.s, self.w, a, now_ms)
    }

    /// What a session's connection gets now (see [`Delivery`]).
    pub(super) fn delivery(&mut self, s: &Session, node: usize) -> Delivery {
        let (rtt, loss) = self.viewer_path(s.a.city as usize, node);
        let tcp = network::tcp_mbps(rtt, loss);
        let last_mile = self.last_mile_now(&s.a, self.now);
        let (chain_mbps, chain_share, feed_ms) = self.feed_chain(node, s.a.stream as usize, 0);
        Delivery {
            path_mbps: tcp.min(last_mile) * self.cong[node].share,
            rtt_ms: rtt,
            chain_mbps: f64::from(chain_mbps),
            chain_share: f64::from(chain_share),
            feed_ms: f64::from(feed_ms),
        }
    }

    /// `node`'s feed of `stream`: the weakest hop's TCP throughput (Mbps),
    /// the lowest fair share along the chain and the one-way latency from
    /// the origin (ms), memoised per load update.
    pub(super) fn feed_chain(&mut self, node: usize, stream: usize, depth: u32) -> (f32, f32, f32) {
        let origin = usize::from(self.w.stream_origin[stream]);
        if node == origin {
            return if self.up[node] {
                (f32::INFINITY, 1.0, 0.0)
            } else {
                (0.0, 0.0, 0.0)
            };
        }
        let idx = node * self.streams + stream;
        let memo = self.ratio_memo[idx];
        if memo.0 == self.stamp {
            return (memo.1, memo.2, memo.3);
        }
        let f = self.feeds[idx];
        let out = if !f.active || f.upstream == NONE || depth > 6 {
            (0.0, 0.0, 0.0)
        } else {
            let u = usize::from(f.upstream);
            if !self.up[u] || !self.up[node] {
                (0.0, 0.0, 0.0)
            } else {
                let (hop_mbps, hop_share, hop_ms) = self.hop(u, node);
                let (m, sh, ms) = self.feed_chain(u, stream, depth + 1);
                (
                    (hop_mbps as f32).min(m),
                    (hop_share as f32).min(sh),
                    ms + hop_ms as f32,
                )
            }
        };
        self.ratio_memo[idx] = (self.stamp, out.0, out.1, out.2);
        out
    }

    /// Share of the top rendition `node`'s feed of `stream` delivers.
    pub(super) fn feed_ratio_top(&mut self, node: usize, stream: usize) -> f64 {
        let (m, sh, _) = self.feed_chain(node, stream, 0);
        (f64::from(m) / self.w.bitrate_mbps).min(1.0) * f64::from(sh)
    }

    /// Ratio a node's (would-be) feed delivers, for the oracle: the
    /// current feed, or a pull straight from the origin.
    fn prospective_ratio(&self, node: usize, stream: usize, stamp: u64) -> f64 {
        let idx = node * self.streams + stream;
        let memo = self.ratio_memo[idx];
        let top = self.w.bitrate_mbps;
        if memo.0 == stamp && self.feeds[idx].active {
            return (f64::from(memo.1) / top).min(1.0) * f64::from(memo.2);
        }
        let origin = usize::from(self.w.stream_origin[stream]);
        if node == origin {
            return 1.0;
        }
        if !self.up[origin] {
            return 0.0;
        }
        let (m, sh, _) = self.hop(origin, node);
        (m / top).min(1.0) * sh
    }

    /// TCP throughput (Mbps), the sender's fair share and the one-way delay
    /// (ms) of the hop `u → v`.
    fn hop(&self, u: usize, v: usize) -> (f64, f64, f64) {
        let net = &self.s.network;
        let c = &self.cong[u];
        let (xr, xl) = self.pair_degrade(u, v);
        let rtt = self.w.rtt(u, v) + c.queue_ms + xr;
        let loss = network::relay_loss(net, self.w.km(u, v)) + c.loss + xl;
        (
            network::tcp_mbps(rtt, loss.min(0.9)),
            c.share,
            rtt / 2.0 + net.hop_processing_ms,
        )
    }

    pub(super) fn pair_degrade(&self, u: usize, v: usize) -> (f64, f64) {
        if self.pair.is_empty() {
            return (0.0, 0.0);
        }
        let key = (u.min(v) as u16, u.max(v) as u16);
        self.pair.get(&key).copied().unwrap_or((0.0, 0.0))
    }
}
