//! Must show 3 (issue 6): a trace recorded from a live run — a real
//! scheduler with `--record`, three real agents, a weight change and an
//! agent killed — replayed through the planner with the weights in force
//! then reproduces every recorded decision exactly; replayed with other
//! weights it shows differences.
//!
//! The replay runs through the library (`vantage_scheduler::record`) and,
//! when it has been built, through `vantage-sim replay DIR`.

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use vantage_scheduler::record::{PreviousMode, Record, ReplayOptions, Trace, replay};
use vantage_shared::score::Weights;
use vantage_tests::cluster::{PLACES, agent_builder, wait_all_acked, wait_all_up};
use vantage_tests::http::as_u64;
use vantage_tests::{Agent, Scheduler, eventually};

/// Paris and Frankfurt hold the static origin of `live/*`; Tokyo does not,
/// so its primary upstream is a real choice between the two — until
/// Frankfurt is killed.
const IDS: [&str; 3] = ["rec-par", "rec-fra", "rec-tyo"];
const VICTIM: &str = "rec-fra";
const CONSUMER: &str = "rec-tyo";

/// Loads the trace of a running scheduler (the writer flushes whenever its
/// queue is empty; a partial last line is skipped by the reader).
fn load(dir: &Path) -> Result<Trace, String> {
    Trace::load(dir).map_err(|e| e.to_string())
}

fn plans_with<F: Fn(&vantage_scheduler::record::PlanRecord) -> bool>(t: &Trace, f: F) -> usize {
    t.plans().filter(|p| f(p)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_live_run_replays_exactly() {
    let traces = tempfile::Builder::new()
        .prefix("vantage-traces-")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = traces.path().join("trace");
    // A zero deadband: every report's wobble reaches the planner, so the
    // steady state is re-planned on every period and the trace holds many
    // plans chained by hysteresis state (with the default band most
    // periodic plans of a quiet cluster are skipped).
    let config = traces.path().join("scheduler.toml");
    std::fs::write(
        &config,
        "[deadband]\nrtt_rel = 0.0\nrtt_ms = 0.0\nloss = 0.0\nutilisation = 0.0\n\
         load_penalty = 0.0\nbuffer_ms = 0.0\nbitrate_rel = 0.0\n",
    )
    .unwrap_or_else(|e| panic!("config: {e}"));
    let s = Scheduler::builder()
        .report_interval_ms(500)
        .arg("--record")
        .arg(dir.display().to_string())
        .arg("--config")
        .arg(config.display().to_string())
        .start()
        .await;
    let (_, lat, lon) = PLACES[2];
    let mut agents = vec![
        agent_builder(&s, IDS[0], 0).start().await,
        agent_builder(&s, IDS[1], 1).start().await,
        Agent::builder(CONSUMER, &s)
            .region("ap-tokyo")
            .at(lat, lon)
            .capacity_mbps(1000.0)
            .start()
            .await,
    ];
    wait_all_up(&s, &IDS, Duration::from_secs(15)).await;
    let refs: Vec<_> = agents.iter().collect();
    wait_all_acked(&s, &refs, Duration::from_secs(15)).await;
    let v0 = as_u64(s.weights().await.get("version")).unwrap_or(0);

    // Some seconds of steady state: plans with all three up.
    eventually(
        Duration::from_secs(15),
        "4 recorded plans with every node up",
        || async {
            let t = load(&dir)?;
            let n = plans_with(&t, |p| {
                p.input.nodes.len() == 3
                    && p.input
                        .nodes
                        .iter()
                        .all(|n| n.health == vantage_scheduler::planner::Health::Up)
            });
            if n >= 4 {
                Ok(())
            } else {
                Err(format!("{n} such plans"))
            }
        },
    )
    .await;

    // A weight change through the API.
    let (status, after) = s
        .put(
            "/v1/weights",
            &json!({"latency": 0.1, "distance": 0.6, "comment": "record test"}),
        )
        .await;
    assert_eq!(status, 200, "{after}");
    let v1 = as_u64(after.get("version")).unwrap_or(0);
    assert!(v1 > v0, "{after}");
    eventually(
        Duration::from_secs(10),
        "2 plans with the new weights in the trace",
        || async {
            let t = load(&dir)?;
            let n = plans_with(&t, |p| p.input.weights_version == v1);
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} plans with v{v1}"))
            }
        },
    )
    .await;

    // An agent killed: down after 3 missed intervals, replanned without it.
    let victim = agents
        .iter_mut()
        .find(|a| a.node_id() == VICTIM)
        .unwrap_or_else(|| unreachable!("victim is one of IDS"));
    let killed_at = vantage_tests::clock_ms() as i64;
    victim.kill();
    eventually(
        Duration::from_secs(15),
        "plans with the killed agent down in the trace",
        || async {
            let t = load(&dir)?;
            let n = plans_with(&t, |p| {
                p.at_ms > killed_at
                    && p.input.nodes.iter().any(|n| {
                        n.id == VICTIM && n.health == vantage_scheduler::planner::Health::Down
                    })
            });
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} plans with {VICTIM} down"))
            }
        },
    )
    .await;
    let dropped = s
        .metric("vantage_scheduler_record_dropped_total", &[])
        .await;
    let written = s
        .metric("vantage_scheduler_record_written_total", &[])
        .await;
    assert_eq!(dropped, 0.0, "no record may be dropped in a 3-node run");
    assert!(written > 0.0);
    drop(agents);
    drop(s);

    // The trace: inputs and decisions of the whole run.
    let trace = Trace::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let plans = trace.plans().count();
    let count = |f: &dyn Fn(&Record) -> bool| trace.records.iter().filter(|r| f(r)).count();
    let reports = count(&|r| matches!(r, Record::Report { .. }));
    let connects =
        count(&|r| matches!(r, Record::Node(n) if n.event == "connect" && n.info.is_some()));
    let victim_down =
        count(&|r| matches!(r, Record::Node(n) if n.event == "down" && n.node_id == VICTIM));
    let weight_lines = count(&|r| matches!(r, Record::Weights(w) if w.version == v1));
    eprintln!(
        "trace: {} files, {} records: {plans} plans, {reports} reports, {connects} connects, \
         {victim_down} victim-down events, {weight_lines} weight changes",
        trace.files.len(),
        trace.records.len()
    );
    assert!(plans >= 7, "{plans} plans");
    assert!(reports >= 3 * 4, "{reports} reports");
    assert_eq!(connects, 3);
    assert_eq!(victim_down, 1);
    assert_eq!(weight_lines, 1);
    let versions: Vec<u64> = trace.weights_recorded().iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, vec![v0, v1], "weights in force while recording");
    assert!(
        trace.plans().any(|p| p
            .decisions
            .values()
            .any(|d| d.streams.values().any(|ups| ups.len() >= 2))),
        "plans route live/* with failover lists"
    );
    // The consumer's primary upstream over time, as recorded: a node, and
    // Paris once Frankfurt is gone.
    let primaries: Vec<String> = trace
        .plans()
        .filter_map(|p| {
            let ups = p.decisions.get(CONSUMER)?.streams.get("live/*")?;
            ups.first().map(|u| u.node.clone())
        })
        .collect();
    eprintln!("{CONSUMER} primaries for live/*: {primaries:?}");
    assert!(!primaries.is_empty() && primaries.iter().all(|p| !p.is_empty()));
    assert_eq!(primaries.last().map(String::as_str), Some(IDS[0]));

    eprintln!("trace bytes by record type: {}", sizes(&trace));

    // Replay with the weights in force at record time: identical, both
    // with chained (replayed) hysteresis and with the recorded one.
    for previous in [PreviousMode::Replayed, PreviousMode::Recorded] {
        let r = replay(
            &trace,
            &ReplayOptions {
                previous,
                ..Default::default()
            },
        );
        eprintln!("replay ({previous:?}), recorded weights:\n{}", r.to_text());
        assert_eq!(r.plans, plans);
        assert_eq!(r.equal, plans, "{}", r.to_text());
        assert_eq!(r.different, 0);
        assert!(r.node_decisions >= plans && r.primaries >= plans);
    }

    // Other weights: the decisions differ.
    let other = Weights {
        latency: 0.0,
        loss: 0.0,
        buffer: 0.0,
        load: 0.0,
        distance: 1.0,
    };
    let r = replay(
        &trace,
        &ReplayOptions {
            weights: Some(other),
            ..Default::default()
        },
    );
    eprintln!("replay, distance-only weights:\n{}", r.to_text());
    assert_eq!(r.plans, plans);
    assert!(r.different > 0, "{}", r.to_text());
    assert!(!r.first_differences.is_empty());

    sim_replay(&dir, plans);
}

