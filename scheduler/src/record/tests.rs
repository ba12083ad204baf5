use super::*;
use std::time::{Duration, Instant};
use vantage_plan::trace::{PreviousMode, Record, ReplayOptions, StepInputs, Trace, replay};
use vantage_plan::{NodeView, PathStat, PlanSession, PlanSettings};
use vantage_proto::v1::{StreamRole, StreamState};
use vantage_shared::place::Coord;
use vantage_shared::stream::StreamKey;

const T0: i64 = 1_700_000_000_000;

fn w2() -> Weights {
    Weights {
        latency: 0.05,
        loss: 0.05,
        buffer: 0.05,
        load: 0.05,
        distance: 0.8,
        throughput: 0.25,
    }
}

fn settings(weights: Weights, version: u64) -> PlanSettings {
    PlanSettings {
        weights,
        weights_version: version,
        probe_key: vec![0xab; 32],
        ..PlanSettings::default()
    }
}

/// Four nodes; `step` moves loads and one path (by more than the
/// deadband) and takes `tyo` down from step 5.
fn world(step: u32) -> Vec<NodeView> {
    let s = f64::from(step);
    let node = |id: &str, lat: f64, lon: f64| NodeView {
        coord: Coord::new(lat, lon),
        capacity_mbps: 1000.0,
        public_url: format!("http://{id}:8080"),
        probe_addr: format!("{id}:7402"),
        ..NodeView::new(id)
    };
    let mut par = node("par", 48.8566, 2.3522);
    par.published.insert(
        StreamKey::parse("live/x").unwrap_or_else(|e| panic!("{e}")),
        2500.0 / 3.0,
    );
    par.egress_mbps = 100.0 + 70.0 * s;
    let mut fra = node("fra", 50.1109, 8.6821);
    fra.egress_mbps = 0.1 + 0.2 + 90.0 * (s % 3.0);
    let mut lon = node("lon", 51.5074, -0.1278);
    let rtt = 9.0 / 7.0 + 40.0 * (s % 2.0);
    let par_path = PathStat {
        rtt_ms: rtt,
        loss: 0.0,
        samples: 30,
    };
    lon.paths.insert("par".into(), par_path);
    let mut tyo = node("tyo", 35.6762, 139.6503);
    if step >= 5 {
        tyo.health = vantage_plan::Health::Down;
    }
    vec![par, fra, lon, tyo]
}

/// One planning round as `App::plan_round` records it.
fn round(rec: &Recorder, s: &mut PlanSession, step: u32, now: i64) {
    for v in world(step) {
        s.offer(v);
    }
    let ticket = rec.begin_step();
    let inputs = StepInputs::capture(s, ticket.whole);
    let report = s.step(now);
    rec.step(ticket, inputs.complete(s, &report, now, 42));
}

