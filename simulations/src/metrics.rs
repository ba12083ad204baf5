//! QoE and cost metrics: what is collected during a run and the summary
//! `compare` prints (docs/simulator.md, "Metrics").

use crate::network::Congestion;
use crate::scenario::Scenario;
use crate::world::World;
use serde::Serialize;

/// One finished session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionRecord {
    /// Left before the first frame (patience ran out).
    pub abandoned: bool,
    /// A session that never started: how long the viewer tried, ms.
    pub waited_ms: f64,
    /// Mean bit rate played, Mbps.
    pub mean_mbps: f64,
    /// Rendition changes.
    pub switches: u32,
    pub joined: bool,
    pub join_ms: f64,
    pub stalls: u32,
    pub stall_ms: f64,
    pub play_ms: f64,
    pub latency_ms: f64,
    pub moves: u32,
    pub skips: u32,
}

/// Compact per-session outcome kept for percentiles (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Join time, ms; infinite when the viewer never started playing.
    pub join_ms: f32,
    pub latency_ms: f32,
    pub stall_ms: f32,
    pub watch_ms: f32,
    /// Never started: how long the viewer tried, ms.
    pub waited_ms: f32,
    pub mean_mbps: f32,
    pub stalls: u16,
    pub abandoned: bool,
}

/// A scenario event, for the report's time axis.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventMark {
    pub at_s: f64,
    pub kind: String,
    pub detail: String,
}

/// Utilisation of every node over time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    pub step_s: f64,
    pub nodes: Vec<String>,
    pub t_s: Vec<f64>,
    /// `util[node][sample]`.
    pub util: Vec<Vec<f64>>,
    /// `viewers[node][sample]`: viewers attached (connecting or playing)
    /// at the sample time.
    pub viewers: Vec<Vec<u32>>,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub policy: String,
    pub outcomes: Vec<Outcome>,
    pub overloaded_node_s: f64,
    pub reroutes: u64,
    pub moves: u64,
    pub skips: u64,
    pub switches: u64,
    pub origin_egress_gb: f64,
    pub plans: u64,
    pub events: Vec<EventMark>,
    pub series: Option<Series>,
}

/// Collects during a run.
#[derive(Debug)]
pub struct Collector {
    outcomes: Vec<Outcome>,
    overloaded_node_s: f64,
    pub reroutes: u64,
    moves: u64,
    skips: u64,
    switches: u64,
    origin_egress_gb: f64,
    hard: f64,
    events: Vec<EventMark>,
    series: Option<Series>,
    series_step_ms: u64,
    next_sample: u64,
    /// Max utilisation per node since the last sample.
    peak: Vec<f64>,
}

impl Collector {
    pub fn new(w: &World, s: &Scenario, series: bool) -> Self {
        // At most ~300 points per node in the load chart.
        let step = ((s.duration_s * 1000.0 / 300.0) as u64).max(u64::from(s.tick_ms));
        let step = step.div_ceil(u64::from(s.tick_ms)) * u64::from(s.tick_ms);
        Self {
            outcomes: Vec::new(),
            overloaded_node_s: 0.0,
            reroutes: 0,
            moves: 0,
            skips: 0,
            switches: 0,
            origin_egress_gb: 0.0,
            hard: s.qoe.ranges.unwrap_or_default().hard_utilisation,
            events: Vec::new(),
            series: series.then(|| Series {
                step_s: step as f64 / 1000.0,
                nodes: w.nodes.iter().map(|n| n.id.clone()).collect(),
                t_s: Vec::new(),
                util: vec![Vec::new(); w.n()],
                viewers: vec![Vec::new(); w.n()],
            }),
            series_step_ms: step,
            next_sample: step,
            peak: vec![0.0; w.n()],
        }
    }

