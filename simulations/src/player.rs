//! The live HTTP-FLV player model (docs/simulator.md, "Player model").
//!
//! A player is `lag` ms behind the live edge; `buffer` ms of that is
//! downloaded, the rest (`lag − buffer`) is still queued at the edge. Media
//! arrives at `r` media-ms per ms (delivered throughput / bit rate), but
//! never beyond the live edge: once nothing is queued it arrives in real
//! time. Playing drains the buffer at 1 ms/ms; an empty buffer is a stall,
//! which lasts until `resume_ms` are buffered, and during which the live
//! edge runs on, so latency grows by the stall. The edge bounds its queue
//! per viewer (`edge_queue_ms`) and skips to the next keyframe beyond it
//! (DESIGN §7), so latency cannot creep without bound.

/// The player's throughput estimate and rendition choice: hls.js's
/// `EwmaBandWidthEstimator` and `AbrController` rule with their live
/// defaults (`abrEwmaFastLive` 3 s, `abrEwmaSlowLive` 9 s half-lives, the
/// estimate is the lower of the two, `abrBandWidthFactor` 0.95 to stay or
/// go down, `abrBandWidthUpFactor` 0.7 to go up, `abrEwmaDefaultEstimate`
/// 500 kbps until 1 s of samples were seen).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Abr {
    fast: f64,
    slow: f64,
    /// Sample time seen, ms (for the zero-bias correction).
    seen_ms: f64,
    default_mbps: f64,
}

/// hls.js `abrEwmaFastLive`, `abrEwmaSlowLive` (half-lives, ms).
const ABR_FAST_MS: f64 = 3_000.0;
const ABR_SLOW_MS: f64 = 9_000.0;
/// hls.js `abrBandWidthFactor`, `abrBandWidthUpFactor`.
const BW_FACTOR: f64 = 0.95;
const BW_UP_FACTOR: f64 = 0.7;
/// hls.js `abrEwmaDefaultEstimate`, Mbps.
pub const DEFAULT_ESTIMATE_MBPS: f64 = 0.5;
/// Sample time before the estimate replaces the default (hls.js
/// `minWeight_`-like warm-up), ms.
const WARMUP_MS: f64 = 1_000.0;

impl Abr {
    pub fn new(default_mbps: f64) -> Self {
        Abr {
            fast: 0.0,
            slow: 0.0,
            seen_ms: 0.0,
            default_mbps,
        }
    }

    /// A throughput sample of `mbps` lasting `dt_ms`.
    pub fn sample(&mut self, mbps: f64, dt_ms: f64) {
        if !(mbps.is_finite() && dt_ms > 0.0) {
            return;
        }
        let a_f = 0.5f64.powf(dt_ms / ABR_FAST_MS);
        let a_s = 0.5f64.powf(dt_ms / ABR_SLOW_MS);
        self.fast = mbps * (1.0 - a_f) + a_f * self.fast;
        self.slow = mbps * (1.0 - a_s) + a_s * self.slow;
        self.seen_ms += dt_ms;
    }

    /// The estimate, Mbps (bias-corrected EWMAs, the lower of the two).
    pub fn estimate(&self) -> f64 {
        if self.seen_ms < WARMUP_MS {
            return self.default_mbps;
        }
        let zf = 1.0 - 0.5f64.powf(self.seen_ms / ABR_FAST_MS);
        let zs = 1.0 - 0.5f64.powf(self.seen_ms / ABR_SLOW_MS);
        (self.fast / zf).min(self.slow / zs)
    }

    /// The rendition to load next: the highest whose bit rate fits the
    /// estimate (× 0.95 at or below `current`, × 0.7 above it).
    pub fn choose(&self, ladder: &[f64], current: usize) -> usize {
        let bw = self.estimate();
        let mut best = 0;
        for (k, &b) in ladder.iter().enumerate() {
            let factor = if k > current { BW_UP_FACTOR } else { BW_FACTOR };
            if b <= bw * factor {
                best = k;
            }
        }
        best
    }
}

/// Player state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Player {
    pub buffer_ms: f64,
    pub lag_ms: f64,
    pub stalled: bool,
}

/// What happened during one step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Step {
    pub stalls: u32,
    pub stall_ms: f64,
    pub play_ms: f64,
    pub skips: u32,
}

/// The agent's write coalescing (`--relay-write-coalesce-ms`, 100 ms): a
/// viewer is woken for new media at most this often, so live media reach
/// it in batches; two writers (upstream and edge) wait half a batch each on
/// average. Measured in the sim-to-real test: joins that wait for live
/// media took 45–127 ms (mean ≈ 90) longer than media produced in real
/// time would take.
pub const RELAY_BATCH_MS: f64 = 100.0;

