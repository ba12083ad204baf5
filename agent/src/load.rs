//! Machine load from `/proc`: CPU busy share from `/proc/stat` deltas and
//! memory in use from `/proc/meminfo` (`MemTotal − MemAvailable`).
//!
//! Parsing is pure ([`parse_cpu_times`], [`parse_meminfo`]); [`LoadSampler`]
//! reads the files and [`spawn`] samples periodically, publishing the latest
//! [`LoadSample`] on a `watch` channel that the telemetry reports read.

use crate::metrics::Metrics;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: unexpected format")]
    Format(PathBuf),
}

/// One load sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadSample {
    /// CPU busy share of the whole machine since the previous sample, 0..1.
    pub cpu: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
}

/// Cumulative CPU jiffies of the aggregate `cpu` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`. Idle time is
/// `idle + iowait`; total is user..steal (guest time is already in user).
pub fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Busy share between two readings, clamped to 0..1 (0 without progress).
pub fn cpu_fraction(prev: CpuTimes, cur: CpuTimes) -> f64 {
    let total = cur.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    let busy = cur.busy.saturating_sub(prev.busy);
    (busy as f64 / total as f64).clamp(0.0, 1.0)
}

/// `(used, total)` bytes from `/proc/meminfo`.
pub fn parse_meminfo(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let rest = line.strip_prefix(name)?.trim_start_matches(':');
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        kb.checked_mul(1024)
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    Some((total.saturating_sub(available), total))
}

/// Reads `/proc/stat` and `/proc/meminfo`, remembering the previous CPU
/// reading for deltas.
#[derive(Debug)]
pub struct LoadSampler {
    root: PathBuf,
    prev: Option<CpuTimes>,
}

impl Default for LoadSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadSampler {
    pub fn new() -> Self {
        Self::with_root("/proc")
    }

    /// A sampler reading `<root>/stat` and `<root>/meminfo` (for tests).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            prev: None,
        }
    }

    fn read(&self, name: &str) -> Result<(PathBuf, String), LoadError> {
        let path = self.root.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok((path, t)),
            Err(source) => Err(LoadError::Read { path, source }),
        }
    }

    /// Takes a sample. The first CPU figure is the average since boot.
    pub fn sample(&mut self) -> Result<LoadSample, LoadError> {
        let (path, stat) = self.read("stat")?;
        let cur = parse_cpu_times(&stat).ok_or(LoadError::Format(path))?;
        let cpu = cpu_fraction(self.prev.unwrap_or_default(), cur);
        self.prev = Some(cur);
        let (path, mem) = self.read("meminfo")?;
        let (used, total) = parse_meminfo(&mem).ok_or(LoadError::Format(path))?;
        Ok(LoadSample {
            cpu,
            mem_used_bytes: used,
            mem_total_bytes: total,
        })
    }
}

/// Samples every `period` until cancelled, publishing each sample and
/// updating the `cpu_ratio` / `memory_used_bytes` gauges. On a machine
/// without `/proc` the sample stays at zero.
pub fn spawn(
    metrics: Metrics,
    period: Duration,
    cancel: CancellationToken,
) -> (watch::Receiver<LoadSample>, tokio::task::JoinHandle<()>) {
    let mut sampler = LoadSampler::new();
    let first = sampler.sample().unwrap_or_default();
    metrics.record_load(first.cpu, first.mem_used_bytes, first.mem_total_bytes);
    let (tx, rx) = watch::channel(first);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => match sampler.sample() {
                    Ok(s) => {
                        metrics.record_load(s.cpu, s.mem_used_bytes, s.mem_total_bytes);
                        tx.send_replace(s);
                    }
                    Err(e) => debug!(error = %e, "load sample failed"),
                },
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\nintr 1\n";
    const MEMINFO: &str =
        "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     400 kB\n";

    #[test]
    fn parses_proc_formats() {
        let t = parse_cpu_times(STAT).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        assert_eq!(parse_meminfo(MEMINFO), Some((600 * 1024, 1000 * 1024)));
        assert_eq!(parse_cpu_times("intr 1"), None);
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        let later = CpuTimes {
            busy: 250,
            total: 1200,
        };
        assert!((cpu_fraction(t, later) - 0.5).abs() < 1e-9);
        assert_eq!(cpu_fraction(t, t), 0.0);
        // A counter going backwards never yields a value outside 0..1.
        assert_eq!(cpu_fraction(later, t), 0.0);
    }

    #[test]
    fn sampler_reads_files_and_takes_deltas() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), STAT).unwrap();
        std::fs::write(dir.path().join("meminfo"), MEMINFO).unwrap();
        let mut s = LoadSampler::with_root(dir.path());
        let first = s.sample().unwrap();
        assert!((first.cpu - 0.15).abs() < 1e-9);
        std::fs::write(dir.path().join("stat"), "cpu  200 0 50 850 50 0 0 0 0 0\n").unwrap();
        let second = s.sample().unwrap();
        assert!((second.cpu - 100.0 / 150.0).abs() < 1e-9);
        assert_eq!(second.mem_total_bytes, 1000 * 1024);
        std::fs::remove_file(dir.path().join("meminfo")).unwrap();
        assert!(matches!(s.sample(), Err(LoadError::Read { .. })));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn real_proc_gives_sane_values() {
        let mut s = LoadSampler::new();
        let a = s.sample().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let b = s.sample().unwrap();
        for x in [a, b] {
            assert!((0.0..=1.0).contains(&x.cpu), "{x:?}");
            assert!(x.mem_total_bytes > 16 * 1024 * 1024, "{x:?}");
            assert!(
                x.mem_used_bytes > 0 && x.mem_used_bytes <= x.mem_total_bytes,
                "{x:?}"
            );
        }
    }
}
