//! Where the real binaries are.
//!
//! `VANTAGE_BIN_DIR` wins; otherwise the directory the current executable
//! sits in, or its parent: a test binary lives in `target/debug/deps/`, the
//! `vantage-demo` launcher in `target/debug/`, and both find
//! `target/debug/vantage-scheduler` that way.

use std::path::{Path, PathBuf};

/// Scheduler binary name.
pub const SCHEDULER: &str = "vantage-scheduler";
/// Agent binary name.
pub const AGENT: &str = "vantage-agent";

/// Directory holding the Vantage binaries (not checked for existence).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VANTAGE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot locate the current executable: {e}"));
    let dir = exe.parent().unwrap_or(Path::new("."));
    // target/debug/deps/<test> → target/debug
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of binary `name`; panics with a hint when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --bins` first (or set VANTAGE_BIN_DIR)",
            path.display()
        );
    }
    path
}

/// Whether binary `name` exists (for tools that want to report instead of panic).
pub fn exists(name: &str) -> bool {
    bin_dir().join(name).is_file()
}
