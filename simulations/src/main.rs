//! `vantage-sim`: run, compare, sweep, replay. See docs/simulator.md.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vantage_sim::policy::PolicyKind;
use vantage_sim::scenario::Scenario;
use vantage_sim::world::World;

#[derive(Parser)]
#[command(
    name = "vantage-sim",
    version,
    about = "Vantage simulator: compare routing policies and weights on real-data worlds"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one policy (default qoe) and prints its summary.
    Run {
        scenario: PathBuf,
        #[arg(long, default_value = "qoe")]
        policy: String,
        /// Seed (default: the scenario's first).
        #[arg(long)]
        seed: Option<u64>,
        /// qoe weights, e.g. `latency=0.5,load=0.3` (patches the scenario's).
        #[arg(long)]
        weights: Option<String>,
        /// Writes results.json and report.html here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Runs every policy of the scenario on every seed; prints the table,
    /// writes results.json and report.html.
    Compare {
        scenario: PathBuf,
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// Comma-separated policies (default: the scenario's list).
        #[arg(long, value_delimiter = ',')]
        policies: Vec<String>,
        /// Comma-separated seeds (default: the scenario's list).
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
        #[arg(long)]
        weights: Option<String>,
        /// Worker threads (default: all cores). Results do not depend on it.
        #[arg(long)]
        threads: Option<usize>,
        /// Scales arrival rates (e.g. 0.2 for a quick run).
        #[arg(long)]
        scale: Option<f64>,
    },
    /// Searches qoe weight sets over several seeds.
    Sweep {
        scenario: PathBuf,
        /// Random weight sets besides the fixed ones.
        #[arg(long, default_value_t = 12)]
        samples: usize,
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        scale: Option<f64>,
        /// Writes the ranked sets as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Re-runs the planning steps of a trace recorded by
    /// `vantage-scheduler --record DIR`.
    Replay {
        dir: PathBuf,
        /// Weights for every step (partial: patches the first recorded
        /// ones). Without it, each step's recorded weights.
        #[arg(long)]
        weights: Option<String>,
        /// Start every step from the recorded routes instead of chaining
        /// the replayed ones.
        #[arg(long)]
        recorded_previous: bool,
        /// Prints the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn load(path: &std::path::Path, scale: Option<f64>) -> anyhow::Result<(Scenario, World)> {
    let mut s = Scenario::load(path)?;
    if let Some(k) = scale {
        if !(k.is_finite() && k > 0.0) {
            bail!("--scale must be > 0");
        }
        s.scale_arrivals(k);
    }
    let w = World::build(&s)?;
    Ok((s, w))
}

fn weights(s: &Scenario, flag: Option<&str>) -> anyhow::Result<vantage_shared::score::Weights> {
    match flag {
        None => Ok(s.weights()),
        Some(t) => vantage_sim::parse_weights(t, s.weights())
            .map_err(|e| anyhow::anyhow!("--weights: {e}")),
    }
}

fn policies(names: &[String], s: &Scenario) -> anyhow::Result<Vec<PolicyKind>> {
    if names.is_empty() {
        return Ok(vantage_sim::policies_of(s));
    }
    names
        .iter()
        .map(|n| PolicyKind::parse(n).with_context(|| format!("unknown policy `{n}`")))
        .collect()
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            scenario,
            policy,
            seed,
            weights: wflag,
            out,
        } => {
            let (s, w) = load(&scenario, None)?;
            let kind =
                PolicyKind::parse(&policy).with_context(|| format!("unknown policy `{policy}`"))?;
            let seed = seed.unwrap_or(s.seeds[0]);
            let weights = weights(&s, wflag.as_deref())?;
            let c = vantage_sim::compare(&s, &w, &[kind], &[seed], weights, 1);
            print!("{}", vantage_sim::report::table(&c));
            if let Some(dir) = out {
                vantage_sim::report::write(&c, &dir)?;
                println!("wrote {}/results.json and report.html", dir.display());
            }
        }
        Cmd::Compare {
            scenario,
            out,
            policies: names,
            seeds,
            weights: wflag,
            threads,
            scale,
        } => {
            let (s, w) = load(&scenario, scale)?;
            let kinds = policies(&names, &s)?;
            let seeds = if seeds.is_empty() {
                s.seeds.clone()
            } else {
                seeds
            };
            let weights = weights(&s, wflag.as_deref())?;
            let c = vantage_sim::compare(
                &s,
                &w,
                &kinds,
                &seeds,
                weights,
                threads.unwrap_or_else(vantage_sim::default_threads),
            );
            print!("{}", vantage_sim::report::table(&c));
            vantage_sim::report::write(&c, &out)?;
            println!("wrote {0}/results.json and {0}/report.html", out.display());
        }
        Cmd::Sweep {
            scenario,
            samples,
            seeds,
            top,
            threads,
            scale,
            json,
        } => {
            let (s, w) = load(&scenario, scale)?;
            let seeds = if seeds.is_empty() {
                s.seeds.clone()
            } else {
                seeds
            };
            let sets = vantage_sim::sweep::candidates(s.weights(), samples, seeds[0]);
            let ranked = vantage_sim::sweep::sweep(
                &s,
                &w,
                &sets,
                &seeds,
                threads.unwrap_or_else(vantage_sim::default_threads),
            );
            print!("{}", vantage_sim::sweep::table(&ranked, top, seeds.len()));
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&ranked)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
        Cmd::Replay {
            dir,
            weights,
            recorded_previous,
            json,
        } => {
            let report = vantage_sim::replay::run(&dir, weights.as_deref(), recorded_previous)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vantage-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
