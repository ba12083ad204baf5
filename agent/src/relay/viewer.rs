//! One viewer: a cursor into its stream's [`Ring`] with the slow-viewer
//! policy ([`Player`], pure), and the HTTP response body that drives it
//! ([`ViewerBody`]).
//!
//! The body is polled by the connection's own task (hyper): each poll takes
//! every tag the viewer has not got yet (up to [`BATCH_TAGS`] /
//! [`BATCH_BYTES`]) as one [`TagBatch`] of shared `Bytes`, which hyper hands
//! to the socket in a single vectored write. A viewer with nothing to send
//! registers its waker with the ring and sleeps until the source publishes.
//!
//! Slow viewers: the queue of a viewer is the part of the ring between its
//! cursor and the newest tag, measured in media time. When that exceeds
//! `max_lag` (or the ring dropped the cursor's tag), the viewer *overflows*:
//! it skips to the newest keyframe if that is younger than `max_lag`,
//! otherwise (a GOP longer than the bound) it waits for the next keyframe.
//! Waiting would freeze the picture for up to a GOP while the stream moves
//! on, so the newest keyframe is preferred even if it is most of a GOP old:
//! the viewer's delay stays below `max_lag` either way. `overflow_limit` overflows
//! within `overflow_window` disconnect it. The time a tag spends in hyper's
//! buffer (≤ 8 KiB + one batch) and in the kernel (bounded by
//! `TCP_NOTSENT_LOWAT`) adds to that bound, nothing else does.

use super::conn::ConnShared;
use super::hub::{Ring, Wire};
use super::stream::Stream;
use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most tags handed to the socket in one write.
pub const BATCH_TAGS: usize = 48;
/// A batch stops growing past this many bytes (a single larger tag still
/// goes alone).
pub const BATCH_BYTES: usize = 32 * 1024;

/// The slow-viewer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagPolicy {
    pub max_lag_ms: i64,
    pub overflow_limit: u32,
    pub overflow_window: Duration,
}

/// What a viewer does next.
#[derive(Debug)]
pub enum Step {
    /// Send these, ending at timeline position `last_ts`.
    Batch { bufs: Vec<Bytes>, bytes: usize },
    /// Nothing to send yet.
    Wait,
    /// The source ended and everything was sent.
    End,
    /// Too many overflows: disconnect.
    Kick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Not positioned yet: start at the newest keyframe.
    Fresh,
    /// Waiting for a start point at or after this sequence number.
    WaitStart(u64),
    /// Next tag to send.
    At(u64),
}

/// A viewer's position and overflow history.
#[derive(Debug)]
pub struct Player {
    policy: LagPolicy,
    wire: Wire,
    cursor: Cursor,
    header_sent: bool,
    overflows: VecDeque<Instant>,
    /// Overflows so far.
    pub skips: u64,
    /// Media skipped by overflows not yet reported, ms.
    pub skipped_ms: u64,
    /// Timeline position of the last tag sent (or skipped over).
    pub last_ts: Option<i64>,
}

impl Player {
    pub fn new(policy: LagPolicy) -> Player {
        Player::with_wire(policy, Wire::Flv)
    }

    /// A player framing tags for `wire` (HTTP-FLV or RTMP).
    pub fn with_wire(policy: LagPolicy, wire: Wire) -> Player {
        Player {
            policy,
            wire,
            cursor: Cursor::Fresh,
            header_sent: false,
            overflows: VecDeque::new(),
            skips: 0,
            skipped_ms: 0,
            last_ts: None,
        }
    }

