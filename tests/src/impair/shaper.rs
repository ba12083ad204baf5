//! The fate of one packet on one [`Link`]: lost, dropped by a full queue, or
//! released at a given instant. Pure: the caller passes `now`, so the model
//! is tested on virtual time.

use super::{Jitter, Link, Loss, RateLimit};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use tokio::time::Instant;

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Forward it at this instant.
    Release(Instant),
    /// The loss model took it.
    Lost,
    /// The rate-limit queue is full.
    QueueFull,
}

/// State of one direction: PRNG, Gilbert–Elliott state, token bucket and the
/// last release (for `keep_order`).
#[derive(Debug)]
pub(super) struct Shaper {
    rng: SmallRng,
    bad: bool,
    /// Theoretical arrival time of the token bucket (GCRA): the bucket is
    /// empty at `tat`, full at `tat − burst/rate` or earlier.
    tat: Option<Instant>,
    last_release: Option<Instant>,
    spread: Spread,
}

/// State of [`Loss::Spread`]: the ratio in force and an accumulator that
/// crosses 1 once every `1/p` packets, from a random phase.
#[derive(Debug, Default)]
struct Spread {
    p: f64,
    acc: f64,
}

impl Shaper {
    pub(super) fn new(seed: u64) -> Self {
        Shaper {
            rng: SmallRng::seed_from_u64(seed),
            bad: false,
            tat: None,
            last_release: None,
            spread: Spread::default(),
        }
    }

    /// A datagram of `len` bytes arrives at `now`.
    pub(super) fn datagram(&mut self, link: &Link, now: Instant, len: usize) -> Verdict {
        if self.lose(&link.loss) {
            return Verdict::Lost;
        }
        let depart = match &link.rate {
            None => now,
            Some(r) => match self.bucket(r, now, len, true) {
                Some(d) => d,
                None => return Verdict::QueueFull,
            },
        };
        let mut release = depart + self.delay(link);
        if link.keep_order
            && let Some(last) = self.last_release
        {
            release = release.max(last);
        }
        self.last_release = Some(self.last_release.map_or(release, |l| l.max(release)));
        Verdict::Release(release)
    }

    /// A chunk of a byte stream: never lost, never dropped (the caller
    /// applies back-pressure and keeps chunks in order).
    pub(super) fn chunk(&mut self, link: &Link, now: Instant, len: usize) -> Instant {
        let depart = match &link.rate {
            None => now,
            Some(r) => self.bucket(r, now, len, false).unwrap_or(now),
        };
        depart + self.delay(link)
    }

    fn chance(&mut self, p: f64) -> bool {
        // random() is in [0, 1): p = 0 never, p = 1 always.
        p > 0.0 && self.rng.random::<f64>() < p
    }

    fn lose(&mut self, loss: &Loss) -> bool {
        match loss {
            Loss::None => false,
            Loss::Random(p) => self.chance(*p),
            Loss::Spread(p) => self.spread(*p),
            Loss::Bursty(ge) => {
                let flip = if self.bad {
                    ge.p_bad_to_good
                } else {
                    ge.p_good_to_bad
                };
                if self.chance(flip) {
                    self.bad = !self.bad;
                }
                let p = if self.bad { ge.loss_bad } else { ge.loss_good };
                self.chance(p)
            }
        }
    }

    /// Evenly spaced loss: the accumulator grows by `p` per packet and a
    /// packet is lost each time it passes 1, so any `W` consecutive packets
    /// lose `⌊W·p⌋` or `⌈W·p⌉`. The starting phase is random.
    fn spread(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        if self.spread.p != p {
            self.spread = Spread {
                p,
                acc: self.rng.random::<f64>(),
            };
        }
        let s = &mut self.spread;
        s.acc += p;
        if s.acc >= 1.0 {
            s.acc -= 1.0;
            true
        } else {
            false
        }
    }

