//! Planner benchmark: time of one full plan for N nodes and S streams,
//! pure code (no I/O), as the scheduler runs it on every replan.
//!
//! `cargo bench -p vantage-scheduler --bench planner [-- NODES STREAMS] [--churn]`
//! Without numbers: 1,000 / 2,000 / 5,000 nodes with 0 and 50 streams,
//! and 2,000 nodes × 500 streams (DESIGN §11). To compare with an older
//! planner, run the same bench in a worktree of the older commit (see
//! docs/benchmarks.md). `--churn` measures how many tables change from one plan to
//! the next when loads and RTTs drift, with and without hysteresis.
//! Figures are printed, never asserted; see docs/benchmarks.md.

use std::collections::BTreeMap;
use std::time::Instant;
use vantage_scheduler::planner::{
    Health, Limits, NodeView, PathStat, PlanInput, plan, plan_with_threads,
};
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
        previous_backups: BTreeMap::new(),
    }
}

/// Best of `runs` wall times of `f`, in ms, and its last result.
fn best_of<T>(runs: usize, f: impl Fn() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        out = Some(r);
    }
    match out {
        Some(r) => (best, r),
        None => (best, f()),
    }
}

fn measure(nodes: usize, streams: usize) {
    let mut input = world(nodes, streams);
    // Steady state, as in the running scheduler: the previous plan's
    // primaries and backups are the hysteresis input.
    let first = plan(&input);
    input.previous = first.primaries;
    input.previous_backups = first.backups;
    let (ms, p) = best_of(3, || plan(&input));
    let routes = p.tables.values().map(|t| t.streams.len()).sum::<usize>();
    let per_route_us = ms * 1000.0 / routes.max(1) as f64;
    let (ms2, p2) = best_of(3, || plan_with_threads(&input, 2));
    let threads_same = if p2.tables == p.tables {
        ""
    } else {
        " (DIFFERENT)"
    };
    println!(
        "| {nodes} | {streams} | {routes} | {ms:.1} ms | {per_route_us:.2} µs | {ms2:.1} ms{threads_same} |"
    );
}

/// What a table decides (as `publish::content_hash` sees it): upstream
/// lists and probe targets, without scores.
fn decisions(t: &vantage_proto::v1::RouteTable) -> Vec<String> {
    let mut out: Vec<String> = t
        .streams
        .iter()
        .map(|r| {
            let ups: Vec<String> = r
                .upstreams
                .iter()
                .map(|u| format!("{}/{}/{}", u.node_id, u.url, u.hops))
                .collect();
            format!("{}: {}", r.stream, ups.join(" > "))
        })
        .collect();
    out.extend(
        t.probe_targets
            .iter()
            .map(|p| format!("probe {}", p.node_id)),
    );
    out
}

/// Tables of `b` whose decisions differ from `a`'s.
fn changed(a: &vantage_scheduler::planner::Plan, b: &vantage_scheduler::planner::Plan) -> usize {
    b.tables
        .iter()
        .filter(|(id, t)| {
            a.tables
                .get(*id)
                .is_none_or(|o| decisions(o) != decisions(t))
        })
        .count()
}

/// Table churn from measurement noise: a steady-state plan, then every
/// node's egress and measured RTTs drift by up to ±`drift` (as between two
/// reports), and the next plan is made with the previous choices as
/// hysteresis state — primaries and backups (now), primaries only (as
/// before backup hysteresis), none.
fn churn(nodes: usize, streams: usize, drift: f64) {
    let mut input = world(nodes, streams);
    let first = plan(&input);
    input.previous = first.primaries;
    input.previous_backups = first.backups;
    let base = plan(&input);
    let mut r = Lcg(7);
    for v in &mut input.nodes {
        v.egress_mbps *= 1.0 + drift * (2.0 * r.next() - 1.0);
        for p in v.paths.values_mut() {
            p.rtt_ms *= 1.0 + drift * (2.0 * r.next() - 1.0);
        }
    }
    input.previous = base.primaries.clone();
    input.previous_backups = base.backups.clone();
    let with_backups = changed(&base, &plan(&input));
    input.previous_backups.clear();
    let primaries_only = changed(&base, &plan(&input));
    input.previous.clear();
    let none = changed(&base, &plan(&input));
    println!(
        "| {nodes} | {streams} | ±{:.0} % | {with_backups} | {primaries_only} | {none} |",
        drift * 100.0
    );
}

fn main() {
    if std::env::args().any(|a| a == "--churn") {
        println!(
            "| nodes | streams | drift of egress and RTTs | tables changed: hysteresis of primaries + backups | primaries only | none |"
        );
        println!("|---|---|---|---|---|---|");
        for (n, s) in [(1_000, 4), (2_000, 50), (5_000, 20)] {
            for drift in [0.05, 0.10] {
                churn(n, s, drift);
            }
        }
        return;
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    println!(
        "| nodes | streams (+1 pattern) | stream routes in all tables | plan time (best of 3) | per route | 2 threads |"
    );
    println!("|---|---|---|---|---|---|");
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
        (5_000, 20),
        (2_000, 500),
    ] {
        measure(n, s);
    }
}
