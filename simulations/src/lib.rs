//! `vantage-sim`: tests routing policies on real-data worlds before they
//! touch production (DESIGN §10, docs/simulator.md).
//!
//! - [`scenario`]: the TOML schema, loading, validation with field + line.
//! - [`world`] ([`data`]): PoPs at cities of the WonderNetwork latency
//!   matrix, viewer cities (GeoNames), FCC last-mile traces, YouTube live
//!   stream lifetimes; ground-truth RTT/jitter for every pair.
//! - [`network`] (congestion, TCP throughput) and [`player`] (live
//!   HTTP-FLV buffer, stalls, latency): the ground-truth models.
//! - [`telemetry`]: what agents report (sampled, delayed, noisy) and the
//!   [`telemetry::View`] policies decide from: the scheduler's registry in
//!   miniature, with the planning core's liveness rule and smoothing.
//! - [`policy`]: baselines, the oracle, and `qoe`, which calls only the
//!   planning core (`vantage-plan`) the scheduler runs: a `PlanSession`
//!   for upstream trees, its resolve for viewers. The simulator links no
//!   scheduler I/O (no database, HTTP, QUIC or GeoIP crates).
//! - [`engine`]: the event-driven run of one policy on one seed.
//! - [`metrics`], [`report`]: the table, `results.json`, `report.html`.
//! - [`sweep`]: weight search; [`replay`]: re-running the planning steps of a recorded trace.
//!
//! Same scenario + seed → byte-identical `results.json`.
#![forbid(unsafe_code)]

pub mod arrivals;
pub mod data;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod network;
pub mod player;
pub mod policy;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod sweep;
pub mod telemetry;
pub mod world;

pub use error::SimError;
use metrics::{EventMark, RunResult, Series, Summary};
use policy::PolicyKind;
use scenario::Scenario;
use serde::Serialize;
use std::collections::BTreeMap;
use vantage_shared::score::Weights;
use world::World;

/// Runs one policy on one seed.
pub fn run_policy(
    s: &Scenario,
    w: &World,
    kind: PolicyKind,
    seed: u64,
    weights: Weights,
    series: bool,
) -> RunResult {
    engine::Engine::new(s, w, kind, seed, weights, series).run()
}

/// The outcome of `compare`: what `results.json` holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub scenario: String,
    pub description: String,
    pub duration_s: f64,
    pub seeds: Vec<u64>,
    pub pops: usize,
    pub weights: Weights,
    pub policies: Vec<Summary>,
    /// Join time CDF per policy: x (ms) at quantiles 0, 0.01, ..., 1.
    pub join_cdf_ms: BTreeMap<String, Vec<f64>>,
    /// Per-session rebuffer ratio CDF per policy.
    pub rebuffer_cdf: BTreeMap<String, Vec<f64>>,
    /// Node utilisation over time per policy (first seed).
    pub load: BTreeMap<String, Series>,
    pub events: Vec<EventMark>,
}

/// Runs `jobs` on up to `threads` threads; results in job order.
pub fn parallel<T: Send, J: Sync>(
    jobs: &[J],
    threads: usize,
    f: impl Fn(&J) -> T + Sync,
) -> Vec<T> {
    let threads = threads.clamp(1, jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<T>> = (0..jobs.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut out);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let r = f(job);
                    if let Ok(mut g) = results.lock() {
                        g[i] = Some(r);
                    }
                }
            });
        }
    });
    out.into_iter().flatten().collect()
}

/// Default worker threads: the machine's parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs every policy on every seed and summarises.
pub fn compare(
    s: &Scenario,
    w: &World,
    policies: &[PolicyKind],
    seeds: &[u64],
    weights: Weights,
    threads: usize,
) -> Comparison {
    let jobs: Vec<(PolicyKind, u64, bool)> = policies
        .iter()
        .flat_map(|&p| {
            seeds
                .iter()
                .enumerate()
                .map(move |(i, &seed)| (p, seed, i == 0))
        })
        .collect();
    let runs = parallel(&jobs, threads, |&(p, seed, series)| {
        run_policy(s, w, p, seed, weights, series)
    });
    let mut summaries = Vec::new();
    let mut join_cdf = BTreeMap::new();
    let mut rebuffer_cdf = BTreeMap::new();
    let mut load = BTreeMap::new();
    let mut events = Vec::new();
    for p in policies {
        let mine: Vec<&RunResult> = runs.iter().filter(|r| r.policy == p.name()).collect();
        summaries.push(metrics::summarise(&mine));
        join_cdf.insert(
            p.name().to_owned(),
            metrics::cdf(metrics::join_times(&mine)),
        );
        rebuffer_cdf.insert(
            p.name().to_owned(),
            metrics::cdf(metrics::rebuffer_ratios(&mine)),
        );
        if let Some(series) = mine.iter().find_map(|r| r.series.clone()) {
            load.insert(p.name().to_owned(), series);
        }
        if events.is_empty()
            && let Some(r) = mine.first()
        {
            events = r.events.clone();
        }
    }
    Comparison {
        scenario: s.name.clone(),
        description: s.description.clone(),
        duration_s: s.duration_s,
        seeds: seeds.to_vec(),
        pops: w.pops.len(),
        weights,
        policies: summaries,
        join_cdf_ms: join_cdf,
        rebuffer_cdf,
        load,
        events,
    }
}

/// Parses the scenario's policy names (validated already).
pub fn policies_of(s: &Scenario) -> Vec<PolicyKind> {
    s.policies
        .iter()
        .filter_map(|p| PolicyKind::parse(p))
        .collect()
}

/// Parses `latency=0.5,loss=0.2` on top of `base`.
pub fn parse_weights(text: &str, base: Weights) -> Result<Weights, String> {
    let mut w = base;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected name=value"))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: not a number"))?;
        match k.trim() {
            "latency" => w.latency = v,
            "loss" => w.loss = v,
            "buffer" => w.buffer = v,
            "load" => w.load = v,
            "distance" => w.distance = v,
            "throughput" => w.throughput = v,
            other => {
                return Err(format!(
                    "unknown weight `{other}` (latency, loss, buffer, load, distance, throughput)"
                ));
            }
        }
    }
    w.validate().map_err(|e| e.to_string())?;
    Ok(w)
}
