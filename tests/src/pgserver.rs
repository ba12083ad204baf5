//! A PostgreSQL server of one test's own, for tests that kill the database
//! (the shared server of `scripts/test.sh` must stay up for the others).
//!
//! It uses the server binaries `scripts/postgres.sh` installed
//! (`/usr/lib/postgresql/*/bin`), a cluster in a temporary directory
//! (`initdb`, trust authentication, loopback only, fsync off) and one fixed
//! port, so a restarted server is where its clients expect it. As root the
//! server runs as `postgres` (it refuses root). The server is killed and
//! the directory removed when the handle is dropped.

use rustix::process::{Pid, Signal, kill_process};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct PgServer {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Extra server options (`-c name=value ...`).
    options: String,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with a server.
pub fn bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `cmd` as the cluster's owner (`postgres` when run as root).
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgServer {
    /// Creates and starts a new cluster; `None` when no server binaries are
    /// installed.
    pub async fn start_new() -> Option<PgServer> {
        Self::start_new_with("").await
    }

    /// [`Self::start_new`] with extra server options, e.g.
    /// `-c shared_preload_libraries=pg_stat_statements`.
    pub async fn start_new_with(options: &str) -> Option<PgServer> {
        let bindir = bindir()?;
        let dir = std::env::temp_dir().join(format!("vantage-pg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {}", dir.display());
        }
        let out = as_owner(&bindir.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .output()
            .unwrap_or_else(|e| panic!("initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = PgServer {
            bindir,
            dir,
            port: crate::ports::free_tcp_port(),
            options: options.to_owned(),
        };
        s.start().await;
        Some(s)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts
    /// connections (a killed server's backends may need a moment to go).
    pub async fn start(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A killed postmaster may linger as a zombie until its reaper
            // runs, and PostgreSQL keeps refusing lock files that name a
            // process that exists: it is dead (we killed it), drop them.
            let _ = std::fs::remove_file(self.dir.join("data/postmaster.pid"));
            let _ = std::fs::remove_file(self.dir.join(format!(".s.PGSQL.{}.lock", self.port)));
            let out = as_owner(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "20", "-o"])
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                     -c synchronous_commit=off -c max_connections=100 {}",
                    self.port,
                    self.dir.display(),
                    self.options
                ))
                .arg("start")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .unwrap_or_else(|e| panic!("pg_ctl start: {e}"));
            if out.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                panic!(
                    "PostgreSQL did not start on port {}: {}\n{log}",
                    self.port,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The postmaster's process id, while it runs.
    fn pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        Pid::from_raw(pid)
    }

    /// SIGKILL to the postmaster (a crash: no shutdown, open connections
    /// break); waits until it is gone.
    pub async fn kill(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = kill_process(pid, Signal::KILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Its backends notice that their postmaster died and exit by
        // themselves; `start` retries until their shared memory is free.
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill_process(pid, Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
