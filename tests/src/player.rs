//! A live-player model driven by the real arrival times of media: what a
//! live HTTP-FLV player (mpegts.js with a live latency target) does with the
//! bytes an edge sends, reduced to its buffer. Used by the sim-to-real test
//! (`tests/tests/sim_to_real.rs`) with the same parameters as the
//! simulator's player (`simulations/src/player.rs`, docs/simulator.md,
//! "Player models"), so join time and stalls mean the same on both sides.
//!
//! Times are milliseconds since the session began (the viewer arrived);
//! media positions are FLV timestamps (ms). The model is pure: the caller
//! feeds it connection events and media arrivals with their times.
//!
//! - **Join**: on a connection, the first media tag (the edge's GOP cache
//!   starts at a key frame) fixes the playhead; playback starts once
//!   `startup_ms` of media are buffered (newest timestamp − playhead).
//!   The join time is when that first happens.
//! - **Playing** drains the buffer at 1 ms/ms. When the playhead reaches
//!   the newest media before more arrived, the player **stalls** at that
//!   instant (one stall); it resumes when `resume_ms` are buffered.
//! - **Connection lost**: the buffer plays out (then stalls). A new
//!   connection (another edge, or the same after a failure) flushes what
//!   is left — the new edge's media start at its own key frame — and
//!   playback restarts once `startup_ms` are buffered again; until then
//!   the player is stalled (a flush that interrupts playback is a stall).
//! - **Skips**: an edge that drops a slow viewer's backlog skips to the
//!   next key frame; a forward jump of the timestamps by more than
//!   [`SKIP_MS`] moves the playhead by the same amount (the buffer level is
//!   kept), counted in `skips`.

/// A timestamp jump larger than this is a skip by the edge, not media.
pub const SKIP_MS: f64 = 3_000.0;

/// The player's buffer settings (the simulator's `[player]` table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayerParams {
    /// Media buffered before playback starts (and restarts after a new
    /// connection), ms.
    pub startup_ms: f64,
    /// Media buffered before playback resumes after a stall, ms.
    pub resume_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before the first frame of the session.
    Joining,
    Playing,
    Stalled,
}

/// One session's playback, fed with real media arrival times.
#[derive(Debug, Clone, PartialEq)]
pub struct Playback {
    p: PlayerParams,
    state: State,
    /// Playhead and newest media of the current connection, timestamp ms;
    /// `None` until the connection's first media tag.
    head: Option<f64>,
    newest: f64,
    /// Buffer needed to leave `Stalled` (resume, or startup after a flush).
    need_ms: f64,
    /// Time of the last update, ms since the session began.
    at: f64,
    pub join_ms: Option<f64>,
    pub stalls: u32,
    pub stall_ms: f64,
    pub play_ms: f64,
    pub skips: u32,
}

impl Playback {
    pub fn new(p: PlayerParams) -> Self {
        Playback {
            p,
            state: State::Joining,
            head: None,
            newest: 0.0,
            need_ms: p.startup_ms,
            at: 0.0,
            join_ms: None,
            stalls: 0,
            stall_ms: 0.0,
            play_ms: 0.0,
            skips: 0,
        }
    }

    /// Media buffered now, ms.
    pub fn buffer_ms(&self) -> f64 {
        self.head.map_or(0.0, |h| (self.newest - h).max(0.0))
    }

    pub fn playing(&self) -> bool {
        self.state == State::Playing
    }

    pub fn joined(&self) -> bool {
        self.join_ms.is_some()
    }

    /// Advances the clock to `now` without new media.
    pub fn advance(&mut self, now: f64) {
        let dt = (now - self.at).max(0.0);
        self.at = self.at.max(now);
        match self.state {
            State::Joining => {}
            State::Stalled => self.stall_ms += dt,
            State::Playing => {
                let buffered = self.buffer_ms();
                if dt < buffered {
                    self.head = self.head.map(|h| h + dt);
                    self.play_ms += dt;
                } else {
                    // The buffer ran dry `buffered` ms in.
                    self.head = Some(self.newest);
                    self.play_ms += buffered;
                    self.stall_ms += dt - buffered;
                    self.stalls += 1;
                    self.state = State::Stalled;
                    self.need_ms = self.p.resume_ms;
                }
            }
        }
    }