    /// When a packet of `len` bytes leaves the token bucket (GCRA virtual
    /// scheduling): `depart = max(now, tat − τ)`, `tat ← max(tat, now) + len/rate`.
    /// `None` when the bytes already waiting exceed the queue (bounded only if
    /// `bounded`).
    fn bucket(
        &mut self,
        r: &RateLimit,
        now: Instant,
        len: usize,
        bounded: bool,
    ) -> Option<Instant> {
        let bytes_per_sec = r.bits_per_sec.max(1) as f64 / 8.0;
        let secs = |bytes: f64| {
            Duration::try_from_secs_f64(bytes / bytes_per_sec).unwrap_or(Duration::MAX)
        };
        let tat = self.tat.map_or(now, |t| t.max(now));
        let depart = tat
            .checked_sub(secs(f64::from(r.burst_bytes)))
            .map_or(now, |t| t.max(now));
        let waiting_bytes = (depart - now).as_secs_f64() * bytes_per_sec;
        if bounded && waiting_bytes + len as f64 > f64::from(r.queue_bytes) && depart > now {
            return None;
        }
        self.tat = tat.checked_add(secs(len as f64)).or(Some(tat));
        Some(depart)
    }

    fn delay(&mut self, link: &Link) -> Duration {
        let base = link.delay.as_secs_f64();
        let x = match link.jitter {
            Jitter::None => 0.0,
            Jitter::Uniform(j) => {
                let j = j.as_secs_f64();
                if j > 0.0 {
                    self.rng.random_range(-j..=j)
                } else {
                    0.0
                }
            }
            Jitter::Normal(s) => s.as_secs_f64() * self.standard_normal().clamp(-4.0, 4.0),
        };
        Duration::try_from_secs_f64((base + x).max(0.0)).unwrap_or(Duration::ZERO)
    }

    /// Box–Muller.
    fn standard_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.rng.random::<f64>(); // (0, 1]
        let u2 = self.rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impair::GilbertElliott;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    fn release(v: Verdict) -> Instant {
        match v {
            Verdict::Release(t) => t,
            other => panic!("expected a release, got {other:?}"),
        }
    }

    #[test]
    fn plain_delay() {
        let mut s = Shaper::new(1);
        let t0 = Instant::now();
        let link = Link::new().delay_ms(20);
        assert_eq!(release(s.datagram(&link, t0, 100)), t0 + ms(20));
        assert_eq!(s.chunk(&link, t0 + ms(5), 100), t0 + ms(25));
    }

