//! One scheduler per SQLite database: an exclusive `flock` on
//! `<database>.lock`, held for the life of the process (the kernel releases
//! it when the process dies, however it dies). A second scheduler started on
//! the same file is refused with an error that names the holder and says
//! that several replicas need PostgreSQL.

use rustix::fs::{FlockOperation, flock};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another vantage-scheduler ({holder}) already uses the SQLite database {db}: SQLite serves \
         one scheduler replica; to run several replicas, give them all one PostgreSQL database \
         (--database-url postgres://…, see docs/operations.md \"Replicas\")"
    )]
    Held { db: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The lock, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct SqliteLock {
    _file: File,
    pub path: PathBuf,
}

/// The database file of a `sqlite://PATH[?...]` URL (`None`: in memory).
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let unescaped = path
        .replace("%3F", "?")
        .replace("%23", "#")
        .replace("%25", "%");
    Some(PathBuf::from(unescaped))
}

/// Takes the lock of the SQLite database at `db`.
pub fn acquire(db: &Path, replica_id: &str) -> Result<SqliteLock, LockError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(LockError::Held {
            db: db.to_owned(),
            holder: if holder.is_empty() {
                "unknown pid".to_owned()
            } else {
                holder.to_owned()
            },
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(
        file,
        "pid {}, scheduler id {replica_id}",
        std::process::id()
    )
    .map_err(io)?;
    Ok(SqliteLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("vantage.db");
        let first = acquire(&db, "a").unwrap();
        let err = acquire(&db, "b").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("PostgreSQL") && msg.contains("scheduler id a"),
            "{msg}"
        );
        drop(first);
        acquire(&db, "b").unwrap();
    }

    #[test]
    fn paths_of_sqlite_urls() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/v/vantage.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/v/vantage.db"))
        );
        assert_eq!(
            sqlite_path("sqlite://a%3Fb.db?mode=rwc"),
            Some(PathBuf::from("a?b.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x/y"), None);
    }
}