    /// A new connection starts delivering (the first, or after a loss):
    /// what is left of the old buffer is flushed.
    pub fn connected(&mut self, now: f64) {
        self.advance(now);
        if self.head.is_some() {
            if self.state == State::Playing {
                // Playback interrupted by the flush.
                self.stalls += 1;
            }
            if self.state != State::Joining {
                self.state = State::Stalled;
            }
        }
        self.head = None;
        self.need_ms = self.p.startup_ms;
    }

    /// A media tag with timestamp `ts_ms` arrived at `now`.
    pub fn media(&mut self, now: f64, ts_ms: f64) {
        self.advance(now);
        match self.head {
            None => {
                self.head = Some(ts_ms);
                self.newest = ts_ms;
            }
            Some(h) => {
                if ts_ms > self.newest + SKIP_MS {
                    let jump = ts_ms - self.newest;
                    self.head = Some(h + jump);
                    self.skips += 1;
                }
                self.newest = self.newest.max(ts_ms);
            }
        }
        if self.state != State::Playing && self.buffer_ms() >= self.need_ms {
            if self.state == State::Joining {
                self.join_ms = Some(now);
            }
            self.state = State::Playing;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PlayerParams = PlayerParams {
        startup_ms: 500.0,
        resume_ms: 1000.0,
    };

    /// Media produced in real time from `from` (ms of session time), with a
    /// GOP burst of `cached` ms at `t0`.
    fn feed(pb: &mut Playback, t0: f64, cached: f64, until: f64) {
        let mut ts = 0.0;
        while ts <= cached {
            pb.media(t0, ts);
            ts += 40.0;
        }
        let mut t = t0;
        while t < until {
            t += 40.0;
            pb.media(t, ts);
            ts += 40.0;
        }
    }

    #[test]
    fn a_gop_burst_larger_than_startup_joins_at_once() {
        let mut pb = Playback::new(P);
        pb.connected(100.0);
        feed(&mut pb, 130.0, 800.0, 10_000.0);
        assert_eq!(pb.join_ms, Some(130.0));
        assert_eq!(pb.stalls, 0);
        assert!(pb.play_ms > 9_000.0, "{pb:?}");
    }

    #[test]
    fn a_short_burst_waits_for_live_media() {
        let mut pb = Playback::new(P);
        pb.connected(0.0);
        feed(&mut pb, 50.0, 200.0, 5_000.0);
        // 200 ms cached, then 300 more in real time.
        let j = pb.join_ms.unwrap();
        assert!((330.0..=400.0).contains(&j), "{j}");
        assert_eq!(pb.stalls, 0);
    }

    #[test]
    fn a_lost_connection_stalls_once_and_rejoins_on_the_next() {
        let mut pb = Playback::new(P);
        pb.connected(0.0);
        feed(&mut pb, 10.0, 600.0, 3_000.0);
        assert!(pb.playing());
        // The connection dies at 3 s: the ~600 ms buffer plays out.
        pb.advance(5_000.0);
        assert_eq!(pb.stalls, 1);
        assert!(pb.stall_ms > 1_000.0 && pb.stall_ms < 1_500.0, "{pb:?}");
        pb.connected(5_050.0);
        let mut ts = 90_000.0; // another edge's timeline
        for i in 0..30 {
            pb.media(5_100.0 + f64::from(i), ts);
            ts += 40.0;
        }
        assert!(pb.playing());
        assert_eq!(pb.stalls, 1, "one stall for one failure");
        assert_eq!(pb.skips, 0);
    }

    #[test]
    fn a_slow_feed_stalls_and_resumes_at_the_resume_level() {
        let mut pb = Playback::new(P);
        pb.connected(0.0);
        // 500 ms burst, then media at half real time.
        let mut ts = 0.0;
        while ts <= 500.0 {
            pb.media(0.0, ts);
            ts += 40.0;
        }
        let mut t = 0.0;
        while t < 10_000.0 {
            t += 80.0;
            pb.media(t, ts);
            ts += 40.0;
        }
        assert!(pb.stalls >= 2, "{pb:?}");
        let watched = pb.stall_ms + pb.play_ms;
        assert!((watched - 10_000.0).abs() < 100.0, "{pb:?}");
        // Half the media rate: about half the time stalled.
        assert!(pb.stall_ms > 3_500.0 && pb.stall_ms < 6_500.0, "{pb:?}");
    }
}
