//! Outputs of `compare`: the text table, `results.json` and
//! `report.html` ([`html`]).

pub mod html;

use crate::Comparison;
use crate::error::SimError;
use std::fmt::Write as _;
use std::path::Path;

/// The per-policy table printed by `compare`.
pub fn table(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {} — {} s, {} PoPs, seeds {:?}",
        c.scenario, c.duration_s, c.pops, c.seeds
    );
    let _ = writeln!(
        out,
        "{:<13} {:>8} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9} {:>9} {:>10} {:>8} {:>9}",
        "policy",
        "sessions",
        "join p50",
        "join p95",
        "join<1s",
        "rebuffer",
        "0-stall",
        "lat p50",
        "lat p95",
        "overload",
        "reroutes",
        "origin"
    );
    let _ = writeln!(
        out,
        "{:<13} {:>8} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9} {:>9} {:>10} {:>8} {:>9}",
        "", "", "ms", "ms", "share", "ratio", "share", "ms", "ms", "node·s", "", "GB"
    );
    for p in &c.policies {
        let _ = writeln!(
            out,
            "{:<13} {:>8} {:>9.0} {:>9.0} {:>8.3} {:>9.5} {:>8.3} {:>9.0} {:>9.0} {:>10.1} {:>8} {:>9.2}",
            p.policy,
            p.sessions,
            p.join_p50_ms,
            p.join_p95_ms,
            p.join_under_1s,
            p.rebuffer_ratio,
            p.zero_stall_share,
            p.latency_p50_ms,
            p.latency_p95_ms,
            p.overloaded_node_s,
            p.reroutes,
            p.origin_egress_gb
        );
    }
    out
}

/// `results.json`: deterministic (ordered maps, no clock, no paths).
pub fn results_json(c: &Comparison) -> Result<String, SimError> {
    serde_json::to_string_pretty(c)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| SimError::World(format!("results.json: {e}")))
}

/// Writes `results.json` and `report.html` into `dir`.
pub fn write(c: &Comparison, dir: &Path) -> Result<(), SimError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| SimError::Io { path, source: e }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json = dir.join("results.json");
    std::fs::write(&json, results_json(c)?).map_err(io(&json))?;
    let html = dir.join("report.html");
    std::fs::write(&html, html::render(c)).map_err(io(&html))?;
    Ok(())
}
