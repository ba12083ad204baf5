//! Deltas: a `RouteTable` with `base_version` B ≠ 0 applies only on top of
//! the whole table of version B.
//!
//! * `origins`, `directory` and `streams` entries are upserts by key (origin
//!   id, stream key, pattern string): an entry replaces the held one with
//!   its key in place, a new key is appended;
//! * `removed_origins`, `removed_streams` (directory keys) and
//!   `removed_patterns` (`streams` keys) delete keys; removing a key that is
//!   not held is not an error, but a key both upserted and removed in one
//!   delta is;
//! * `probe_targets` replace the held list only when `probe_targets_changed`
//!   is set (even with an empty list); `redirects` stay as held;
//! * the scalar fields (`version`, `nonce`, `generated_at_ms`, `ttl_s`,
//!   `report_interval_ms`, `weights_version`, `probe_key`) are always the
//!   delta's.
//!
//! [`merge`] is pure and does not validate entries: its result is validated
//! in full before use ([`AppliedTable::update`](super::AppliedTable::update)).

#[cfg(test)]
mod tests;

use super::{TableError, invalid};
use std::collections::{HashMap, HashSet};
use vantage_proto::v1::{DirectoryEntry, OriginRoute, RouteTable, StreamRoute};

/// The whole table that results from applying `delta` on top of `held` (the
/// whole table in use, `None` when there is none). A whole `delta`
/// (`base_version` 0) is returned as it is. Fails when the delta's base is
/// not the held version or when it both upserts and removes a key.
pub fn merge(held: Option<&RouteTable>, delta: &RouteTable) -> Result<RouteTable, TableError> {
    let base = delta.base_version;
    if base == 0 {
        return Ok(delta.clone());
    }
    let held = match held {
        Some(h) if h.version == base => h,
        other => {
            return Err(TableError::DeltaBase {
                base,
                held: other.map_or(0, |h| h.version),
            });
        }
    };
    disjoint("removed_origins", &delta.removed_origins, "origins", || {
        delta
            .origins
            .iter()
            .map(|o: &OriginRoute| o.origin.as_str())
    })?;
    disjoint(
        "removed_streams",
        &delta.removed_streams,
        "directory",
        || {
            delta
                .directory
                .iter()
                .map(|d: &DirectoryEntry| d.stream.as_str())
        },
    )?;
    disjoint(
        "removed_patterns",
        &delta.removed_patterns,
        "streams",
        || {
            delta
                .streams
                .iter()
                .map(|s: &StreamRoute| s.stream.as_str())
        },
    )?;

    // Every field is spelled out (no `..`), so a field added to the message
    // does not silently keep the held or the delta's value.
    Ok(RouteTable {
        node_id: delta.node_id.clone(),
        version: delta.version,
        nonce: delta.nonce.clone(),
        generated_at_ms: delta.generated_at_ms,
        ttl_s: delta.ttl_s,
        report_interval_ms: delta.report_interval_ms,
        weights_version: delta.weights_version,
        streams: upsert(
            &held.streams,
            &delta.streams,
            &delta.removed_patterns,
            |s| &s.stream,
        ),
        probe_targets: if delta.probe_targets_changed {
            delta.probe_targets.clone()
        } else {
            held.probe_targets.clone()
        },
        redirects: held.redirects.clone(),
        probe_key: delta.probe_key.clone(),
        publish: delta.publish.clone(),
        origins: upsert(&held.origins, &delta.origins, &delta.removed_origins, |o| {
            &o.origin
        }),
        directory: upsert(
            &held.directory,
            &delta.directory,
            &delta.removed_streams,
            |d| &d.stream,
        ),
        base_version: 0,
        removed_origins: Vec::new(),
        removed_streams: Vec::new(),
        removed_patterns: Vec::new(),
        probe_targets_changed: false,
        term: delta.term,
    })
}

/// Refuses a delta that removes a key it also upserts.
fn disjoint<'a, I>(
    removed_field: &str,
    removed: &[String],
    upsert_field: &str,
    upserted: impl FnOnce() -> I,
) -> Result<(), TableError>
where
    I: Iterator<Item = &'a str>,
{
    if removed.is_empty() {
        return Ok(());
    }
    let upserted: HashSet<&str> = upserted().collect();
    match removed
        .iter()
        .enumerate()
        .find(|(_, k)| upserted.contains(k.as_str()))
    {
        Some((i, k)) => Err(invalid(
            format!("{removed_field}[{i}]"),
            format!("{k:?} is also upserted in {upsert_field}"),
        )),
        None => Ok(()),
    }
}

/// `held` without the `removed` keys, with `upserts` replacing the entries
/// of the same key in place and the others appended in delta order.
fn upsert<T: Clone>(
    held: &[T],
    upserts: &[T],
    removed: &[String],
    key: impl Fn(&T) -> &String,
) -> Vec<T> {
    let removed: HashSet<&str> = removed.iter().map(String::as_str).collect();
    let mut fresh: HashMap<&str, &T> = HashMap::with_capacity(upserts.len());
    for u in upserts {
        // A key twice in one delta: validation of the delta refuses it; the
        // first entry is kept meanwhile.
        fresh.entry(key(u).as_str()).or_insert(u);
    }
    let mut out = Vec::with_capacity(held.len() + upserts.len());
    let mut replaced = HashSet::new();
    for h in held {
        let k = key(h).as_str();
        if removed.contains(k) {
            continue;
        }
        match fresh.get(k) {
            Some(u) => {
                out.push((*u).clone());
                replaced.insert(k);
            }
            None => out.push(h.clone()),
        }
    }
    for u in upserts {
        let k = key(u).as_str();
        if replaced.insert(k) {
            out.push(u.clone());
        }
    }
    out
}