    /// Decides the next batch from the ring.
    pub fn step(&mut self, ring: &mut Ring, now: Instant) -> Step {
        let mut bufs = Vec::new();
        let mut bytes = 0;
        if !self.header_sent {
            let Some(h) = ring.header() else {
                return if ring.ended() { Step::End } else { Step::Wait };
            };
            // RTMP has no file header: the stream being live is enough.
            if self.wire == Wire::Flv {
                bytes += h.len();
                bufs.push(h.clone());
            }
            self.header_sent = true;
        }
        let head = ring.head_ts().unwrap_or(0);
        // Each pass either settles the cursor or moves it forward; three
        // passes cover Fresh/WaitStart -> At -> overflow -> At.
        for _ in 0..4 {
            match self.cursor {
                Cursor::Fresh => {
                    self.cursor = Cursor::WaitStart(ring.newest_start().unwrap_or(ring.next_seq()));
                }
                Cursor::WaitStart(from) => {
                    let from = from.max(ring.first_seq());
                    match ring.start_at_or_after(from) {
                        Some(s) => {
                            // Metadata once, at the start; a skip only
                            // repeats the codec configuration.
                            let p = ring.prefix(s, self.skips == 0);
                            let p: Vec<Bytes> = match self.wire {
                                Wire::Flv => p,
                                w => p.iter().filter_map(|b| w.frame(b)).collect(),
                            };
                            bytes += p.iter().map(Bytes::len).sum::<usize>();
                            bufs.extend(p);
                            self.cursor = Cursor::At(s);
                        }
                        None => {
                            self.cursor = Cursor::WaitStart(ring.next_seq());
                            break;
                        }
                    }
                }
                Cursor::At(c) => {
                    let lagging = match ring.ts_of(c) {
                        Some(ts) => head - ts > self.policy.max_lag_ms,
                        None => c < ring.first_seq(),
                    };
                    if lagging {
                        let from = ring.ts_of(c).or_else(|| ring.ts_of(ring.first_seq()));
                        self.skipped_ms += u64::try_from(head - from.unwrap_or(head)).unwrap_or(0);
                        if self.overflow(now) {
                            return Step::Kick;
                        }
                        // The newest keyframe puts the viewer back inside
                        // the bound at once; only one as old as the bound
                        // itself (a GOP longer than the bound) is useless,
                        // and then the next keyframe is the way back.
                        let target = ring.newest_start().filter(|&s| {
                            s > c
                                && ring
                                    .ts_of(s)
                                    .is_some_and(|ts| head - ts < self.policy.max_lag_ms)
                        });
                        self.last_ts = Some(head);
                        self.cursor = match target {
                            Some(s) => Cursor::WaitStart(s),
                            None => Cursor::WaitStart(ring.next_seq()),
                        };
                        continue;
                    }
                    let mut c = c;
                    while bufs.len() < BATCH_TAGS && (bytes < BATCH_BYTES || bufs.is_empty()) {
                        let Some((data, ts)) = ring.get_wire(c, self.wire) else {
                            break;
                        };
                        bytes += data.len();
                        bufs.push(data);
                        self.last_ts = Some(ts);
                        c += 1;
                    }
                    self.cursor = Cursor::At(c);
                    break;
                }
            }
        }
        if !bufs.is_empty() {
            Step::Batch { bufs, bytes }
        } else if ring.ended() {
            Step::End
        } else {
            Step::Wait
        }
    }

    /// Records an overflow; true when the viewer must be disconnected.
    fn overflow(&mut self, now: Instant) -> bool {
        self.skips += 1;
        while self
            .overflows
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.overflow_window)
        {
            self.overflows.pop_front();
        }
        self.overflows.push_back(now);
        self.overflows.len() >= self.policy.overflow_limit as usize
    }
}

/// Why a viewer left (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LeaveReason {
    Closed = 0,
    Ended = 1,
    Overflow = 2,
    Stalled = 3,
    Shutdown = 4,
}

impl LeaveReason {
    pub fn label(self) -> &'static str {
        match self {
            LeaveReason::Closed => "closed",
            LeaveReason::Ended => "ended",
            LeaveReason::Overflow => "overflow",
            LeaveReason::Stalled => "stalled",
            LeaveReason::Shutdown => "shutdown",
        }
    }

    fn from_u8(v: u8) -> LeaveReason {
        match v {
            1 => LeaveReason::Ended,
            2 => LeaveReason::Overflow,
            3 => LeaveReason::Stalled,
            4 => LeaveReason::Shutdown,
            _ => LeaveReason::Closed,
        }
    }
}

