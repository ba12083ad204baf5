//! Viewer arrivals: an inhomogeneous Poisson process per 1-second slot,
//! with its own RNG so that every policy serves exactly the same viewers.
//!
//! Each arrival gets a city (population-weighted within the region chosen
//! by the regions' weights at that time), a stream (Zipf popularity, or
//! the flash crowd's stream), a session length (scenario distribution,
//! cut when the stream ends — YouTube live durations give stream
//! lifetimes), a last-mile trace and a random offset into it.

use crate::scenario::{EventSpec, Scenario, SessionSpec};
use crate::world::{LifetimeModel, World, in_region};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

/// A viewer's last mile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Fixed broadband: capacity drawn around the country's fixed median,
    /// varying over time with the trace's shape.
    Fixed,
    /// Cellular: around the country's mobile median, the trace's shape
    /// amplified (`access.mobile_variability`).
    Mobile,
    /// A constrained line: the trace as measured.
    Constrained,
}

/// One viewer session as the workload defines it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub at_ms: u64,
    pub end_ms: u64,
    pub city: u32,
    pub stream: u32,
    pub trace: u16,
    pub trace_offset_s: f64,
    pub access: Access,
    /// Median capacity of this viewer's line (fixed, mobile), Mbps.
    pub capacity_mbps: f32,
    /// Plays LL-HLS (hls.js) rather than HTTP-FLV (mpegts.js).
    pub hls: bool,
    /// How long the viewer waits for the first frame before leaving, ms.
    pub patience_ms: u32,
}

/// A viewer's last-mile capacity at `now_ms` (scenario time), Mbps: a
/// constrained line plays its trace as measured; fixed and mobile lines
/// scale the line's capacity by the trace's shape (mobile amplified by
/// `access.mobile_variability`); all times `network.throughput_scale`.
/// Public so that a real-run replay of the same arrivals (the sim-to-real
/// test) shapes each viewer's line exactly as the simulator does.
pub fn last_mile_mbps(s: &Scenario, w: &World, a: &Arrival, now_ms: u64) -> f64 {
    let t_s = (now_ms.saturating_sub(a.at_ms)) as f64 / 1000.0 + a.trace_offset_s;
    let trace = &w.traces[usize::from(a.trace)];
    let scale = s.network.throughput_scale;
    match a.access {
        Access::Constrained => trace.at(t_s) * scale,
        Access::Fixed => f64::from(a.capacity_mbps) * trace.shape(t_s) * scale,
        Access::Mobile => {
            f64::from(a.capacity_mbps) * trace.shape(t_s).powf(s.access.mobile_variability) * scale
        }
    }
}

struct Flash {
    from_ms: u64,
    until_ms: u64,
    multiplier: f64,
    ramp_ms: f64,
    /// Cumulative population of the cities it draws from.
    cities: Vec<(u32, f64)>,
    stream: Option<u32>,
}

pub struct Arrivals<'a> {
    s: &'a Scenario,
    w: &'a World,
    rng: ChaCha8Rng,
    slot_ms: u64,
    end_ms: u64,
    buf: VecDeque<Arrival>,
    /// Per region: cumulative population of its cities.
    regions: Vec<Vec<(u32, f64)>>,
    flashes: Vec<Flash>,
    stream_end: Vec<f64>,
}

fn cumulative(w: &World, keep: impl Fn(usize) -> bool) -> Vec<(u32, f64)> {
    let mut acc = 0.0;
    let mut out = Vec::new();
    for (i, c) in w.cities.iter().enumerate() {
        if keep(i) {
            acc += c.city.population as f64;
            out.push((i as u32, acc));
        }
    }
    out
}

fn pick(cum: &[(u32, f64)], x: f64) -> Option<u32> {
    let total = cum.last()?.1;
    let target = x * total;
    let i = cum.partition_point(|(_, c)| *c <= target);
    cum.get(i.min(cum.len() - 1)).map(|(c, _)| *c)
}

