//! The last good route table on disk (`<data-dir>/routes.pb`, protobuf
//! `RouteTable`), written atomically after every applied table and read at
//! startup so a restarted agent serves routes while the scheduler is down.

use super::table::{AppliedTable, TableError, TableSource};
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
}

/// Atomically writes `table` to `path`.
pub fn save(path: &Path, table: &RouteTable) -> Result<(), PersistError> {
    write_atomic(path, &table.encode_to_vec(), false).map_err(|source| PersistError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads the table at `path`; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<RouteTable>, PersistError> {
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

/// Loads and validates the stored table for `node_id`. A missing file is
/// `None`; a corrupt, unreadable or foreign one is logged and ignored, so a
/// bad file never stops the agent.
pub fn restore(path: &Path, node_id: &str, now_ms: i64) -> Option<AppliedTable> {
    let result = load(path).and_then(|t| match t {
        None => Ok(None),
        Some(t) => AppliedTable::new(t, node_id, TableSource::Disk, now_ms)
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
                streams = applied.routes.len(),
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
    use crate::routes::table::tests::good;

    #[test]
    fn round_trip_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.pb");
        assert!(load(&path).unwrap().is_none());
        assert!(restore(&path, "edge-1", 1).is_none());
        save(&path, &good()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(good()));
        let applied = restore(&path, "edge-1", 7).unwrap();
        assert_eq!(applied.source, TableSource::Disk);
        assert_eq!(applied.table, good());
        assert_eq!(applied.applied_at_ms, 7);
        // Another node's table is not served.
        assert!(restore(&path, "edge-2", 7).is_none());
    }

    #[test]
    fn corrupt_file_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.pb");
        std::fs::write(&path, [0xff, 0xff, 0xff, 0x07, 0x00, 0x13]).unwrap();
        assert!(matches!(load(&path), Err(PersistError::Corrupt { .. })));
        assert!(restore(&path, "edge-1", 1).is_none());
        // A truncated write of a real table decodes to garbage or fails; either
        // way it is never served as a valid table for a different shape.
        let bytes = good().encode_to_vec();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(restore(&path, "edge-1", 1).is_none());
    }
}
