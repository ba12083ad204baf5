//! The event-driven simulation of one policy on one seed.
//!
//! Virtual time advances in ticks of `tick_ms`; between tick boundaries,
//! discrete events run in time order: viewer arrivals (from
//! [`Arrivals`], independent of the policy so every policy serves the same
//! viewers), scenario events, report deliveries, reconnects. At each tick
//! end the engine integrates every session's player over the tick with the
//! delivery ratio the ground-truth network allows, recomputes node loads,
//! emits reports on report ticks and runs a planning round for planned
//! policies (the planning session decides whether a plan is due). The
//! simulated scheduler's liveness loop runs every 50 ms between ticks.
//! Ordering is total (time, then insertion sequence) and all iteration is
//! over vectors or ordered maps, so a seed fully determines the result.
//!
//! Here: the engine's state, the main loop and the integration of sessions
//! over a tick. The rest of [`Engine`] by concern: `viewers` (arrivals,
//! connecting, what a viewer receives), `feeds` (which upstream each
//! edge pulls a stream from), `events` (deliveries, reconnects, scenario
//! events), `reports` (what agents report), `planning` (the simulated
//! scheduler's planning and liveness loops, and the node views the
//! planning session is offered).

use crate::arrivals::{Arrival, Arrivals};
use crate::metrics::{Collector, RunResult, SessionRecord};
use crate::network::{self, Congestion};
use crate::player::{self, Abr, Player};
use crate::policy::planning::{Planning, stream_key};
use crate::policy::{Ask, Policy, PolicyKind, Truth, qoe};
use crate::scenario::{EventSpec, Scenario};
use crate::telemetry::{GroupAgg, Report, View};
use crate::world::World;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use vantage_plan::inputs::Deadband;
use vantage_plan::{Health, NodeView, PathStat, PlanSettings};
use vantage_shared::score::Weights;
use vantage_shared::stream::StreamKey;

mod events;
mod feeds;
mod planning;
mod probe;
mod reports;
mod viewers;

const NONE: u16 = u16::MAX;

/// Per (node, city) sums of a report interval: viewers, Σ RTT, Σ loss,
/// Σ buffer, stalled, Σ delivery rate (Mbps).
type Sums = (u32, f64, f64, f64, u32, f64);

/// Renditions a ladder may have.
pub const MAX_RENDITIONS: usize = 8;

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
    abr: Abr,
    /// Rendition being played (index into the ladder).
    rendition: u8,
    joined: bool,
    join_ms: f64,
    stalls: u32,
    stall_ms: f64,
    play_ms: f64,
    lat_sum: f64,
    lat_w: f64,
    /// Σ rendition Mbps × ms played (mean bit rate).
    mbps_ms: f64,
    failed: u16,
    moves: u32,
    skips: u32,
    switches: u32,
    /// HTTP-FLV: stalls in the current window and when it started.
    window_stalls: u32,
    window_ms: u64,
    /// LL-HLS: when the steering manifest is reloaded next.
    steer_ms: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Feed {
    active: bool,
    upstream: u16,
    viewers: u32,
    downstream: u32,
    /// Per rendition: viewers here playing it plus downstream feeds that
    /// need it (a rendition is pulled while its count is positive).
    need: [u32; MAX_RENDITIONS],
}

#[derive(Debug, Clone)]
enum Ev {
    Scenario(usize),
    /// End of a timed scenario event.
    ScenarioEnd(usize),
    Deliver(Box<Report>),
    /// The simulated scheduler's liveness loop.
    Liveness,
}

