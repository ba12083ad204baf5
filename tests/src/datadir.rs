//! Data directories of processes under test: a temp dir removed on drop
//! (kept when the test failed or `VANTAGE_TEST_KEEP` is set), or a given
//! directory that is never removed.

use std::path::{Path, PathBuf};
use tempfile::TempDir;

#[derive(Debug)]
pub enum DataDir {
    Temp(TempDir),
    Given(PathBuf),
}

impl DataDir {
    /// `given`, created if missing, or a new temp dir named after `name`.
    pub fn new(given: Option<PathBuf>, name: &str) -> DataDir {
        match given {
            Some(p) => {
                std::fs::create_dir_all(&p)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
                DataDir::Given(p)
            }
            None => {
                let mut t = tempfile::Builder::new()
                    .prefix(&format!("vantage-{name}-"))
                    .tempdir()
                    .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
                if std::env::var_os("VANTAGE_TEST_KEEP").is_some() {
                    t.disable_cleanup(true);
                }
                DataDir::Temp(t)
            }
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Given(p) => p,
        }
    }

    /// Keeps a temp dir after drop (for post-mortem of a failed test).
    pub fn keep_on_drop(&mut self) {
        if let DataDir::Temp(t) = self {
            t.disable_cleanup(true);
        }
    }
}