    pub fn tick(
        &mut self,
        now: u64,
        dt: u64,
        cong: &[Congestion],
        up: &[bool],
        viewers: &[u32],
        origin_mbps: f64,
    ) {
        let dts = dt as f64 / 1000.0;
        for (i, c) in cong.iter().enumerate() {
            if up[i] && c.utilisation > self.hard {
                self.overloaded_node_s += dts;
            }
        }
        self.origin_egress_gb += origin_mbps * dts / 8.0 / 1000.0;
        if let Some(series) = &mut self.series {
            for (i, c) in cong.iter().enumerate() {
                let u = if up[i] { c.utilisation } else { 0.0 };
                self.peak[i] = self.peak[i].max(u);
            }
            if now >= self.next_sample {
                series.t_s.push(now as f64 / 1000.0);
                for (i, p) in self.peak.iter_mut().enumerate() {
                    series.util[i].push((*p * 1000.0).round() / 1000.0);
                    *p = 0.0;
                }
                for (i, v) in viewers.iter().enumerate() {
                    series.viewers[i].push(*v);
                }
                self.next_sample += self.series_step_ms;
            }
        }
    }

    pub fn event(&mut self, at_ms: u64, kind: String, detail: String) {
        self.events.push(EventMark {
            at_s: at_ms as f64 / 1000.0,
            kind,
            detail,
        });
    }

    pub fn session(&mut self, s: SessionRecord) {
        self.moves += u64::from(s.moves);
        self.skips += u64::from(s.skips);
        self.outcomes.push(Outcome {
            join_ms: if s.joined {
                s.join_ms as f32
            } else {
                f32::INFINITY
            },
            latency_ms: s.latency_ms as f32,
            stall_ms: s.stall_ms as f32,
            watch_ms: (s.stall_ms + s.play_ms) as f32,
            waited_ms: s.waited_ms as f32,
            mean_mbps: s.mean_mbps as f32,
            stalls: s.stalls.min(u32::from(u16::MAX)) as u16,
            abandoned: s.abandoned,
        });
        self.switches += u64::from(s.switches);
    }

    pub fn finish(self, policy: &str, plans: u64) -> RunResult {
        RunResult {
            policy: policy.to_owned(),
            outcomes: self.outcomes,
            overloaded_node_s: self.overloaded_node_s,
            reroutes: self.reroutes + self.moves,
            moves: self.moves,
            skips: self.skips,
            switches: self.switches,
            origin_egress_gb: self.origin_egress_gb,
            plans,
            events: self.events,
            series: self.series,
        }
    }
}

/// The table row of one policy (pooled over seeds).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub policy: String,
    /// Sessions attempted (every viewer that arrived).
    pub sessions: u64,
    /// Of which started playing.
    pub joined: u64,
    /// Of which never started: gave up waiting (abandoned) or were still
    /// trying when the session's time ran out.
    pub abandoned: u64,
    pub failed_joins: u64,
    /// joined / sessions.
    pub join_share: f64,
    pub join_p50_ms: f64,
    pub join_p95_ms: f64,
    /// Share of sessions that started within 1 s (failed joins count as slow).
    pub join_under_1s: f64,
    /// Stall time / (stall + play time), over started sessions.
    pub rebuffer_ratio: f64,
    /// Over attempted sessions: a session that never started counts the
    /// time its viewer waited as stalled.
    pub rebuffer_ratio_attempted: f64,
    /// Share of started sessions without a single stall.
    pub zero_stall_share: f64,
    /// Started without a single stall / attempted.
    pub zero_stall_share_attempted: f64,
    /// Mean bit rate played (time-weighted over started sessions), Mbps.
    pub mean_bitrate_mbps: f64,
    /// Rendition switches per started session.
    pub switches_per_session: f64,
    /// Sessions by stall count: 0, 1, 2, 3–5, 6+.
    pub stall_histogram: [u64; 5],
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub overloaded_node_s: f64,
    /// Viewer moves between edges plus upstream switches.
    pub reroutes: u64,
    /// Of which: viewers that reconnected to another edge.
    pub viewer_moves: u64,
    pub origin_egress_gb: f64,
    pub plans: u64,
}

/// Quantile `q` of sorted `v` (nearest rank).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn round(x: f64, digits: i32) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let k = 10f64.powi(digits);
    (x * k).round() / k
}

