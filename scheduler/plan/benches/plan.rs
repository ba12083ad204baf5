//! Planning benchmark: a whole plan and incremental steps of
//! [`vantage_plan::PlanSession`], pure code (no I/O).
//!
//! `cargo bench -p vantage-plan --bench plan [-- NODES STREAMS ORIGINS [THREADS]]`
//! Without numbers: 2,000 nodes × 500 streams from 50 origins and 10,000
//! nodes × 5,000 streams from 500 origins (issue 15's targets). Prints:
//! the first plan (cold), a whole plan with the previous decisions as
//! hysteresis input (what a weight change costs), and the p50/p99/max of
//! incremental steps where one node's report crosses the deadband (its
//! load, a path's RTT, or its buffer). Figures are printed, never
//! asserted; see docs/benchmarks.md.

use std::collections::BTreeMap;
use std::time::Instant;
use vantage_plan::{Health, NodeView, PathStat, PlanSession, PlanSettings};
use vantage_shared::place::Coord;
use vantage_shared::stream::StreamKey;

/// A deterministic pseudo-random generator (no dependency needed here).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() * n as f64) as usize % n.max(1)
    }
}

fn world(nodes: usize, streams: usize, origins: usize, r: &mut Lcg) -> Vec<NodeView> {
    let mut views: Vec<NodeView> = (0..nodes)
        .map(|i| NodeView {
            id: format!("n{i:05}"),
            health: Health::Up,
            coord: Coord::new(r.next() * 120.0 - 55.0, r.next() * 340.0 - 170.0),
            capacity_mbps: 10_000.0,
            egress_mbps: r.next() * 5_000.0,
            buffer_ms: Some(1_000.0 + r.next() * 1_000.0),
            public_url: format!("http://n{i}:8080"),
            probe_addr: format!("n{i}:7402"),
            paths: BTreeMap::new(),
            published: BTreeMap::new(),
            published_since: BTreeMap::new(),
            static_origins: BTreeMap::new(),
        })
        .collect();
    // Every node measures ~8 peers, as probes would.
    for i in 0..nodes {
        for _ in 0..8 {
            let j = r.below(nodes);
            if j != i {
                let id = views[j].id.clone();
                views[i].paths.insert(
                    id,
                    PathStat {
                        rtt_ms: 5.0 + r.next() * 200.0,
                        loss: r.next() * 0.02,
                        samples: 50,
                    },
                );
            }
        }
    }
    let origin_nodes: Vec<usize> = (0..origins).map(|_| r.below(nodes)).collect();
    for s in 0..streams {
        let o = origin_nodes[s % origin_nodes.len()];
        if let Ok(k) = StreamKey::parse(&format!("live/s{s}")) {
            views[o].published.insert(k, 2_500.0);
        }
    }
    views
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn measure(nodes: usize, streams: usize, origins: usize, threads: usize) {
    let mut r = Lcg(42);
    let views = world(nodes, streams, origins, &mut r);
    let settings = PlanSettings {
        probe_key: vec![0; 32],
        full_plan_interval_ms: 0,
        ..PlanSettings::default()
    };
    let mut s = PlanSession::new(settings.clone(), threads);
    for v in &views {
        s.offer(v.clone());
    }
    let t = Instant::now();
    let first = s.step(0);
    let cold = ms(t);
    let routes = first.routes_changed;
    // A weight change: everything replanned with the previous decisions.
    let mut st = settings.clone();
    st.weights.latency = 0.4;
    st.weights_version += 1;
    s.set_settings(st);
    let t = Instant::now();
    let whole = s.step(1_000);
    let warm = ms(t);
    // Incremental steps: one node's report crosses the deadband.
    let mut views = views;
    let mut times = Vec::new();
    let mut by_kind: [Vec<f64>; 3] = Default::default();
    let mut changed = 0usize;
    let steps: usize = std::env::var("PLAN_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    for k in 0..steps {
        let i = r.below(nodes);
        let v = &mut views[i];
        match k % 3 {
            0 => v.egress_mbps = (v.egress_mbps + 2_000.0) % 9_000.0,
            1 => {
                if let Some((_, p)) = v.paths.iter_mut().next() {
                    p.rtt_ms = if p.rtt_ms > 100.0 {
                        p.rtt_ms / 3.0
                    } else {
                        p.rtt_ms * 3.0
                    };
                }
            }
            _ => {
                v.buffer_ms = v
                    .buffer_ms
                    .map(|b| if b > 1_500.0 { b - 600.0 } else { b + 600.0 })
            }
        }
        let offered = s.offer(v.clone());
        let t = Instant::now();
        let report = s.step(2_000 + 1_000 * k as i64);
        times.push(ms(t));
        by_kind[k % 3].push(ms(t));
        changed += report.changed.len();
        assert!(offered.moved, "the change must cross the deadband");
    }
    times.sort_by(f64::total_cmp);
    for (name, t) in ["load", "path", "buffer"].iter().zip(by_kind.iter_mut()) {
        t.sort_by(f64::total_cmp);
        eprintln!(
            "  {name}: p50 {:.3} p99 {:.3} ms",
            percentile(t, 0.5),
            percentile(t, 0.99)
        );
    }
    let drift = s.drift_from_scratch();
    println!(
        "nodes={nodes} streams={streams} origins={origins} threads={threads} routes={routes} \
         first_plan_ms={cold:.1} whole_plan_ms={warm:.1} (tables changed {}) \
         step_p50_ms={:.3} step_p99_ms={:.3} step_max_ms={:.3} tables_per_step={:.1} drift={drift}",
        whole.changed.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or(0.0),
        changed as f64 / steps as f64,
    );
}

fn main() {
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    match nums.as_slice() {
        [n, s, o] => measure(*n, *s, *o, 1),
        [n, s, o, t, ..] => measure(*n, *s, *o, *t),
        _ => {
            for threads in [1, 2] {
                measure(2_000, 500, 50, threads);
            }
            measure(10_000, 5_000, 500, 2);
        }
    }
}
