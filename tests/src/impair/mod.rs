//! Userspace network impairment (the kernel here has no `netem`): UDP and TCP
//! forwarders that add one-way delay, jitter, random or bursty loss and a
//! rate limit between a client and an upstream, for tests and demos.
//!
//! ```ignore
//! use vantage_tests::impair::{Impairment, Jitter, Link, UdpImpair};
//! // 40 ms added RTT: 20 ms ± 5 ms (uniform) each way, 2 % round-trip loss.
//! let imp = Impairment::round_trip_ms(40, Jitter::uniform_ms(5), 0.02);
//! let proxy = UdpImpair::start("127.0.0.1:0".parse()?, upstream, imp).await?;
//! // clients send to proxy.local_addr() instead of upstream …
//! proxy.set(Impairment::both(Link::new().delay_ms(100)))?; // takes effect at once
//! println!("{}", proxy.stats());
//! ```
//!
//! # Model
//!
//! Each direction is a [`Link`]: *upstream* is client → upstream, *downstream*
//! is upstream → client. A datagram (UDP) or a chunk read from a socket (TCP)
//! crossing a link goes through, in order:
//!
//! 1. **loss** ([`Loss`], UDP only): independent random loss with
//!    probability `p`, a Gilbert–Elliott two-state chain for bursts, or
//!    evenly spaced loss (one in every `1/p` packets) for tests that need
//!    the injected ratio without sampling noise;
//! 2. **rate limit** ([`RateLimit`]): a token bucket (`bits_per_sec`,
//!    `burst_bytes`) in front of a FIFO of `queue_bytes`; a datagram that
//!    does not fit in the queue is dropped (tail drop). TCP never drops: the
//!    pump stops reading instead, and the sender feels back-pressure;
//! 3. **delay + jitter**: released `delay + X` after leaving the bucket, `X`
//!    drawn from [`Jitter`] (uniform on `[−j, +j]`, or normal with σ = `j`
//!    cut at ±4σ); a negative total delay counts as 0. Like netem, datagrams
//!    are reordered when their delays cross, unless [`Link::keep_order`] is
//!    set (then a datagram never leaves before the one ahead of it). TCP
//!    chunks always stay in order.
//!
//! # Accounting, bounds and lifetime
//!
//! Counters ([`Stats`]) per direction: received, forwarded, dropped by loss,
//! dropped by a full queue. Memory is bounded: the delay line holds at most
//! [`Options::max_queued_packets`] / [`Options::max_queued_bytes`], the UDP
//! proxy at most [`Options::max_flows`] client flows (each with its own
//! upstream socket, NAT-like, closed after [`Options::idle_timeout`]), the TCP
//! proxy at most `max_flows` connections with a small bounded chunk queue per
//! direction. [`ImpairHandle::set`] changes the impairment for every packet
//! that arrives afterwards (packets already in the delay line keep their
//! release time, as with `tc qdisc change`). Dropping the handle (or
//! [`ImpairHandle::stop`]) stops every task and closes every socket.
//!
//! Loss and jitter come from a seeded PRNG ([`Options::seed`]), one stream
//! per direction, so the same packet sequence meets the same fate in every run.

mod model;
mod shaper;
mod stats;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

pub use model::{Direction, GilbertElliott, Impairment, Jitter, Link, Loss, RateLimit};
pub use stats::{DirStats, Observed, Stats};
pub use tcp::TcpImpair;
pub use udp::UdpImpair;

use stats::Counters;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What can go wrong starting or reconfiguring a proxy.
#[derive(Debug, thiserror::Error)]
pub enum ImpairError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid impairment: {0}")]
    Invalid(String),
}
/// Bounds and seed of a proxy.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of the loss and jitter PRNG (each direction derives its own).
    pub seed: u64,
    /// UDP: a client flow (and its upstream socket) is closed after this
    /// long without traffic either way.
    pub idle_timeout: Duration,
    /// UDP client flows / TCP connections at once; more are refused.
    pub max_flows: usize,
    /// Datagrams held in the UDP delay line at once; more are dropped.
    pub max_queued_packets: usize,
    /// Bytes held in the UDP delay line at once; more are dropped.
    pub max_queued_bytes: usize,
    /// TCP: how long connecting upstream may take.
    pub connect_timeout: Duration,
    /// TCP: release chunks within tens of microseconds (a short busy wait
    /// before each release, see [`SPIN`]). Off: tokio's timer, up to ~1 ms
    /// late, and no busy waiting — for many proxies at once (one per viewer
    /// in the sim-to-real test), where the spinning would eat the CPU the
    /// processes under test need.
    pub precise: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 0x5eed_1e55,
            idle_timeout: Duration::from_secs(60),
            max_flows: 1024,
            max_queued_packets: 16_384,
            max_queued_bytes: 32 << 20,
            connect_timeout: Duration::from_secs(5),
            precise: true,
        }
    }
}

impl Options {
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    pub fn max_flows(mut self, n: usize) -> Self {
        self.max_flows = n;
        self
    }

    pub fn max_queued_packets(mut self, n: usize) -> Self {
        self.max_queued_packets = n;
        self
    }

    pub fn max_queued_bytes(mut self, n: usize) -> Self {
        self.max_queued_bytes = n;
        self
    }

    pub fn precise(mut self, precise: bool) -> Self {
        self.precise = precise;
        self
    }
}
/// Tokio timers have millisecond resolution and fire up to ~1 ms late; a
/// proxy that must add *exactly* 20 ms sleeps until `SPIN` before a release
/// and then yields to the scheduler until the instant has come (a short,
/// cooperative busy wait).
const SPIN: Duration = Duration::from_micros(1500);

/// Sleeps until `t`, within tens of microseconds (see [`SPIN`]).
async fn sleep_precisely_until(t: tokio::time::Instant) {
    if let Some(early) = t.checked_sub(SPIN) {
        tokio::time::sleep_until(early).await;
    }
    while tokio::time::Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

/// A running proxy. Dropping it stops the proxy.
#[derive(Debug)]
pub struct ImpairHandle {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    control: watch::Sender<Impairment>,
    counters: Arc<Counters>,
    /// TCP: client addresses whose connections are frozen.
    held: watch::Sender<std::collections::BTreeSet<SocketAddr>>,
    task: JoinHandle<()>,
}

impl ImpairHandle {
    /// Where clients send to / connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where traffic is forwarded.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Replaces the impairment; applies to every packet arriving from now on.
    pub fn set(&self, imp: Impairment) -> Result<(), ImpairError> {
        imp.validate()?;
        self.control.send_replace(imp);
        Ok(())
    }

    /// TCP: freezes the connection from `client` (the address it connects
    /// from): no byte moves either way until [`Self::release`], without a
    /// close or a reset — a path that died silently.
    pub fn hold(&self, client: SocketAddr) {
        self.held.send_modify(|h| {
            h.insert(client);
        });
    }

    /// TCP: lets a held connection move again.
    pub fn release(&self, client: SocketAddr) {
        self.held.send_modify(|h| {
            h.remove(&client);
        });
    }

    pub fn impairment(&self) -> Impairment {
        *self.control.borrow()
    }

    /// Holding times of the last `last` packets (at most 1024) of `dir`.
    pub fn observed(&self, dir: Direction, last: usize) -> Observed {
        self.counters.dir(dir).observed(last)
    }

    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Whether the proxy task still runs.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops every task, closes every socket and waits for it.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ImpairHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