/// What the rest of the relay sees of a viewer (statistics, disconnect).
#[derive(Debug)]
pub struct ViewerSlot {
    pub id: u64,
    /// Client group (geohash cell or "unknown").
    pub group: Arc<str>,
    /// The viewer session this connection holds (HTTP-FLV plays; ends its
    /// hold when the viewer goes).
    pub session: std::sync::OnceLock<super::server::SessionGuard>,
    /// Timeline position of the newest tag handed to the socket.
    pub sent_ts: AtomicI64,
    pub bytes: AtomicU64,
    pub skips: AtomicU64,
    /// Relay clock (ms) of the last batch handed to the socket.
    pub progress_ms: AtomicU64,
    reason: AtomicU8,
    /// Cancelling it drops the viewer's connection.
    pub kill: CancellationToken,
}

impl ViewerSlot {
    pub fn new(id: u64, group: Arc<str>, kill: CancellationToken, now_ms: u64) -> ViewerSlot {
        ViewerSlot {
            id,
            group,
            session: std::sync::OnceLock::new(),
            sent_ts: AtomicI64::new(i64::MIN),
            bytes: AtomicU64::new(0),
            skips: AtomicU64::new(0),
            progress_ms: AtomicU64::new(now_ms),
            reason: AtomicU8::new(LeaveReason::Closed as u8),
            kill,
        }
    }

    pub fn set_reason(&self, r: LeaveReason) {
        self.reason.store(r as u8, Ordering::Relaxed);
    }

    pub fn reason(&self) -> LeaveReason {
        LeaveReason::from_u8(self.reason.load(Ordering::Relaxed))
    }

    /// Media time between the stream's newest tag and the newest tag sent.
    pub fn lag_ms(&self, head_ts: i64) -> i64 {
        let sent = self.sent_ts.load(Ordering::Relaxed);
        if sent == i64::MIN {
            0
        } else {
            (head_ts - sent).max(0)
        }
    }
}

/// A batch of shared buffers, written with one vectored write.
#[derive(Debug, Default)]
pub struct TagBatch {
    bufs: Vec<Bytes>,
    idx: usize,
    remaining: usize,
}

impl TagBatch {
    pub fn new(bufs: Vec<Bytes>) -> TagBatch {
        let remaining = bufs.iter().map(Bytes::len).sum();
        TagBatch {
            bufs,
            idx: 0,
            remaining,
        }
    }
}

impl Buf for TagBatch {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.bufs[self.idx..]
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[], |b| &b[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(b) = self.bufs.get_mut(self.idx) else {
                break;
            };
            if cnt < b.len() {
                b.advance(cnt);
                self.remaining -= cnt;
                return;
            }
            cnt -= b.len();
            self.remaining -= b.len();
            // Release the reference as soon as it is written.
            *b = Bytes::new();
            self.idx += 1;
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for b in &self.bufs[self.idx..] {
            if n == dst.len() {
                break;
            }
            if !b.is_empty() {
                dst[n] = IoSlice::new(b);
                n += 1;
            }
        }
        n
    }
}

/// Errors that end a response body (hyper then closes the connection).
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error("viewer too slow: queue overflowed repeatedly")]
    Overflow,
}

/// The response body of a play request.
pub struct ViewerBody {
    stream: Arc<Stream>,
    slot: Arc<ViewerSlot>,
    conn: Arc<ConnShared>,
    player: Player,
    epoch: Option<u64>,
    done: bool,
}

impl ViewerBody {
    pub fn new(
        stream: Arc<Stream>,
        slot: Arc<ViewerSlot>,
        conn: Arc<ConnShared>,
        policy: LagPolicy,
        wire: Wire,
    ) -> ViewerBody {
        ViewerBody {
            stream,
            slot,
            conn,
            player: Player::with_wire(policy, wire),
            epoch: None,
            done: false,
        }
    }
}

impl Drop for ViewerBody {
    fn drop(&mut self) {
        self.stream.detach(&self.slot);
        self.conn.unregister();
    }
}

