//! The last good route table on disk (`<data-dir>/routes.pb`, protobuf
//! `RouteTable`), written atomically after every applied table and read at
//! startup so a restarted agent serves routes while the scheduler is down.
//!
//! The file holds the whole table in use (deltas already merged), owner-only
//! (mode 0600: it carries the cluster's probe key). Tables written by agents
//! from before per-origin routes (only `streams`) load and route as before;
//! a stored delta is refused, and so is a table over `routes_max_entries`
//! (the limit may have been lowered since it was stored).

use super::table::{AppliedTable, TableError, TableSource, check_entries};
use crate::disk::write_atomic;
use prost::Message;
use std::path::{Path, PathBuf};
use tracing::{info, warn};
use vantage_proto::v1::RouteTable;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a route table ({source})")]
    Corrupt {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("{path}: stored table is not valid for this agent: {source}")]
    Invalid { path: PathBuf, source: TableError },
    #[error(
        "{path}: stored table is a delta on version {base_version}, not a whole table \
         (only whole tables are stored)"
    )]
    Delta { path: PathBuf, base_version: u64 },
}

/// Atomically writes `table` (a whole table) to `path`, owner-only.
pub fn save(path: &Path, table: &RouteTable) -> Result<(), PersistError> {
    write_atomic(path, &table.encode_to_vec(), true).map_err(|source| PersistError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Makes `path` owner-only when an older version (or an operator) left it
/// readable by others: it holds the cluster's probe and publish keys.
fn make_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => warn!(
                    path = %path.display(),
                    "route table file was readable by others (mode {mode:o}); made owner-only (0600)"
                ),
                Err(e) => warn!(
                    path = %path.display(),
                    "route table file is readable by others (mode {mode:o}) and could not be made owner-only: {e}"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Reads the table at `path`; `Ok(None)` when there is none. A file others
/// may read is made owner-only first.
pub fn load(path: &Path) -> Result<Option<RouteTable>, PersistError> {
    make_private(path);
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    RouteTable::decode(bytes.as_slice())
        .map(Some)
        .map_err(|source| PersistError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Loads and validates the stored table for `node_id` (at most
/// `max_entries` entries). A missing file is `None`; a corrupt, unreadable,
/// foreign, oversized or delta one is logged and ignored, so a bad file
/// never stops the agent.
pub fn restore(
    path: &Path,
    node_id: &str,
    max_entries: usize,
    now_ms: i64,
) -> Option<AppliedTable> {
    let result = load(path).and_then(|t| match t {
        None => Ok(None),
        Some(t) if t.base_version != 0 => Err(PersistError::Delta {
            path: path.to_owned(),
            base_version: t.base_version,
        }),
        Some(t) => check_entries(&t, max_entries)
            .and_then(|()| AppliedTable::new(t, node_id, TableSource::Disk, now_ms))
            .map(Some)
            .map_err(|source| PersistError::Invalid {
                path: path.to_owned(),
                source,
            }),
    });
    match result {
        Ok(Some(applied)) => {
            info!(
                version = applied.version(),
                streams = applied.table.streams.len(),
                origins = applied.table.origins.len(),
                directory = applied.table.directory.len(),
                path = %path.display(),
                "serving the last route table from disk until the scheduler answers"
            );
            Some(applied)
        }
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "ignoring the stored route table");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Lookup;
    use crate::routes::table::DEFAULT_MAX_ENTRIES;
    use crate::routes::table::tests::{delta, good, per_origin};
    use vantage_shared::stream::StreamKey;

    #[test]
    fn round_trip_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.pb");
        assert!(load(&path).unwrap().is_none());
        assert!(restore(&path, "edge-1", DEFAULT_MAX_ENTRIES, 1).is_none());
        save(&path, &per_origin()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(per_origin()));
        let applied = restore(&path, "edge-1", DEFAULT_MAX_ENTRIES, 7).unwrap();
        assert_eq!(applied.source, TableSource::Disk);
        assert_eq!(applied.table, per_origin());
        assert_eq!(applied.applied_at_ms, 7);
        let a = StreamKey::parse("live/a").unwrap();
        assert!(matches!(applied.route_for(&a), Lookup::Origin { .. }));
        // Another node's table is not served.
        assert!(restore(&path, "edge-2", DEFAULT_MAX_ENTRIES, 7).is_none());
        // Nor one over a limit lowered since it was stored (8 entries).
        assert!(restore(&path, "edge-1", 8, 7).is_some());
        assert!(restore(&path, "edge-1", 7, 7).is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_stored_table_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.pb");
        // Also when an older agent left a world-readable file behind, and a
        // crash a world-readable temporary file.
        let tmp = dir.path().join(".routes.pb.tmp");
        for p in [&path, &tmp] {
            std::fs::write(p, b"old").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        save(&path, &per_origin()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A world-readable file is made owner-only when it is read.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(per_origin()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_table_stored_by_an_older_agent_routes_as_before() {
        // Bytes of the per-stream format: no origins, no directory.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.pb");
        std::fs::write(&path, good().encode_to_vec()).unwrap();
        let applied = restore(&path, "edge-1", DEFAULT_MAX_ENTRIES, 7).unwrap();
        assert_eq!(applied.version(), 4);
        let route = |k: &str| match applied.route_for(&StreamKey::parse(k).unwrap()) {
            Lookup::Stream(r) => Some(r.pattern.as_str().to_owned()),
            _ => None,
        };
        assert_eq!(route("live/main").as_deref(), Some("live/main"));
        assert_eq!(route("live/x").as_deref(), Some("live/*"));
        assert_eq!(route("vod/x"), None);
    }

    #[test]
    fn a_stored_delta_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.pb");
        save(&path, &delta(5, 4)).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().base_version, 4);
        assert!(restore(&path, "edge-1", DEFAULT_MAX_ENTRIES, 7).is_none());
        let msg = PersistError::Delta {
            path: path.clone(),
            base_version: 4,
        }
        .to_string();
        assert!(msg.contains("is a delta on version 4"), "{msg}");
    }

    #[test]
    fn corrupt_file_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.pb");
        std::fs::write(&path, [0xff, 0xff, 0xff, 0x07, 0x00, 0x13]).unwrap();
        assert!(matches!(load(&path), Err(PersistError::Corrupt { .. })));
        assert!(restore(&path, "edge-1", DEFAULT_MAX_ENTRIES, 1).is_none());
        // A truncated write of a real table decodes to garbage or fails; either
        // way it is never served as a valid table for a different shape.
        let bytes = good().encode_to_vec();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(restore(&path, "edge-1", DEFAULT_MAX_ENTRIES, 1).is_none());
    }
}
