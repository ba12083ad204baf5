//! Must show 3 (issue 6, reworked for issue 15): a trace recorded from a
//! live run — a real scheduler with `--record`, three real agents, a
//! weight change and an agent killed — replayed step by step through the
//! planning session with the weights in force then reproduces every
//! recorded decision exactly, chained and judged from the recorded routes;
//! replayed with other weights it shows differences.
//!
//! The replay runs through the library (`vantage_plan::trace`) and, when it
//! has been built, through `vantage-sim replay DIR`.

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use vantage_plan::Health;
use vantage_plan::trace::{PreviousMode, Record, ReplayOptions, StepRecord, Trace, replay};
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

fn steps_with<F: Fn(&StepRecord) -> bool>(t: &Trace, f: F) -> usize {
    t.steps().filter(|p| f(p)).count()
}

/// The step, if any, that took `VICTIM` as down, and how many steps came
/// after it.
fn steps_after_victim_down(t: &Trace, since_ms: i64) -> usize {
    let down = |p: &StepRecord| {
        p.at_ms >= since_ms
            && p.nodes
                .iter()
                .any(|n| n.id == VICTIM && n.health == Health::Down)
    };
    t.steps().skip_while(|p| !down(p)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_live_run_replays_exactly() {
    let traces = tempfile::Builder::new()
        .prefix("vantage-traces-")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = traces.path().join("trace");
    // A zero deadband: every report's wobble reaches the planning session,
    // so the steady state is stepped on every replan interval and the trace
    // holds many steps chained by the hysteresis state (with the default
    // band a quiet cluster is hardly stepped at all). Files rotate every
    // 2 s, each at a whole step of the live cluster.
    let config = traces.path().join("scheduler.toml");
    std::fs::write(
        &config,
        "[deadband]\nrtt_rel = 0.0\nrtt_ms = 0.0\nloss = 0.0\nutilisation = 0.0\n\
         load_penalty = 0.0\nbuffer_ms = 0.0\nbitrate_rel = 0.0\n\
         [record]\nmax_file_age_s = 2\n",
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
    let all_up_ms = vantage_tests::clock_ms() as i64;
    let v0 = as_u64(s.weights().await.get("version")).unwrap_or(0);

    // Some seconds of steady state: steps with all three up.
    eventually(
        Duration::from_secs(15),
        "4 recorded steps with every node up",
        || async {
            let t = load(&dir)?;
            let n = steps_with(&t, |p| p.at_ms >= all_up_ms);
            if n >= 4 {
                Ok(())
            } else {
                Err(format!("{n} such steps"))
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
        "2 steps with the new weights in the trace",
        || async {
            let t = load(&dir)?;
            let n = steps_with(&t, |p| p.settings.weights_version == v1);
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} steps with v{v1}"))
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
        "a step taking the killed agent as down, and one after it",
        || async {
            let t = load(&dir)?;
            let n = steps_after_victim_down(&t, killed_at);
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} steps from {VICTIM} down on"))
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
    let steps = trace.steps().count();
    let whole = steps_with(&trace, StepRecord::is_whole);
    let count = |f: &dyn Fn(&Record) -> bool| trace.records.iter().filter(|r| f(r)).count();
    let reports = count(&|r| matches!(r, Record::Report { .. }));
    let connects =
        count(&|r| matches!(r, Record::Node(n) if n.event == "connect" && n.info.is_some()));
    let victim_down =
        count(&|r| matches!(r, Record::Node(n) if n.event == "down" && n.node_id == VICTIM));
    let weight_lines = count(&|r| matches!(r, Record::Weights(w) if w.version == v1));
    eprintln!(
        "trace: {} files, {} records: {steps} steps ({whole} whole), {reports} reports, \
         {connects} connects, {victim_down} victim-down events, {weight_lines} weight changes",
        trace.files.len(),
        trace.records.len()
    );
    assert!(steps >= 8, "{steps} steps");
    assert!(trace.files.len() >= 3, "{} files", trace.files.len());
    assert_eq!(whole, trace.files.len(), "one whole step per file");
    assert!(reports >= 3 * 4, "{reports} reports");
    assert_eq!(connects, 3);
    assert_eq!(victim_down, 1);
    assert_eq!(weight_lines, 1);
    let versions: Vec<u64> = trace.weights_recorded().iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, vec![v0, v1], "weights in force while recording");
    assert!(
        trace.steps().any(|p| p
            .decisions
            .values()
            .any(|d| d.patterns.values().any(|ups| ups.len() >= 2))),
        "steps route live/* with failover lists"
    );
    // The consumer's primary upstream over time, as recorded: a node, and
    // Paris once Frankfurt is gone.
    let primaries: Vec<String> = trace
        .steps()
        .filter_map(|p| {
            let ups = p.decisions.get(CONSUMER)?.patterns.get("live/*")?;
            ups.first().map(|u| u.node.clone())
        })
        .collect();
    eprintln!("{CONSUMER} primaries for live/* when its table changed: {primaries:?}");
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
        assert_eq!((r.plans, r.skipped, r.gaps), (steps, 0, 0));
        assert_eq!(r.equal, steps, "{}", r.to_text());
        assert_eq!(r.different, 0);
        assert!(r.node_decisions >= steps && r.primaries >= steps);
    }

    // Each file replays on its own, from its whole step with the routes of
    // the live cluster.
    for (i, path) in trace.files.iter().enumerate() {
        let mut one = Trace::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        one.add_file(i as u64 + 1, path, &text)
            .unwrap_or_else(|e| panic!("{e}"));
        let first = one
            .steps()
            .next()
            .unwrap_or_else(|| panic!("{}: no step", path.display()));
        assert!(
            first.is_whole(),
            "{} begins at a whole step",
            path.display()
        );
        let r = replay(&one, &ReplayOptions::default());
        assert!(
            r.identical() && r.skipped == 0,
            "{}: {}",
            path.display(),
            r.to_text()
        );
    }

    // Other weights: the decisions differ.
    let other = Weights {
        latency: 0.0,
        loss: 0.0,
        buffer: 0.0,
        load: 0.0,
        distance: 1.0,
        throughput: 0.25,
    };
    let r = replay(
        &trace,
        &ReplayOptions {
            weights: Some(other),
            ..Default::default()
        },
    );
    eprintln!("replay, distance-only weights:\n{}", r.to_text());
    assert_eq!(r.plans, steps);
    assert!(r.different > 0, "{}", r.to_text());
    assert!(!r.first_differences.is_empty());

    sim_replay(&dir, steps);
}

/// "type: lines × average bytes" for every record type, whole step lines
/// apart (cost figures in docs/simulator-traces.md).
fn sizes(t: &Trace) -> String {
    let mut by: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for f in &t.files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            let v = serde_json::from_str::<serde_json::Value>(line).ok();
            let mut kind = v
                .as_ref()
                .and_then(|v| v.get("type").and_then(|k| k.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "?".into());
            if v.is_some_and(|v| v.get("snapshot").is_some()) {
                kind.push_str(" (whole)");
            }
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
fn sim_replay(dir: &Path, steps: usize) {
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
        stdout.contains(&format!("identical: {steps}")) && stdout.contains("different: 0"),
        "vantage-sim replay reproduces the {steps} steps"
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
    assert_eq!(as_u64(v.get("plans")), Some(steps as u64), "{v}");
    assert!(as_u64(v.get("different")).is_some_and(|d| d > 0), "{v}");
}
