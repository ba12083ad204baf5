//! The event-driven simulation of one policy on one seed.
//!
//! Virtual time advances in ticks of `tick_ms`; between tick boundaries,
//! discrete events run in time order: viewer arrivals (from
//! [`Arrivals`], independent of the policy so every policy serves the same
//! viewers), scenario events, report deliveries, reconnects. At each tick
//! end the engine integrates every session's player over the tick with the
//! delivery ratio the ground-truth network allows, recomputes node loads,
//! emits reports on report ticks and lets planned policies replan (each
//! period, and at once when a node is seen down or back).
//! Ordering is total (time, then insertion sequence) and all iteration is
//! over vectors or ordered maps, so a seed fully determines the result.

use crate::arrivals::{Arrival, Arrivals};
use crate::metrics::{Collector, RunResult, SessionRecord};
use crate::network::{self, Congestion};
use crate::player::{self, Player};
use crate::policy::{Ask, Policy, PolicyKind, Truth, qoe};
use crate::scenario::{EventSpec, Scenario};
use crate::telemetry::{GroupAgg, Report, View};
use crate::world::World;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use vantage_proto::v1::GroupQoe;
use vantage_scheduler::planner::{Health, NodeView, PathStat};
use vantage_shared::score::Weights;
use vantage_shared::stream::StreamKey;

const NONE: u16 = u16::MAX;

/// Per (node, city) sums of a report interval: viewers, Σ RTT, Σ loss,
/// Σ buffer, stalled.
type Sums = (u32, f64, f64, f64, u32);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Connecting to `node`; playback starts at `ready_ms`.
    Connecting {
        ready_ms: u64,
    },
    Active,
    /// No edge: retry at `until_ms`.
    Waiting {
        until_ms: u64,
    },
}

#[derive(Debug, Clone)]
struct Session {
    a: Arrival,
    node: u16,
    phase: Phase,
    player: Player,
    joined: bool,
    join_ms: f64,
    stalls: u32,
    stall_ms: f64,
    play_ms: f64,
    lat_sum: f64,
    lat_w: f64,
    failed: u16,
    moves: u32,
    skips: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Feed {
    active: bool,
    upstream: u16,
    viewers: u32,
    downstream: u32,
}

#[derive(Debug, Clone)]
enum Ev {
    Scenario(usize),
    /// End of a timed scenario event.
    ScenarioEnd(usize),
    Deliver(Box<Report>),
}

#[derive(Debug, Clone, Copy)]
struct Degrade {
    from: u16,
    to: u16,
    rtt: f64,
    loss: f64,
}

/// Probe state of one (node, target) pair, as the agent's estimator holds
/// it: RTT EWMA, loss over a window of the last [`LOSS_WINDOW`] intervals.
#[derive(Debug, Clone)]
struct Probe {
    rtt: f64,
    window: std::collections::VecDeque<(u32, u32)>,
    samples: u32,
}

/// Report intervals of probe outcomes the loss estimate spans (the agent
/// counts loss over a window of recent probes, not per interval).
const LOSS_WINDOW: usize = 30;

pub struct Engine<'a> {
    s: &'a Scenario,
    w: &'a World,
    kind: PolicyKind,
    policy: Policy,
    now: u64,
    tick: u64,
    n: usize,
    streams: usize,
    up: Vec<bool>,
    viewers_at: Vec<u32>,
    relay_out: Vec<u32>,
    cong: Vec<Congestion>,
    util_now: Vec<f64>,
    feeds: Vec<Feed>,
    ratio_memo: Vec<(u64, f32, f32)>,
    sessions: Vec<Session>,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    view: View,
    /// `None` only while lent to the policy during [`Engine::ask`].
    rng: Option<ChaCha8Rng>,
    noise: ChaCha8Rng,
    arrivals: Arrivals<'a>,
    degrades: Vec<(usize, Degrade)>,
    access: Vec<(f64, f64)>,
    pair: HashMap<(u16, u16), (f64, f64)>,
    telemetry_loss: Vec<(usize, Option<u16>)>,
    telemetry_delay: Vec<(usize, u32)>,
    probes: Vec<BTreeMap<u16, Probe>>,
    metrics: Collector,
    /// Group sums gathered while advancing sessions on a report tick.
    agg: HashMap<(u16, u32), Sums, FastHash>,
    next_plan: u64,
    /// Per node: down as the planner last saw it (from report age; ground
    /// truth for the oracle). A change plans at once, as a node going
    /// down or an agent's Hello does in the scheduler.
    down_seen: Vec<bool>,
    stamp: u64,
}

