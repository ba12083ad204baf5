//! Reply rate limits of the responder, pure (time is an argument).
//!
//! Only authenticated requests reach the limiter. Each source IP has a token
//! bucket (default 200 replies/s, burst 200) and all sources share a global
//! bucket (default 5,000 replies/s), so even a leaked key cannot turn the
//! agent into a useful reflector. At most `max_sources` buckets are kept;
//! idle ones are forgotten first, and when every slot is busy new sources
//! are refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Limits of the responder.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyLimits {
    pub per_source_rate: f64,
    pub per_source_burst: f64,
    pub total_rate: f64,
    pub max_sources: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        Self {
            per_source_rate: 200.0,
            per_source_burst: 200.0,
            total_rate: 5_000.0,
            max_sources: 4_096,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Decides whether an authenticated request gets a reply.
#[derive(Debug)]
pub struct Limiter {
    limits: ReplyLimits,
    total: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    pub fn new(limits: ReplyLimits, now: Instant) -> Self {
        let burst = limits.total_rate.max(1.0);
        Self {
            total: Bucket::full(burst, now),
            limits,
            sources: HashMap::new(),
        }
    }

    /// Whether `src` may get a reply now (and spends a token if so).
    pub fn admit(&mut self, src: IpAddr, now: Instant) -> bool {
        let l = &self.limits;
        let (rate, burst) = (l.per_source_rate, l.per_source_burst.max(1.0));
        if !self.sources.contains_key(&src) && self.sources.len() >= l.max_sources {
            // Forget sources whose bucket has refilled: they were idle.
            let idle = burst / rate.max(f64::MIN_POSITIVE);
            self.sources
                .retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() < idle);
            if self.sources.len() >= l.max_sources {
                return false;
            }
        }
        let bucket = self
            .sources
            .entry(src)
            .or_insert_with(|| Bucket::full(burst, now));
        if !bucket.take(now, rate, burst) {
            return false;
        }
        let total = self.limits.total_rate.max(1.0);
        self.total.take(now, total, total)
    }

    /// Sources currently tracked.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn per_source_bucket_limits_bursts_and_refills() {
        let t0 = Instant::now();
        let mut l = Limiter::new(
            ReplyLimits {
                per_source_rate: 10.0,
                per_source_burst: 5.0,
                ..Default::default()
            },
            t0,
        );
        let admitted = (0..100).filter(|_| l.admit(ip(1), t0)).count();
        assert_eq!(admitted, 5, "burst");
        assert!(l.admit(ip(2), t0), "other sources are not affected");
        // One second later: 10 more tokens, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| l.admit(ip(1), t1)).count(), 5);
        // A steady 10/s is fully served.
        let mut served = 0;
        for i in 1..=100u64 {
            if l.admit(ip(1), t1 + Duration::from_millis(i * 100)) {
                served += 1;
            }
        }
        assert_eq!(served, 100);
    }

    #[test]
    fn global_bucket_caps_all_sources() {
        let t0 = Instant::now();
        let mut l = Limiter::new(
            ReplyLimits {
                total_rate: 50.0,
                ..Default::default()
            },
            t0,
        );
        let admitted = (0..200u8).filter(|n| l.admit(ip(*n), t0)).count();
        assert_eq!(admitted, 50);
    }

    #[test]
    fn source_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = Limiter::new(
            ReplyLimits {
                max_sources: 3,
                per_source_rate: 1.0,
                per_source_burst: 1.0,
                ..Default::default()
            },
            t0,
        );
        assert!(l.admit(ip(1), t0));
        assert!(l.admit(ip(2), t0));
        assert!(l.admit(ip(3), t0));
        assert!(!l.admit(ip(4), t0), "table full of busy sources");
        assert_eq!(l.sources(), 3);
        // After the buckets refilled, idle sources are forgotten.
        assert!(l.admit(ip(4), t0 + Duration::from_secs(2)));
        assert_eq!(l.sources(), 1);
    }
}
