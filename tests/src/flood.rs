//! Tools of the resource-exhaustion tests: the test process's own file
//! descriptor limit, a child's limit, a child's CPU time, and many idle TCP
//! sockets held open against a listener.
//!
//! Raising a hard limit needs `CAP_SYS_RESOURCE`, which containers often
//! drop even for root: a process raises its soft limit up to its hard one,
//! and attacks of more sockets than that are spread over several helper
//! processes ([`IdleFlood`], the `vantage-idle-sockets` binary), each under
//! its own limit.

use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit, setrlimit};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Raises this process's `RLIMIT_NOFILE` to at least `n`: the hard limit
/// too when allowed, else the soft limit up to the hard one (an error when
/// that is below `n`).
pub fn raise_fd_limit(n: u64) -> Result<(), String> {
    let now = getrlimit(Resource::Nofile);
    if now.current.is_none_or(|c| c >= n) {
        return Ok(());
    }
    let wanted = Rlimit {
        current: Some(n),
        maximum: now.maximum.map(|m| m.max(n)),
    };
    if setrlimit(Resource::Nofile, wanted).is_ok() {
        return Ok(());
    }
    let hard = Rlimit {
        current: now.maximum,
        maximum: now.maximum,
    };
    let _ = setrlimit(Resource::Nofile, hard);
    match now.maximum {
        Some(m) if m < n => Err(format!(
            "RLIMIT_NOFILE hard limit is {m} < {n} and cannot be raised here"
        )),
        _ => Ok(()),
    }
}

/// Sets `RLIMIT_NOFILE` of process `pid` (soft and hard) to `n`.
pub fn set_fd_limit_of(pid: u32, n: u64) -> Result<(), String> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("bad pid {pid}"))?;
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum: Some(n),
        },
    )
    .map(|_| ())
    .map_err(|e| format!("prlimit({pid:?}, NOFILE, {n}): {e}"))
}

/// CPU time (user + system) process `pid` used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks in USER_HZ, 100 on Linux.
    Some((utime + stime) as f64 / 100.0)
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Idle TCP connections to one address, held until dropped: they send
/// nothing (no TLS ClientHello, no request head).
#[derive(Debug, Default)]
pub struct IdleSockets {
    socks: Vec<TcpStream>,
    /// Connection attempts that failed or timed out (the listener's
    /// backlog was full, or the server refused).
    pub failed: usize,
}

impl IdleSockets {
    /// Opens up to `n` connections to `addr`, `parallel` at a time, each
    /// given 2 s to connect; stops after `limit` in total.
    pub async fn open(addr: SocketAddr, n: usize, parallel: usize, limit: Duration) -> Self {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = IdleSockets::default();
        let mut left = n;
        while left > 0 && tokio::time::Instant::now() < deadline {
            let batch = left.min(parallel.max(1));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..batch {
                set.spawn(async move {
                    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
                });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok(Ok(s))) => out.socks.push(s),
                    _ => out.failed += 1,
                }
            }
            left -= batch;
        }
        out
    }

    /// Connections currently held by this side.
    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// How many of the held connections the server has closed (read
    /// returns end of stream or an error without blocking).
    pub fn closed_by_server(&self) -> usize {
        let mut buf = [0u8; 1];
        self.socks
            .iter()
            .filter(|s| match s.try_read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            })
            .count()
    }
}

/// Idle sockets held by a `vantage-idle-sockets` helper process.
#[derive(Debug)]
pub struct IdleFlood {
    child: tokio::process::Child,
    /// Connections the helper holds.
    pub held: usize,
    pub failed: usize,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _reader: tokio::task::JoinHandle<()>,
}

impl IdleFlood {
    /// Starts a helper that opens `n` idle connections to `addr`; returns
    /// once they are open (or the helper gave up).
    pub async fn spawn(addr: SocketAddr, n: usize) -> IdleFlood {
        use tokio::io::AsyncBufReadExt;
        let bin = crate::bins::bin("vantage-idle-sockets");
        let mut child = tokio::process::Command::new(&bin)
            .args([addr.to_string(), n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(90), lines.next_line())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default();
        let mut words = first.split_whitespace();
        let (held, failed) = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("held"), Some(h), Some("failed"), Some(f)) => {
                (h.parse().unwrap_or(0), f.parse().unwrap_or(0))
            }
            _ => panic!("vantage-idle-sockets {addr} {n}: unexpected output {first:?}"),
        };
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = closed.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line.strip_prefix("closed ").and_then(|n| n.parse().ok()) {
                    c.store(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        IdleFlood {
            child,
            held,
            failed,
            closed,
            _reader: reader,
        }
    }

    /// How many of its connections the server had closed at the helper's
    /// last count (once a second).
    pub fn closed_by_server(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes every connection (the helper exits).
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
