//! Planner benchmark: time of one full plan for N nodes and S streams,
//! pure code (no I/O), as the scheduler runs it on every replan.
//!
//! `cargo bench -p vantage-scheduler --bench planner [-- NODES STREAMS]`
//! Without arguments: 1,000 / 2,000 / 5,000 nodes with 0 and 50 streams,
//! and 2,000 nodes × 500 streams (DESIGN §11). Figures are printed, never
//! asserted; see docs/benchmarks.md.

use std::collections::BTreeMap;
use std::time::Instant;
use vantage_scheduler::planner::{Health, Limits, NodeView, PathStat, PlanInput, plan};
use vantage_shared::place::Coord;
use vantage_shared::score::{Ranges, Stability, Weights};
use vantage_shared::stream::{StreamKey, StreamPattern};

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
}

fn world(nodes: usize, streams: usize) -> PlanInput {
    let mut r = Lcg(42);
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
            static_origins: BTreeMap::new(),
        })
        .collect();
    // Every node measures ~8 peers, as probes would.
    for i in 0..nodes {
        for _ in 0..8 {
            let j = (r.next() * nodes as f64) as usize % nodes;
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
    for s in 0..streams {
        let o = (r.next() * nodes as f64) as usize % nodes;
        if let Ok(k) = StreamKey::parse(&format!("live/s{s}")) {
            views[o].published.insert(k, 2_500.0);
        }
    }
    if let Ok(p) = StreamPattern::parse("vod/*") {
        views[0].static_origins.insert(p, "http://origin:80".into());
    }
    PlanInput {
        now_ms: 1_700_000_000_000,
        weights: Weights::default(),
        weights_version: 1,
        ranges: Ranges::default(),
        stability: Stability::default(),
        limits: Limits::default(),
        report_interval_ms: 1000,
        table_ttl_s: 3600,
        nodes: views,
        previous: BTreeMap::new(),
        probe_key: vec![0; 32],
    }
}

fn measure(nodes: usize, streams: usize) {
    let input = world(nodes, streams);
    let runs = 3;
    let mut best = f64::INFINITY;
    let mut routes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let p = plan(&input);
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        routes = p.tables.values().map(|t| t.streams.len()).sum::<usize>();
    }
    println!("| {nodes} | {streams} | {routes} | {best:.1} ms |");
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    println!(
        "| nodes | streams (+1 pattern) | stream routes in all tables | plan time (best of 3) |"
    );
    println!("|---|---|---|---|");
    if let [n, s] = args[..] {
        measure(n, s);
        return;
    }
    for (n, s) in [
        (1_000, 0),
        (2_000, 0),
        (5_000, 0),
        (1_000, 50),
        (2_000, 50),
        (2_000, 500),
    ] {
        measure(n, s);
    }
}
