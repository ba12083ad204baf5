//! Delta application: upserts and removals by key, probe targets and
//! redirects, base checks, refusals, and the property that a held table
//! plus the diff to another table is that other table.

use super::super::tests::*;
use super::super::{
    AppliedTable, DEFAULT_MAX_ENTRIES, Lookup, TableError, TableSource, UpdateKind, check_entries,
};
use proptest::prelude::*;
use vantage_proto::v1::{GroupRedirect, RouteTable, StreamRoute};

#[test]
fn a_delta_upserts_and_removes_by_key() {
    let mut held = per_origin();
    held.origins.push(origin_route(
        "origin-c",
        vec![node("origin-c", "http://10.0.0.7:8080")],
    ));
    held.streams.push(StreamRoute {
        stream: "vod/*".into(),
        upstreams: vec![static_origin("http://vod:1")],
    });
    let held = applied(held);
    let mut d = delta(5, 4);
    d.ttl_s = 90;
    d.report_interval_ms = 500;
    d.weights_version = 3;
    d.probe_key = vec![9; 16];
    d.origins = vec![
        origin_route("origin-a", vec![node("origin-a", "http://10.0.0.9:8080")]),
        origin_route("origin-d", vec![node("edge-3", "http://10.0.0.3:8080")]),
    ];
    d.removed_origins = vec!["origin-c".into(), "never-held".into()];
    d.directory = vec![dir("live/b", "origin-d"), dir("live/d", "origin-d")];
    d.removed_streams = vec!["live/lost".into(), "live/never".into()];
    d.streams = vec![StreamRoute {
        stream: "live/*".into(),
        upstreams: vec![static_origin("http://static2:9000")],
    }];
    d.removed_patterns = vec!["vod/*".into()];

    let t = AppliedTable::update(Some(&held), d, "edge-1", DEFAULT_MAX_ENTRIES, 9).unwrap();
    let m = &t.table;
    assert_eq!((m.version, m.nonce.as_str(), m.base_version), (5, "n5", 0));
    assert_eq!(
        (m.ttl_s, m.report_interval_ms, m.weights_version),
        (90, 500, 3)
    );
    assert_eq!((m.generated_at_ms, m.probe_key.clone()), (2, vec![9; 16]));
    assert!(m.removed_origins.is_empty() && m.removed_streams.is_empty());
    assert!(m.removed_patterns.is_empty() && !m.probe_targets_changed);
    let ids: Vec<&str> = m.origins.iter().map(|o| o.origin.as_str()).collect();
    assert_eq!(
        ids,
        ["origin-a", "origin-b", "origin-d"],
        "in place, then appended"
    );
    let streams: Vec<(&str, &str)> = m
        .directory
        .iter()
        .map(|d| (d.stream.as_str(), d.origin.as_str()))
        .collect();
    assert_eq!(
        streams,
        [
            ("live/a", "origin-a"),
            ("live/b", "origin-d"),
            ("live/here", "edge-1"),
            ("live/d", "origin-d"),
        ]
    );
    assert_eq!(m.streams.len(), 1);
    // Held parts the delta does not speak of stay.
    assert_eq!(m.probe_targets, held.table.probe_targets);
    assert_eq!(m.redirects, held.table.redirects);
    // Routing follows.
    assert_eq!(first(&t, "live/a").as_deref(), Some("origin-a"));
    assert_eq!(first(&t, "live/b").as_deref(), Some("edge-3"));
    assert_eq!(first(&t, "live/d").as_deref(), Some("edge-3"));
    assert_eq!(
        first(&t, "live/lost").as_deref(),
        Some("http://static2:9000")
    );
    assert_eq!(t.route_for(&key("vod/x")), Lookup::Unrouted);
    assert_eq!((t.source, t.applied_at_ms), (TableSource::Scheduler, 9));
    // The merged table is a valid whole table on its own.
    assert_eq!(
        applied(t.table.clone()).route_for(&key("live/b")),
        t.route_for(&key("live/b"))
    );
}

#[test]
fn probe_targets_change_only_when_flagged_and_redirects_stay() {
    let held = applied(per_origin());
    let mut d = delta(5, 4);
    d.probe_targets = vec![probe("edge-7", "10.0.0.7:7402")];
    d.redirects = vec![GroupRedirect {
        group: "zzzz".into(),
        edges: vec![],
    }];
    let t = AppliedTable::update(Some(&held), d.clone(), "edge-1", DEFAULT_MAX_ENTRIES, 9).unwrap();
    assert_eq!(
        t.table.probe_targets, held.table.probe_targets,
        "not flagged"
    );
    assert_eq!(t.table.redirects, held.table.redirects);

    d.probe_targets_changed = true;
    let t = AppliedTable::update(Some(&held), d.clone(), "edge-1", DEFAULT_MAX_ENTRIES, 9).unwrap();
    assert_eq!(t.table.probe_targets, [probe("edge-7", "10.0.0.7:7402")]);
    assert!(!t.table.probe_targets_changed);

    d.probe_targets.clear();
    let t = AppliedTable::update(Some(&held), d, "edge-1", DEFAULT_MAX_ENTRIES, 9).unwrap();
    assert!(t.table.probe_targets.is_empty(), "flagged and empty clears");
}

