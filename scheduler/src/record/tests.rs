use super::*;
use crate::planner::tests::node;
use crate::planner::{Health, NodeView, PathStat};
use std::collections::BTreeMap;
use vantage_proto::v1::{StreamRole, StreamState};
use vantage_shared::score::{Ranges, Stability};
use vantage_shared::stream::{StreamKey, StreamPattern};

/// A small world whose floats have no short decimal form (0.1 + 0.2,
/// thirds, ...), so a lossy float round trip would show.
fn world(step: u32) -> Vec<NodeView> {
    let s = f64::from(step);
    let mut a = node("par", 48.8566, 2.3522);
    a.published
        .insert(StreamKey::parse("live/x").unwrap(), 2500.0 / 3.0);
    a.egress_mbps = 0.1 + 0.2 + s / 7.0;
    let mut b = node("fra", 50.1109, 8.6821);
    b.static_origins.insert(
        StreamPattern::parse("live/*").unwrap(),
        "http://origin.example/{app}/{stream}.flv".into(),
    );
    b.buffer_ms = Some(1999.0 / 3.0);
    b.egress_mbps = 123.456_789_012_345_67 * (1.0 + s / 11.0);
    let mut c = node("lon", 51.5074, -0.1278);
    c.paths.insert(
        "par".into(),
        PathStat {
            rtt_ms: 9.0 / 7.0 + s / 13.0,
            loss: 1.0 / 3.0 * 0.01,
            samples: 9,
        },
    );
    c.paths.insert(
        "fra".into(),
        PathStat {
            rtt_ms: 14.0 / 3.0,
            loss: 0.0,
            samples: 12,
        },
    );
    let mut d = node("ams", 52.3676, 4.9041);
    d.egress_mbps = 990.0 * (s / 10.0).min(1.0);
    let mut e = node("nyc", 40.7128, -74.0060);
    e.health = if step > 2 { Health::Down } else { Health::Up };
    let f = NodeView {
        coord: None,
        ..node("nowhere", 0.0, 0.0)
    };
    vec![a, b, c, d, e, f]
}

fn input(step: u32, weights: Weights, previous: BTreeMap<(String, String), String>) -> PlanInput {
    PlanInput {
        now_ms: 1_700_000_000_000 + i64::from(step) * 1000,
        weights,
        weights_version: if step < 3 { 1 } else { 2 },
        ranges: Ranges::default(),
        stability: Stability::default(),
        limits: crate::planner::Limits::default(),
        report_interval_ms: 1000,
        table_ttl_s: 60,
        nodes: world(step),
        previous,
        probe_key: vec![7; 32],
        previous_backups: BTreeMap::new(),
    }
}

fn w1() -> Weights {
    Weights::default()
}

fn w2() -> Weights {
    Weights {
        latency: 0.05,
        loss: 0.05,
        buffer: 0.05,
        load: 0.05,
        distance: 0.8,
    }
}

/// Records `steps` plans (weights change at step 3) like `App::plan_once`,
/// with reports, events and a weight change in between.
fn record_run(rec: &Recorder, steps: u32) {
    let mut previous = BTreeMap::new();
    let mut backups = BTreeMap::new();
    for step in 0..steps {
        let w = if step < 3 { w1() } else { w2() };
        if step == 3 {
            rec.weights(
                1_700_000_003_000,
                &crate::store::WeightSet {
                    version: 2,
                    weights: w,
                    created_at_ms: 0,
                    actor: "test".into(),
                    comment: "distance only".into(),
                },
            );
            rec.node(1_700_000_003_000, "nyc", "down", "up", None);
        }
        let report = Report {
            seq: u64::from(step),
            streams: vec![StreamState {
                key: "live/x".into(),
                role: StreamRole::Origin as i32,
                bitrate_kbps: 2500.0 / 3.0,
                ..Default::default()
            }],
            ..Default::default()
        };
        rec.report(1_700_000_000_000 + i64::from(step), "par", &report);
        let mut inp = input(step, w, previous.clone());
        // As the scheduler does: the last plan's backups are the next one's
        // backup hysteresis state.
        inp.previous_backups = backups;
        let plan = crate::planner::plan(&inp);
        previous = plan.primaries.clone();
        backups = plan.backups.clone();
        rec.plan(inp.now_ms, Duration::from_micros(42), inp, &plan);
    }
}

