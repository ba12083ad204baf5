//! Trace tests: a session recorded step by step as a recorder would (a
//! [`Tape`]) and replayed.

use super::format::{Header, SettingsLine};
use super::*;
use crate::inputs::Deadband;
use crate::{Health, PathStat, PlanSession, StepReport};
use vantage_shared::place::Coord;
use vantage_shared::stream::{StreamKey, StreamPattern};

mod lines;
mod prop;

const T0: i64 = 1_700_000_000_000;

fn node(id: &str, lat: f64, lon: f64) -> NodeView {
    NodeView {
        coord: Coord::new(lat, lon),
        capacity_mbps: 1000.0,
        public_url: format!("http://{id}:8080"),
        probe_addr: format!("{id}:7402"),
        ..NodeView::new(id)
    }
}

fn path(rtt_ms: f64, loss: f64, samples: u32) -> PathStat {
    PathStat {
        rtt_ms,
        loss,
        samples,
    }
}

/// A small world whose floats have no short decimal form (0.1 + 0.2,
/// thirds, …), so a lossy float round trip would show; `step` moves loads
/// and paths, some by less than the deadband.
fn world(step: u32) -> Vec<NodeView> {
    let s = f64::from(step);
    let mut par = node("par", 48.8566, 2.3522);
    par.published
        .insert(StreamKey::parse("live/x").unwrap(), 2500.0 / 3.0);
    par.egress_mbps = 0.1 + 0.2 + s * 37.0 / 7.0;
    let mut fra = node("fra", 50.1109, 8.6821);
    fra.static_origins.insert(
        StreamPattern::parse("live/*").unwrap(),
        "http://origin.example/{app}/{stream}.flv".into(),
    );
    fra.buffer_ms = Some(1999.0 / 3.0);
    fra.egress_mbps = 123.456_789_012_345_67 * (1.0 + s / 11.0);
    let mut lon = node("lon", 51.5074, -0.1278);
    lon.paths
        .insert("par".into(), path(9.0 / 7.0 + s * 3.0, 1.0 / 3.0 * 0.01, 9));
    lon.paths.insert("fra".into(), path(14.0 / 3.0, 0.0, 12));
    let mut ams = node("ams", 52.3676, 4.9041);
    ams.egress_mbps = 990.0 * (s / 10.0).min(1.0);
    ams.paths
        .insert("fra".into(), path(7.0 + s.sin() / 3.0, 0.0, 30));
    let mut nyc = node("nyc", 40.7128, -74.0060);
    nyc.health = if step > 3 { Health::Down } else { Health::Up };
    let nowhere = NodeView {
        coord: None,
        ..node("nowhere", 0.0, 0.0)
    };
    let mut v = vec![par, fra, lon, ams, nyc];
    if step < 5 {
        v.push(nowhere);
    }
    if step >= 6 {
        let mut mad = node("mad", 40.4168, -3.7038);
        mad.paths.insert("par".into(), path(21.0 / 9.0, 0.0, 20));
        v.push(mad);
    }
    v
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
        throughput: 0.25,
    }
}

fn settings(step: u32) -> PlanSettings {
    let (weights, weights_version) = if step < 3 { (w1(), 1) } else { (w2(), 2) };
    PlanSettings {
        weights,
        weights_version,
        probe_key: vec![7; 32],
        deadband: Deadband::default(),
        full_plan_interval_ms: 4_000,
        ..PlanSettings::default()
    }
}

/// Trace files being written as a recorder would: a header per file, a
/// self-contained step line first in each.
#[derive(Default)]
struct Tape {
    files: Vec<String>,
    settings: Option<SettingsLine>,
    step_seq: u64,
}

impl Tape {
    fn line(&mut self, line: &Line) {
        let text = serde_json::to_string(line).unwrap();
        if let Some(f) = self.files.last_mut() {
            f.push_str(&text);
            f.push('\n');
        }
    }

    fn open(&mut self, at_ms: i64) {
        let seq = self.files.len() as u64 + 1;
        self.files.push(String::new());
        self.settings = None;
        self.line(&Line::Header(Header {
            at_ms,
            format: format::FORMAT.into(),
            version: format::VERSION,
            seq,
            scheduler_id: "sched-test".into(),
            weights_version: 1,
            weights: w1(),
        }));
    }

    /// Steps `s` at `now`, recording the step; `rotate`: in a new file.
    fn step(&mut self, s: &mut PlanSession, now: i64, rotate: bool) -> StepReport {
        if rotate || self.files.is_empty() {
            self.open(now);
        }
        let inputs = StepInputs::capture(s, self.settings.is_none());
        let report = s.step(now);
        let capture = inputs.complete(s, &report, now, 42);
        self.step_seq += 1;
        let line = capture.to_line(self.step_seq, &mut self.settings);
        self.line(&Line::Step(Box::new(line)));
        report
    }

    fn trace(&self) -> Trace {
        let mut t = Trace::default();
        for (i, text) in self.files.iter().enumerate() {
            let seq = i as u64 + 1;
            let path = PathBuf::from(file_name(seq));
            t.add_file(seq, &path, text).unwrap();
            t.files.push(path);
        }
        t
    }
}