/// Join: the GOP cache holds `cached_ms` of media (from the last
/// keyframe); playback starts with `startup_ms` buffered. The cached media
/// is already at the edge, so it goes out at what the viewer's path
/// carries (`burst`, media-ms per ms); media produced after the join
/// arrives at the feed's pace (`r`, at most real time). Returns the startup
/// download time (ms) and the player state at start.
///
/// (Until the sim-to-real test, the burst was capped by the feed's ratio
/// too, which is ≤ 1: every join took at least `startup_ms` of real time,
/// 562 ms median against 269 ms measured with the real agents.)
pub fn join(cached_ms: f64, startup_ms: f64, burst: f64, r: f64) -> (f64, Player) {
    let burst = burst.max(1e-3);
    let live = r.clamp(1e-3, 1.0);
    let need = startup_ms.max(1.0);
    let t = if cached_ms >= need {
        need / burst
    } else {
        // The cached burst, then live media as it is produced, in the
        // relays' write batches: the batch that completes the startup
        // buffer comes half a batch late on average at each of the two
        // writers on the way (the feed's upstream and the edge).
        cached_ms / burst + (need - cached_ms) / live + RELAY_BATCH_MS
    };
    let buffer = need.max(cached_ms.min(t * burst));
    (
        t,
        Player {
            buffer_ms: buffer,
            lag_ms: cached_ms + t,
            stalled: false,
        },
    )
}

impl Player {
    /// Advances `dt` ms at delivery ratio `r`.
    pub fn step(&mut self, dt: f64, r: f64, resume_ms: f64, queue_ms: f64, gop_ms: f64) -> Step {
        let mut out = Step::default();
        let r = r.max(0.0);
        let mut rem = dt;
        let mut pending = (self.lag_ms - self.buffer_ms).max(0.0);
        let mut b = self.buffer_ms.max(0.0);
        // Each phase ends at a state change; at most a few per step.
        for _ in 0..16 {
            if rem <= 1e-9 {
                break;
            }
            // Download rate: r while media is queued, else real time.
            let rate = if pending > 1e-9 { r } else { r.min(1.0) };
            if self.stalled {
                let need = (resume_ms - b).max(0.0);
                // Time until resumed, or until the queue empties (rate changes).
                let t_resume = if rate > 0.0 {
                    need / rate
                } else {
                    f64::INFINITY
                };
                let t_empty = if pending > 1e-9 && rate > 1.0 {
                    pending / (rate - 1.0)
                } else {
                    f64::INFINITY
                };
                let t = rem.min(t_resume).min(t_empty);
                b += rate * t;
                pending += (1.0 - rate) * t;
                out.stall_ms += t;
                rem -= t;
                if t >= t_resume - 1e-9 {
                    self.stalled = false;
                }
            } else {
                let t_empty_buf = if rate < 1.0 {
                    b / (1.0 - rate)
                } else {
                    f64::INFINITY
                };
                let t_empty_q = if pending > 1e-9 && rate > 1.0 {
                    pending / (rate - 1.0)
                } else {
                    f64::INFINITY
                };
                let t = rem.min(t_empty_buf).min(t_empty_q);
                b += (rate - 1.0) * t;
                pending += (1.0 - rate) * t;
                out.play_ms += t;
                rem -= t;
                if t >= t_empty_buf - 1e-9 && rate < 1.0 {
                    b = 0.0;
                    self.stalled = true;
                    out.stalls += 1;
                }
            }
            pending = pending.max(0.0);
            if pending > queue_ms {
                // The edge skips to the next keyframe.
                pending = (queue_ms - gop_ms).max(0.0);
                out.skips += 1;
            }
        }
        self.buffer_ms = b.max(0.0);
        self.lag_ms = self.buffer_ms + pending;
        out
    }

    /// An interruption (the edge died): the buffer plays out, then stalls.
    pub fn interrupt(&mut self) {
        self.lag_ms = self.buffer_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_throughput_never_stalls() {
        let (t, mut p) = join(1000.0, 500.0, 3.0, 1.0);
        assert!(t > 0.0 && t < 200.0, "{t}");
        for _ in 0..100 {
            let s = p.step(1000.0, 1.5, 1000.0, 4000.0, 2000.0);
            assert_eq!(s.stalls, 0);
            assert!((s.play_ms - 1000.0).abs() < 1e-6);
        }
        assert!(p.lag_ms < 2000.0);
    }

    #[test]
    fn starved_player_stalls_and_recovers() {
        let (_, mut p) = join(0.0, 500.0, 2.0, 1.0);
        let s = p.step(10_000.0, 0.5, 1000.0, 4000.0, 2000.0);
        assert!(s.stalls >= 1);
        assert!(s.stall_ms > 0.0 && s.play_ms > 0.0);
        assert!((s.stall_ms + s.play_ms - 10_000.0).abs() < 1e-6);
        let before = p.lag_ms;
        let s = p.step(5_000.0, 2.0, 1000.0, 4000.0, 2000.0);
        assert!(s.play_ms > 0.0);
        assert!(p.lag_ms <= before + 5_000.0);
    }

    #[test]
    fn zero_throughput_is_all_stall() {
        let (_, mut p) = join(500.0, 500.0, 1.0, 1.0);
        let s = p.step(3_000.0, 0.0, 1000.0, 4000.0, 2000.0);
        assert_eq!(s.stalls, 1);
        assert!(s.play_ms <= 500.0 + 1e-6);
    }
}
