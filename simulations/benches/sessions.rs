//! Simulator throughput: viewer sessions simulated per minute on one core
//! for a 200-PoP world, and peak memory (docs/benchmarks.md).
//!
//! `cargo bench -p vantage-sim --bench sessions [-- SECONDS ARRIVALS_PER_S]`
//!
//! The world: the first 200 cities of the latency matrix as PoPs (the
//! whole matrix as ground truth), 3 origins, 100 streams, viewers from every
//! city ≥ 100k inhabitants. Each policy runs on one thread; `qoe` includes
//! the planning core's session (a round every second, a step when one is
//! due) and its resolve for every join.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::time::Instant;
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::Scenario;
use vantage_sim::world::World;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let duration: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(600.0);
    let rate: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000.0);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let servers = std::fs::read_to_string(dir.join("data/servers.csv")).unwrap();
    let mut toml = format!(
        r#"name = "bench-200"
duration_s = {duration}
seeds = [1]

[streams]
count = 100
origins = ["origin-fra", "origin-nyc", "origin-sin"]
zipf_s = 0.9
bitrate_kbps = 1000
lifetime = "ytlive"

[viewers]
arrivals = [[0, {rate}]]
session = {{ distribution = "lognormal", median_s = 60, sigma = 1.0 }}

[[origins]]
id = "origin-fra"
city = "Frankfurt"
capacity_mbps = 100000
[[origins]]
id = "origin-nyc"
city = "New York"
capacity_mbps = 100000
[[origins]]
id = "origin-sin"
city = "Singapore"
capacity_mbps = 100000
"#
    );
    for (i, line) in servers.lines().skip(1).take(200).enumerate() {
        let name = line.split(',').nth(1).unwrap();
        let _ = write!(
            toml,
            "[[pops]]\nid = \"p{i}\"\ncity = \"{name}\"\ncapacity_mbps = 2000\n"
        );
    }
    let path = dir.join("scenarios/bench-200.toml");
    let s = Scenario::parse(&toml, &path).unwrap();
    let t0 = Instant::now();
    let w = World::build(&s).unwrap();
    println!(
        "world: {} PoPs, {} viewer cities, built in {:.2} s; peak RSS {} MiB",
        w.pops.len(),
        w.cities.len(),
        t0.elapsed().as_secs_f64(),
        peak_rss_kib() / 1024
    );
    for kind in [PolicyKind::GeoNearest, PolicyKind::Qoe] {
        let t = Instant::now();
        let r = vantage_sim::run_policy(&s, &w, kind, 1, s.weights(), false);
        let secs = t.elapsed().as_secs_f64();
        let n = r.outcomes.len() as f64;
        println!(
            "{:<12} {:>9} sessions in {:>7.2} s on one core: {:>10.0} sessions/min ({} plans); peak RSS {} MiB",
            kind.name(),
            r.outcomes.len(),
            secs,
            n / secs * 60.0,
            r.plans,
            peak_rss_kib() / 1024
        );
    }
}
