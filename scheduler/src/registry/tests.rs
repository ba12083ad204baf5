use super::*;
use vantage_proto::v1::{Load, Report, StreamRole, StreamState};
use vantage_shared::place::Coord;

fn info() -> NodeInfo {
    NodeInfo {
        region: "eu".into(),
        coord: Coord::new(48.0, 2.0),
        capacity_mbps: 100.0,
        public_url: "http://a:8080".into(),
        probe_addr: "a:7402".into(),
        agent_version: "0".into(),
        static_origins: BTreeMap::new(),
    }
}

/// A node `id` with a session and one report at `report_ms`.
fn connected(reg: &Registry, id: &str, report_ms: i64) {
    let mut e = NodeEntry::new(id.into(), info(), 0);
    e.session = Some(Session {
        id: "s".into(),
        started_ms: 0,
        remote: "x".into(),
        connection: None,
    });
    reg.insert(e);
    reg.update(id, |e| {
        e.apply_report(Report::default(), report_ms);
    });
}

#[test]
fn up_suspect_down_by_missed_intervals() {
    let reg = Registry::new();
    connected(&reg, "a", 1_000);
    assert_eq!(
        reg.tick(1_500, 1_000),
        vec![("a".into(), NodeState::Down, NodeState::Up)]
    );
    assert!(reg.tick(3_000, 1_000).is_empty());
    assert_eq!(reg.tick(3_001, 1_000)[0].2, NodeState::Suspect);
    assert_eq!(reg.tick(4_001, 1_000)[0].2, NodeState::Down);
    reg.update("a", |e| {
        e.draining = true;
        e.apply_report(Report::default(), 5_000);
    });
    assert_eq!(reg.tick(5_100, 1_000)[0].2, NodeState::Draining);
    assert_eq!(reg.state_counts()["draining"], 1);
}

#[test]
fn local_loss_holds_connected_nodes_short_of_down() {
    let reg = Registry::new();
    for id in ["a", "b"] {
        connected(&reg, id, 1_000);
    }
    let lossy = || true;
    assert_eq!(reg.tick_aware(1_500, 1_000, lossy).changes.len(), 2);
    // b's connection ends (its agent died: QUIC idle timeout).
    reg.update("b", |e| e.session = None);
    // 3 intervals missed: the connected node is held at suspect, the
    // one without a connection goes down.
    let t = reg.tick_aware(4_001, 1_000, lossy);
    assert_eq!(
        t.changes,
        vec![
            ("a".into(), NodeState::Up, NodeState::Suspect),
            ("b".into(), NodeState::Up, NodeState::Down),
        ]
    );
    assert_eq!(t.held, 1);
    // Held at most held_down_after_ms.
    let limit = 1_000 + held_down_after_ms(1_000);
    assert!(reg.tick_aware(limit, 1_000, lossy).changes.is_empty());
    let t = reg.tick_aware(limit + 1, 1_000, lossy);
    assert_eq!(
        t.changes,
        vec![("a".into(), NodeState::Suspect, NodeState::Down)]
    );
    assert_eq!(t.held, 0);
    // Once down, a lossy scheduler does not bring it back.
    assert!(reg.tick_aware(limit + 2, 1_000, lossy).changes.is_empty());
    // Without local loss the same node goes down after 3 intervals, and
    // the loss check is not even asked while no node would go down.
    reg.update("a", |e| {
        e.apply_report(Report::default(), 20_000);
    });
    let never = || -> bool { panic!("asked without a node going down") };
    assert_eq!(
        reg.tick_aware(20_100, 1_000, never).changes[0].2,
        NodeState::Up
    );
    let t = reg.tick_aware(23_001, 1_000, || false);
    assert_eq!(
        t.changes,
        vec![("a".into(), NodeState::Up, NodeState::Down)]
    );
    assert_eq!(t.held, 0);
}

#[test]
fn rollups_close_at_minute_boundaries() {
    let mut acc = RollupAcc::default();
    assert!(acc.add(60_000, 0.5, 0.1, 10.0, 3).is_none());
    assert!(acc.add(119_999, 0.7, 0.3, 30.0, 5).is_none());
    let done = acc.add(120_000, 0.1, 0.1, 1.0, 1).unwrap();
    let r = done.to_store("a");
    assert_eq!((r.minute_ms, r.reports, r.viewers_max), (60_000, 2, 5));
    assert!((r.cpu_avg - 0.6).abs() < 1e-9 && (r.egress_mbps_avg - 20.0).abs() < 1e-9);
    assert_eq!(acc.reports, 1);
}

#[test]
fn view_exposes_published_streams_and_utilisation() {
    let mut e = NodeEntry::new("a".into(), info(), 0);
    e.apply_report(
        Report {
            load: Some(Load {
                egress_mbps: 50.0,
                ..Default::default()
            }),
            streams: vec![
                StreamState {
                    key: "live/x".into(),
                    role: StreamRole::Origin as i32,
                    bitrate_kbps: 2000.0,
                    gop_cache_ms: 2000.0,
                    ..Default::default()
                },
                StreamState {
                    key: "live/y".into(),
                    role: StreamRole::Relay as i32,
                    gop_cache_ms: 1000.0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
        10,
    );
    let v = e.view();
    assert_eq!(v.utilisation(), 0.5);
    assert_eq!(v.published.len(), 1);
    assert_eq!(v.buffer_ms, Some(1500.0));
}
