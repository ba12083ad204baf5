//! What the benchmark reads from `/proc`: a process's CPU time and resident
//! memory, the kernel's slab and TCP buffer memory.

use std::time::Instant;

/// Linux `USER_HZ` (the unit of utime/stime in `/proc/PID/stat`).
const TICKS_PER_S: f64 = 100.0;

/// CPU time (utime + stime) of `pid`, in seconds.
pub fn cpu_s(pid: u32) -> f64 {
    let (u, s) = cpu_split_s(pid);
    u + s
}

/// (user, system) CPU time of `pid`, in seconds.
pub fn cpu_split_s(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (0.0, 0.0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime is field 14, stime 15.
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) as f64 / TICKS_PER_S, t(12) as f64 / TICKS_PER_S)
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    field_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn field_kib(path: &str, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Kernel slab memory (all caches: sockets, files, epoll items...), KiB.
pub fn slab_kib() -> u64 {
    field_kib("/proc/meminfo", "Slab:")
}

/// Pages of TCP buffer memory (`/proc/net/sockstat`, `TCP: ... mem N`).
pub fn tcp_mem_pages() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
            let mut it = line.split_whitespace();
            while let Some(w) = it.next() {
                if w == "mem" {
                    return it.next()?.parse().ok();
                }
            }
            None
        })
        .unwrap_or(0)
}

/// Busy share of the whole machine between two readings of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn read() -> MachineCpu {
        let line = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_default();
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        MachineCpu {
            busy: total - idle,
            total,
        }
    }

    /// Busy cores of the whole machine since `self`.
    pub fn cores_until(&self, later: &MachineCpu, cores: usize) -> f64 {
        let dt = later.total.saturating_sub(self.total) as f64;
        if dt <= 0.0 {
            return 0.0;
        }
        later.busy.saturating_sub(self.busy) as f64 / dt * cores as f64
    }
}

/// CPU of one process over a window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub pid: u32,
    cpu: f64,
    at: Instant,
}

impl Window {
    pub fn start(pid: u32) -> Window {
        Window {
            pid,
            cpu: cpu_s(pid),
            at: Instant::now(),
        }
    }

    /// (CPU seconds used, wall seconds) since the start.
    pub fn end(&self) -> (f64, f64) {
        (cpu_s(self.pid) - self.cpu, self.at.elapsed().as_secs_f64())
    }
}