fn start(dir: &Path, limits: RecordLimits) -> Recorder {
    Recorder::start(
        dir,
        limits,
        "sched-test",
        (1, w1()),
        RecordMetrics::default(),
    )
    .unwrap()
}

#[test]
fn replay_with_recorded_weights_reproduces_every_plan_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = start(tmp.path(), RecordLimits::default());
    record_run(&rec, 8);
    rec.close();
    assert_eq!(rec.metrics.dropped.get(), 0);

    let trace = Trace::load(tmp.path()).unwrap();
    assert_eq!(trace.files.len(), 1);
    assert_eq!(trace.plans().count(), 8);
    assert_eq!(
        trace.weights_recorded(),
        vec![(1, w1()), (2, w2())],
        "weights in force at record time are in the trace"
    );
    // Inputs read back are the inputs given (bit-exact floats), except the
    // secret probe key, which is never written.
    let mut previous = BTreeMap::new();
    for (step, p) in trace.plans().enumerate() {
        let w = if step < 3 { w1() } else { w2() };
        let mut want = input(step as u32, w, previous.clone());
        want.probe_key.clear();
        previous = crate::planner::plan(&want).primaries;
        assert_eq!(p.input.nodes, want.nodes, "plan {step}: nodes");
        assert_eq!(p.input.previous, want.previous, "plan {step}: previous");
        assert_eq!(p.input.weights, want.weights);
        assert_eq!(p.input.now_ms, want.now_ms);
        assert_eq!(p.duration_us, 42);
    }
    let text = std::fs::read_to_string(&trace.files[0]).unwrap();
    assert!(!text.contains(&hex::encode([7u8; 32])) && !text.contains("probe_key"));
    // Only the first plan of the file carries `previous`; later ones chain.
    let plan_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"type\":\"plan\""))
        .collect();
    assert!(!plan_lines[0].contains("\"previous\":null"));
    assert!(
        plan_lines[1..]
            .iter()
            .all(|l| l.contains("\"previous\":null"))
    );

    for mode in [PreviousMode::Replayed, PreviousMode::Recorded] {
        let r = replay(
            &trace,
            &ReplayOptions {
                previous: mode,
                ..Default::default()
            },
        );
        assert_eq!(
            (r.plans, r.equal, r.different),
            (8, 8, 0),
            "{mode:?}\n{}",
            r.to_text()
        );
        assert!(r.identical() && r.first_differences.is_empty());
        assert_eq!(r.node_decisions, 8 * 6);
        assert!(r.primaries > 0);
    }

    // Other weights: the plans recorded under w2 come out differently with
    // w1 (and the first differences say where).
    let r = replay(
        &trace,
        &ReplayOptions {
            weights: Some(w1()),
            ..Default::default()
        },
    );
    assert_eq!(r.plans, 8);
    assert_eq!(r.equal, 3, "{}", r.to_text());
    assert_eq!(r.different, 5, "{}", r.to_text());
    assert!(r.node_decisions_different > 0 && !r.first_differences.is_empty());
    assert!(
        r.first_differences[0].plan_seq == 4,
        "{:?}",
        r.first_differences[0]
    );
    assert!(
        r.to_text().contains("recorded weights v2"),
        "{}",
        r.to_text()
    );

    // Other records are there too.
    let reports = trace
        .records
        .iter()
        .filter(|r| matches!(r, Record::Report { node_id, report, .. } if node_id == "par" && report.streams.len() == 1))
        .count();
    assert_eq!(reports, 8);
    assert!(
        trace
            .records
            .iter()
            .any(|r| matches!(r, Record::Weights(w) if w.version == 2 && w.actor == "test"))
    );
    assert!(
        trace
            .records
            .iter()
            .any(|r| matches!(r, Record::Node(n) if n.event == "down" && n.node_id == "nyc"))
    );
    assert!(
        matches!(trace.records[0], Record::Header(ref h) if h.weights_version == 1 && h.seq == 1)
    );
}