/// Summarises runs of one policy (one per seed).
pub fn summarise(runs: &[&RunResult]) -> Summary {
    let policy = runs.first().map(|r| r.policy.clone()).unwrap_or_default();
    let mut joins: Vec<f64> = Vec::new();
    let mut lat: Vec<f64> = Vec::new();
    let (mut stall, mut watch, mut waited) = (0.0f64, 0.0f64, 0.0f64);
    let (mut mbps_ms, mut play_ms) = (0.0f64, 0.0f64);
    let (mut sessions, mut started, mut zero, mut fast) = (0u64, 0u64, 0u64, 0u64);
    let mut abandoned = 0u64;
    let mut hist = [0u64; 5];
    for r in runs {
        for o in &r.outcomes {
            sessions += 1;
            if o.abandoned {
                abandoned += 1;
            }
            waited += f64::from(o.waited_ms);
            let played = f64::from(o.watch_ms - o.stall_ms).max(0.0);
            mbps_ms += f64::from(o.mean_mbps) * played;
            play_ms += played;
            if o.join_ms.is_finite() {
                started += 1;
                joins.push(f64::from(o.join_ms));
                if o.join_ms < 1000.0 {
                    fast += 1;
                }
                if o.stalls == 0 {
                    zero += 1;
                }
                let b = match o.stalls {
                    0 => 0,
                    1 => 1,
                    2 => 2,
                    3..=5 => 3,
                    _ => 4,
                };
                hist[b] += 1;
                if o.latency_ms > 0.0 {
                    lat.push(f64::from(o.latency_ms));
                }
            }
            stall += f64::from(o.stall_ms);
            watch += f64::from(o.watch_ms);
        }
    }
    joins.sort_by(f64::total_cmp);
    lat.sort_by(f64::total_cmp);
    let share = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let switches: u64 = runs.iter().map(|r| r.switches).sum();
    Summary {
        policy,
        sessions,
        joined: started,
        abandoned,
        failed_joins: sessions - started,
        join_share: round(share(started, sessions), 5),
        join_p50_ms: round(quantile(&joins, 0.5), 1),
        join_p95_ms: round(quantile(&joins, 0.95), 1),
        join_under_1s: round(share(fast, sessions), 5),
        rebuffer_ratio: round(if watch > 0.0 { stall / watch } else { 0.0 }, 6),
        rebuffer_ratio_attempted: round(
            if watch + waited > 0.0 {
                (stall + waited) / (watch + waited)
            } else {
                0.0
            },
            6,
        ),
        zero_stall_share: round(share(zero, started), 5),
        zero_stall_share_attempted: round(share(zero, sessions), 5),
        mean_bitrate_mbps: round(
            if play_ms > 0.0 {
                mbps_ms / play_ms
            } else {
                0.0
            },
            4,
        ),
        switches_per_session: round(
            if started > 0 {
                switches as f64 / started as f64
            } else {
                0.0
            },
            3,
        ),
        stall_histogram: hist,
        latency_p50_ms: round(quantile(&lat, 0.5), 1),
        latency_p95_ms: round(quantile(&lat, 0.95), 1),
        overloaded_node_s: round(runs.iter().map(|r| r.overloaded_node_s).sum(), 3),
        reroutes: runs.iter().map(|r| r.reroutes).sum(),
        viewer_moves: runs.iter().map(|r| r.moves).sum(),
        origin_egress_gb: round(runs.iter().map(|r| r.origin_egress_gb).sum(), 4),
        plans: runs.iter().map(|r| r.plans).sum(),
    }
}

/// Points of an empirical CDF (x at 101 evenly spaced quantiles).
pub fn cdf(mut v: Vec<f64>) -> Vec<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    (0..=100)
        .map(|i| round(quantile(&v, f64::from(i) / 100.0), 4))
        .collect()
}

/// Per-session rebuffer ratios of a policy's runs.
pub fn rebuffer_ratios(runs: &[&RunResult]) -> Vec<f64> {
    runs.iter()
        .flat_map(|r| r.outcomes.iter())
        .filter(|o| o.join_ms.is_finite() && o.watch_ms > 0.0)
        .map(|o| f64::from(o.stall_ms / o.watch_ms))
        .collect()
}

pub fn join_times(runs: &[&RunResult]) -> Vec<f64> {
    runs.iter()
        .flat_map(|r| r.outcomes.iter())
        .map(|o| f64::from(o.join_ms))
        .collect()
}
