//! Runs `tests/grpc/stock_client.py` — a gRPC client built only from stock
//! Python packages (grpcio, grpcio-tools, grpcio-health-checking,
//! grpcio-reflection) and the repository's `.proto` files — and reads the
//! JSON lines it prints.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Environment variable naming the Python interpreter (a venv made by
/// `scripts/test.sh`).
pub const PYTHON_ENV: &str = "VANTAGE_TEST_PYTHON";

/// The interpreter from `VANTAGE_TEST_PYTHON`, or None after printing the
/// skip line (panics under `CI=true`).
pub fn python_or_skip(test: &str) -> Option<PathBuf> {
    match std::env::var_os(PYTHON_ENV) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            crate::store::skip(test, &format!("{PYTHON_ENV} not set (run scripts/test.sh)"));
            None
        }
    }
}

/// `tests/grpc/stock_client.py`.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("grpc")
        .join("stock_client.py")
}

/// The repository's `proto/` directory (import root of `vantage/v1/*.proto`).
pub fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("proto")
}

pub struct PyClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: PathBuf,
    seen: Vec<Value>,
}

impl std::fmt::Debug for PyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyClient")
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl PyClient {
    /// Starts `python stock_client.py args…`, stderr to `stderr_file`.
    pub fn spawn(python: &Path, args: &[String], stderr_file: &Path) -> PyClient {
        let stderr = std::fs::File::create(stderr_file)
            .unwrap_or_else(|e| panic!("{}: {e}", stderr_file.display()));
        let mut child = Command::new(python)
            .arg("-u")
            .arg(script_path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        let Some(stdout) = child.stdout.take() else {
            unreachable!("stdout is piped");
        };
        PyClient {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr: stderr_file.to_owned(),
            seen: Vec::new(),
        }
    }

    /// The next JSON event within `timeout`: `Ok(None)` if nothing came,
    /// panics if the client exited or printed something that isn't JSON.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Err(_) => None,
            Ok(Ok(Some(line))) => {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!(
                        "stock client printed a non-JSON line {line:?}: {e}{}",
                        self.stderr_tail()
                    )
                });
                if v.get("event").and_then(Value::as_str) == Some("error") {
                    panic!("stock client reported an error: {v}{}", self.stderr_tail());
                }
                self.seen.push(v.clone());
                Some(v)
            }
            Ok(Ok(None)) => panic!(
                "stock client exited early (events so far: {:?}){}",
                self.seen,
                self.stderr_tail()
            ),
            Ok(Err(e)) => panic!("reading the stock client's stdout: {e}"),
        }
    }

    /// The next event, which must have `"event": kind`, within `timeout`.
    pub async fn expect(&mut self, kind: &str, timeout: Duration) -> Value {
        let Some(v) = self.next_event(timeout).await else {
            panic!(
                "no '{kind}' event from the stock client within {timeout:?} (events so far: {:?}){}",
                self.seen,
                self.stderr_tail()
            );
        };
        assert_eq!(
            v.get("event").and_then(Value::as_str),
            Some(kind),
            "expected a '{kind}' event, got {v}{}",
            self.stderr_tail()
        );
        v
    }

    /// Everything printed so far.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    fn stderr_tail(&self) -> String {
        format!(
            "\n----- stock client stderr -----\n{}",
            crate::process::tail(&self.stderr, 30)
        )
    }

    /// Closes stdin (the client's signal to exit) and waits briefly.
    pub async fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.start_kill();
    }
}