#[test]
fn a_delta_on_another_base_is_refused_naming_both_versions() {
    let held = applied(per_origin());
    let e = AppliedTable::update(Some(&held), delta(8, 7), "edge-1", DEFAULT_MAX_ENTRIES, 9)
        .unwrap_err();
    assert_eq!(e, TableError::DeltaBase { base: 7, held: 4 });
    assert_eq!(e.to_string(), "delta for version 7, holding 4");
    let e = AppliedTable::update(None, delta(8, 7), "edge-1", DEFAULT_MAX_ENTRIES, 9).unwrap_err();
    assert_eq!(e.to_string(), "delta for version 7, holding no table");
}

#[test]
fn an_invalid_delta_is_refused_naming_its_own_entries() {
    let held = applied(per_origin());
    let refuse = |f: fn(&mut RouteTable)| {
        let mut d = delta(5, 4);
        f(&mut d);
        AppliedTable::update(Some(&held), d, "edge-1", DEFAULT_MAX_ENTRIES, 9)
            .unwrap_err()
            .to_string()
    };
    let cases: &[Case] = &[
        (
            |d| d.origins = vec![origin_route("origin-e", vec![node("edge-5", "gopher://x")])],
            "origins[0].upstreams[0]: url",
        ),
        (
            |d| d.origins = vec![origin_route("edge-1", vec![node("edge-5", "http://x")])],
            "origins[0]: origin is this node",
        ),
        (
            |d| d.directory = vec![dir("live/a", "origin-b"), dir("live/a", "origin-a")],
            "directory[1]: duplicate stream",
        ),
        (
            |d| d.directory = vec![dir("nope", "origin-b")],
            "directory[0]: stream \"nope\"",
        ),
        (
            |d| {
                d.directory = vec![dir("live/a", "origin-b")];
                d.removed_streams = vec!["live/x".into(), "live/a".into()];
            },
            "removed_streams[1]: \"live/a\" is also upserted in directory",
        ),
        (
            |d| {
                d.origins = vec![origin_route("origin-b", vec![node("edge-5", "http://x")])];
                d.removed_origins = vec!["origin-b".into()];
            },
            "removed_origins[0]: \"origin-b\" is also upserted in origins",
        ),
        (
            |d| {
                d.probe_targets_changed = true;
                d.probe_targets = vec![probe("edge-1", "1.2.3.4:5")];
            },
            "probe_targets[0]: probe target is this node",
        ),
        (
            |d| d.version = 4,
            "delta version 4 is not newer than its base version 4",
        ),
        (|d| d.ttl_s = 0, "ttl_s must be greater than 0"),
        (
            |d| d.node_id = "edge-2".into(),
            "table is addressed to node",
        ),
    ];
    for (i, (f, want)) in cases.iter().enumerate() {
        let got = refuse(*f);
        assert!(
            got.starts_with(want),
            "case {i}: {got:?} does not start with {want:?}"
        );
    }
}

/// `routes_max_entries`: the merged table is what counts. per_origin()
/// holds 4 directory entries, 2 origins, 1 pattern and 1 probe target.
#[test]
fn a_table_over_the_entry_limit_is_refused_and_the_held_one_stays() {
    let held = applied(per_origin());
    assert_eq!(
        check_entries(&held.table, 8),
        Ok(()),
        "exactly at the limit is fine"
    );

    // A small delta that makes the merged table one entry too many.
    let mut d = delta(5, 4);
    d.directory = vec![dir("live/new", "origin-a")];
    let e = AppliedTable::update(Some(&held), d.clone(), "edge-1", 8, 9).unwrap_err();
    assert_eq!(
        e.to_string(),
        "table of 9 entries exceeds routes_max_entries 8 \
         (directory 5, origins 2, patterns 1, probe targets 1)"
    );
    assert!(matches!(e, TableError::TooLarge { max: 8, .. }));
    // The same delta fits a larger limit, and one that also removes an
    // entry fits the small one: removals count.
    assert_eq!(
        AppliedTable::update(Some(&held), d.clone(), "edge-1", 9, 9)
            .unwrap()
            .version(),
        5
    );
    d.removed_streams = vec!["live/lost".into()];
    let t = AppliedTable::update(Some(&held), d, "edge-1", 8, 9).unwrap();
    assert_eq!(t.table.directory.len(), 4);

    // A whole table over the limit, and probe targets count too.
    let mut whole = per_origin();
    whole.version = 6;
    whole.probe_targets.push(probe("edge-3", "10.0.0.3:7402"));
    let e = AppliedTable::update(Some(&held), whole, "edge-1", 8, 9).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("table of 9 entries exceeds routes_max_entries 8"),
        "{e}"
    );
    // A delta on a wrong base is refused for that, whatever its size.
    let e = AppliedTable::update(Some(&held), delta(8, 7), "edge-1", 0, 9).unwrap_err();
    assert_eq!(e, TableError::DeltaBase { base: 7, held: 4 });
}

