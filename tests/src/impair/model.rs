//! What a link does to packets: delay, jitter, loss, rate, per direction.

use super::ImpairError;
use std::time::Duration;

/// Delay variation added to the one-way delay of a link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Jitter {
    #[default]
    None,
    /// Uniform on `[−j, +j]`: `netem delay D j` without correlation.
    Uniform(Duration),
    /// Normal with standard deviation `σ`, cut at ±4σ: `netem … distribution normal`.
    Normal(Duration),
}

impl Jitter {
    pub fn uniform_ms(ms: u64) -> Self {
        Jitter::Uniform(Duration::from_millis(ms))
    }

    pub fn normal_ms(ms: u64) -> Self {
        Jitter::Normal(Duration::from_millis(ms))
    }

    /// The jitter parameter (`j` or `σ`), zero for none.
    pub fn amount(&self) -> Duration {
        match self {
            Jitter::None => Duration::ZERO,
            Jitter::Uniform(j) | Jitter::Normal(j) => *j,
        }
    }

    /// Expected RFC 3550 interarrival jitter (`E|D|`, the value the
    /// estimator `J += (|D| − J)/16` converges to) when this jitter is applied
    /// independently to each packet of one direction and the other direction
    /// adds nothing: `D = X₂ − X₁` of two independent draws, so `E|D| = 2j/3`
    /// for uniform `[−j, j]` and `2σ/√π` for normal σ. When both directions of
    /// a round trip jitter and the receiver measures round-trip times, `D` is
    /// the sum of four draws: `≈ 0.93·j` (uniform) and `4σ/√(2π) ≈ 1.60·σ`
    /// (normal).
    pub fn rfc3550_one_way(&self) -> Duration {
        match self {
            Jitter::None => Duration::ZERO,
            Jitter::Uniform(j) => j.mul_f64(2.0 / 3.0),
            Jitter::Normal(s) => s.mul_f64(2.0 / std::f64::consts::PI.sqrt()),
        }
    }
}

/// Gilbert–Elliott bursty loss: a Markov chain with a good and a bad state;
/// before each packet the chain moves (good → bad with `p_good_to_bad`, bad →
/// good with `p_bad_to_good`), then the packet is lost with the loss
/// probability of the state it is in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    pub p_good_to_bad: f64,
    pub p_bad_to_good: f64,
    pub loss_good: f64,
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model (no loss in good, all lost in bad) with a
    /// long-run loss ratio `mean_loss` and a mean burst of `mean_burst`
    /// packets: `r = 1/burst`, `p = loss·r/(1 − loss)`.
    pub fn gilbert(mean_loss: f64, mean_burst: f64) -> Self {
        let r = 1.0 / mean_burst.max(1.0);
        let loss = mean_loss.clamp(0.0, 0.999_999);
        GilbertElliott {
            p_good_to_bad: (loss * r / (1.0 - loss)).min(1.0),
            p_bad_to_good: r,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// Long-run share of packets lost.
    pub fn mean_loss(&self) -> f64 {
        let (p, r) = (self.p_good_to_bad, self.p_bad_to_good);
        if p + r <= 0.0 {
            return self.loss_good;
        }
        let bad = p / (p + r);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// How packets of a link get lost.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    #[default]
    None,
    /// Each packet independently with this probability (0..=1).
    Random(f64),
    /// Bursts: a Gilbert–Elliott chain.
    Bursty(GilbertElliott),
    /// Evenly spaced: one packet in every `1/p` (a real number) is lost,
    /// from a random phase, so any `W` consecutive packets lose `⌊W·p⌋` or
    /// `⌈W·p⌉`. Real networks do not lose packets like this; it is for
    /// accuracy tests whose tolerance is below the sampling noise of
    /// independent loss (standard deviation `√(p(1−p)/W)` over `W` packets:
    /// 1.1 points for 2 % over 150 packets).
    Spread(f64),
}

impl Loss {
    /// Long-run share of packets lost.
    pub fn mean(&self) -> f64 {
        match self {
            Loss::None => 0.0,
            Loss::Random(p) | Loss::Spread(p) => *p,
            Loss::Bursty(ge) => ge.mean_loss(),
        }
    }
}

/// Token bucket in front of a bounded FIFO.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub bits_per_sec: u64,
    /// Bytes that may pass back to back after an idle period.
    pub burst_bytes: u32,
    /// Bytes that may wait for tokens; more are dropped (UDP).
    pub queue_bytes: u32,
}

impl RateLimit {
    /// `bits_per_sec` with a burst of one 1500-byte packet (or 2 ms of
    /// traffic, whichever is more) and 200 ms of queue (at least 16 KiB).
    pub fn new(bits_per_sec: u64) -> Self {
        let bytes_per_sec = bits_per_sec as f64 / 8.0;
        RateLimit {
            bits_per_sec,
            burst_bytes: (bytes_per_sec * 0.002).max(1500.0).min(u32::MAX as f64) as u32,
            queue_bytes: (bytes_per_sec * 0.2).max(16_384.0).min(u32::MAX as f64) as u32,
        }
    }

    pub fn kbps(kbps: u64) -> Self {
        Self::new(kbps.saturating_mul(1000))
    }

    pub fn burst_bytes(mut self, b: u32) -> Self {
        self.burst_bytes = b;
        self
    }

    pub fn queue_bytes(mut self, b: u32) -> Self {
        self.queue_bytes = b;
        self
    }
}

/// One direction of the impaired path.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Link {
    /// One-way delay.
    pub delay: Duration,
    pub jitter: Jitter,
    pub loss: Loss,
    pub rate: Option<RateLimit>,
    /// Never release a datagram before the one that arrived ahead of it
    /// (default false: jitter reorders, as netem does).
    pub keep_order: bool,
}