/// Piecewise-linear interpolation of `[t, v]` points; constant outside.
pub fn interpolate(points: &[[f64; 2]], t: f64) -> f64 {
    match points {
        [] => 0.0,
        [[_, v]] => *v,
        _ => {
            if t <= points[0][0] {
                return points[0][1];
            }
            for w in points.windows(2) {
                let ([t0, v0], [t1, v1]) = (w[0], w[1]);
                if t <= t1 {
                    if t1 <= t0 {
                        return v1;
                    }
                    return v0 + (v1 - v0) * (t - t0) / (t1 - t0);
                }
            }
            points[points.len() - 1][1]
        }
    }
}

impl<'a> Arrivals<'a> {
    pub fn new(s: &'a Scenario, w: &'a World, seed: u64) -> Self {
        let regions = (0..w.regions.len())
            .map(|r| cumulative(w, |i| w.cities[i].region == r))
            .collect();
        let flashes = s
            .events
            .iter()
            .filter_map(|e| match e.get_ref() {
                EventSpec::FlashCrowd {
                    at_s,
                    until_s,
                    multiplier,
                    region,
                    stream,
                    ramp_s,
                } => Some(Flash {
                    from_ms: (at_s * 1000.0) as u64,
                    until_ms: (until_s * 1000.0) as u64,
                    multiplier: *multiplier,
                    ramp_ms: ramp_s * 1000.0,
                    cities: match region {
                        None => cumulative(w, |_| true),
                        Some(r) => match w.regions.iter().position(|x| x == r) {
                            Some(ri) => cumulative(w, |i| w.cities[i].region == ri),
                            None => cumulative(w, |i| in_region(&w.cities[i].city, r)),
                        },
                    },
                    stream: *stream,
                }),
                _ => None,
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let stream_end = (0..w.stream_origin.len())
            .map(|_| {
                // The first generation is already running: residual life.
                let life = lifetime(&w.lifetimes, &mut rng);
                let u = rng.random::<f64>();
                if life.is_finite() {
                    life * u
                } else {
                    f64::INFINITY
                }
            })
            .collect();
        Self {
            s,
            w,
            rng,
            slot_ms: 0,
            end_ms: (s.duration_s * 1000.0) as u64,
            buf: VecDeque::new(),
            regions,
            flashes,
            stream_end,
        }
    }

    /// Time of the next arrival, generating slots as needed.
    pub fn peek_ms(&mut self) -> Option<u64> {
        while self.buf.is_empty() && self.slot_ms < self.end_ms {
            self.fill_slot();
        }
        self.buf.front().map(|a| a.at_ms)
    }

    pub fn pop(&mut self) -> Option<Arrival> {
        self.peek_ms()?;
        self.buf.pop_front()
    }

    fn fill_slot(&mut self) {
        let t0 = self.slot_ms;
        self.slot_ms += 1000;
        let mid = (t0 as f64 + 500.0) / 1000.0;
        let v = self.s.viewers();
        let base = interpolate(&v.arrivals, mid);
        let mut out: Vec<Arrival> = Vec::new();
        // Regular viewers: region by weight × population, then city.
        let weights: Vec<f64> = (0..self.w.regions.len())
            .map(|r| {
                let name = &self.w.regions[r];
                let wgt = v
                    .region_weights
                    .get(name)
                    .map_or(1.0, |c| interpolate(c, mid));
                wgt * self.regions[r].last().map_or(0.0, |x| x.1)
            })
            .collect();
        let wsum: f64 = weights.iter().sum();
        let n = poisson(&mut self.rng, base);
        for _ in 0..n {
            if wsum <= 0.0 {
                break;
            }
            let mut x = self.rng.random::<f64>() * wsum;
            let mut region = 0;
            for (r, wr) in weights.iter().enumerate() {
                region = r;
                if x < *wr {
                    break;
                }
                x -= wr;
            }
            let u = self.rng.random::<f64>();
            if let Some(city) = pick(&self.regions[region], u) {
                let a = self.make(t0, city, None);
                out.push(a);
            }
        }
        // Flash crowds: extra arrivals at (multiplier − 1) × the base rate.
        for fi in 0..self.flashes.len() {
            let f = &self.flashes[fi];
            if t0 < f.from_ms || t0 >= f.until_ms || f.multiplier <= 1.0 {
                continue;
            }
            let strength = if f.ramp_ms > 0.0 {
                ((t0 + 500).saturating_sub(f.from_ms) as f64 / f.ramp_ms).min(1.0)
            } else {
                1.0
            };
            let extra = poisson(&mut self.rng, base * (f.multiplier - 1.0) * strength);
            for _ in 0..extra {
                let u = self.rng.random::<f64>();
                let f = &self.flashes[fi];
                let stream = f.stream;
                if let Some(city) = pick(&f.cities, u) {
                    let a = self.make(t0, city, stream);
                    out.push(a);
                }
            }
        }
        out.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then(a.city.cmp(&b.city)));
        self.buf.extend(out);
    }

    fn make(&mut self, t0: u64, city: u32, stream: Option<u32>) -> Arrival {
        let at_ms = t0 + self.rng.random_range(0..1000);
        let stream = stream.unwrap_or_else(|| {
            let x = self.rng.random::<f64>();
            let cdf = &self.w.stream_cdf;
            cdf.partition_point(|c| *c < x).min(cdf.len() - 1) as u32
        });
        let len_s = match &self.s.viewers().session {
            SessionSpec::Lognormal { median_s, sigma } => {
                median_s * (sigma * gauss(&mut self.rng)).exp()
            }
            SessionSpec::Exponential { mean_s } => {
                -mean_s * (1.0 - self.rng.random::<f64>()).max(1e-12).ln()
            }
            SessionSpec::Fixed { seconds } => *seconds,
        }
        .clamp(1.0, 6.0 * 3600.0);
        // A stream that ended is replaced in its popularity slot.
        let now_s = at_ms as f64 / 1000.0;
        let si = stream as usize;
        let mut guard = 0;
        while self.stream_end[si] <= now_s && guard < 1000 {
            let life = lifetime(&self.w.lifetimes, &mut self.rng);
            self.stream_end[si] += life.max(1.0);
            guard += 1;
        }
        let end_s = (now_s + len_s).min(self.stream_end[si].max(now_s + 1.0));
        let trace = self.rng.random_range(0..self.w.traces.len()) as u16;
        let trace_offset_s =
            self.rng.random::<f64>() * self.w.traces[usize::from(trace)].duration_s();
        let acc = &self.s.access;
        let x = self.rng.random::<f64>();
        let access = if x < acc.constrained_share {
            Access::Constrained
        } else if x < acc.constrained_share + acc.mobile_share {
            Access::Mobile
        } else {
            Access::Fixed
        };
        let speeds = self.w.cities[city as usize].access;
        let (median, sigma) = match access {
            Access::Mobile => (speeds.mobile_mbps, acc.mobile_sigma),
            _ => (speeds.fixed_mbps, acc.fixed_sigma),
        };
        let capacity_mbps = (median * (sigma * gauss(&mut self.rng)).exp()) as f32;
        let p = &self.s.player;
        let hls = self.rng.random::<f64>() < p.hls_share;
        let patience = p.patience_min_ms
            - p.patience_mean_ms * (1.0 - self.rng.random::<f64>()).max(1e-12).ln();
        Arrival {
            at_ms,
            end_ms: (end_s * 1000.0) as u64,
            city,
            stream,
            trace,
            trace_offset_s,
            access,
            capacity_mbps,
            hls,
            patience_ms: patience.min(f64::from(u32::MAX)) as u32,
        }
    }
}

fn lifetime(m: &LifetimeModel, rng: &mut ChaCha8Rng) -> f64 {
    match m {
        LifetimeModel::Forever => f64::INFINITY,
        LifetimeModel::Fixed(x) => *x,
        LifetimeModel::Empirical(v) => v[rng.random_range(0..v.len())],
    }
}

pub fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Poisson-distributed count with mean `lambda` (Knuth below 30, normal
/// approximation above).
pub fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u64 {
    if lambda.is_nan() || lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let x = lambda + lambda.sqrt() * gauss(rng);
        return x.round().max(0.0) as u64;
    }
    let l = (-lambda).exp();
    let mut k = 0u64;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= l || k > 1000 {
            return k;
        }
        k += 1;
    }
}
