//! Polling instead of sleeping: wait until a condition holds, within a
//! bound, and fail with what was last seen.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// Default poll period.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `check` every [`POLL`] until it returns `Ok(v)`, then returns `v`.
/// `Err(observed)` means "not yet"; after `timeout` the test panics with
/// `what` and the last observed value.
pub async fn eventually<T, O, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    O: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, O>>,
{
    eventually_every(timeout, POLL, what, check).await
}

/// [`eventually`] with an explicit poll period (for timing assertions).
pub async fn eventually_every<T, O, F, Fut>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> T
where
    O: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, O>>,
{
    match try_eventually_every(timeout, every, &mut check).await {
        Ok(v) => v,
        Err(last) => {
            panic!("timed out after {timeout:?} waiting for {what}; last observed: {last:#?}")
        }
    }
}

/// Like [`eventually_every`] but returns `Err(last observed)` on timeout
/// instead of panicking.
pub async fn try_eventually_every<T, O, F, Fut>(
    timeout: Duration,
    every: Duration,
    check: &mut F,
) -> Result<T, O>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, O>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let started = Instant::now();
        match check().await {
            Ok(v) => return Ok(v),
            Err(observed) if Instant::now() >= deadline => return Err(observed),
            Err(_) => {}
        }
        let next = (started + every).min(deadline);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Asserts that a condition becomes true within a timeout, polling every
/// 50 ms; must be used in an async context.
///
/// ```ignore
/// assert_eventually!(Duration::from_secs(5), || path.exists(), "{} appears", path.display());
/// assert_eventually!(Duration::from_secs(5), async || agent.is_ready().await, "agent ready");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, async || $cond:expr, $($msg:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        $crate::eventually::eventually(timeout, &format!($($msg)+), || async {
            if $cond { Ok(()) } else { Err("condition still false") }
        })
        .await
    }};
    ($timeout:expr, || $cond:expr, $($msg:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        $crate::eventually::eventually(timeout, &format!($($msg)+), || {
            let ok = $cond;
            async move { if ok { Ok(()) } else { Err("condition still false") } }
        })
        .await
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_the_check_passes() {
        let n = AtomicU32::new(0);
        let v = eventually(Duration::from_secs(2), "third poll", || async {
            let i = n.fetch_add(1, Ordering::SeqCst);
            if i >= 2 { Ok(i) } else { Err(i) }
        })
        .await;
        assert_eq!(v, 2);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for never; last observed: 7")]
    async fn times_out_with_the_last_observation() {
        eventually(Duration::from_millis(120), "never", || async {
            Err::<(), _>(7)
        })
        .await;
    }

    #[tokio::test]
    async fn macro_forms() {
        let start = Instant::now();
        assert_eventually!(
            Duration::from_secs(2),
            || start.elapsed() > Duration::from_millis(100),
            "{} ms pass",
            100
        );
        let flag = AtomicU32::new(0);
        assert_eventually!(
            Duration::from_secs(2),
            async || flag.fetch_add(1, Ordering::SeqCst) >= 2,
            "third poll"
        );
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for the impossible")]
    async fn macro_times_out() {
        assert_eventually!(Duration::from_millis(100), || false, "the impossible");
    }
}