    #[test]
    fn random_loss_ratio_and_determinism() {
        for p in [0.02, 0.10, 0.5] {
            let link = Link::new().loss(p);
            let run = |seed| {
                let mut s = Shaper::new(seed);
                let t0 = Instant::now();
                (0..100_000)
                    .map(|_| s.datagram(&link, t0, 10) == Verdict::Lost)
                    .collect::<Vec<_>>()
            };
            let a = run(7);
            assert_eq!(a, run(7), "same seed, same fate");
            assert_ne!(a, run(8));
            let lost = a.iter().filter(|l| **l).count() as f64 / a.len() as f64;
            assert!((lost - p).abs() < 0.005, "p={p}: lost {lost}");
        }
        let mut s = Shaper::new(1);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| s.datagram(&Link::new().loss(1.0), t0, 1) == Verdict::Lost));
    }

    #[test]
    fn spread_loss_is_exact_in_every_window() {
        for p in [0.01, 0.02, 0.0513, 0.1, 0.3] {
            let link = Link::new().spread_loss(p);
            let fate = |seed| {
                let mut s = Shaper::new(seed);
                let t0 = Instant::now();
                (0..20_000)
                    .map(|_| s.datagram(&link, t0, 10) == Verdict::Lost)
                    .collect::<Vec<bool>>()
            };
            let f = fate(21);
            for w in [50, 144, 150, 1000, 20_000] {
                for win in f.windows(w).step_by(7) {
                    let lost = win.iter().filter(|l| **l).count() as f64;
                    assert!(
                        (lost - w as f64 * p).abs() < 1.0,
                        "p={p}, window {w}: {lost} lost"
                    );
                }
            }
            assert_ne!(f, fate(22), "the phase depends on the seed");
        }
    }

    #[test]
    fn gilbert_elliott_mean_and_bursts() {
        let ge = GilbertElliott::gilbert(0.05, 4.0);
        assert!((ge.mean_loss() - 0.05).abs() < 1e-12);
        let link = Link::new().bursty(ge);
        let mut s = Shaper::new(3);
        let t0 = Instant::now();
        let fate: Vec<bool> = (0..200_000)
            .map(|_| s.datagram(&link, t0, 10) == Verdict::Lost)
            .collect();
        let lost = fate.iter().filter(|l| **l).count();
        let ratio = lost as f64 / fate.len() as f64;
        assert!((ratio - 0.05).abs() < 0.006, "mean loss {ratio}");
        // Mean burst length: lost packets per run of consecutive losses.
        let bursts = fate.windows(2).filter(|w| !w[0] && w[1]).count().max(1);
        let mean_burst = lost as f64 / bursts as f64;
        assert!((mean_burst - 4.0).abs() < 0.4, "mean burst {mean_burst}");
    }

    #[test]
    fn uniform_jitter_bounds_mean_and_rfc3550() {
        let link = Link::new().delay_ms(50).jitter(Jitter::uniform_ms(10));
        let mut s = Shaper::new(5);
        let t0 = Instant::now();
        let d: Vec<f64> = (0..50_000)
            .map(|_| (release(s.datagram(&link, t0, 10)) - t0).as_secs_f64() * 1e3)
            .collect();
        assert!(d.iter().all(|x| (40.0..=60.0).contains(x)));
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        assert!((mean - 50.0).abs() < 0.2, "mean {mean}");
        let e_abs_d = d.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (d.len() - 1) as f64;
        let want = link.jitter.rfc3550_one_way().as_secs_f64() * 1e3;
        assert!((e_abs_d - want).abs() < 0.2, "E|D| {e_abs_d} want {want}");
    }

    #[test]
    fn normal_jitter_sd() {
        let link = Link::new().delay_ms(100).jitter(Jitter::normal_ms(10));
        let mut s = Shaper::new(9);
        let t0 = Instant::now();
        let d: Vec<f64> = (0..50_000)
            .map(|_| (release(s.datagram(&link, t0, 10)) - t0).as_secs_f64() * 1e3)
            .collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        assert!((mean - 100.0).abs() < 0.3, "mean {mean}");
        assert!((sd - 10.0).abs() < 0.3, "sd {sd}");
        assert!(d.iter().all(|x| (60.0..=140.0).contains(x)));
        // A large jitter never produces a negative delay.
        let wide = Link::new().delay_ms(1).jitter(Jitter::normal_ms(50));
        for _ in 0..1000 {
            assert!(release(s.datagram(&wide, t0, 1)) >= t0);
        }
    }

    #[test]
    fn keep_order_never_reorders() {
        let t0 = Instant::now();
        let jittery = Link::new().delay_ms(20).jitter(Jitter::uniform_ms(10));
        let times = |link: Link| {
            let mut s = Shaper::new(11);
            (0..1000)
                .map(|i| release(s.datagram(&link, t0 + ms(i), 10)))
                .collect::<Vec<_>>()
        };
        let free = times(jittery);
        assert!(
            free.windows(2).any(|w| w[1] < w[0]),
            "jitter reorders by default"
        );
        let kept = times(jittery.keep_order(true));
        assert!(kept.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn token_bucket_rate_and_queue() {
        // 8 Mbit/s = 1 MB/s; 1000-byte packets leave every 1 ms after the burst.
        let rate = RateLimit::new(8_000_000)
            .burst_bytes(1000)
            .queue_bytes(10_000);
        let link = Link::new().rate(rate);
        let mut s = Shaper::new(1);
        let t0 = Instant::now();
        let mut out = Vec::new();
        for _ in 0..20 {
            out.push(s.datagram(&link, t0, 1000));
        }
        let released: Vec<Instant> = out
            .iter()
            .filter_map(|v| match v {
                Verdict::Release(t) => Some(*t),
                _ => None,
            })
            .collect();
        // Burst of 2 (bucket of 1000 B plus the first packet's own token),
        // then 10 KB of queue.
        assert_eq!(released.len(), 11, "{out:?}");
        assert!(out[11..].iter().all(|v| *v == Verdict::QueueFull));
        for (i, t) in released.iter().enumerate().skip(1) {
            assert_eq!(*t - t0, ms(i as u64 - 1), "packet {i}");
        }
        // After the queue drained, full rate again.
        let later = t0 + ms(100);
        assert_eq!(release(s.datagram(&link, later, 1000)), later);
        // A byte stream is never dropped: it just waits.
        let mut s = Shaper::new(1);
        let last = (0..100).map(|_| s.chunk(&link, t0, 1000)).last();
        assert_eq!(last, Some(t0 + ms(98)));
    }
}
