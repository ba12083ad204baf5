//! Real media peers for end-to-end tests: locating tools such as `ffmpeg`
//! (skipping, or failing under `CI=true`, when absent), an `ffmpeg`
//! publisher of a live test pattern, and reading stream state from the
//! scheduler's node view.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The path of `name` on `PATH`; None (after printing `SKIPPED`) when it is
/// missing, a panic when it is missing under `CI=true` (scripts/test.sh
/// installs every tool the tests use).
pub fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {name} not installed (CI=true; scripts/test.sh installs it)");
        }
        eprintln!("SKIPPED {test}: {name} not installed");
    }
    found
}

/// An `ffmpeg` publishing a live test pattern with a 440 Hz tone over
/// HTTP-FLV; killed when stopped or dropped.
#[derive(Debug)]
pub struct Publisher {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Publisher {
    /// 320x240 at 25 fps, H.264 (1 s GOP) + AAC, to `url`.
    pub fn start(ffmpeg: &Path, url: &str) -> Publisher {
        #[rustfmt::skip]
        let args = [
            "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
            "-re", "-f", "lavfi", "-i", "sine=frequency=440",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25",
            "-c:a", "aac", "-f", "flv",
        ];
        Self::start_args(ffmpeg, &args, url)
    }

    /// `ffmpeg -hide_banner -nostdin -loglevel warning ARGS URL`.
    pub fn start_args(ffmpeg: &Path, args: &[&str], url: &str) -> Publisher {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let log = dir.path().join("publisher.log");
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(ffmpeg)
            .args(["-hide_banner", "-nostdin", "-loglevel", "warning"])
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ffmpeg publisher: {e}"));
        Publisher {
            child,
            log,
            _dir: dir,
        }
    }

    /// The last lines of the publisher's log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Still publishing? Panics with its log when it exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("ffmpeg publisher exited with {st}:\n{}", self.tail());
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The role (`origin`/`relay`) a node (`GET /v1/nodes/{id}`) reports for `stream`.
pub fn stream_role(node: &Value, stream: &str) -> Option<String> {
    node.get("streams")?
        .as_array()?
        .iter()
        .find(|s| s.get("key").and_then(Value::as_str) == Some(stream))?
        .get("role")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Waits (up to 30 s) until `consumer` holds an ACKed table whose first
/// upstream of `stream` is `upstream`; panics with the publisher's log
/// otherwise (a dead publisher is the usual cause). Returns the version.
pub async fn wait_routed_through(
    s: &crate::Scheduler,
    consumer: &crate::Agent,
    stream: &str,
    upstream: &str,
    publisher: &mut Publisher,
) -> u64 {
    let routed = crate::eventually::try_eventually_every(
        Duration::from_secs(30),
        Duration::from_millis(100),
        &mut || async {
            let (version, routes) = crate::cluster::acked_version(s, consumer).await?;
            let ups = crate::cluster::upstreams(&routes, stream);
            if ups.first().map(String::as_str) == Some(upstream) {
                Ok(version)
            } else {
                Err(format!(
                    "{} v{version}: upstreams {ups:?}",
                    consumer.node_id()
                ))
            }
        },
    )
    .await;
    publisher.assert_running();
    routed.unwrap_or_else(|e| {
        panic!(
            "{upstream} never became {}'s upstream: {e}\n{}",
            consumer.node_id(),
            publisher.tail()
        )
    })
}

/// A scheduler reporting every 500 ms, agent `a` at Paris (`eu-paris`) and
/// agent `b` at Frankfurt (`eu-frankfurt`), both up, and an `ffmpeg`
/// [`Publisher`] sending `stream` to `a` (`POST {a}/{stream}.flv`).
pub async fn paris_frankfurt_publishing(
    ffmpeg: &Path,
    a: &str,
    b: &str,
    stream: &str,
) -> (crate::Scheduler, crate::Agent, crate::Agent, Publisher) {
    let s = crate::Scheduler::builder()
        .report_interval_ms(500)
        .start()
        .await;
    let agent_a = crate::Agent::builder(a, &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    let agent_b = crate::Agent::builder(b, &s)
        .region("eu-frankfurt")
        .at(50.1109, 8.6821)
        .start()
        .await;
    crate::cluster::wait_all_up(&s, &[a, b], Duration::from_secs(15)).await;
    let publisher = Publisher::start(ffmpeg, &format!("{}/{stream}.flv", agent_a.media_url()));
    (s, agent_a, agent_b, publisher)
}
