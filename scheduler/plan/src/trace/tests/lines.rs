//! Reading lines back: every type bit-exactly, truncated and malformed
//! lines, other versions.

use super::*;
use crate::trace::format::{
    AlertLine, NodeEvent, NodeInfoLine, ReportLine, ResolveLine, WeightsLine,
};
use std::collections::BTreeMap;
use vantage_proto::v1::{StreamRole, StreamState};

fn every_line() -> Vec<Line> {
    let (tape, _) = record_run();
    let step = tape.files[0]
        .lines()
        .find(|l| l.contains("\"step_seq\":2,"))
        .map(|l| serde_json::from_str::<Line>(l).unwrap())
        .unwrap();
    let report = vantage_proto::v1::Report {
        seq: 5,
        streams: vec![StreamState {
            key: "live/x".into(),
            role: StreamRole::Origin as i32,
            bitrate_kbps: 2500.0 / 3.0,
            ..Default::default()
        }],
        ..Default::default()
    };
    vec![
        Line::Header(Header {
            at_ms: T0,
            format: format::FORMAT.into(),
            version: format::VERSION,
            seq: 1,
            scheduler_id: "s".into(),
            weights_version: 1,
            weights: w2(),
        }),
        Line::Report(ReportLine {
            at_ms: T0 + 1,
            node_id: "par".into(),
            seq: 5,
            report_pb: base64::engine::general_purpose::STANDARD
                .encode(prost::Message::encode_to_vec(&report)),
        }),
        Line::Node(NodeEvent {
            at_ms: T0 + 2,
            node_id: "par".into(),
            event: "connect".into(),
            detail: "session-1".into(),
            info: Some(NodeInfoLine {
                region: "eu".into(),
                lat: Some(1.0 / 3.0),
                lon: Some(-2.0 / 7.0),
                capacity_mbps: 0.1 + 0.2,
                public_url: "http://par".into(),
                probe_addr: "par:7402".into(),
                agent_version: "0.1.0".into(),
                static_origins: BTreeMap::from([("live/*".into(), "http://o/{stream}".into())]),
            }),
        }),
        Line::Alert(AlertLine {
            at_ms: T0 + 3,
            node_id: "par".into(),
            kind: "upstream_lost".into(),
            subject: "live/x".into(),
            detail: "fra".into(),
            value: 2.0 / 3.0,
        }),
        Line::Weights(WeightsLine {
            at_ms: T0 + 4,
            version: 2,
            weights: w2(),
            actor: "api".into(),
            comment: "distance".into(),
        }),
        Line::Resolve(ResolveLine {
            at_ms: T0 + 5,
            request: serde_json::json!({"stream": "live/x", "lat": 1.0 / 3.0}),
            answer: serde_json::json!({"edges": [{"node_id": "par", "score": 0.1 + 0.2}]}),
        }),
        step,
    ]
}

#[test]
fn every_line_type_reads_back_bit_exactly() {
    let lines = every_line();
    for line in &lines {
        let text = serde_json::to_string(line).unwrap();
        let back: Line = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, line, "{text}");
    }
    let text: String = lines
        .iter()
        .map(|l| serde_json::to_string(l).unwrap() + "\n")
        .collect();
    let mut t = Trace::default();
    // The step line's settings are null (unchanged) in the recorded file;
    // here it is the file's first step line.
    let err = t
        .add_file(1, Path::new("f"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("f:7:") && err.contains("settings are null"),
        "{err}"
    );

    let (tape, planned) = record_run();
    let trace = tape.trace();
    let first = trace.steps().next().unwrap();
    assert_eq!(first.nodes, planned[0], "views read back bit-exactly");
    let mut want = settings(0);
    want.probe_key.clear();
    assert_eq!(first.settings, want);
    match &trace.records[..] {
        [Record::Header(h), Record::Step(_), ..] => assert_eq!(h.seq, 1),
        other => panic!("{:?}", other.first()),
    }
    let mut t = Trace::default();
    let mut no_step: String = text.lines().take(6).map(|l| format!("{l}\n")).collect();
    no_step.push('\n');
    t.add_file(1, Path::new("f"), &no_step).unwrap();
    let report = t
        .records
        .iter()
        .find_map(|r| match r {
            Record::Report { report, .. } => Some(report),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        report.streams[0].bitrate_kbps.to_bits(),
        (2500.0f64 / 3.0).to_bits()
    );
    assert!(
        matches!(&t.records[2], Record::Node(n) if n.info.as_ref().unwrap().lat == Some(1.0 / 3.0))
    );
}

#[test]
fn a_truncated_last_line_is_skipped_and_anything_else_malformed_is_refused() {
    let (tape, _) = record_run();
    let text = &tape.files[0];
    // A scheduler killed mid-line.
    let cut = format!("{text}{{\"type\":\"step\",\"at_ms\":1,\"st");
    let mut t = Trace::default();
    t.add_file(1, Path::new("a"), &cut).unwrap();
    assert_eq!((t.truncated, t.steps().count()), (1, 7));
    // Garbage inside a file is an error naming the file and line.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, "{\"type\":\"bogus\"}");
    let err = Trace::default()
        .add_file(
            1,
            Path::new("dir/trace-00000001.jsonl"),
            &(lines.join("\n") + "\n"),
        )
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("dir/trace-00000001.jsonl:3:"), "{err}");
    // A file must begin with its header.
    let err = Trace::default()
        .add_file(
            1,
            Path::new("b"),
            &(text.lines().skip(1).collect::<Vec<_>>().join("\n") + "\n"),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("b:1:") && err.contains("header"), "{err}");
    let empty = std::env::temp_dir().join(format!("vantage-trace-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    assert!(matches!(Trace::load(&empty), Err(TraceError::Empty(_))));
    let _ = std::fs::remove_dir(&empty);
}

#[test]
fn version_1_files_are_refused_with_file_line_and_why() {
    let v1 = concat!(
        r#"{"type":"header","at_ms":1,"format":"vantage-trace","version":1,"seq":1,"#,
        r#""scheduler_id":"s","weights_version":1,"#,
        r#""weights":{"latency":0.35,"loss":0.15,"buffer":0.25,"load":0.15,"distance":0.1}}"#,
        "\n",
        r#"{"type":"plan","at_ms":2,"plan_seq":1,"duration_us":3,"input":{},"decisions":{}}"#,
        "\n"
    );
    let err = Trace::default()
        .add_file(1, Path::new("old/trace-00000001.jsonl"), v1)
        .unwrap_err();
    assert!(matches!(
        err,
        TraceError::Version {
            version: 1,
            line: 1,
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.starts_with("old/trace-00000001.jsonl:1: trace format version 1 is not supported")
            && text.contains("version 2"),
        "{text}"
    );
}