/// Records 10 steps of the world (weights change at 3, nyc down at 4,
/// `nowhere` leaves at 5, mad joins at 6, a new probe epoch at 8), in two
/// files (the second from step 7).
fn record_run() -> (Tape, Vec<Vec<NodeView>>) {
    let mut tape = Tape::default();
    let mut s = PlanSession::new(settings(0), 2);
    let mut planned = Vec::new();
    for step in 0..10u32 {
        s.set_settings(settings(step));
        if step == 5 {
            s.remove("nowhere");
        }
        for v in world(step) {
            s.offer(v);
        }
        let now = T0 + i64::from(step) * 1000 + if step >= 8 { 300_000 } else { 0 };
        tape.step(&mut s, now, step == 7);
        planned.push(s.planned_views());
    }
    (tape, planned)
}

fn options(previous: PreviousMode) -> ReplayOptions {
    ReplayOptions {
        previous,
        ..ReplayOptions::default()
    }
}

#[test]
fn replay_with_the_recorded_settings_reproduces_every_step() {
    let (tape, planned) = record_run();
    let trace = tape.trace();
    let steps: Vec<&StepRecord> = trace.steps().collect();
    assert_eq!(steps.len(), 10);
    assert_eq!(trace.weights_recorded(), vec![(1, w1()), (2, w2())]);
    // Self-contained lines start each file; the others hold what moved.
    let whole: Vec<u64> = steps
        .iter()
        .filter(|s| s.is_whole())
        .map(|s| s.step_seq)
        .collect();
    assert_eq!(whole, vec![1, 8]);
    assert_eq!(steps[0].nodes.len(), 6);
    assert_eq!(
        steps[7].nodes, planned[7],
        "every node, as the step planned them"
    );
    assert_eq!(steps[0].decisions.len(), 6, "every node's decisions");
    assert_eq!(steps[7].decisions.len(), 6);
    assert_eq!(steps[5].removed, vec!["nowhere".to_owned()]);
    assert!(steps.iter().all(|s| s.settings.probe_key.is_empty()));
    assert!(steps[3].full, "a weight change replans everything");
    assert!(
        steps[1].nodes.len() < 6,
        "only the moved views: {:?}",
        steps[1].nodes
    );
    for text in &tape.files {
        assert!(!text.contains(&"7,".repeat(8)) && !text.contains("probe_key"));
    }
    for mode in [PreviousMode::Replayed, PreviousMode::Recorded] {
        let r = replay(&trace, &options(mode));
        assert_eq!(
            (r.plans, r.equal, r.different, r.gaps, r.skipped),
            (10, 10, 0, 0, 0),
            "{mode:?}\n{}",
            r.to_text()
        );
        assert!(r.identical() && r.first_differences.is_empty());
        assert!(r.node_decisions >= 12 && r.primaries > 0, "{}", r.to_text());
    }
    // Each file replays on its own.
    for (i, text) in tape.files.iter().enumerate() {
        let mut one = Trace::default();
        one.add_file(i as u64 + 1, Path::new("one"), text).unwrap();
        let r = replay(&one, &ReplayOptions::default());
        assert!(r.plans > 0 && r.identical(), "file {i}: {}", r.to_text());
    }
}

#[test]
fn replay_with_other_weights_shows_where_decisions_differ() {
    let (tape, _) = record_run();
    let trace = tape.trace();
    let r = replay(
        &trace,
        &ReplayOptions {
            weights: Some(w1()),
            ..ReplayOptions::default()
        },
    );
    assert_eq!(r.plans, 10, "{}", r.to_text());
    // The steps recorded under w1 are reproduced; those under w2 are not.
    assert_eq!(r.equal, 3, "{}", r.to_text());
    assert_eq!(r.different, 7, "{}", r.to_text());
    assert!(r.node_decisions_different > 0);
    assert_eq!(
        r.first_differences[0].step_seq, 4,
        "{:?}",
        r.first_differences
    );
    let text = r.to_text();
    assert!(text.contains("recorded weights v2") && text.contains("replayed with: latency="));
    // Judged step by step from the recorded routes, too.
    let r = replay(
        &trace,
        &ReplayOptions {
            weights: Some(w1()),
            previous: PreviousMode::Recorded,
            ..ReplayOptions::default()
        },
    );
    assert_eq!((r.equal, r.different), (3, 7), "{}", r.to_text());
}

#[test]
fn a_step_line_missing_from_the_chain_is_a_gap_and_replay_resumes_at_a_whole_line() {
    let (tape, _) = record_run();
    // Drop step 3 of the first file: steps 4..=7 hold what moved since a
    // step the trace no longer has.
    let first: String = tape.files[0]
        .lines()
        .filter(|l| !l.contains("\"step_seq\":3,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut t = Trace::default();
    t.add_file(1, Path::new("a"), &first).unwrap();
    t.add_file(2, Path::new("b"), &tape.files[1]).unwrap();
    let r = replay(&t, &ReplayOptions::default());
    assert_eq!((r.plans, r.skipped, r.gaps), (5, 4, 1), "{}", r.to_text());
    assert!(r.identical(), "{}", r.to_text());
}
