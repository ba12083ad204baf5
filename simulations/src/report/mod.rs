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
        "{:<13} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>6} {:>8} {:>9} {:>8} {:>7}",
        "policy",
        "sessions",
        "joined",
        "join p50",
        "join p95",
        "rebuffer",
        "rebuf/att",
        "0-stall",
        "0-s/att",
        "Mbps",
        "lat p50",
        "overload",
        "reroutes",
        "origin"
    );
    let _ = writeln!(
        out,
        "{:<13} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>6} {:>8} {:>9} {:>8} {:>7}",
        "",
        "",
        "share",
        "ms",
        "ms",
        "ratio",
        "ratio",
        "share",
        "share",
        "mean",
        "ms",
        "node·s",
        "",
        "GB"
    );
    for p in &c.policies {
        let _ = writeln!(
            out,
            "{:<13} {:>8} {:>7.4} {:>8.0} {:>8.0} {:>9.5} {:>9.5} {:>7.4} {:>7.4} {:>6.2} {:>8.0} {:>9.1} {:>8} {:>7.1}",
            p.policy,
            p.sessions,
            p.join_share,
            p.join_p50_ms,
            p.join_p95_ms,
            p.rebuffer_ratio,
            p.rebuffer_ratio_attempted,
            p.zero_stall_share,
            p.zero_stall_share_attempted,
            p.mean_bitrate_mbps,
            p.latency_p50_ms,
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