/// "type: lines × average bytes" for every record type (cost figures in
/// docs/simulator-traces.md).
fn sizes(t: &Trace) -> String {
    let mut by: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for f in &t.files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            let kind = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("type").and_then(|k| k.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "?".into());
            let e = by.entry(kind).or_default();
            e.0 += 1;
            e.1 += line.len() + 1;
        }
    }
    by.iter()
        .map(|(k, (n, b))| format!("{k}: {n} × {} B", b / n.max(&1)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `vantage-sim replay DIR` over the same trace, when the simulator binary
/// with that sub-command has been built.
fn sim_replay(dir: &Path, plans: usize) {
    let sim = vantage_tests::bins::bin_dir().join("vantage-sim");
    let has_replay = sim.is_file()
        && std::process::Command::new(&sim)
            .args(["replay", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_replay {
        eprintln!("SKIPPED vantage-sim replay: binary or sub-command not built");
        return;
    }
    let out = std::process::Command::new(&sim)
        .arg("replay")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("vantage-sim replay: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "vantage-sim replay:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "vantage-sim replay failed");
    assert!(
        stdout.contains(&format!("identical: {plans}")) && stdout.contains("different: 0"),
        "vantage-sim replay reproduces the {plans} plans"
    );
    // Other weights through the CLI, as JSON: differences.
    let out = std::process::Command::new(&sim)
        .arg("replay")
        .arg(dir)
        .args([
            "--weights",
            "latency=0,loss=0,buffer=0,load=0,distance=1",
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("vantage-sim replay --weights: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "replay --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(as_u64(v.get("plans")), Some(plans as u64), "{v}");
    assert!(as_u64(v.get("different")).is_some_and(|d| d > 0), "{v}");
}
