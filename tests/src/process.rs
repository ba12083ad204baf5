//! A child process of the harness: spawned with its output in log files,
//! stopped with SIGTERM (then SIGKILL after a grace period) or killed, and
//! always reaped — dropping a [`Proc`] kills what is still running.

use rustix::process::{Pid, Signal, kill_process};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`Proc::stop`] waits after SIGTERM before SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// A running (or exited, not yet dropped) child process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exit: Option<ExitStatus>,
}

fn open_log(path: &Path, header: &str) -> File {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()));
    // Restarts append to the same file; a header separates the runs.
    let _ = writeln!(f, "===== {header} =====");
    f
}

impl Proc {
    /// Spawns `bin args…` with stdout/stderr appended to
    /// `<log_dir>/<name>.stdout.log` / `.stderr.log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Proc {
        std::fs::create_dir_all(log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        let stdout = log_dir.join(format!("{name}.stdout.log"));
        let stderr = log_dir.join(format!("{name}.stderr.log"));
        let header = format!("{} {} {}", crate::clock_ms(), bin.display(), args.join(" "));
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(open_log(&stdout, &header))
            .stderr(open_log(&stderr, &header));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    fn signal(&self, sig: Signal) {
        if self.exit.is_some() {
            return;
        }
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            // ESRCH (already gone, not yet reaped) is fine.
            let _ = kill_process(pid, sig);
        }
    }

    /// SIGSTOP: the process freezes (as in a VM pause or a long stall)
    /// until [`Self::resume`]; the kernel keeps queueing what is sent to it.
    pub fn pause(&self) {
        self.signal(Signal::STOP);
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// SIGKILL and reap. Returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.try_exit() {
            return s;
        }
        self.signal(Signal::KILL);
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
        self.exit = Some(status);
        status
    }

    /// SIGTERM, wait up to `grace` for the exit, then SIGKILL. Returns the
    /// exit status and whether the grace period sufficed.
    pub async fn stop(&mut self, grace: Duration) -> (ExitStatus, bool) {
        if let Some(s) = self.try_exit() {
            return (s, true);
        }
        self.signal(Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.try_exit() {
                return (s, true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "{} did not exit within {grace:?} of SIGTERM; sending SIGKILL",
            self.name
        );
        (self.kill(), false)
    }

    /// Blocking variant of [`Proc::stop`] for non-async callers.
    pub fn stop_blocking(&mut self, grace: Duration) -> (ExitStatus, bool) {
        if let Some(s) = self.try_exit() {
            return (s, true);
        }
        self.signal(Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.try_exit() {
                return (s, true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (self.kill(), false)
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The last `lines` lines of stdout and stderr, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "----- {name} stdout ({out}) -----\n{}\n----- {name} stderr ({err}) -----\n{}",
            tail(&self.stdout, lines),
            tail(&self.stderr, lines),
            name = self.name,
            out = self.stdout.display(),
            err = self.stderr.display(),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `url` until it answers 200 (Ok), the process exits, or `timeout`
/// passes (Err with what was seen last).
pub async fn wait_http_ok(
    proc: &mut Proc,
    http: &crate::http::Http,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut check = || {
        let exited = proc.try_exit();
        async move {
            if let Some(status) = exited {
                // Ok(Err) ends the polling: the process is gone.
                return Ok(Err(format!("process exited with {status}")));
            }
            match http.get(url).await {
                (200, _) => Ok(Ok(())),
                (crate::http::NO_ANSWER, v) => Err(format!("no answer: {v}")),
                (s, v) => Err(format!("{url} {s}: {v}")),
            }
        }
    };
    let every = Duration::from_millis(50);
    match crate::eventually::try_eventually_every(timeout, every, &mut check).await {
        Ok(r) => r,
        Err(last) => Err(format!(
            "no 200 from {url} within {timeout:?}; last: {last}"
        )),
    }
}

/// Whether a failed start looks like a port clash.
pub fn looks_like_port_clash(log: &str) -> bool {
    log.contains("in use") || log.contains("AddrInUse")
}

/// The last `lines` lines of a text file ("" when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The process slot of a harness handle (scheduler or agent): empty until
/// started, then the running or exited child. Holds the lifecycle
/// operations both handles share.
#[derive(Debug, Default)]
pub struct Slot(Option<Proc>);

impl Slot {
    pub fn set(&mut self, proc: Proc) {
        self.0 = Some(proc);
    }

    pub fn get_mut(&mut self) -> Option<&mut Proc> {
        self.0.as_mut()
    }

    pub fn is_running(&mut self) -> bool {
        self.0.as_mut().is_some_and(Proc::is_running)
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Proc::pid)
    }

    /// SIGTERM and wait (SIGKILL after `grace`). Panics if the process was
    /// never started or needed SIGKILL: a clean shutdown is part of the
    /// contract.
    pub async fn stop(&mut self, name: &str, grace: Duration) -> ExitStatus {
        let Some(proc) = self.0.as_mut() else {
            panic!("{name} was never started");
        };
        let (status, graceful) = proc.stop(grace).await;
        assert!(
            graceful,
            "{name} ignored SIGTERM for {grace:?}\n{}",
            proc.log_tail(30)
        );
        status
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; never panics. Returns
    /// the exit status (None if never started) and whether SIGTERM sufficed.
    pub async fn shutdown(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        match self.0.as_mut() {
            Some(p) => {
                let (status, graceful) = p.stop(grace).await;
                (Some(status), graceful)
            }
            None => (None, true),
        }
    }

    /// SIGKILL (no goodbye).
    pub fn kill(&mut self) {
        if let Some(p) = self.0.as_mut() {
            p.kill();
        }
    }

    /// SIGSTOP (see [`Proc::pause`]); nothing if never started.
    pub fn pause(&self) {
        if let Some(p) = &self.0 {
            p.pause();
        }
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        if let Some(p) = &self.0 {
            p.resume();
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.0
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }
}