fn start(dir: &Path, limits: RecordLimits) -> Recorder {
    Recorder::start(
        dir,
        limits,
        "sched-test",
        (1, Weights::default()),
        RecordMetrics::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn recorded_steps_replay_exactly_and_other_weights_differ() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rec = start(tmp.path(), RecordLimits::default());
    let mut s = PlanSession::new(settings(Weights::default(), 1), 2);
    for step in 0..8u32 {
        if step == 3 {
            let ws = crate::store::WeightSet {
                version: 2,
                weights: w2(),
                created_at_ms: 0,
                actor: "test".into(),
                comment: "distance".into(),
            };
            rec.weights(T0 + 3000, &ws);
            s.set_settings(settings(w2(), 2));
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
        rec.report(T0 + i64::from(step) * 1000, "par", &report);
        round(&rec, &mut s, step, T0 + i64::from(step) * 1000);
    }
    rec.node(T0 + 9000, "tyo", "down", "up", None);
    rec.close();
    assert_eq!(rec.metrics.dropped.get(), 0);

    let trace = Trace::load(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(trace.files.len(), 1);
    let steps: Vec<_> = trace.steps().collect();
    assert_eq!(steps.len(), 8);
    let seqs: Vec<u64> = steps.iter().map(|s| s.step_seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert!(steps[0].is_whole() && steps[1..].iter().all(|s| !s.is_whole()));
    assert_eq!(steps[0].nodes.len(), 4);
    assert!(
        steps[0].decisions.len() == 4,
        "every node's decisions first"
    );
    assert!(steps[3].full, "the weight change re-plans everything");
    assert_eq!(steps[5].nodes.iter().filter(|n| n.id == "tyo").count(), 1);
    assert_eq!(
        trace.weights_recorded(),
        vec![(1, Weights::default()), (2, w2())]
    );
    let text = std::fs::read_to_string(&trace.files[0]).unwrap_or_default();
    assert!(!text.contains("probe_key") && !text.contains("171,171,171"));
    // Settings are written when they change, `null` otherwise.
    let with_settings = text
        .lines()
        .filter(|l| l.contains("\"type\":\"step\"") && !l.contains("\"settings\":null"))
        .count();
    assert_eq!(with_settings, 2, "{text}");

    for previous in [PreviousMode::Replayed, PreviousMode::Recorded] {
        let r = replay(
            &trace,
            &ReplayOptions {
                previous,
                ..Default::default()
            },
        );
        assert_eq!((r.plans, r.equal), (8, 8), "{previous:?}\n{}", r.to_text());
        assert!(r.identical());
    }
    let r = replay(
        &trace,
        &ReplayOptions {
            weights: Some(Weights::default()),
            ..Default::default()
        },
    );
    // The steps recorded under the default weights come out the same; from
    // the weight change on, the decisions recorded differ.
    assert!(r.different > 0, "{}", r.to_text());
    assert_eq!(r.first_differences[0].step_seq, 4, "{}", r.to_text());

    let count = |f: &dyn Fn(&Record) -> bool| trace.records.iter().filter(|r| f(r)).count();
    assert_eq!(
        count(&|r| matches!(r, Record::Report { node_id, .. } if node_id == "par")),
        8
    );
    assert_eq!(
        count(&|r| matches!(r, Record::Weights(w) if w.version == 2)),
        1
    );
    assert_eq!(
        count(&|r| matches!(r, Record::Node(n) if n.event == "down")),
        1
    );
    assert!(matches!(&trace.records[0], Record::Header(h) if h.seq == 1 && h.version == 2));
}

/// Waits until the writer has handled `sent` records.
fn settle(rec: &Recorder, sent: u64) {
    let m = &rec.metrics;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The counters are read one by one while the writer runs: `files` may
    // already count a file whose header `written` does not yet.
    while (m.written.get() + m.dropped.get()).saturating_sub(m.files.get()) < sent {
        assert!(Instant::now() < deadline, "the writer is stuck");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn files_rotate_at_a_whole_step_keep_the_newest_and_each_replays_on_its_own() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
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
    let mut s = PlanSession::new(settings(Weights::default(), 1), 1);
    let mut sent = 0;
    for step in 0..15u32 {
        for i in 0..10 {
            rec.report(i64::from(step * 10 + i), "par", &big);
        }
        sent += 10;
        // The planning loop steps while the writer keeps up.
        settle(&rec, sent);
        round(&rec, &mut s, step, T0 + i64::from(step) * 1000);
        sent += 1;
    }
    rec.close();
    assert_eq!(rec.metrics.dropped.get(), 0);
    let opened = rec.metrics.files.get();
    assert!(opened >= 4, "files opened: {opened}");
    let files = trace_files(tmp.path()).unwrap_or_default();
    let seqs: Vec<u64> = files.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![opened - 2, opened - 1, opened], "retention");
    for (_, f) in &files {
        assert!(std::fs::metadata(f).map_or(0, |m| m.len()) < 2 * 1024 * 1024);
        let mut one = Trace::default();
        let text = std::fs::read_to_string(f).unwrap_or_default();
        one.add_file(0, f, &text).unwrap_or_else(|e| panic!("{e}"));
        let first = one
            .steps()
            .next()
            .unwrap_or_else(|| panic!("{f:?}: no step"));
        assert!(first.is_whole(), "{f:?} starts at a whole step");
        let r = replay(&one, &ReplayOptions::default());
        assert!(r.plans > 0 && r.identical(), "{f:?}: {}", r.to_text());
    }
    // Across the files, the steps chain: no gaps, nothing skipped.
    let all = Trace::load(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    let r = replay(&all, &ReplayOptions::default());
    assert!(
        r.identical() && r.gaps == 0 && r.skipped == 0,
        "{}",
        r.to_text()
    );

    // A restarted recorder continues the numbering.
    let rec2 = start(tmp.path(), limits);
    rec2.node(1, "par", "connect", "s", None);
    rec2.close();
    let files = trace_files(tmp.path()).unwrap_or_default();
    assert_eq!(files.last().map(|(s, _)| *s), Some(opened + 1));
}

#[test]
fn a_step_that_cannot_follow_is_dropped_and_the_next_one_is_whole() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rec = start(tmp.path(), RecordLimits::default());
    let mut s = PlanSession::new(settings(Weights::default(), 1), 1);
    round(&rec, &mut s, 0, T0);
    // Step 2 lost on the way (as if the queue had been full): step 3
    // holds only what moved since a step the file does not have.
    let lost = rec.begin_step();
    assert!(!lost.whole);
    let inputs = StepInputs::capture(&s, false);
    let report = s.step(T0 + 1000);
    drop(inputs.complete(&s, &report, T0 + 1000, 1));
    rec.need_whole.store(false, Ordering::Relaxed);
    rec.step_sent.store(2, Ordering::Relaxed);
    round(&rec, &mut s, 1, T0 + 2000);
    settle(&rec, 2);
    assert_eq!(rec.metrics.dropped.get(), 1, "step 3 is not written");
    let next = rec.begin_step();
    assert!(next.whole, "the writer asks for a whole step");
    let inputs = StepInputs::capture(&s, next.whole);
    let report = s.step(T0 + 3000);
    rec.step(next, inputs.complete(&s, &report, T0 + 3000, 1));
    rec.close();
    let trace = Trace::load(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    let seqs: Vec<(u64, bool)> = trace.steps().map(|s| (s.step_seq, s.is_whole())).collect();
    assert_eq!(seqs, vec![(1, true), (4, true)]);
    let r = replay(&trace, &ReplayOptions::default());
    assert_eq!((r.plans, r.gaps, r.skipped), (2, 1, 0), "{}", r.to_text());
    assert!(r.identical(), "{}", r.to_text());
}

/// A recorder whose writer never reads (`_rx` kept by the caller).
fn stalled(queue: usize) -> (Recorder, std::sync::mpsc::Receiver<Entry>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(queue);
    let rec = Recorder {
        tx,
        metrics: RecordMetrics::default(),
        step_seq: AtomicU64::new(0),
        step_sent: AtomicU64::new(0),
        need_whole: Arc::new(AtomicBool::new(true)),
        thread: Mutex::new(None),
        dir: PathBuf::new(),
    };
    (rec, rx)
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking_and_a_dropped_step_makes_the_next_whole() {
    let (rec, _rx) = stalled(16);
    let started = Instant::now();
    for i in 0..100 {
        rec.node(i, "par", "up", "", None);
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(rec.metrics.dropped.get(), 84);

    let (rec, _rx) = stalled(16);
    let mut s = PlanSession::new(settings(Weights::default(), 1), 1);
    round(&rec, &mut s, 0, T0);
    round(&rec, &mut s, 1, T0 + 1000);
    // The queue is full: the third step is dropped.
    for i in 0..14 {
        rec.node(i, "par", "up", "", None);
    }
    assert_eq!(rec.metrics.dropped.get(), 0);
    round(&rec, &mut s, 2, T0 + 2000);
    assert_eq!(rec.metrics.dropped.get(), 1);
    assert!(rec.begin_step().whole, "after a dropped step");
}

#[test]
fn metrics_are_registered_under_the_scheduler_prefix() {
    let mut reg = prometheus_client::registry::Registry::default();
    let m = RecordMetrics::register(&mut reg);
    m.dropped.inc();
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.contains("vantage_scheduler_record_dropped_total 1"),
        "{out}"
    );
    assert!(
        out.contains("vantage_scheduler_record_written_total 0"),
        "{out}"
    );
}