impl ViewerBody {
    pub(crate) fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<TagBatch, ViewerError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        let (step, head) = {
            let mut ring = self.stream.lock_ring();
            let step = self.player.step(&mut ring, now);
            if matches!(step, Step::Wait) {
                ring.register(cx.waker(), &mut self.epoch);
            }
            (step, ring.head_ts())
        };
        if self.player.skips != self.slot.skips.load(Ordering::Relaxed) {
            let new =
                self.player.skips - self.slot.skips.swap(self.player.skips, Ordering::Relaxed);
            self.stream.count_skips(new);
            self.conn
                .stalled(std::mem::take(&mut self.player.skipped_ms));
        }
        match step {
            Step::Batch { bufs, bytes } => {
                let ts = self.player.last_ts.or(head).unwrap_or(0);
                self.slot.sent_ts.store(ts, Ordering::Relaxed);
                self.slot.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                self.slot
                    .progress_ms
                    .store(self.stream.clock_ms(), Ordering::Relaxed);
                self.stream.count_egress(bytes);
                Poll::Ready(Some(Ok(TagBatch::new(bufs))))
            }
            Step::Wait => {
                if let Some(ts) = self.player.last_ts {
                    self.slot.sent_ts.store(ts, Ordering::Relaxed);
                }
                // Polled with nothing to send: the socket is not the
                // bottleneck (e.g. waiting for a keyframe after a skip).
                self.slot
                    .progress_ms
                    .store(self.stream.clock_ms(), Ordering::Relaxed);
                Poll::Pending
            }
            Step::End => {
                self.done = true;
                self.slot.set_reason(LeaveReason::Ended);
                Poll::Ready(None)
            }
            Step::Kick => {
                self.done = true;
                self.slot.set_reason(LeaveReason::Overflow);
                Poll::Ready(Some(Err(ViewerError::Overflow)))
            }
        }
    }
}

/// Every response body of the media server.
pub enum MediaBody {
    Full(Option<Bytes>),
    Viewer(Box<ViewerBody>),
}

impl MediaBody {
    pub fn empty() -> MediaBody {
        MediaBody::Full(None)
    }
}

