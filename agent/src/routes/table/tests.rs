use super::*;
use vantage_proto::v1::{
    DirectoryEntry, EdgeChoice, GroupRedirect, OriginRoute, ProbeReason, ProbeTarget, StreamRoute,
    UpstreamKind,
};

pub(crate) fn node(id: &str, url: &str) -> Upstream {
    Upstream {
        kind: UpstreamKind::Node as i32,
        node_id: id.into(),
        url: url.into(),
        score: 0.2,
        hops: 1,
    }
}

pub(crate) fn static_origin(url: &str) -> Upstream {
    Upstream {
        kind: UpstreamKind::Origin as i32,
        url: url.into(),
        score: 0.4,
        ..Default::default()
    }
}

pub(crate) fn probe(id: &str, addr: &str) -> ProbeTarget {
    ProbeTarget {
        node_id: id.into(),
        addr: addr.into(),
        reason: ProbeReason::Upstream as i32,
    }
}

pub(crate) fn dir(stream: &str, origin: &str) -> DirectoryEntry {
    DirectoryEntry {
        stream: stream.into(),
        origin: origin.into(),
    }
}

pub(crate) fn origin_route(origin: &str, upstreams: Vec<Upstream>) -> OriginRoute {
    OriginRoute {
        origin: origin.into(),
        upstreams,
    }
}

/// A table in the old per-stream format (only `streams`).
pub(crate) fn good() -> RouteTable {
    RouteTable {
        node_id: "edge-1".into(),
        version: 4,
        nonce: "n4".into(),
        generated_at_ms: 1,
        ttl_s: 300,
        report_interval_ms: 1000,
        weights_version: 1,
        streams: vec![
            StreamRoute {
                stream: "live/*".into(),
                upstreams: vec![
                    node("edge-2", "http://127.0.0.1:8080"),
                    static_origin("http://origin/{app}/{stream}.flv"),
                ],
            },
            StreamRoute {
                stream: "live/main".into(),
                upstreams: vec![Upstream {
                    kind: UpstreamKind::Origin as i32,
                    url: "https://origin:443".into(),
                    ..Default::default()
                }],
            },
        ],
        probe_targets: vec![probe("edge-2", "127.0.0.1:7402")],
        redirects: vec![GroupRedirect {
            group: "u09t".into(),
            edges: vec![EdgeChoice {
                node_id: "edge-2".into(),
                url: "http://127.0.0.1:8080".into(),
                score: 0.1,
            }],
        }],
        probe_key: vec![1, 2, 3],
        ..RouteTable::default()
    }
}

/// A whole per-origin table of edge-1 (version 4): origins a and b, a
/// directory with a stream of each, one published here and one of an
/// origin without a route, and a static-origin pattern.
pub(crate) fn per_origin() -> RouteTable {
    RouteTable {
        streams: vec![StreamRoute {
            stream: "live/*".into(),
            upstreams: vec![static_origin("http://static:9000/{app}/{stream}.flv")],
        }],
        origins: vec![
            origin_route(
                "origin-a",
                vec![
                    node("edge-2", "http://10.0.0.2:8080"),
                    node("origin-a", "http://10.0.0.9:8080"),
                ],
            ),
            origin_route("origin-b", vec![node("origin-b", "http://10.0.0.8:8080")]),
        ],
        directory: vec![
            dir("live/a", "origin-a"),
            dir("live/b", "origin-b"),
            dir("live/here", "edge-1"),
            dir("live/lost", "origin-z"),
        ],
        ..good()
    }
}

/// An empty delta of edge-1 from `base` to `version`.
pub(crate) fn delta(version: u64, base: u64) -> RouteTable {
    RouteTable {
        node_id: "edge-1".into(),
        version,
        nonce: format!("n{version}"),
        generated_at_ms: 2,
        ttl_s: 300,
        report_interval_ms: 1000,
        weights_version: 1,
        probe_key: vec![1, 2, 3],
        base_version: base,
        ..RouteTable::default()
    }
}