#[test]
fn a_whole_table_replaces_the_held_one_and_new_refuses_deltas() {
    let held = applied(per_origin());
    let mut whole = good();
    whole.version = 9;
    let t =
        AppliedTable::update(Some(&held), whole.clone(), "edge-1", DEFAULT_MAX_ENTRIES, 9).unwrap();
    assert_eq!(t.table, whole);
    assert_eq!(
        t.route_for(&key("live/a")).upstreams().map(<[_]>::len),
        Some(2)
    );
    assert_eq!(
        AppliedTable::new(delta(5, 4), "edge-1", TableSource::Disk, 1).unwrap_err(),
        TableError::NotWhole(4)
    );
    assert_eq!(UpdateKind::of(&whole).as_str(), "full");
    assert_eq!(UpdateKind::of(&delta(5, 4)).as_str(), "delta");
}

/// A table with entries from small key spaces (collisions are the point).
fn arb_table() -> impl Strategy<Value = RouteTable> {
    let origin = (0..6u8, 0..3u8).prop_map(|(o, n)| {
        origin_route(
            &format!("o{o}"),
            vec![node(&format!("e{n}"), &format!("http://10.0.0.{n}:8080"))],
        )
    });
    // Origin 6 is this node: its streams are local.
    let entry = (0..8u8, 0..7u8).prop_map(|(s, o)| {
        let origin = if o == 6 {
            "edge-1".to_owned()
        } else {
            format!("o{o}")
        };
        dir(&format!("live/s{s}"), &origin)
    });
    let pattern = (0..4u8, 0..3u8).prop_map(|(p, u)| StreamRoute {
        stream: ["live/*", "vod/*", "live/s1", "l*"][usize::from(p)].to_owned(),
        upstreams: vec![static_origin(&format!("http://static{u}:1"))],
    });
    (
        prop::collection::vec(origin, 0..6),
        prop::collection::vec(entry, 0..8),
        prop::collection::vec(pattern, 0..4),
        prop::collection::vec(0..3u8, 0..3),
    )
        .prop_map(|(origins, directory, streams, probes)| {
            let mut t = per_origin();
            t.origins = dedup(origins, |o| o.origin.clone());
            t.directory = dedup(directory, |d| d.stream.clone());
            t.streams = dedup(streams, |s| s.stream.clone());
            t.probe_targets = probes
                .into_iter()
                .map(|p| probe(&format!("e{p}"), "10.0.0.1:7402"))
                .collect();
            t
        })
}

fn dedup<T>(v: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|t| seen.insert(key(t))).collect()
}

/// The delta a scheduler would send to go from `old` to `new`.
fn diff(old: &RouteTable, new: &RouteTable) -> RouteTable {
    fn changes<T: Clone + PartialEq>(
        old: &[T],
        new: &[T],
        key: impl Fn(&T) -> &String,
    ) -> (Vec<T>, Vec<String>) {
        let upserts = new.iter().filter(|n| !old.contains(n)).cloned().collect();
        let removed = old
            .iter()
            .map(&key)
            .filter(|k| !new.iter().any(|n| key(n) == *k))
            .cloned()
            .collect();
        (upserts, removed)
    }
    let mut d = RouteTable {
        base_version: old.version,
        probe_targets_changed: old.probe_targets != new.probe_targets,
        redirects: Vec::new(),
        ..new.clone()
    };
    (d.origins, d.removed_origins) = changes(&old.origins, &new.origins, |o| &o.origin);
    (d.directory, d.removed_streams) = changes(&old.directory, &new.directory, |e| &e.stream);
    (d.streams, d.removed_patterns) = changes(&old.streams, &new.streams, |s| &s.stream);
    d
}

fn sorted<T: Clone>(v: &[T], key: impl Fn(&T) -> String) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort_by_key(key);
    v
}

proptest! {
    /// A held table plus the diff to another table is that other table
    /// (entry order aside), and it routes every stream the same way.
    #[test]
    fn merging_a_diff_gives_the_new_table(old in arb_table(), new in arb_table()) {
        let mut new = new;
        new.version = old.version + 1;
        new.nonce = "n-new".into();
        new.redirects = old.redirects.clone();
        let held = applied(old.clone());
        let merged = AppliedTable::update(Some(&held), diff(&old, &new), "edge-1", DEFAULT_MAX_ENTRIES, 9).unwrap();
        let m = &merged.table;
        prop_assert_eq!(sorted(&m.origins, |o| o.origin.clone()), sorted(&new.origins, |o| o.origin.clone()));
        prop_assert_eq!(sorted(&m.directory, |d| d.stream.clone()), sorted(&new.directory, |d| d.stream.clone()));
        prop_assert_eq!(sorted(&m.streams, |s| s.stream.clone()), sorted(&new.streams, |s| s.stream.clone()));
        prop_assert_eq!(&m.probe_targets, &new.probe_targets);
        let direct = applied(new);
        for s in ["live/s0", "live/s1", "live/s5", "live/s7", "live/zz", "vod/x", "lx/y", "other/x"] {
            prop_assert_eq!(merged.route_for(&key(s)), direct.route_for(&key(s)), "{}", s);
        }
    }
}
