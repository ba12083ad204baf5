//! The delta between two whole route tables of a node
//! (`proto/vantage/v1/routes.proto`): what a scheduler replica that holds
//! whole tables (a follower serving the leader's committed tables) sends an
//! agent holding `base` so that it ends up with `next`.
//!
//! Entries are compared whole, scores included; an upsert keeps the held
//! position of its key, a new key is appended (the agent's merge), so the
//! merged table equals `next` as sets of entries. A delta cannot change the
//! viewer redirects: when they differ, [`delta`] answers `None` and the
//! whole table goes out.

use std::collections::HashMap;
use vantage_proto::v1::RouteTable;

/// `next` as a delta on top of `base` (both whole tables of one node), or
/// `None` when only a whole table can say it (different node or redirects,
/// or `next` is not newer).
pub fn delta(base: &RouteTable, next: &RouteTable) -> Option<RouteTable> {
    if base.node_id != next.node_id
        || base.redirects != next.redirects
        || base.version == 0
        || (next.term, next.version) <= (base.term, base.version)
        || next.version <= base.version
    {
        return None;
    }
    let mut t = RouteTable {
        node_id: next.node_id.clone(),
        version: next.version,
        generated_at_ms: next.generated_at_ms,
        ttl_s: next.ttl_s,
        report_interval_ms: next.report_interval_ms,
        weights_version: next.weights_version,
        probe_key: next.probe_key.clone(),
        publish: next.publish.clone(),
        term: next.term,
        base_version: base.version,
        ..RouteTable::default()
    };
    (t.origins, t.removed_origins) = changes(&base.origins, &next.origins, |o| &o.origin);
    (t.directory, t.removed_streams) = changes(&base.directory, &next.directory, |d| &d.stream);
    (t.streams, t.removed_patterns) = changes(&base.streams, &next.streams, |s| &s.stream);
    if base.probe_targets != next.probe_targets {
        t.probe_targets = next.probe_targets.clone();
        t.probe_targets_changed = true;
    }
    Some(t)
}

/// Entries of `next` that are new or differ from `base` (by key), and the
/// keys of `base` that `next` no longer has.
fn changes<T: Clone + PartialEq>(
    base: &[T],
    next: &[T],
    key: impl Fn(&T) -> &String,
) -> (Vec<T>, Vec<String>) {
    let held: HashMap<&String, &T> = base.iter().map(|e| (key(e), e)).collect();
    let upserts = next
        .iter()
        .filter(|e| held.get(key(e)).is_none_or(|h| *h != *e))
        .cloned()
        .collect();
    let kept: std::collections::HashSet<&String> = next.iter().map(&key).collect();
    let removed = base
        .iter()
        .map(&key)
        .filter(|k| !kept.contains(k))
        .cloned()
        .collect();
    (upserts, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::{DirectoryEntry, GroupRedirect, OriginRoute, ProbeTarget, Upstream};

    fn table(version: u64, origins: &[(&str, &str)], dir: &[(&str, &str)]) -> RouteTable {
        RouteTable {
            node_id: "n".into(),
            version,
            term: 1,
            ttl_s: 60,
            origins: origins
                .iter()
                .map(|(o, up)| OriginRoute {
                    origin: (*o).into(),
                    upstreams: vec![Upstream {
                        node_id: (*up).into(),
                        ..Upstream::default()
                    }],
                })
                .collect(),
            directory: dir
                .iter()
                .map(|(s, o)| DirectoryEntry {
                    stream: (*s).into(),
                    origin: (*o).into(),
                })
                .collect(),
            ..RouteTable::default()
        }
    }

    #[test]
    fn only_changed_entries_and_removed_keys_go_out() {
        let base = table(3, &[("o1", "a"), ("o2", "b")], &[("live/x", "o1")]);
        let mut next = table(4, &[("o1", "a"), ("o3", "c")], &[("live/x", "o3")]);
        next.probe_targets = vec![ProbeTarget {
            node_id: "p".into(),
            ..ProbeTarget::default()
        }];
        let d = delta(&base, &next).unwrap();
        assert_eq!(d.base_version, 3);
        assert_eq!(d.version, 4);
        assert_eq!(d.origins.len(), 1);
        assert_eq!(d.origins[0].origin, "o3");
        assert_eq!(d.removed_origins, vec!["o2".to_owned()]);
        assert_eq!(d.directory[0].origin, "o3");
        assert!(d.removed_streams.is_empty());
        assert!(d.probe_targets_changed);
        assert_eq!(d.probe_targets.len(), 1);
    }

    #[test]
    fn no_delta_across_redirect_changes_or_backwards() {
        let base = table(3, &[], &[]);
        let mut next = table(4, &[], &[]);
        next.redirects = vec![GroupRedirect::default()];
        assert!(delta(&base, &next).is_none());
        assert!(delta(&table(4, &[], &[]), &table(4, &[], &[])).is_none());
        assert!(delta(&table(0, &[], &[]), &table(4, &[], &[])).is_none());
    }
}
