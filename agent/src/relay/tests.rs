use super::*;
use crate::routes::{AppliedTable, TableSource};
use tokio::sync::watch;
use vantage_proto::v1::{DirectoryEntry, OriginRoute, RouteTable, StreamRoute, Upstream};

fn relay(table: Option<RouteTable>, origins: &[StaticOrigin]) -> Relay {
    let applied =
        table.map(|t| Arc::new(AppliedTable::new(t, "edge-1", TableSource::Scheduler, 0).unwrap()));
    let (_tx, rx) = watch::channel(applied);
    let (alerts, _rx) = crate::telemetry::alert::channel(crate::metrics::Metrics::default());
    Relay::new(
        RelayConfig::default(),
        "edge-1",
        rx,
        Default::default(),
        origins,
        alerts,
        RelayMetrics::default(),
    )
}

#[test]
fn candidates_come_from_the_table_then_static_origins() {
    let key = StreamKey::parse("live/x").unwrap();
    let origins = [StaticOrigin {
        pattern: "live/*".into(),
        url: "http://127.0.0.1:9/{app}/{stream}.flv".into(),
    }];
    let r = relay(None, &origins);
    assert_eq!(
        r.candidates(&key),
        [Candidate {
            label: "http://127.0.0.1:9/live/x.flv".into(),
            url: "http://127.0.0.1:9/live/x.flv".into()
        }]
    );
    assert!(r.candidates(&StreamKey::parse("vod/x").unwrap()).is_empty());
    let table = RouteTable {
        node_id: "edge-1".into(),
        version: 1,
        nonce: "n".into(),
        ttl_s: 60,
        streams: vec![StreamRoute {
            stream: "live/*".into(),
            upstreams: vec![
                Upstream {
                    kind: UpstreamKind::Node as i32,
                    node_id: "edge-2".into(),
                    url: "http://127.0.0.1:8080".into(),
                    ..Default::default()
                },
                Upstream {
                    kind: UpstreamKind::Origin as i32,
                    url: "http://127.0.0.1:9000/o/{stream}.flv".into(),
                    ..Default::default()
                },
            ],
        }],
        ..Default::default()
    };
    let r = relay(Some(table), &origins);
    let c = r.candidates(&key);
    assert_eq!(c[0].label, "edge-2");
    assert_eq!(c[0].url, "http://127.0.0.1:8080/live/x.flv");
    assert_eq!(c[1].url, "http://127.0.0.1:9000/o/x.flv");
}

#[test]
fn candidates_follow_the_directory_to_the_origin_route() {
    let origins = [StaticOrigin {
        pattern: "live/*".into(),
        url: "http://127.0.0.1:9/{app}/{stream}.flv".into(),
    }];
    let entry = |stream: &str, origin: &str| DirectoryEntry {
        stream: stream.into(),
        origin: origin.into(),
    };
    let table = RouteTable {
        node_id: "edge-1".into(),
        version: 1,
        nonce: "n".into(),
        ttl_s: 60,
        origins: vec![OriginRoute {
            origin: "origin-a".into(),
            upstreams: vec![Upstream {
                kind: UpstreamKind::Node as i32,
                node_id: "edge-2".into(),
                url: "http://10.0.0.2:8080".into(),
                ..Default::default()
            }],
        }],
        directory: vec![entry("live/a", "origin-a"), entry("live/here", "edge-1")],
        ..Default::default()
    };
    let r = relay(Some(table), &origins);
    let c = r.candidates(&StreamKey::parse("live/a").unwrap());
    assert_eq!(
        c,
        [Candidate {
            label: "edge-2".into(),
            url: "http://10.0.0.2:8080/live/a.flv".into()
        }]
    );
    // Published here: nothing to pull, the static origin is not asked.
    assert!(
        r.candidates(&StreamKey::parse("live/here").unwrap())
            .is_empty()
    );
    // Not in the directory: the static origin, as without a table.
    let c = r.candidates(&StreamKey::parse("live/b").unwrap());
    assert_eq!(c[0].url, "http://127.0.0.1:9/live/b.flv");
}