#[test]
fn files_rotate_by_size_keep_the_newest_and_each_replays_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = RecordLimits {
        max_file_mib: 1,
        max_files: 3,
        ..Default::default()
    };
    let rec = start(tmp.path(), limits);
    // ~40 KiB per report line: 1 MiB holds ~25 of them.
    let big = Report {
        streams: (0..1000)
            .map(|i| StreamState {
                key: format!("live/s{i}"),
                bitrate_kbps: f64::from(i) / 3.0,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut previous = BTreeMap::new();
    for step in 0..150u32 {
        rec.report(i64::from(step), "par", &big);
        if step % 10 == 0 {
            let inp = input(step % 5, w1(), previous.clone());
            let plan = crate::planner::plan(&inp);
            previous = plan.primaries.clone();
            rec.plan(inp.now_ms, Duration::ZERO, inp, &plan);
        }
    }
    rec.close();
    assert!(
        rec.metrics.files.get() >= 5,
        "files opened: {}",
        rec.metrics.files.get()
    );
    let files = trace_files(tmp.path()).unwrap();
    assert_eq!(files.len(), 3, "retention keeps max_files: {files:?}");
    let seqs: Vec<u64> = files.iter().map(|(s, _)| *s).collect();
    let last = rec.metrics.files.get();
    assert_eq!(seqs, vec![last - 2, last - 1, last]);
    for (_, f) in &files {
        assert!(std::fs::metadata(f).unwrap().len() < 2 * 1024 * 1024);
        let mut one = Trace::default();
        one.add_file(0, f, &std::fs::read_to_string(f).unwrap())
            .unwrap();
        assert!(
            matches!(one.records[0], Record::Header(_)),
            "{f:?} starts with a header"
        );
        let r = replay(&one, &ReplayOptions::default());
        assert!(r.identical(), "{f:?}: {}", r.to_text());
    }
    let all = Trace::load(tmp.path()).unwrap();
    let r = replay(&all, &ReplayOptions::default());
    assert!(r.plans > 0 && r.identical(), "{}", r.to_text());

    // A restarted recorder continues the numbering.
    let rec2 = start(tmp.path(), limits);
    rec2.node(1, "par", "connect", "s", None);
    rec2.close();
    let files = trace_files(tmp.path()).unwrap();
    assert_eq!(files.last().map(|(s, _)| *s), Some(last + 1));
}

#[test]
fn truncated_last_line_is_skipped_and_garbage_is_an_error_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = start(tmp.path(), RecordLimits::default());
    record_run(&rec, 3);
    rec.close();
    let (_, path) = trace_files(tmp.path()).unwrap().pop().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    // A scheduler killed mid-line.
    std::fs::write(&path, format!("{text}{{\"type\":\"plan\",\"at_ms\":1,\"pl")).unwrap();
    let t = Trace::load(tmp.path()).unwrap();
    assert_eq!(t.truncated, 1);
    assert_eq!(t.plans().count(), 3);
    // Garbage inside a file is not silently skipped.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, "{\"type\":\"bogus\"}");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let err = Trace::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains(":3:"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Trace::load(empty.path()),
        Err(TraceError::Empty(_))
    ));
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let (tx, _rx) = std::sync::mpsc::sync_channel(16);
    let rec = Recorder {
        tx,
        metrics: RecordMetrics::default(),
        plan_seq: AtomicU64::new(0),
        thread: Mutex::new(None),
        dir: PathBuf::new(),
    };
    let started = Instant::now();
    for i in 0..100 {
        rec.node(i, "par", "up", "", None);
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(rec.metrics.dropped.get(), 84);
}

#[test]
fn metrics_are_registered_under_the_scheduler_prefix() {
    let mut reg = prometheus_client::registry::Registry::default();
    let m = RecordMetrics::register(&mut reg);
    m.dropped.inc();
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
    assert!(
        out.contains("vantage_scheduler_record_dropped_total 1"),
        "{out}"
    );
    assert!(
        out.contains("vantage_scheduler_record_written_total 0"),
        "{out}"
    );
}
