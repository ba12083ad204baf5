//! Counters and observed holding times of a proxy.

use super::Direction;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub(super) struct DirCounters {
    pub(super) received: AtomicU64,
    forwarded: AtomicU64,
    pub(super) dropped_loss: AtomicU64,
    pub(super) dropped_queue: AtomicU64,
    pub(super) bytes_received: AtomicU64,
    bytes_forwarded: AtomicU64,
    late_us: AtomicU64,
    late_us_max: AtomicU64,
    observed: Mutex<Holds>,
}

pub(super) fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How long the last packets really stayed in the proxy, and the RFC 3550
/// jitter of those holding times.
#[derive(Debug, Default)]
struct Holds {
    recent_us: VecDeque<u64>,
    last_us: Option<u64>,
    jitter_us: f64,
}

impl Holds {
    const KEEP: usize = 1024;

    fn record(&mut self, hold_us: u64) {
        if self.recent_us.len() == Self::KEEP {
            self.recent_us.pop_front();
        }
        self.recent_us.push_back(hold_us);
        if let Some(last) = self.last_us {
            let d = hold_us.abs_diff(last) as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_us = Some(hold_us);
    }
}

impl DirCounters {
    /// A packet (or chunk) of `len` bytes that arrived at `arrived`, was due
    /// at `release` and was sent at `sent`.
    pub(super) fn forwarded(&self, len: usize, arrived: Instant, release: Instant, sent: Instant) {
        let late = micros(sent.saturating_duration_since(release));
        inc(&self.forwarded, 1);
        inc(&self.bytes_forwarded, len as u64);
        inc(&self.late_us, late);
        self.late_us_max.fetch_max(late, Ordering::Relaxed);
        self.observed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(micros(sent.saturating_duration_since(arrived)));
    }

    pub(super) fn observed(&self, last: usize) -> Observed {
        let h = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        let n = last.min(h.recent_us.len());
        let mut v: Vec<u64> = h.recent_us.iter().rev().take(n).copied().collect();
        v.sort_unstable();
        let us = Duration::from_micros;
        Observed {
            samples: n,
            hold_p50: v
                .get(n.saturating_sub(1) / 2)
                .copied()
                .map_or(Duration::ZERO, us),
            hold_mean: us(v.iter().sum::<u64>().checked_div(n as u64).unwrap_or(0)),
            jitter: Duration::from_secs_f64(h.jitter_us.max(0.0) / 1e6),
        }
    }

    fn snapshot(&self) -> DirStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirStats {
            received: g(&self.received),
            forwarded: g(&self.forwarded),
            dropped_loss: g(&self.dropped_loss),
            dropped_queue: g(&self.dropped_queue),
            bytes_received: g(&self.bytes_received),
            bytes_forwarded: g(&self.bytes_forwarded),
            late_us: g(&self.late_us),
            late_us_max: g(&self.late_us_max),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) upstream: DirCounters,
    pub(super) downstream: DirCounters,
    pub(super) flows_active: AtomicU64,
    pub(super) flows_total: AtomicU64,
    pub(super) flows_refused: AtomicU64,
    pub(super) errors: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            upstream: self.upstream.snapshot(),
            downstream: self.downstream.snapshot(),
            flows_active: g(&self.flows_active),
            flows_total: g(&self.flows_total),
            flows_refused: g(&self.flows_refused),
            errors: g(&self.errors),
        }
    }

    pub(super) fn dir(&self, d: Direction) -> &DirCounters {
        match d {
            Direction::Upstream => &self.upstream,
            Direction::Downstream => &self.downstream,
        }
    }
}

/// Counters of one direction. UDP counts datagrams; TCP counts chunks (one
/// read from the socket each) in `received`/`forwarded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirStats {
    pub received: u64,
    pub forwarded: u64,
    /// Dropped by the loss model.
    pub dropped_loss: u64,
    /// Dropped because the rate-limit queue or the delay line was full.
    pub dropped_queue: u64,
    pub bytes_received: u64,
    pub bytes_forwarded: u64,
    /// Sum over forwarded packets of how late they left (actual send minus
    /// release time), µs: the proxy's own timing error, part of the delay
    /// the packets really saw.
    pub late_us: u64,
    /// Largest single lateness, µs.
    pub late_us_max: u64,
}

impl DirStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_queue
    }
}

/// What the packets of one direction really went through in the proxy:
/// holding time (arrival to send, i.e. delay + jitter + queueing + the
/// proxy's own lateness) and its RFC 3550 jitter (`J += (|D| − J)/16` over
/// consecutive packets) — the ground truth a measurement through the proxy
/// should match, whatever the load on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// Packets the figures are computed over.
    pub samples: usize,
    pub hold_p50: Duration,
    pub hold_mean: Duration,
    /// RFC 3550 jitter of the holding times (all packets so far).
    pub jitter: Duration,
}

/// A snapshot of a proxy's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub upstream: DirStats,
    pub downstream: DirStats,
    /// UDP flows / TCP connections open now.
    pub flows_active: u64,
    /// UDP flows / TCP connections opened since start.
    pub flows_total: u64,
    /// Flows refused because `max_flows` were open.
    pub flows_refused: u64,
    /// Socket errors (send failures, failed upstream connects, strays).
    pub errors: u64,
}

impl Stats {
    pub fn forwarded(&self) -> u64 {
        self.upstream.forwarded + self.downstream.forwarded
    }

    pub fn dropped(&self) -> u64 {
        self.upstream.dropped() + self.downstream.dropped()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |s: &DirStats| {
            format!(
                "in {} fwd {} lost {} qdrop {} ({} B, late mean {} µs max {} µs)",
                s.received,
                s.forwarded,
                s.dropped_loss,
                s.dropped_queue,
                s.bytes_forwarded,
                s.late_us.checked_div(s.forwarded).unwrap_or(0),
                s.late_us_max
            )
        };
        write!(
            f,
            "up: {} | down: {} | flows {} (total {}, refused {}) errors {}",
            d(&self.upstream),
            d(&self.downstream),
            self.flows_active,
            self.flows_total,
            self.flows_refused,
            self.errors
        )
    }
}
