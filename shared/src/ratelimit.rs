//! Per-client token buckets: `rate` tokens a second up to `burst`, one
//! bucket per client key (an IPv4 address or IPv6 /64 by default, see
//! [`ClientKey`]), in a map of bounded size. Used by the scheduler for
//! `/v1/resolve` and `/play` (requests, and the load a client's resolves may
//! reserve) and by the agent for CMCD beacons.
//!
//! Memory is bounded: at most `max_clients` buckets; when full, buckets
//! that refilled completely (idle clients) are dropped, and if none has,
//! new clients share one overflow bucket (so a spoofed-address flood
//! cannot grow the map nor starve known clients). Pure: callers pass `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The client a bucket belongs to: an address truncated to a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6(u128),
}

impl ClientKey {
    /// `ip` truncated to `v4_bits` (IPv4) or `v6_bits` (IPv6) bits.
    /// IPv4-mapped IPv6 addresses count as IPv4.
    pub fn of(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> ClientKey {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let keep = u32::from(v4_bits.min(32));
                let mask = u32::MAX.checked_shl(32 - keep).unwrap_or(0);
                ClientKey::V4(u32::from(v4) & mask)
            }
            IpAddr::V6(v6) => {
                let keep = u32::from(v6_bits.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                ClientKey::V6(u128::from(v6) & mask)
            }
        }
    }
}

/// Bucket parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_s: f64,
    /// Bucket size (and the tokens a new client starts with).
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_s).min(rate.burst);
        self.at = now;
    }
}

/// Token buckets by client.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    max_clients: usize,
    buckets: HashMap<ClientKey, Bucket>,
    overflow: Bucket,
}

impl Limiter {
    pub fn new(rate: Rate, max_clients: usize, now: Instant) -> Limiter {
        Limiter {
            rate,
            max_clients: max_clients.max(1),
            buckets: HashMap::new(),
            overflow: Bucket {
                tokens: rate.burst,
                at: now,
            },
        }
    }

    /// Clients with a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes one token of `client`'s bucket; `Err(wait)` when empty, with
    /// the time until the next token.
    pub fn check(&mut self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        self.take(client, 1.0, now)
    }

    /// Takes `n` tokens of `client`'s bucket.
    pub fn take(&mut self, client: ClientKey, n: f64, now: Instant) -> Result<(), Duration> {
        let rate = self.rate;
        if !self.buckets.contains_key(&client) && self.buckets.len() >= self.max_clients {
            self.buckets.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < rate.burst
            });
        }
        let bucket = if self.buckets.len() < self.max_clients || self.buckets.contains_key(&client)
        {
            self.buckets.entry(client).or_insert(Bucket {
                tokens: rate.burst,
                at: now,
            })
        } else {
            &mut self.overflow
        };
        bucket.refill(rate, now);
        if bucket.tokens >= n {
            bucket.tokens -= n;
            Ok(())
        } else {
            let missing = n - bucket.tokens;
            let secs = if rate.per_s > 0.0 {
                missing / rate.per_s
            } else {
                3600.0
            };
            Err(Duration::from_secs_f64(secs.clamp(0.001, 3600.0)))
        }
    }

    /// Drops buckets that refilled completely (call now and then).
    pub fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            b.refill(rate, now);
            b.tokens < rate.burst
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_group_addresses_by_prefix() {
        let k = |s| ClientKey::of(ip(s), 32, 64);
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("2001:db8::1"), k("2001:db8::2"));
        assert_ne!(k("2001:db8::1"), k("2001:db8:0:1::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
        let k24 = |s| ClientKey::of(ip(s), 24, 48);
        assert_eq!(k24("10.0.0.1"), k24("10.0.0.200"));
        assert_ne!(k24("10.0.0.1"), k24("10.0.1.1"));
        // An IPv4 key never equals an IPv6 one.
        assert_ne!(
            ClientKey::of(ip("0.0.0.0"), 0, 0),
            ClientKey::of(ip("::"), 0, 0)
        );
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let rate = Rate {
            per_s: 10.0,
            burst: 5.0,
        };
        let mut l = Limiter::new(rate, 100, t0);
        let a = ClientKey::of(ip("10.0.0.1"), 32, 64);
        let b = ClientKey::of(ip("10.0.0.2"), 32, 64);
        for _ in 0..5 {
            assert!(l.check(a, t0).is_ok());
        }
        let wait = l.check(a, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Another client is not affected.
        assert!(l.check(b, t0).is_ok());
        // 100 ms later: one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check(a, t1).is_ok());
        assert!(l.check(a, t1).is_err());
    }

    #[test]
    fn the_map_is_bounded_and_idle_clients_make_room() {
        let t0 = Instant::now();
        let rate = Rate {
            per_s: 1.0,
            burst: 2.0,
        };
        let mut l = Limiter::new(rate, 3, t0);
        let key = |i: u8| ClientKey::of(IpAddr::from([10, 0, 0, i]), 32, 64);
        for i in 0..3 {
            l.check(key(i), t0).unwrap();
        }
        // Full: the 4th and 5th share the overflow bucket (2 tokens).
        assert!(l.check(key(3), t0).is_ok());
        assert!(l.check(key(4), t0).is_ok());
        assert!(l.check(key(5), t0).is_err());
        assert_eq!(l.len(), 3);
        // Later the first three refilled: their buckets go, new ones come.
        let t1 = t0 + Duration::from_secs(5);
        assert!(l.check(key(6), t1).is_ok());
        assert!(l.len() <= 3);
    }
}