#[derive(Debug, Clone, Copy)]
struct Degrade {
    from: u16,
    to: u16,
    rtt: f64,
    loss: f64,
}

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
    /// Capacity now (ramped `pop_down`/`pop_up` events scale it).
    capacity: Vec<f64>,
    viewers_at: Vec<u32>,
    /// Egress to viewers (their renditions) and to downstream relays, Mbps.
    viewer_mbps: Vec<f64>,
    relay_mbps: Vec<f64>,
    cong: Vec<Congestion>,
    util_now: Vec<f64>,
    feeds: Vec<Feed>,
    /// Per (node, stream): stamp, the chain's weakest TCP throughput
    /// (Mbps), its lowest fair share, its one-way latency (ms).
    ratio_memo: Vec<(u64, f32, f32, f32)>,
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
    /// Scenario events with a ramp in progress (their effect is
    /// re-evaluated every tick).
    ramping: Vec<usize>,
    /// Per node, what its agent's probe estimators hold, by target.
    probes: Vec<BTreeMap<u16, probe::AgentProbe>>,
    /// Per node, when its last report arrives (reports stay in order).
    delivered_at: Vec<u64>,
    /// Per node, the facts of its planner view (planned policies).
    base: Vec<NodeView>,
    metrics: Collector,
    /// Group sums gathered while advancing sessions on a report tick.
    agg: HashMap<(u16, u32), Sums, FastHash>,
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
        let keys: Vec<StreamKey> = (0..streams)
            .filter_map(|i| StreamKey::parse(&stream_key(i)).ok())
            .collect();
        let planned = kind.plans_upstreams().then(|| {
            let settings = PlanSettings {
                weights,
                ranges: s.qoe.ranges.unwrap_or_default(),
                stability: s.qoe.stability.unwrap_or_default(),
                // The oracle plans on ground truth: every change counts.
                deadband: if kind == PolicyKind::Oracle {
                    Deadband::zero()
                } else {
                    s.qoe.deadband.unwrap_or_default()
                },
                report_interval_ms: s.telemetry.report_interval_ms,
                replan_interval_ms: s.telemetry.replan_interval_ms,
                // Relay hops are judged against one stream's top rendition.
                limits: vantage_plan::Limits {
                    default_bitrate_kbps: w.bitrate_mbps * 1000.0,
                    ..vantage_plan::Limits::default()
                },
                ..PlanSettings::default()
            };
            let ids = w.nodes.iter().map(|x| x.id.clone()).collect();
            Planning::new(settings, ids, keys.clone())
        });
        let resolver = (kind == PolicyKind::Qoe).then(|| {
            qoe::Qoe::new(
                weights,
                s.qoe.ranges.unwrap_or_default(),
                s.qoe.stability.unwrap_or_default(),
                s.qoe.resolve.unwrap_or_default(),
                w,
                &keys,
                seed ^ 0x005e_ed0f_9e50_17e5,
            )
        });
        let policy_seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (kind as u64 + 1);
        Self {
            s,
            w,
            kind,
            policy: Policy::new(kind, resolver, planned),
            now: 0,
            tick: u64::from(s.tick_ms),
            n,
            streams,
            up: vec![true; n],
            capacity: w.nodes.iter().map(|x| x.capacity_mbps).collect(),
            viewers_at: vec![0; n],
            viewer_mbps: vec![0.0; n],
            relay_mbps: vec![0.0; n],
            cong: vec![Congestion::default(); n],
            util_now: vec![0.0; n],
            feeds: vec![Feed::default(); n * streams],
            ratio_memo: vec![(u64::MAX, 0.0, 0.0, 0.0); n * streams],
            sessions: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            view: View::new(
                w.nodes.iter().map(|x| x.capacity_mbps).collect(),
                u64::from(s.telemetry.report_interval_ms),
                u64::from(s.telemetry.delay_ms),
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
            ramping: Vec::new(),
            probes: vec![BTreeMap::new(); n],
            delivered_at: vec![0; n],
            base: if kind.plans_upstreams() {
                Self::base_views(w)
            } else {
                Vec::new()
            },
            metrics: Collector::new(w, s, series),
            agg: HashMap::default(),
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
        self.liveness_tick(0);
        self.plan_round(0);
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
            if !self.ramping.is_empty() {
                self.apply_ramps();
            }
            let report_tick = self.now % u64::from(self.s.telemetry.report_interval_ms) < self.tick;
            self.advance(dt, report_tick);
            self.update_loads();
            self.metrics.tick(
                self.now,
                dt,
                &self.cong,
                &self.up,
                &self.viewers_at,
                self.origin_egress_mbps(),
            );
            self.failover_feeds();
            if report_tick {
                self.reports();
            }
            self.plan_round(self.now);
        }
        // Sessions still running at the end are cut there.
        let open = std::mem::take(&mut self.sessions);
        for s in open {
            self.finish(s, false);
        }
        let plans = self.policy.planning.as_ref().map_or(0, |p| p.steps);
        self.metrics.finish(self.kind.name(), plans)
    }

    fn origin_egress_mbps(&self) -> f64 {
        (0..self.n)
            .filter(|&i| self.w.nodes[i].origin)
            .map(|i| self.egress(i))
            .sum()
    }

    fn egress(&self, i: usize) -> f64 {
        (self.viewer_mbps[i] + self.relay_mbps[i]).max(0.0)
    }

    fn update_loads(&mut self) {
        for i in 0..self.n {
            let e = self.egress(i);
            self.cong[i] = network::congestion(&self.s.network, e, self.capacity[i]);
            self.util_now[i] = self.cong[i].utilisation;
        }
        self.stamp += 1;
    }

    /// Integrates every session over `dt`; on a report tick also sums what
    /// each node's client groups experienced (the agents' aggregates).
    fn advance(&mut self, dt: u64, report_tick: bool) {
        let mut sessions = std::mem::take(&mut self.sessions);
        let mut keep = Vec::with_capacity(sessions.len());
        let p = self.s.player.clone();
        let dtf = dt as f64;
        let steering = self.kind.steers() && p.steering_ttl_ms > 0.0;
        for mut s in sessions.drain(..) {
            let end = s.a.end_ms;
            // The viewer gives up at `at + patience`, not at the end of the
            // step that contains it: a join whose first frame came before
            // that counts, even when both fall within this step.
            let gives_up_ms = s.a.at_ms + u64::from(s.a.patience_ms);
            let ready_in_time =
                matches!(s.phase, Phase::Connecting { ready_ms } if ready_ms <= gives_up_ms);
            if !s.joined && self.now >= gives_up_ms && !ready_in_time {
                // Never saw a frame and gave up.
                self.finish(s, true);
                continue;
            }
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
                    let d = self.delivery(&s, node);
                    let k = usize::from(s.rendition);
                    let b = self.w.ladder_mbps[k];
                    let r = (d.path_mbps / b).min(d.feed_ratio(b));
                    let (resume, queue) = if s.a.hls {
                        (p.part_ms, p.edge_queue_ms.max(4.0 * p.part_ms))
                    } else {
                        (p.resume_buffer_ms, p.edge_queue_ms)
                    };
                    let step = s.player.step(dtf, r, resume, queue, self.w.gop_ms);
                    s.stalls += step.stalls;
                    s.stall_ms += step.stall_ms;
                    s.play_ms += step.play_ms;
                    s.skips += step.skips;
                    s.mbps_ms += b * step.play_ms;
                    let lat = s.player.lag_ms + d.rtt_ms / 2.0 + d.feed_ms;
                    s.lat_sum += lat * dtf;
                    s.lat_w += dtf;
                    // The player's throughput sample: what its connection
                    // delivers when not held back by the live edge.
                    s.abr.sample(d.path_mbps.min(d.feed_mbps(b)), dtf);
                    if report_tick {
                        let (_, loss) = self.viewer_path(s.a.city as usize, node);
                        let e = self
                            .agg
                            .entry((s.node, s.a.city))
                            .or_insert((0, 0.0, 0.0, 0.0, 0, 0.0));
                        e.0 += 1;
                        e.1 += d.rtt_ms;
                        e.2 += loss;
                        e.3 += s.player.buffer_ms;
                        e.4 += u32::from(s.player.stalled);
                        e.5 += d.path_mbps;
                    }
                    if s.a.hls {
                        // hls.js picks the rendition of the next part.
                        let next = s.abr.choose(&self.w.ladder_mbps, k);
                        if next != k {
                            self.switch_rendition(&mut s, next);
                        }
                        if steering && self.now >= s.steer_ms {
                            s.steer_ms = self.now + p.steering_ttl_ms as u64;
                            self.steer(&mut s);
                        }
                    } else if step.stalls > 0 && p.flv_reconnect_stalls > 0 {
                        if self.now.saturating_sub(s.window_ms) > p.flv_reconnect_window_ms as u64 {
                            s.window_ms = self.now;
                            s.window_stalls = 0;
                        }
                        s.window_stalls += step.stalls;
                        if s.window_stalls >= p.flv_reconnect_stalls {
                            // The app gives up on this connection: a new
                            // `/play` (re-steered), a rendition the
                            // throughput it saw affords.
                            s.window_stalls = 0;
                            s.window_ms = self.now;
                            self.detach(&mut s);
                            s.player.interrupt();
                            self.connect(&mut s, self.now);
                        }
                    }
                }
            }
            if end <= self.now {
                self.finish(s, false);
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
            let stream = s.a.stream as usize;
            let k = usize::from(s.rendition);
            self.viewers_at[node] = self.viewers_at[node].saturating_sub(1);
            self.viewer_mbps[node] -= self.w.ladder_mbps[k];
            self.remove_need(node, stream, k);
            let idx = node * self.streams + stream;
            self.feeds[idx].viewers = self.feeds[idx].viewers.saturating_sub(1);
            self.release_feed(node, stream);
        }
        s.phase = Phase::Waiting { until_ms: self.now };
    }

    fn finish(&mut self, mut s: Session, abandoned: bool) {
        self.detach(&mut s);
        self.metrics.session(SessionRecord {
            abandoned,
            waited_ms: if s.joined {
                0.0
            } else {
                self.now.saturating_sub(s.a.at_ms) as f64
            },
            mean_mbps: if s.play_ms > 0.0 {
                s.mbps_ms / s.play_ms
            } else {
                0.0
            },
            switches: s.switches,
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
