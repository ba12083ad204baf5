//! The simulator's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A scenario file that does not parse or validate: names the field and
    /// the line.
    #[error("{}{}: {}{message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
    Scenario {
        file: PathBuf,
        line: Option<usize>,
        field: String,
        message: String,
    },
    /// A data file (CSV, trace) with bad content.
    #[error("{}:{line}: {message}", path.display())]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A scenario that parses but cannot be built into a world.
    #[error("scenario: {0}")]
    World(String),
    #[error("replay: {0}")]
    Replay(String),
}

impl SimError {
    /// Whether the error is the user's input (exit code 2) rather than I/O.
    pub fn is_input(&self) -> bool {
        !matches!(self, SimError::Io { .. })
    }
}