impl<'a> Engine<'a> {
    pub fn new(
        s: &'a Scenario,
        w: &'a World,
        kind: PolicyKind,
        seed: u64,
        weights: Weights,
        series: bool,
    ) -> Self {
        let n = w.n();
        let streams = w.stream_origin.len();
        let planner = kind.plans_upstreams().then(|| {
            qoe::Qoe::new(
                weights,
                s.qoe.ranges.unwrap_or_default(),
                s.qoe.stability.unwrap_or_default(),
                w.nodes.iter().map(|x| x.id.clone()).collect(),
                streams,
                seed ^ 0x005e_ed0f_9e50_17e5,
                // The oracle plans on ground truth every period.
                (kind != PolicyKind::Oracle).then(|| s.qoe.deadband.unwrap_or_default()),
            )
        });
        let policy_seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (kind as u64 + 1);
        Self {
            s,
            w,
            kind,
            policy: Policy::new(kind, planner),
            now: 0,
            tick: u64::from(s.tick_ms),
            n,
            streams,
            up: vec![true; n],
            viewers_at: vec![0; n],
            relay_out: vec![0; n],
            cong: vec![Congestion::default(); n],
            util_now: vec![0.0; n],
            feeds: vec![Feed::default(); n * streams],
            ratio_memo: vec![(u64::MAX, 0.0, 0.0); n * streams],
            sessions: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            view: View::new(
                n,
                u64::from(s.telemetry.report_interval_ms),
                kind == PolicyKind::LowestRtt,
            ),
            rng: Some(ChaCha8Rng::seed_from_u64(policy_seed)),
            noise: ChaCha8Rng::seed_from_u64(policy_seed ^ 0xa5a5_a5a5),
            arrivals: Arrivals::new(s, w, seed),
            degrades: Vec::new(),
            access: vec![(0.0, 0.0); n],
            pair: HashMap::new(),
            telemetry_loss: Vec::new(),
            telemetry_delay: Vec::new(),
            probes: vec![BTreeMap::new(); n],
            metrics: Collector::new(w, s, series),
            agg: HashMap::default(),
            next_plan: 0,
            down_seen: vec![false; n],
            stamp: 0,
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// Runs the whole scenario.
    pub fn run(mut self) -> RunResult {
        for (i, e) in self.s.events.iter().enumerate() {
            let ev = e.get_ref();
            self.push(secs(ev.at_s()), Ev::Scenario(i));
            let until = match ev {
                EventSpec::LinkDegrade { until_s, .. } => *until_s,
                EventSpec::TelemetryLoss { until_s, .. }
                | EventSpec::FlashCrowd { until_s, .. }
                | EventSpec::TelemetryDelay { until_s, .. } => Some(*until_s),
                _ => None,
            };
            if let Some(u) = until {
                self.push(secs(u), Ev::ScenarioEnd(i));
            }
        }
        let end = secs(self.s.duration_s);
        self.update_loads();
        self.replan_if_due(true);
        while self.now < end {
            let tick_end = (self.now + self.tick).min(end);
            // Discrete events in time order, arrivals interleaved.
            loop {
                let q = self.queue.first_key_value().map(|(k, _)| k.0);
                let a = self.arrivals.peek_ms();
                let next_q = q.filter(|&t| t < tick_end);
                let next_a = a.filter(|&t| t < tick_end);
                match (next_q, next_a) {
                    (None, None) => break,
                    (Some(tq), Some(ta)) if ta < tq => self.arrival(),
                    (None, Some(_)) => self.arrival(),
                    _ => {
                        if let Some(((t, _), ev)) = self.queue.pop_first() {
                            self.handle(t, ev);
                        }
                    }
                }
            }
            let dt = tick_end - self.now;
            self.now = tick_end;
            let report_tick = self.now % u64::from(self.s.telemetry.report_interval_ms) < self.tick;
            self.advance(dt, report_tick);
            self.update_loads();
            self.metrics.tick(
                self.now,
                dt,
                &self.cong,
                &self.up,
                self.origin_egress_mbps(),
            );
            self.failover_feeds();
            if report_tick {
                self.reports();
            }
            let triggered = self.liveness_changed();
            self.replan_if_due(triggered);
        }
        // Sessions still running at the end are cut there.
        let open = std::mem::take(&mut self.sessions);
        for s in open {
            self.finish(s);
        }
        let plans = self.policy.qoe.as_ref().map_or(0, |q| q.plans);
        self.metrics.finish(self.kind.name(), plans)
    }

    fn origin_egress_mbps(&self) -> f64 {
        (0..self.n)
            .filter(|&i| self.w.nodes[i].origin)
            .map(|i| self.egress(i))
            .sum()
    }

    fn egress(&self, i: usize) -> f64 {
        f64::from(self.viewers_at[i] + self.relay_out[i]) * self.w.bitrate_mbps
    }

    fn update_loads(&mut self) {
        for i in 0..self.n {
            let e = self.egress(i);
            self.cong[i] = network::congestion(&self.s.network, e, self.w.nodes[i].capacity_mbps);
            self.util_now[i] = self.cong[i].utilisation;
        }
        self.stamp += 1;
    }

    // ---- viewers --------------------------------------------------------

    fn arrival(&mut self) {
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
    fn connect(&mut self, s: &mut Session, at: u64) {
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
        let mut policy = std::mem::replace(&mut self.policy, Policy::new(self.kind, None));
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
    fn viewer_path(&self, city: usize, node: usize) -> (f64, f64) {
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
    fn delivery(&mut self, s: &Session, node: usize) -> (f64, f64, f64) {
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
    fn feed_ratio(&mut self, node: usize, stream: usize, depth: u32) -> (f32, f32) {
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
        let up = self.policy_upstream_hint(node, stream).unwrap_or(origin);
        if !self.up[up] {
            return 0.0;
        }
        self.hop(up, node).0
    }

    fn policy_upstream_hint(&self, node: usize, stream: usize) -> Option<usize> {
        self.policy
            .upstreams(node, stream)
            .and_then(|l| l.iter().map(|&u| usize::from(u)).find(|&u| self.up[u]))
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

    fn pair_degrade(&self, u: usize, v: usize) -> (f64, f64) {
        if self.pair.is_empty() {
            return (0.0, 0.0);
        }
        let key = (u.min(v) as u16, u.max(v) as u16);
        self.pair.get(&key).copied().unwrap_or((0.0, 0.0))
    }

    // ---- feeds ------------------------------------------------------------

    /// Makes sure `node` pulls `stream`; returns the extra setup time of
    /// the cold hops (connect + request per hop).
    fn ensure_feed(&mut self, node: usize, stream: usize, depth: u32) -> f64 {
        let origin = usize::from(self.w.stream_origin[stream]);
        if node == origin || depth > 4 {
            return 0.0;
        }
        let idx = node * self.streams + stream;
        if self.feeds[idx].active {
            return 0.0;
        }
        let up = self.pick_upstream(node, stream);
        self.feeds[idx].active = true;
        self.feeds[idx].upstream = up as u16;
        self.relay_out[up] += 1;
        self.feeds[up * self.streams + stream].downstream += 1;
        let hop = 2.0 * self.w.rtt(up, node) + self.s.network.hop_processing_ms;
        hop + self.ensure_feed(up, stream, depth + 1)
    }

    /// The first live upstream candidate whose own chain does not pass
    /// through `node`; the origin otherwise.
    fn pick_upstream(&self, node: usize, stream: usize) -> usize {
        let origin = usize::from(self.w.stream_origin[stream]);
        if let Some(list) = self.policy.upstreams(node, stream) {
            for &u in list {
                let u = usize::from(u);
                if u != node && self.up[u] && !self.chain_contains(u, stream, node) {
                    return u;
                }
            }
        }
        origin
    }

    fn chain_contains(&self, from: usize, stream: usize, target: usize) -> bool {
        let mut cur = from;
        for _ in 0..8 {
            if cur == target {
                return true;
            }
            let f = self.feeds[cur * self.streams + stream];
            if !f.active || f.upstream == NONE {
                return false;
            }
            cur = usize::from(f.upstream);
        }
        true
    }

    /// Drops a reference to `node`'s feed of `stream`; stops the pull when
    /// nobody needs it.
    fn release_feed(&mut self, node: usize, stream: usize) {
        let mut cur = node;
        for _ in 0..8 {
            let idx = cur * self.streams + stream;
            let f = self.feeds[idx];
            if !f.active || f.viewers > 0 || f.downstream > 0 {
                return;
            }
            self.feeds[idx].active = false;
            let up = usize::from(f.upstream);
            self.feeds[idx].upstream = NONE;
            if f.upstream == NONE {
                return;
            }
            self.relay_out[up] = self.relay_out[up].saturating_sub(1);
            let uidx = up * self.streams + stream;
            self.feeds[uidx].downstream = self.feeds[uidx].downstream.saturating_sub(1);
            cur = up;
        }
    }

    fn switch_feed(&mut self, node: usize, stream: usize, to: usize) {
        let idx = node * self.streams + stream;
        let old = usize::from(self.feeds[idx].upstream);
        if old == to || self.feeds[idx].upstream == NONE {
            return;
        }
        self.relay_out[old] = self.relay_out[old].saturating_sub(1);
        let oidx = old * self.streams + stream;
        self.feeds[oidx].downstream = self.feeds[oidx].downstream.saturating_sub(1);
        self.feeds[idx].upstream = to as u16;
        self.relay_out[to] += 1;
        self.feeds[to * self.streams + stream].downstream += 1;
        self.ensure_feed(to, stream, 1);
        self.release_feed(old, stream);
        self.metrics.reroutes += 1;
    }

    /// Agents fail over locally when their upstream is dead (within the
    /// tick, under DESIGN §11's 1 s), and planned policies follow the
    /// newest tables' primaries.
    fn failover_feeds(&mut self) {
        for node in 0..self.n {
            if !self.up[node] {
                continue;
            }
            for stream in 0..self.streams {
                let f = self.feeds[node * self.streams + stream];
                if !f.active || f.upstream == NONE {
                    continue;
                }
                let cur = usize::from(f.upstream);
                let want = self.pick_upstream(node, stream);
                if want != cur && (!self.up[cur] || self.kind.plans_upstreams()) {
                    self.switch_feed(node, stream, want);
                }
            }
        }
    }

    // ---- time -------------------------------------------------------------

    /// Integrates every session over `dt`; on a report tick also sums what
    /// each node's client groups experienced (the agents' aggregates).
    fn advance(&mut self, dt: u64, report_tick: bool) {
        let mut sessions = std::mem::take(&mut self.sessions);
        let mut keep = Vec::with_capacity(sessions.len());
        let p = self.s.player.clone();
        let dtf = dt as f64;
        for mut s in sessions.drain(..) {
            let end = s.a.end_ms;
            match s.phase {
                Phase::Waiting { until_ms } => {
                    if s.joined {
                        s.stall_ms += dtf;
                    }
                    if until_ms <= self.now && end > self.now {
                        self.connect(&mut s, self.now);
                    }
                }
                Phase::Connecting { ready_ms } => {
                    if s.joined {
                        s.stall_ms += dtf;
                    }
                    if ready_ms <= self.now {
                        if !s.joined {
                            s.joined = true;
                            s.join_ms = (ready_ms - s.a.at_ms) as f64;
                        }
                        s.phase = Phase::Active;
                    }
                }
                Phase::Active => {
                    let node = usize::from(s.node);
                    let (r, rtt, feed_ms) = self.delivery(&s, node);
                    let step =
                        s.player
                            .step(dtf, r, p.resume_buffer_ms, p.edge_queue_ms, self.w.gop_ms);
                    s.stalls += step.stalls;
                    s.stall_ms += step.stall_ms;
                    s.play_ms += step.play_ms;
                    s.skips += step.skips;
                    let lat = s.player.lag_ms + rtt / 2.0 + feed_ms;
                    s.lat_sum += lat * dtf;
                    s.lat_w += dtf;
                    if report_tick {
                        let (_, loss) = self.viewer_path(s.a.city as usize, node);
                        let e = self
                            .agg
                            .entry((s.node, s.a.city))
                            .or_insert((0, 0.0, 0.0, 0.0, 0));
                        e.0 += 1;
                        e.1 += rtt;
                        e.2 += loss;
                        e.3 += s.player.buffer_ms;
                        e.4 += u32::from(s.player.stalled);
                    }
                }
            }
            if end <= self.now {
                self.finish(s);
            } else {
                keep.push(s);
            }
        }
        self.sessions = keep;
    }

    /// Leaves the current edge (session over, or moving).
    fn detach(&mut self, s: &mut Session) {
        if s.node == NONE {
            return;
        }
        let node = usize::from(s.node);
        let attached = matches!(s.phase, Phase::Active | Phase::Connecting { .. });
        if attached {
            self.viewers_at[node] = self.viewers_at[node].saturating_sub(1);
            let idx = node * self.streams + s.a.stream as usize;
            self.feeds[idx].viewers = self.feeds[idx].viewers.saturating_sub(1);
            self.release_feed(node, s.a.stream as usize);
        }
    }

    fn finish(&mut self, mut s: Session) {
        self.detach(&mut s);
        self.metrics.session(SessionRecord {
            joined: s.joined,
            join_ms: s.join_ms,
            stalls: s.stalls,
            stall_ms: s.stall_ms,
            play_ms: s.play_ms,
            latency_ms: if s.lat_w > 0.0 {
                s.lat_sum / s.lat_w
            } else {
                0.0
            },
            moves: s.moves,
            skips: s.skips,
        });
    }

    // ---- scenario events --------------------------------------------------

    fn handle(&mut self, t: u64, ev: Ev) {
        match ev {
            Ev::Deliver(r) => {
                self.view.apply(&r);
                if let Some(q) = self.policy.qoe.as_mut() {
                    let groups: Vec<GroupQoe> = r
                        .groups
                        .iter()
                        .map(|(city, g)| GroupQoe {
                            group: self.w.cities[*city as usize].group.clone(),
                            viewers: g.viewers,
                            tcp_rtt_ms: g.rtt_ms,
                            retransmit_rate: g.loss,
                            stall_rate: g.stall_rate,
                            buffer_ms: g.buffer_ms,
                            samples: g.viewers,
                        })
                        .collect();
                    q.observe(usize::from(r.node), &groups, t);
                }
            }
            Ev::Scenario(i) => self.scenario_event(i, t, true),
            Ev::ScenarioEnd(i) => self.scenario_event(i, t, false),
        }
    }

    fn node_index(&self, id: &str) -> Option<usize> {
        self.w.nodes.iter().position(|n| n.id == id)
    }

    fn scenario_event(&mut self, i: usize, t: u64, start: bool) {
        let ev = self.s.events[i].get_ref().clone();
        let label = format!("{}{}", ev.kind(), if start { "" } else { " end" });
        self.metrics.event(t, label, describe(&ev));
        match ev {
            EventSpec::PopDown { pop, .. } => {
                if let Some(p) = self.node_index(&pop) {
                    self.pop_down(p, t);
                }
            }
            EventSpec::PopUp { pop, .. } => {
                if let Some(p) = self.node_index(&pop) {
                    self.up[p] = true;
                }
            }
            EventSpec::LinkDegrade {
                from,
                to,
                extra_rtt_ms,
                loss,
                ..
            } => {
                if start {
                    let from = self.node_index(&from).map_or(NONE, |x| x as u16);
                    let to = to
                        .as_deref()
                        .and_then(|x| self.node_index(x))
                        .map_or(NONE, |x| x as u16);
                    self.degrades.push((
                        i,
                        Degrade {
                            from,
                            to,
                            rtt: extra_rtt_ms,
                            loss,
                        },
                    ));
                } else {
                    self.degrades.retain(|(j, _)| *j != i);
                }
                self.rebuild_degrades();
            }
            EventSpec::FlashCrowd { .. } => {}
            EventSpec::TelemetryLoss { pop, .. } => {
                if start {
                    let p = pop
                        .as_deref()
                        .and_then(|x| self.node_index(x))
                        .map(|x| x as u16);
                    self.telemetry_loss.push((i, p));
                } else {
                    self.telemetry_loss.retain(|(j, _)| *j != i);
                }
            }
            EventSpec::TelemetryDelay { extra_ms, .. } => {
                if start {
                    self.telemetry_delay.push((i, extra_ms));
                } else {
                    self.telemetry_delay.retain(|(j, _)| *j != i);
                }
            }
        }
    }

    fn rebuild_degrades(&mut self) {
        self.access = vec![(0.0, 0.0); self.n];
        self.pair.clear();
        for (_, d) in &self.degrades {
            if d.from == NONE {
                continue;
            }
            if d.to == NONE {
                let a = &mut self.access[usize::from(d.from)];
                a.0 += d.rtt;
                a.1 += d.loss;
            } else {
                let key = (d.from.min(d.to), d.from.max(d.to));
                let e = self.pair.entry(key).or_insert((0.0, 0.0));
                e.0 += d.rtt;
                e.1 += d.loss;
            }
        }
    }

    /// A node dies: its viewers' players play out their buffer and
    /// reconnect after the timeout; feeds pulling from it fail over at the
    /// next tick.
    fn pop_down(&mut self, p: usize, t: u64) {
        self.up[p] = false;
        let timeout = self.s.player.reconnect_timeout_ms as u64;
        let mut sessions = std::mem::take(&mut self.sessions);
        for s in &mut sessions {
            if usize::from(s.node) == p && !matches!(s.phase, Phase::Waiting { .. }) {
                self.detach(s);
                if s.joined {
                    s.stalls += 1;
                    s.player.interrupt();
                }
                s.failed = p as u16;
                s.phase = Phase::Waiting {
                    until_ms: t + timeout,
                };
            }
        }
        self.sessions = sessions;
    }

    // ---- telemetry ------------------------------------------------------

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

    fn reports(&mut self) {
        let tel = self.s.telemetry.clone();
        // Group aggregates from the sessions each node served (summed in
        // `advance`), in a fixed order.
        let mut groups: Vec<Vec<(u32, GroupAgg)>> = vec![Vec::new(); self.n];
        let mut agg: Vec<((u16, u32), Sums)> = self.agg.drain().collect();
        agg.sort_unstable_by_key(|(k, _)| *k);
        for ((node, city), (k, rtt, loss, buf, stalled)) in agg {
            let kf = f64::from(k);
            let g = GroupAgg {
                viewers: k,
                rtt_ms: self.noisy(rtt / kf),
                loss: (loss / kf).min(1.0),
                buffer_ms: buf / kf,
                stall_rate: f64::from(stalled) / kf,
            };
            groups[usize::from(node)].push((city, g));
        }
        let extra: u32 = self.telemetry_delay.iter().map(|(_, d)| *d).sum();
        let delay = u64::from(tel.delay_ms + extra);
        let planned = self.kind.plans_upstreams();
        for (node, node_groups) in groups.iter_mut().enumerate() {
            let lost = self
                .telemetry_loss
                .iter()
                .any(|(_, p)| p.is_none_or(|p| usize::from(p) == node));
            if !self.up[node] || lost {
                continue;
            }
            let egress = self.egress(node);
            let cap = self.w.nodes[node].capacity_mbps;
            let egress_seen = self.noisy(egress);
            let buffer_ms = self.buffer_health(node);
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
            };
            self.push(self.now + delay, Ev::Deliver(Box::new(r)));
        }
    }

    /// Mean GOP-cache depth of a node's feeds: a full GOP when the upstream
    /// keeps up, less in proportion when it does not.
    fn buffer_health(&mut self, node: usize) -> Option<f64> {
        let mut sum = 0.0;
        let mut k = 0u32;
        for stream in 0..self.streams {
            if self.feeds[node * self.streams + stream].active
                || usize::from(self.w.stream_origin[stream]) == node
                    && self.feeds[node * self.streams + stream].downstream > 0
            {
                let (r, _) = self.feed_ratio(node, stream, 0);
                sum += self.w.gop_ms * f64::from(r);
                k += 1;
            }
        }
        (k > 0).then(|| sum / f64::from(k))
    }

    /// Probes from `node` to its table's probe targets: RTT with noise,
    /// loss counted over `probes_per_interval` packets, EWMA-smoothed.
    fn probe(&mut self, node: usize) -> Vec<(u16, PathStat)> {
        let targets: Vec<u16> = self.policy.probe_targets(node).to_vec();
        let k = self.s.telemetry.probes_per_interval.max(1);
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let u = usize::from(t);
            if !self.up[u] {
                continue;
            }
            let (xr, xl) = self.pair_degrade(u, node);
            let rtt_true = self.w.rtt(u, node) + self.cong[u].queue_ms + xr;
            let loss_true =
                (network::path_loss(&self.s.network, self.w.km(u, node)) + self.cong[u].loss + xl)
                    .min(0.9);
            let jitter = self.w.jitter(u, node);
            let rtt = (rtt_true + jitter * self.gauss().abs()).max(0.1);
            let lost = (0..k)
                .filter(|_| self.noise.random::<f64>() < loss_true)
                .count() as u32;
            let e = self.probes[node].entry(t).or_insert(Probe {
                rtt,
                window: std::collections::VecDeque::with_capacity(LOSS_WINDOW),
                samples: 0,
            });
            e.rtt += 0.3 * (rtt - e.rtt);
            if e.window.len() == LOSS_WINDOW {
                e.window.pop_front();
            }
            e.window.push_back((k, lost));
            let (sent, lost) = e
                .window
                .iter()
                .fold((0u32, 0u32), |a, b| (a.0 + b.0, a.1 + b.1));
            e.samples = e.samples.saturating_add(k);
            out.push((
                t,
                PathStat {
                    rtt_ms: e.rtt,
                    loss: f64::from(lost) / f64::from(sent.max(1)),
                    samples: e.samples,
                },
            ));
        }
        out
    }

    // ---- planning -------------------------------------------------------

    /// Whether a node went down or came back since the last tick, as the
    /// planner sees liveness. The scheduler replans at once on both (its
    /// down and join triggers) instead of waiting for the next period.
    fn liveness_changed(&mut self) -> bool {
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
    fn replan_if_due(&mut self, force: bool) {
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

/// A fast, deterministic hasher for small integer keys (the aggregation
/// map is drained into a sorted vector, so its order never leaks).
#[derive(Debug, Clone, Copy, Default)]
pub struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

fn secs(s: f64) -> u64 {
    (s.max(0.0) * 1000.0).round() as u64
}

fn describe(ev: &EventSpec) -> String {
    match ev {
        EventSpec::PopDown { pop, .. } => format!("{pop} down"),
        EventSpec::PopUp { pop, .. } => format!("{pop} up"),
        EventSpec::LinkDegrade {
            from,
            to,
            extra_rtt_ms,
            loss,
            ..
        } => format!(
            "{from}↔{} +{extra_rtt_ms} ms, {:.1} % loss",
            to.as_deref().unwrap_or("viewers"),
            loss * 100.0
        ),
        EventSpec::FlashCrowd {
            multiplier, region, ..
        } => format!(
            "flash crowd ×{multiplier} {}",
            region.as_deref().unwrap_or("everywhere")
        ),
        EventSpec::TelemetryLoss { pop, .. } => {
            format!(
                "reports lost from {}",
                pop.as_deref().unwrap_or("all nodes")
            )
        }
        EventSpec::TelemetryDelay { extra_ms, .. } => format!("reports +{extra_ms} ms"),
    }
}