impl Body for MediaBody {
    type Data = TagBatch;
    type Error = ViewerError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<TagBatch>, ViewerError>>> {
        match self.get_mut() {
            MediaBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(TagBatch::new(vec![b])))),
            ),
            MediaBody::Viewer(v) => v.poll_batch(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MediaBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            MediaBody::Viewer(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MediaBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            MediaBody::Viewer(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::hub::tests::{avc_config, limits, video};
    use crate::relay::hub::{CacheLimits, Ring};
    use vantage_shared::flv::FileHeader;

    fn policy() -> LagPolicy {
        LagPolicy {
            max_lag_ms: 2000,
            overflow_limit: 3,
            overflow_window: Duration::from_secs(30),
        }
    }

    fn ring() -> Ring {
        let mut r = Ring::new(limits());
        r.set_header(FileHeader {
            has_audio: false,
            has_video: true,
        });
        r.push(avc_config(0));
        r
    }

    fn batch(s: Step) -> Vec<Bytes> {
        match s {
            Step::Batch { bufs, .. } => bufs,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn a_new_viewer_gets_header_config_and_the_last_gop_first() {
        let mut r = ring();
        for i in 0..30 {
            r.push(video(i * 40, i % 25 == 0));
        }
        let mut p = Player::new(policy());
        let b = batch(p.step(&mut r, Instant::now()));
        assert_eq!(b[0].len(), 13, "FLV header");
        assert_eq!(b[1][0], 9, "the AVC sequence header");
        assert_eq!(b[2][11], 0x17, "then the keyframe at 1000 ms");
        assert_eq!(b.len(), 2 + 5);
        assert!(matches!(p.step(&mut r, Instant::now()), Step::Wait));
        r.push(video(1200, false));
        assert_eq!(batch(p.step(&mut r, Instant::now())).len(), 1);
    }

    #[test]
    fn without_a_keyframe_a_viewer_waits_for_one() {
        let mut r = ring();
        r.push(video(0, false));
        let mut p = Player::new(policy());
        assert_eq!(
            batch(p.step(&mut r, Instant::now())).len(),
            1,
            "header only"
        );
        r.push(video(40, false));
        assert!(matches!(p.step(&mut r, Instant::now()), Step::Wait));
        r.push(video(80, true));
        let b = batch(p.step(&mut r, Instant::now()));
        assert_eq!(b.len(), 2, "config + keyframe");
        r.end();
        assert!(matches!(p.step(&mut r, Instant::now()), Step::End));
    }

    #[test]
    fn a_slow_viewer_skips_to_a_keyframe_and_is_kicked_after_repeated_overflow() {
        let mut r = Ring::new(CacheLimits {
            retain_ms: 5000,
            ..limits()
        });
        r.set_header(FileHeader {
            has_audio: false,
            has_video: true,
        });
        let t0 = Instant::now();
        let mut p = Player::new(policy());
        let mut ts = 0;
        r.push(video(ts, true));
        batch(p.step(&mut r, t0));
        // Falls 2.4 s behind; the newest keyframe is 400 ms old.
        for _ in 0..60 {
            ts += 40;
            r.push(video(ts, ts % 2000 == 0));
        }
        let b = batch(p.step(&mut r, t0));
        assert_eq!(p.skips, 1);
        assert_eq!(b[0][11], 0x17, "resumes at the 2000 ms keyframe");
        assert_eq!(p.last_ts, Some(ts));
        // Two more overflows within the window: disconnect.
        let mut kicked = false;
        for round in 0..2 {
            for _ in 0..60 {
                ts += 40;
                r.push(video(ts, ts % 2000 == 0));
            }
            match p.step(&mut r, t0 + Duration::from_secs(round + 1)) {
                Step::Kick => kicked = true,
                Step::Batch { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(kicked);
        assert_eq!(p.skips, 3);
    }

    /// Falls `behind_ms` behind on a stream with keyframes every `gop_ms`;
    /// returns the timestamp of the first tag sent after the overflow.
    fn resume_after_overflow(gop_ms: i64, behind_ms: i64) -> Option<i64> {
        let mut r = Ring::new(CacheLimits {
            retain_ms: 10_000,
            max_tags: 10_000,
            ..limits()
        });
        r.set_header(FileHeader {
            has_audio: false,
            has_video: true,
        });
        let t0 = Instant::now();
        let mut p = Player::new(policy());
        r.push(video(0, true));
        batch(p.step(&mut r, t0));
        let mut ts = 0;
        while ts < behind_ms {
            ts += 20;
            r.push(video(ts, ts % gop_ms == 0));
        }
        match p.step(&mut r, t0) {
            Step::Batch { bufs, .. } => {
                assert_eq!(p.skips, 1);
                // The resumed tag's timestamp (FLV: 24 bits + 8 extended).
                bufs.iter()
                    .find(|b| b.len() > 11 && b[0] == 9 && b[11] == 0x17)
                    .map(|b| i64::from(u32::from_be_bytes([b[7], b[4], b[5], b[6]])))
            }
            Step::Wait => None,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_overflow_resumes_at_the_newest_keyframe_even_late_in_a_gop() {
        // 1.5 s GOP, 2.9 s behind: the newest keyframe (1500 ms) is 1.4 s
        // old, more than half the 2 s bound; waiting for the next one would
        // freeze the picture for 100 ms and leave the viewer 3 s behind.
        assert_eq!(resume_after_overflow(1500, 2900), Some(1500));
        // A GOP longer than the bound: the newest keyframe (0) is as old as
        // the lag itself, so the viewer waits for the next keyframe.
        assert_eq!(resume_after_overflow(5000, 2500), None);
    }

    #[test]
    fn batches_are_bounded_and_written_in_order() {
        let mut r = ring();
        for i in 0..200 {
            r.push(video(i * 5, i == 0));
        }
        let mut p = Player::new(policy());
        let b = batch(p.step(&mut r, Instant::now()));
        assert_eq!(b.len(), BATCH_TAGS);
        let mut tb = TagBatch::new(b);
        let total = tb.remaining();
        let mut iov = [IoSlice::new(&[]); 64];
        assert_eq!(tb.chunks_vectored(&mut iov), BATCH_TAGS);
        tb.advance(15);
        assert_eq!(tb.remaining(), total - 15);
        assert_eq!(tb.chunk().len(), 21 - 2, "the config tag, 2 bytes in");
        let rest = tb.remaining();
        tb.advance(rest);
        assert_eq!(tb.remaining(), 0);
        assert!(tb.chunk().is_empty());
    }
}