/// A broken table and the start of its NACK message.
pub(crate) type Case = (fn(&mut RouteTable), &'static str);

pub(crate) fn key(s: &str) -> StreamKey {
    StreamKey::parse(s).unwrap()
}

pub(crate) fn applied(t: RouteTable) -> AppliedTable {
    AppliedTable::new(t, "edge-1", TableSource::Scheduler, 5).unwrap()
}

/// The node id or URL of the first upstream `key` resolves to.
pub(crate) fn first(t: &AppliedTable, k: &str) -> Option<String> {
    let u = t.route_for(&key(k)).upstreams()?.first()?.clone();
    Some(if u.node_id.is_empty() {
        u.url
    } else {
        u.node_id
    })
}

/// The error for `per_origin()` changed by `f`.
fn nack(f: impl FnOnce(&mut RouteTable)) -> TableError {
    nack_in(per_origin(), f)
}

fn nack_in(mut t: RouteTable, f: impl FnOnce(&mut RouteTable)) -> TableError {
    f(&mut t);
    validate(&t, "edge-1").unwrap_err()
}

#[test]
fn a_good_table_is_acked_and_routes_by_specificity() {
    let t = applied(good());
    assert_eq!(t.version(), 4);
    let pattern = |k: &str| match t.route_for(&key(k)) {
        Lookup::Stream(r) => Some(r.pattern.as_str().to_owned()),
        _ => None,
    };
    assert_eq!(pattern("live/main").as_deref(), Some("live/main"));
    assert_eq!(pattern("live/other").as_deref(), Some("live/*"));
    assert_eq!(t.route_for(&key("vod/x")), Lookup::Unrouted);
    // Empty tables and unset intervals are fine.
    let mut e = good();
    e.streams.clear();
    e.report_interval_ms = 0;
    assert!(validate(&e, "edge-1").is_ok());
}

#[test]
fn an_old_per_stream_table_routes_every_listed_stream() {
    // What the scheduler sent before per-origin routes: every stream exact.
    let mut old = good();
    old.streams = vec![
        StreamRoute {
            stream: "live/a".into(),
            upstreams: vec![node("edge-2", "http://10.0.0.2:8080")],
        },
        StreamRoute {
            stream: "live/b".into(),
            upstreams: vec![node("edge-3", "http://10.0.0.3:8080")],
        },
    ];
    let t = applied(old);
    assert_eq!(first(&t, "live/a").as_deref(), Some("edge-2"));
    assert_eq!(first(&t, "live/b").as_deref(), Some("edge-3"));
    assert_eq!(t.route_for(&key("live/c")), Lookup::Unrouted);
}

#[test]
fn lookup_goes_directory_then_origin_route_then_patterns() {
    let mut table = per_origin();
    // An exact stream entry loses to the directory.
    table.streams.push(StreamRoute {
        stream: "live/a".into(),
        upstreams: vec![static_origin("http://elsewhere:1")],
    });
    let t = applied(table);
    match t.route_for(&key("live/a")) {
        Lookup::Origin { origin, upstreams } => {
            assert_eq!(origin, "origin-a");
            assert_eq!(upstreams.len(), 2);
            assert_eq!(upstreams[0].node_id, "edge-2");
        }
        other => panic!("live/a: {other:?}"),
    }
    assert_eq!(first(&t, "live/b").as_deref(), Some("origin-b"));
    // Published here: no route, even though "live/*" matches.
    assert_eq!(t.route_for(&key("live/here")), Lookup::Local);
    assert_eq!(t.route_for(&key("live/here")).upstreams(), None);
    // An origin without a route, and a stream not in the directory, fall
    // through to the patterns.
    let static_url = "http://static:9000/{app}/{stream}.flv";
    assert_eq!(first(&t, "live/lost").as_deref(), Some(static_url));
    assert_eq!(first(&t, "live/new").as_deref(), Some(static_url));
    assert_eq!(t.route_for(&key("vod/x")), Lookup::Unrouted);
}

#[test]
fn a_stream_published_nowhere_is_listed_and_a_pull_hint_names_its_origin() {
    let mut table = per_origin();
    table.directory.push(dir("live/soon", ""));
    let t = applied(table);
    let soon = key("live/soon");
    // Listed (the subscription was answered) without an origin: the
    // patterns decide.
    assert!(t.lists(&soon));
    assert_eq!(t.origin_of(&soon), None);
    assert!(!t.lists(&key("live/new")));
    assert_eq!(
        first(&t, "live/soon").as_deref(),
        Some("http://static:9000/{app}/{stream}.flv")
    );
    // A downstream relay's hint is used while the directory names no
    // origin, never against it.
    let hinted = |k: &str, hint: &str| {
        t.route_hinted(&key(k), Some(hint))
            .upstreams()
            .and_then(|u| u.first())
            .map(|u| u.node_id.clone())
    };
    assert_eq!(hinted("live/soon", "origin-b").as_deref(), Some("origin-b"));
    assert_eq!(hinted("live/new", "origin-a").as_deref(), Some("edge-2"));
    assert_eq!(hinted("live/a", "origin-b").as_deref(), Some("edge-2"));
    assert_eq!(
        t.route_hinted(&key("live/new"), Some("edge-1")),
        Lookup::Local
    );
    // A hint naming an origin without a route falls through.
    assert_eq!(hinted("live/new", "origin-q").as_deref(), Some(""));
}

#[test]
fn bad_tables_are_nacked_with_a_reason() {
    assert!(matches!(
        validate(&good(), "edge-9"),
        Err(TableError::WrongNode { .. })
    ));
    let nack = |f: fn(&mut RouteTable)| nack_in(good(), f);
    assert_eq!(nack(|t| t.version = 0), TableError::ZeroVersion);
    assert_eq!(nack(|t| t.nonce.clear()), TableError::EmptyNonce);
    assert_eq!(nack(|t| t.ttl_s = 0), TableError::ZeroTtl);
    assert_eq!(
        nack(|t| t.report_interval_ms = 5),
        TableError::ReportInterval(5)
    );
    let msg = |e: TableError| e.to_string();
    assert!(msg(nack(|t| t.streams[0].stream = "bad pattern!".into())).starts_with("streams[0]"));
    assert!(msg(nack(|t| t.streams[1].stream = "live/*".into())).contains("duplicate"));
    assert!(msg(nack(|t| t.streams[0].upstreams.clear())).contains("no upstreams"));
    assert!(
        msg(nack(|t| t.streams[0].upstreams[0].url = "ftp://x".into()))
            .starts_with("streams[0].upstreams[0]")
    );
    assert!(msg(nack(|t| t.streams[0].upstreams[0].url = "not a url".into())).contains("url"));
    assert!(msg(nack(|t| t.streams[0].upstreams[0].kind = 0)).contains("unknown upstream kind"));
    assert!(msg(nack(|t| t.streams[0].upstreams[0].kind = 42)).contains("unknown upstream kind"));
    assert!(msg(nack(|t| t.streams[0].upstreams[0].node_id = "edge-1".into())).contains("loop"));
    assert!(msg(nack(|t| t.streams[0].upstreams[0].node_id = "".into())).contains("node id"));
    assert!(msg(nack(|t| t.streams[0].upstreams[1].score = f64::NAN)).contains("finite"));
    assert!(msg(nack(|t| t.probe_targets[0].addr = "nowhere".into())).contains("HOST:PORT"));
    assert!(msg(nack(|t| t.probe_targets[0].reason = 99)).contains("reason"));
    assert!(msg(nack(|t| t.probe_targets[0].node_id = "edge-1".into())).contains("this node"));
    assert!(msg(nack(|t| t.redirects[0].group.clear())).contains("group"));
    assert!(
        msg(nack(|t| t.redirects[0].edges[0].url = "x".into())).contains("redirects[0].edges[0]")
    );
}

#[test]
fn bad_origins_and_directory_entries_are_nacked_naming_the_entry() {
    let msg = |f: fn(&mut RouteTable)| nack(f).to_string();
    let cases: &[Case] = &[
        (
            |t| t.origins[1].origin = "bad id!".into(),
            "origins[1]: invalid origin node id",
        ),
        (
            |t| t.origins[1].origin = "edge-1".into(),
            "origins[1]: origin is this node",
        ),
        (
            |t| t.origins[1].origin = "origin-a".into(),
            "origins[1]: duplicate origin",
        ),
        (
            |t| t.origins[0].upstreams.clear(),
            "origins[0]: origin \"origin-a\" has no upstreams",
        ),
        (
            |t| t.origins[0].upstreams[1].kind = 0,
            "origins[0].upstreams[1]: unknown upstream kind",
        ),
        (
            |t| t.origins[0].upstreams[0].node_id = "edge-1".into(),
            "origins[0].upstreams[0]: upstream is this node (loop)",
        ),
        (
            |t| t.origins[0].upstreams[0].node_id = String::new(),
            "origins[0].upstreams[0]: invalid node id",
        ),
        (
            |t| t.origins[0].upstreams[0].url = "ftp://x".into(),
            "origins[0].upstreams[0]: url",
        ),
        (
            |t| t.origins[1].upstreams[0].score = f64::INFINITY,
            "origins[1].upstreams[0]: score inf is not finite",
        ),
        (
            |t| t.directory[2].stream = "live".into(),
            "directory[2]: stream \"live\"",
        ),
        (
            |t| t.directory[2].stream = "live/*".into(),
            "directory[2]: stream \"live/*\"",
        ),
        (
            |t| t.directory[3].stream = "live/a".into(),
            "directory[3]: duplicate stream \"live/a\"",
        ),
        (
            |t| t.directory[1].origin = "bad id!".into(),
            "directory[1]: invalid origin node id",
        ),
        (
            |t| t.removed_origins.push("origin-a".into()),
            "removed_origins: must be empty in a whole table",
        ),
        (
            |t| t.removed_streams.push("live/a".into()),
            "removed_streams: must be empty",
        ),
        (
            |t| t.removed_patterns.push("live/*".into()),
            "removed_patterns: must be empty",
        ),
        (
            |t| t.probe_targets_changed = true,
            "probe_targets_changed: only a delta",
        ),
    ];
    for (i, (f, want)) in cases.iter().enumerate() {
        let got = msg(*f);
        assert!(
            got.starts_with(want),
            "case {i}: {got:?} does not start with {want:?}"
        );
    }
    // A directory entry may name this node or an origin without a route.
    assert!(validate(&per_origin(), "edge-1").is_ok());
}