impl Link {
    /// A link that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn delay_ms(self, ms: u64) -> Self {
        self.delay(Duration::from_millis(ms))
    }

    pub fn jitter(mut self, j: Jitter) -> Self {
        self.jitter = j;
        self
    }

    /// Independent random loss with probability `p`.
    pub fn loss(mut self, p: f64) -> Self {
        // NaN stays (and fails validation); exactly 0 means no loss.
        self.loss = if p == 0.0 {
            Loss::None
        } else {
            Loss::Random(p)
        };
        self
    }

    /// Evenly spaced loss with ratio `p` ([`Loss::Spread`]).
    pub fn spread_loss(mut self, p: f64) -> Self {
        self.loss = if p == 0.0 {
            Loss::None
        } else {
            Loss::Spread(p)
        };
        self
    }

    pub fn bursty(mut self, ge: GilbertElliott) -> Self {
        self.loss = Loss::Bursty(ge);
        self
    }

    pub fn rate(mut self, r: RateLimit) -> Self {
        self.rate = Some(r);
        self
    }

    pub fn keep_order(mut self, keep: bool) -> Self {
        self.keep_order = keep;
        self
    }

    fn validate(&self, dir: &str) -> Result<(), ImpairError> {
        let bad = |what: String| Err(ImpairError::Invalid(format!("{dir}: {what}")));
        let prob = |p: f64| p.is_finite() && (0.0..=1.0).contains(&p);
        if self.delay > Duration::from_secs(3600) {
            return bad(format!("delay {:?} exceeds one hour", self.delay));
        }
        if self.jitter.amount() > Duration::from_secs(3600) {
            return bad(format!("jitter {:?} exceeds one hour", self.jitter));
        }
        match self.loss {
            Loss::None => {}
            Loss::Random(p) | Loss::Spread(p) if prob(p) => {}
            Loss::Random(p) | Loss::Spread(p) => {
                return bad(format!("loss {p} is not in 0..=1"));
            }
            Loss::Bursty(ge) => {
                let all = [
                    ge.p_good_to_bad,
                    ge.p_bad_to_good,
                    ge.loss_good,
                    ge.loss_bad,
                ];
                if !all.iter().all(|p| prob(*p)) {
                    return bad(format!("Gilbert–Elliott probabilities {ge:?} not in 0..=1"));
                }
            }
        }
        if let Some(r) = self.rate
            && (r.bits_per_sec == 0 || r.queue_bytes == 0)
        {
            return bad(format!(
                "rate limit {r:?} needs bits_per_sec > 0 and queue_bytes > 0"
            ));
        }
        Ok(())
    }
}

/// Which way a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → upstream.
    Upstream,
    /// Upstream → client.
    Downstream,
}

/// The impairment of both directions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Client → upstream.
    pub upstream: Link,
    /// Upstream → client.
    pub downstream: Link,
}

impl Impairment {
    /// Nothing added: a plain forwarder.
    pub fn none() -> Self {
        Self::default()
    }

    /// The same link both ways.
    pub fn both(link: Link) -> Self {
        Impairment {
            upstream: link,
            downstream: link,
        }
    }

    /// `added_rtt` split evenly into two one-way delays, `jitter` on each
    /// direction, and round-trip loss `loss` split into equal independent
    /// per-direction losses `1 − √(1 − loss)`, so a request/answer pair is
    /// lost with probability `loss`.
    pub fn round_trip(added_rtt: Duration, jitter: Jitter, loss: f64) -> Self {
        let one_way = 1.0 - (1.0 - loss.clamp(0.0, 1.0)).sqrt();
        Self::both(
            Link::new()
                .delay(added_rtt / 2)
                .jitter(jitter)
                .loss(one_way),
        )
    }

    /// [`Impairment::round_trip`] in milliseconds.
    pub fn round_trip_ms(added_rtt_ms: u64, jitter: Jitter, loss: f64) -> Self {
        Self::round_trip(Duration::from_millis(added_rtt_ms), jitter, loss)
    }

    pub fn with_upstream(mut self, link: Link) -> Self {
        self.upstream = link;
        self
    }

    pub fn with_downstream(mut self, link: Link) -> Self {
        self.downstream = link;
        self
    }

    pub fn link(&self, dir: Direction) -> &Link {
        match dir {
            Direction::Upstream => &self.upstream,
            Direction::Downstream => &self.downstream,
        }
    }

    /// Probability that a datagram and its answer both get through.
    pub fn round_trip_delivery(&self) -> f64 {
        (1.0 - self.upstream.loss.mean()) * (1.0 - self.downstream.loss.mean())
    }

    pub fn validate(&self) -> Result<(), ImpairError> {
        self.upstream.validate("upstream")?;
        self.downstream.validate("downstream")
    }
}
