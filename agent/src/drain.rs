//! Graceful drain (SIGTERM): announce, refuse newcomers, let viewers finish.
//!
//! [`Drain::start`] flips the agent into draining once; from then on
//!
//! * the telemetry client sends `AgentControl{draining}` on the control
//!   stream (again after every reconnect), so the scheduler marks the node
//!   `draining`, sends it no new viewers and plans upstreams away from it;
//! * the media server answers new play and publish requests with
//!   `503 Service Unavailable` and `Retry-After` (JSON error body), and its
//!   `/healthz` with 503 `{"status":"draining"}` for load balancers;
//! * viewers already playing keep receiving media.
//!
//! The binary then waits ([`Drain::wait_idle`]) until the last viewer has
//! left or the grace period (`--drain-grace-s`, default 30 s) is over, and
//! stops the agent. A second signal ends the wait at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Default `--drain-grace-s`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How often [`Drain::wait_idle`] looks at the viewer count.
const POLL: Duration = Duration::from_millis(100);

/// The drain state of one agent; cheap to clone.
#[derive(Debug, Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    grace: Duration,
    started: CancellationToken,
    since: OnceLock<Instant>,
    announced: AtomicBool,
}

/// Why [`Drain::wait_idle`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// No viewer was left.
    Idle,
    /// The grace period ended with viewers still connected.
    GraceExpired { viewers: i64 },
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new(DEFAULT_GRACE)
    }
}

impl Drain {
    pub fn new(grace: Duration) -> Drain {
        Drain {
            inner: Arc::new(Inner {
                grace,
                started: CancellationToken::new(),
                since: OnceLock::new(),
                announced: AtomicBool::new(false),
            }),
        }
    }

    /// The configured grace period.
    pub fn grace(&self) -> Duration {
        self.inner.grace
    }

    /// Starts draining; `true` if this call started it (later calls do
    /// nothing).
    pub fn start(&self) -> bool {
        let first = self.inner.since.set(Instant::now()).is_ok();
        self.inner.started.cancel();
        first
    }

    pub fn is_draining(&self) -> bool {
        self.inner.started.is_cancelled()
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        self.inner.started.cancelled().await
    }

    /// Grace left (the whole grace before the start).
    pub fn remaining(&self) -> Duration {
        match self.inner.since.get() {
            Some(t) => self.inner.grace.saturating_sub(t.elapsed()),
            None => self.inner.grace,
        }
    }

    /// Whether the scheduler has been told (in some session).
    pub fn announced(&self) -> bool {
        self.inner.announced.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_announced(&self) {
        self.inner.announced.store(true, Ordering::Relaxed);
    }

    /// Waits until `viewers()` (the relay's viewer count) is 0 or the grace
    /// period is over. Viewers include downstream agents pulling from this
    /// one; the scheduler moves them away, so they leave on their own.
    pub async fn wait_idle(&self, viewers: impl Fn() -> i64) -> DrainEnd {
        let deadline = tokio::time::Instant::now() + self.remaining();
        loop {
            let viewers = viewers();
            if viewers <= 0 {
                return DrainEnd::Idle;
            }
            if tokio::time::Instant::now() >= deadline {
                return DrainEnd::GraceExpired { viewers };
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_once_and_counts_down() {
        let d = Drain::new(Duration::from_secs(30));
        assert!(!d.is_draining());
        assert_eq!(d.remaining(), Duration::from_secs(30));
        assert!(d.start());
        assert!(!d.start(), "a second start does nothing");
        assert!(d.is_draining());
        assert!(d.remaining() <= Duration::from_secs(30));
        assert!(d.remaining() > Duration::from_secs(29));
        assert!(!d.announced());
        d.mark_announced();
        assert!(d.clone().announced(), "clones share the state");
    }

    #[test]
    fn zero_grace_has_nothing_left() {
        let d = Drain::new(Duration::ZERO);
        d.start();
        assert_eq!(d.remaining(), Duration::ZERO);
    }
}
