//! `vantage-sim sweep`: searches weight sets for the `qoe` policy.
//!
//! Candidates are the defaults, the scenario's weights, one-at-a-time
//! emphasis of each term, and random points of the weight simplex (seeded,
//! so a sweep is reproducible). Each candidate runs on every seed; sets are
//! ranked by mean rebuffer ratio, then mean zero-stall share, and printed
//! with their spread (standard deviation and min–max over seeds).

use crate::metrics::{self, RunResult};
use crate::policy::PolicyKind;
use crate::scenario::Scenario;
use crate::world::World;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::fmt::Write as _;
use vantage_shared::score::Weights;

/// One evaluated weight set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    pub weights: Weights,
    pub rebuffer_mean: f64,
    pub rebuffer_sd: f64,
    pub rebuffer_min: f64,
    pub rebuffer_max: f64,
    pub zero_stall_mean: f64,
    pub zero_stall_sd: f64,
    pub join_p95_mean_ms: f64,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The candidate weight sets.
pub fn candidates(base: Weights, random: usize, seed: u64) -> Vec<Weights> {
    let mut out = vec![Weights::default()];
    if base != Weights::default() {
        out.push(base);
    }
    let d = Weights::default();
    for k in 0..6 {
        let mut w = d;
        match k {
            0 => w.latency *= 2.0,
            1 => w.loss *= 2.0,
            2 => w.buffer *= 2.0,
            3 => w.load *= 2.0,
            4 => w.distance *= 2.0,
            _ => w.throughput *= 2.0,
        }
        out.push(w);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0057_333b);
    for _ in 0..random {
        // Uniform on the simplex: normalised exponentials.
        let mut v = [0.0f64; 6];
        for x in &mut v {
            *x = -(1.0 - rng.random::<f64>()).max(1e-12).ln();
        }
        let s: f64 = v.iter().sum();
        out.push(Weights {
            latency: round3(v[0] / s),
            loss: round3(v[1] / s),
            buffer: round3(v[2] / s),
            load: round3(v[3] / s),
            distance: round3(v[4] / s),
            throughput: round3(v[5] / s),
        });
    }
    out.retain(|w| w.validate().is_ok());
    out
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

/// Evaluates every candidate on every seed (qoe policy).
pub fn sweep(
    s: &Scenario,
    w: &World,
    sets: &[Weights],
    seeds: &[u64],
    threads: usize,
) -> Vec<Candidate> {
    let jobs: Vec<(usize, u64)> = (0..sets.len())
        .flat_map(|i| seeds.iter().map(move |&seed| (i, seed)))
        .collect();
    let runs: Vec<RunResult> = crate::parallel(&jobs, threads, |&(i, seed)| {
        crate::run_policy(s, w, PolicyKind::Qoe, seed, sets[i], false)
    });
    let mut out: Vec<Candidate> = sets
        .iter()
        .enumerate()
        .map(|(i, weights)| {
            let per_seed: Vec<metrics::Summary> = jobs
                .iter()
                .zip(&runs)
                .filter(|((j, _), _)| *j == i)
                .map(|(_, r)| metrics::summarise(&[r]))
                .collect();
            let rebuf: Vec<f64> = per_seed.iter().map(|x| x.rebuffer_ratio).collect();
            let zero: Vec<f64> = per_seed.iter().map(|x| x.zero_stall_share).collect();
            let joins: Vec<f64> = per_seed.iter().map(|x| x.join_p95_ms).collect();
            let (rm, rs) = mean_sd(&rebuf);
            let (zm, zs) = mean_sd(&zero);
            Candidate {
                weights: *weights,
                rebuffer_mean: rm,
                rebuffer_sd: rs,
                rebuffer_min: rebuf.iter().copied().fold(f64::INFINITY, f64::min),
                rebuffer_max: rebuf.iter().copied().fold(0.0, f64::max),
                zero_stall_mean: zm,
                zero_stall_sd: zs,
                join_p95_mean_ms: mean_sd(&joins).0,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.rebuffer_mean
            .total_cmp(&b.rebuffer_mean)
            .then(b.zero_stall_mean.total_cmp(&a.zero_stall_mean))
    });
    out
}

/// The sweep's table: best `top` sets.
pub fn table(c: &[Candidate], top: usize, seeds: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4}  {:<42} {:>17} {:>19} {:>15} {:>10}",
        "rank",
        "weights (lat/loss/buf/load/dist/tput)",
        "rebuffer mean±sd",
        "min–max",
        "0-stall mean±sd",
        "join p95"
    );
    for (i, x) in c.iter().take(top).enumerate() {
        let w = x.weights;
        let _ = writeln!(
            out,
            "{:>4}  {:<42} {:>9.5}±{:<7.5} {:>9.5}–{:<9.5} {:>7.4}±{:<7.4} {:>8.0}ms",
            i + 1,
            format!(
                "{:.3}/{:.3}/{:.3}/{:.3}/{:.3}/{:.3}",
                w.latency, w.loss, w.buffer, w.load, w.distance, w.throughput
            ),
            x.rebuffer_mean,
            x.rebuffer_sd,
            x.rebuffer_min,
            x.rebuffer_max,
            x.zero_stall_mean,
            x.zero_stall_sd,
            x.join_p95_mean_ms
        );
    }
    let _ = writeln!(out, "({} weight sets × {seeds} seeds)", c.len());
    out
}
