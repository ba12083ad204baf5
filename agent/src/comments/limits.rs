//! Rate limits of posts: a token bucket per poster connection (at the edge
//! that holds it) and per room (at the sequencer), and the flood rule that
//! disconnects a poster who keeps posting into a full bucket.
//!
//! Pure: time comes in as milliseconds of a monotonic clock.

/// `rate` posts per second on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_s: f64,
    pub burst: f64,
}

/// A token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate: Rate, now_ms: u64) -> Bucket {
        Bucket {
            rate,
            tokens: rate.burst,
            last_ms: now_ms,
        }
    }

    /// Takes one token; `Err(ms)` = empty, one comes back in `ms`.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u32> {
        let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + dt * self.rate.per_s).min(self.rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.rate.per_s <= 0.0 {
            Err(u32::MAX)
        } else {
            let wait = (1.0 - self.tokens) / self.rate.per_s * 1000.0;
            Err(wait.ceil().min(f64::from(u32::MAX)) as u32)
        }
    }
}

/// Refusals counted per poster within a window: a poster refused more than
/// `limit` times within `window_ms` is flooding.
#[derive(Debug, Clone)]
pub struct Flood {
    limit: u32,
    window_ms: u64,
    start_ms: u64,
    count: u32,
}

impl Flood {
    pub fn new(limit: u32, window_ms: u64, now_ms: u64) -> Flood {
        Flood {
            limit,
            window_ms,
            start_ms: now_ms,
            count: 0,
        }
    }

    /// Counts one refusal; true when the poster is flooding.
    pub fn refused(&mut self, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.start_ms) > self.window_ms {
            self.start_ms = now_ms;
            self.count = 0;
        }
        self.count += 1;
        self.count > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let mut b = Bucket::new(
            Rate {
                per_s: 2.0,
                burst: 3.0,
            },
            0,
        );
        assert!(b.take(0).is_ok() && b.take(0).is_ok() && b.take(0).is_ok());
        assert_eq!(b.take(0), Err(500));
        assert_eq!(b.take(250), Err(250));
        assert!(b.take(500).is_ok());
        // Time going backwards does not mint tokens.
        assert!(b.take(100).is_err());
        // A long pause refills to the burst only.
        for _ in 0..3 {
            assert!(b.take(60_000).is_ok());
        }
        assert!(b.take(60_000).is_err());
    }

    #[test]
    fn zero_rate_never_refills() {
        let mut b = Bucket::new(
            Rate {
                per_s: 0.0,
                burst: 1.0,
            },
            0,
        );
        assert!(b.take(0).is_ok());
        assert_eq!(b.take(1_000_000), Err(u32::MAX));
    }

    #[test]
    fn flood_counts_refusals_in_a_window() {
        let mut f = Flood::new(3, 1000, 0);
        assert!(!f.refused(0) && !f.refused(10) && !f.refused(20));
        assert!(f.refused(30));
        assert!(!f.refused(2000));
    }
}
