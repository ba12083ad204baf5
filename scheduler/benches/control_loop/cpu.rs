//! CPU and UDP accounting from `/proc`: the scheduler's per-thread split, the
//! whole machine, socket drops.

use super::*;

/// utime + stime of a process and of each of its threads.
#[derive(Debug, Clone)]
pub(crate) struct CpuSample {
    pub(crate) at: Instant,
    pub(crate) ticks: u64,
    /// tid → (name, ticks)
    pub(crate) threads: BTreeMap<u32, (String, u64)>,
    pub(crate) rss_kib: u64,
}

/// Where the scheduler's CPU went, in cores.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuSplit {
    pub(crate) total: f64,
    /// The QUIC ingest thread (`quic-ingest`: every agent connection).
    pub(crate) quic: f64,
    /// The tokio worker threads (gRPC, HTTP, liveness, resolver, store writer).
    pub(crate) workers: f64,
    /// Everything else: planning (the `planner` thread and its helper
    /// threads) and the store's thread.
    pub(crate) rest: f64,
}

/// `(comm, utime + stime)` of one `/proc/.../stat` line.
pub(crate) fn parse_stat(s: &str) -> Option<(String, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

impl CpuSample {
    pub(crate) fn take(pid: u32) -> Result<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("/proc/{pid}/stat"))?;
        let (_, ticks) = parse_stat(&stat).ok_or_else(|| anyhow!("unparsable /proc/{pid}/stat"))?;
        let mut threads = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for entry in dir.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                if let Ok(s) = std::fs::read_to_string(entry.path().join("stat"))
                    && let Some(t) = parse_stat(&s)
                {
                    threads.insert(tid, t);
                }
            }
        }
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        Ok(Self {
            at,
            ticks,
            threads,
            rss_kib,
        })
    }

    /// CPU cores used between `self` and the later sample `end`.
    pub(crate) fn cores_until(&self, end: &CpuSample) -> f64 {
        let secs = end.at.duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        end.ticks.saturating_sub(self.ticks) as f64 / CLOCK_TICKS_PER_S / secs
    }

    /// Splits the scheduler's CPU between the QUIC ingest thread, the tokio
    /// workers and the rest. Tokio starts its `workers` worker threads when
    /// the runtime is built, before any blocking thread, so they are the
    /// tokio threads with the lowest ids. The rest is `total` minus those:
    /// the `planner` thread and its short-lived helper threads, which have
    /// exited by the end of the window and so are only in `total`, plus the
    /// store's thread.
    pub(crate) fn split_until(&self, end: &CpuSample, workers: usize) -> CpuSplit {
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let mut split = CpuSplit {
            total: self.cores_until(end),
            ..CpuSplit::default()
        };
        let cores = |tid: &u32, t: u64| {
            let before = self.threads.get(tid).map_or(0, |(_, b)| *b);
            t.saturating_sub(before) as f64 / CLOCK_TICKS_PER_S / secs
        };
        for (tid, (_, t)) in end.threads.iter().filter(|(_, (n, _))| n == "quic-ingest") {
            split.quic += cores(tid, *t);
        }
        let tokio_threads = end
            .threads
            .iter()
            .filter(|(_, (name, _))| name.starts_with("tokio-r"));
        for (tid, (_, t)) in tokio_threads.take(workers) {
            split.workers += cores(tid, *t);
        }
        split.rest = (split.total - split.quic - split.workers).max(0.0);
        split
    }
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
pub(crate) fn system_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Cores busy on the whole machine between two `system_jiffies` samples.
pub(crate) fn system_cores(a: (u64, u64), b: (u64, u64), secs: f64) -> f64 {
    b.0.saturating_sub(a.0) as f64 / CLOCK_TICKS_PER_S / secs.max(1e-9)
}

/// Datagrams the kernel dropped on the UDP sockets bound to `ports`
/// (`drops` column of `/proc/net/udp{,6}`: receive buffer full).
pub(crate) fn udp_socket_drops(ports: &[u16]) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = cols
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if port.is_some_and(|p| ports.contains(&p)) {
                total += cols.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

/// Kernel UDP receive-buffer drops (this network namespace).
pub(crate) fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Simulated agents
// ---------------------------------------------------------------------------
