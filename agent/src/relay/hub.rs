//! The media ring of one stream: the GOP cache and every viewer's queue in
//! one structure.
//!
//! Each tag is encoded once (one contiguous [`Bytes`]: tag header, body,
//! PreviousTagSize) and stored with a sequence number and its time on the
//! stream's output timeline. Viewers are cursors into the ring and hand
//! clones of those `Bytes` (a reference count, never a copy) to their
//! sockets, so fan-out costs no per-viewer media copies.
//!
//! Retention: everything from the newest *start point* (a coded video
//! keyframe, or any audio frame of an audio-only stream) onwards is kept —
//! the GOP cache a new viewer starts from — plus everything not older than
//! `retain_ms` behind the newest tag, which is what a lagging viewer may
//! still be sent. Both are capped by [`CacheLimits`] in tags and bytes; a
//! GOP larger than the caps is dropped from the front and new viewers then
//! wait for the next keyframe.
//!
//! The FLV file header and the current codec configuration (metadata,
//! video and audio sequence headers) are kept apart, so a viewer joining at
//! a keyframe first gets them, restamped to the keyframe's timestamp.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use vantage_shared::flv::{FileHeader, Tag};

/// Bounds of one stream's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// At most this many tags.
    pub max_tags: usize,
    /// At most this many bytes of encoded tags.
    pub max_bytes: usize,
    /// Media older than this behind the newest tag is dropped unless it is
    /// part of the newest GOP (viewers further behind skip ahead anyway).
    pub retain_ms: i64,
}

/// Codec configuration a decoder needs before the first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Metadata,
    Video,
    Audio,
}

/// The configuration in force at some point of the stream.
#[derive(Debug, Clone, Default)]
pub struct Configs {
    pub metadata: Option<Tag>,
    pub video: Option<Tag>,
    pub audio: Option<Tag>,
}

impl Configs {
    fn with(&self, kind: ConfigKind, tag: Tag) -> Configs {
        let mut c = self.clone();
        match kind {
            ConfigKind::Metadata => c.metadata = Some(tag),
            ConfigKind::Video => c.video = Some(tag),
            ConfigKind::Audio => c.audio = Some(tag),
        }
        c
    }

    /// The configuration tags for a viewer starting at `ts`, encoded:
    /// metadata at timestamp 0 (players such as ffmpeg only take
    /// `onMetaData` as stream metadata at 0), sequence headers at `ts`.
    fn encode_at(&self, ts: i64, metadata: bool) -> Vec<Bytes> {
        let meta = self
            .metadata
            .iter()
            .filter(|_| metadata)
            .map(|t| t.with_timestamp(0).encode());
        let codecs = [&self.video, &self.audio]
            .into_iter()
            .flatten()
            .map(|t| t.with_timestamp(wire_ts(ts)).encode());
        meta.chain(codecs).collect()
    }
}

/// A timeline position as an FLV timestamp (32-bit milliseconds, wrapping
/// after 49.7 days like every FLV stream).
pub fn wire_ts(ts: i64) -> u32 {
    // rem_euclid keeps the value in 0..2^32, so the cast is lossless.
    ts.rem_euclid(1 << 32) as u32
}

/// One tag as the hub publishes it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The encoded tag (timestamp already rewritten).
    pub data: Bytes,
    /// Output timeline position, ms.
    pub ts: i64,
    /// A viewer may start here.
    pub start: bool,
    /// Set for metadata and sequence headers (the tag, restamped).
    pub config: Option<(ConfigKind, Tag)>,
    /// Video, script or configuration: worth waking viewers for at once.
    pub urgent: bool,
    /// Sent to current viewers. False for metadata that only updates what
    /// new viewers get (metadata in mid-stream confuses players).
    pub inline: bool,
}

#[derive(Debug)]
struct Entry {
    data: Bytes,
    ts: i64,
    /// The same tag as RTMP chunks, made for the first RTMP viewer that
    /// needs it and shared by the others.
    rtmp: Option<Bytes>,
}

/// How a viewer's connection frames tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP-FLV: the FLV header, then tags as the ring holds them.
    Flv,
    /// RTMP play: each tag as one message on [`RTMP_STREAM_ID`], chunked
    /// at [`RTMP_CHUNK_SIZE`]; no FLV header.
    Rtmp,
}

/// The message stream id RTMP viewers are sent media on.
pub const RTMP_STREAM_ID: u32 = 1;
/// The chunk size the agent announces to RTMP viewers: most media messages
/// fit in one chunk.
pub const RTMP_CHUNK_SIZE: u32 = 65_536;

impl Wire {
    /// An encoded FLV tag (as the ring and its prefixes hold them) framed
    /// for this wire; `None` if it is not a whole tag.
    pub fn frame(self, flv: &Bytes) -> Option<Bytes> {
        match self {
            Wire::Flv => Some(flv.clone()),
            Wire::Rtmp => {
                vantage_shared::rtmp::message::flv_to_chunks(flv, RTMP_STREAM_ID, RTMP_CHUNK_SIZE)
            }
        }
    }
}

#[derive(Debug)]
struct Start {
    seq: u64,
    configs: Arc<Configs>,
}

/// The ring of one stream. Not synchronised: the stream holds it in a
/// mutex.
#[derive(Debug)]
pub struct Ring {
    limits: CacheLimits,
    entries: VecDeque<Entry>,
    first_seq: u64,
    bytes: usize,
    starts: VecDeque<Start>,
    header: Option<Bytes>,
    configs: Arc<Configs>,
    prefix: Option<(u64, bool, Vec<Bytes>)>,
    head_ts: Option<i64>,
    /// Length of the last complete GOP (ms): kept when its first tag has
    /// left the ring (a GOP as long as `retain_ms` leaves at once).
    last_gop_ms: i64,
    ended: bool,
    /// Generation of the source allowed to write.
    pub(crate) generation: u64,
    waiters: Vec<Waker>,
    epoch: u64,
}

impl Ring {
    pub fn new(limits: CacheLimits) -> Ring {
        Ring {
            limits,
            entries: VecDeque::new(),
            first_seq: 0,
            bytes: 0,
            starts: VecDeque::new(),
            header: None,
            configs: Arc::new(Configs::default()),
            prefix: None,
            head_ts: None,
            last_gop_ms: 0,
            ended: false,
            generation: 0,
            waiters: Vec::new(),
            epoch: 0,
        }
    }

    /// Keeps the first header: viewers already have it.
    pub fn set_header(&mut self, h: FileHeader) {
        if self.header.is_none() {
            self.header = Some(h.encode());
        }
    }

    pub fn header(&self) -> Option<&Bytes> {
        self.header.as_ref()
    }

    /// Appends a tag and applies the retention rules.
    pub fn push(&mut self, o: Outgoing) {
        if let Some((kind, tag)) = o.config {
            self.configs = Arc::new(self.configs.with(kind, tag));
        }
        if !o.inline {
            return;
        }
        let seq = self.next_seq();
        if o.start {
            if let Some(prev) = self.starts.back().and_then(|s| self.ts_of(s.seq)) {
                self.last_gop_ms = (o.ts - prev).max(0);
            }
            self.starts.push_back(Start {
                seq,
                configs: self.configs.clone(),
            });
        }
        self.bytes += o.data.len();
        self.head_ts = Some(self.head_ts.map_or(o.ts, |h| h.max(o.ts)));
        self.entries.push_back(Entry {
            data: o.data,
            ts: o.ts,
            rtmp: None,
        });
        self.evict();
    }

    fn evict(&mut self) {
        let head = self.head_ts.unwrap_or(0);
        while let Some(front) = self.entries.front() {
            let over =
                self.entries.len() > self.limits.max_tags || self.bytes > self.limits.max_bytes;
            let protected = self.starts.back().is_some_and(|s| self.first_seq >= s.seq);
            let old = head - front.ts > self.limits.retain_ms;
            if !(over || (old && !protected)) {
                break;
            }
            self.bytes -= front.data.len() + front.rtmp.as_ref().map_or(0, Bytes::len);
            self.entries.pop_front();
            self.first_seq += 1;
            while self.starts.front().is_some_and(|s| s.seq < self.first_seq) {
                self.starts.pop_front();
            }
        }
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// Newest timeline position, if any tag was pushed.
    pub fn head_ts(&self) -> Option<i64> {
        self.head_ts
    }

    /// (encoded tag, ts) at `seq` if still held.
    pub fn get(&self, seq: u64) -> Option<(&Bytes, i64)> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.entries.get(i).map(|e| (&e.data, e.ts))
    }

    /// The tag at `seq` framed for `wire` (RTMP framing is made once per
    /// tag and counted in the ring's bytes), with its timeline position.
    pub fn get_wire(&mut self, seq: u64, wire: Wire) -> Option<(Bytes, i64)> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let e = self.entries.get_mut(i)?;
        match wire {
            Wire::Flv => Some((e.data.clone(), e.ts)),
            Wire::Rtmp => {
                if e.rtmp.is_none() {
                    let framed = wire.frame(&e.data).unwrap_or_default();
                    self.bytes += framed.len();
                    e.rtmp = Some(framed);
                }
                e.rtmp.clone().map(|b| (b, e.ts))
            }
        }
    }

    pub fn ts_of(&self, seq: u64) -> Option<i64> {
        self.get(seq).map(|(_, ts)| ts)
    }

    /// The newest start point held (where a new viewer begins).
    pub fn newest_start(&self) -> Option<u64> {
        self.starts.back().map(|s| s.seq)
    }

    /// The first start point at or after `seq`.
    pub fn start_at_or_after(&self, seq: u64) -> Option<u64> {
        self.starts.iter().find(|s| s.seq >= seq).map(|s| s.seq)
    }

    /// Sequence headers in force at start point `seq`, restamped to its
    /// timestamp, after the metadata (at 0) if `metadata`. Cached for the
    /// latest start asked for.
    pub fn prefix(&mut self, seq: u64, metadata: bool) -> Vec<Bytes> {
        if let Some((s, m, p)) = &self.prefix
            && *s == seq
            && *m == metadata
        {
            return p.clone();
        }
        let Some(ts) = self.ts_of(seq) else {
            return Vec::new();
        };
        let configs = self
            .starts
            .iter()
            .find(|s| s.seq == seq)
            .map_or_else(|| self.configs.clone(), |s| s.configs.clone());
        let p = configs.encode_at(ts, metadata);
        self.prefix = Some((seq, metadata, p.clone()));
        p
    }

    /// GOP cache duration, ms: media from the newest start point to the
    /// newest tag, or the last complete GOP if that is longer. The partial
    /// GOP alone is a sawtooth (0 right after each keyframe), which sampled
    /// once per report would read as an empty cache at a healthy node.
    pub fn gop_ms(&self) -> i64 {
        let ts = |s: &Start| self.ts_of(s.seq);
        let newest = self.starts.back().and_then(ts);
        let partial = match (newest, self.head_ts) {
            (Some(s), Some(h)) => (h - s).max(0),
            _ => 0,
        };
        if newest.is_none() {
            return 0;
        }
        partial.max(self.last_gop_ms)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The source is gone: viewers drain what is held, then end.
    pub fn end(&mut self) {
        self.ended = true;
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Registers a waiting viewer. `epoch` is what the viewer got from its
    /// last registration; a viewer already registered in the current epoch
    /// is not added twice.
    pub fn register(&mut self, waker: &Waker, epoch: &mut Option<u64>) {
        if *epoch != Some(self.epoch) {
            self.waiters.push(waker.clone());
            *epoch = Some(self.epoch);
        }
    }

    /// Takes every registered waker (to wake outside the lock).
    pub fn take_waiters(&mut self) -> Vec<Waker> {
        self.epoch += 1;
        std::mem::take(&mut self.waiters)
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vantage_shared::flv::TagKind;

    pub(crate) fn limits() -> CacheLimits {
        CacheLimits {
            max_tags: 1000,
            max_bytes: 1 << 20,
            retain_ms: 2000,
        }
    }

    pub(crate) fn video(ts: i64, key: bool) -> Outgoing {
        let body = Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0, 9, 9]);
        let tag = Tag::new(TagKind::Video, wire_ts(ts), body);
        Outgoing {
            data: tag.encode(),
            ts,
            start: key,
            config: None,
            urgent: true,
            inline: true,
        }
    }

    pub(crate) fn avc_config(ts: i64) -> Outgoing {
        let tag = Tag::new(
            TagKind::Video,
            wire_ts(ts),
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
        );
        Outgoing {
            data: tag.encode(),
            ts,
            start: false,
            config: Some((ConfigKind::Video, tag)),
            urgent: true,
            inline: true,
        }
    }

    #[test]
    fn keeps_the_newest_gop_and_the_retain_window() {
        let mut r = Ring::new(limits());
        r.push(avc_config(0));
        for i in 0..100 {
            // 25 fps, GOP of 50 frames (2 s)
            r.push(video(i * 40, i % 50 == 0));
        }
        // newest start is frame 50 (ts 2000), head 3960: everything since
        // 1960 is retained (window) and the GOP from 2000.
        assert_eq!(r.newest_start(), Some(51));
        assert_eq!(r.head_ts(), Some(3960));
        assert!(r.ts_of(r.first_seq()).unwrap() >= 1960);
        assert_eq!(
            r.gop_ms(),
            2000,
            "the last complete GOP (longer than the partial 1960)"
        );
        let p = r.prefix(51, true);
        assert_eq!(p.len(), 1, "the AVC sequence header");
        assert_eq!(&p[0][4..7], &[0, 0x07, 0xD0], "restamped to 2000 ms");
    }

    #[test]
    fn the_gop_cache_reads_a_whole_gop_right_after_a_keyframe() {
        let mut r = Ring::new(limits());
        r.push(avc_config(0));
        for i in 0..=25 {
            r.push(video(i * 40, i % 25 == 0));
        }
        // Keyframes at 0 and 1000; the partial GOP is 0 ms long.
        assert_eq!(r.gop_ms(), 1000, "the last complete GOP");
        for i in 26..40 {
            r.push(video(i * 40, false));
        }
        assert_eq!(r.gop_ms(), 1000, "max(partial 560, complete 1000)");
        for i in 40..70 {
            r.push(video(i * 40, false));
        }
        assert_eq!(r.gop_ms(), 1760, "a GOP growing past the last one");
    }

    #[test]
    fn a_gop_as_long_as_the_retain_window_still_reads_whole_after_a_keyframe() {
        // retain_ms 2000 and 2 s GOPs: the previous GOP's first tag leaves
        // the ring with the next tag after a keyframe; the report must not
        // read 0 then (seen in the sim-to-real test: an edge that just got
        // a keyframe looked starved to the buffer term).
        let mut r = Ring::new(limits());
        r.push(avc_config(0));
        for i in 0..=51 {
            r.push(video(i * 40, i % 50 == 0));
        }
        assert_eq!(r.newest_start(), Some(51));
        assert!(
            r.ts_of(r.first_seq()).unwrap() > 0,
            "the first GOP's start left"
        );
        assert_eq!(
            r.gop_ms(),
            2000,
            "the last complete GOP, not the 40 ms partial one"
        );
    }

    #[test]
    fn a_long_gop_stays_whole_until_the_caps() {
        let mut r = Ring::new(CacheLimits {
            max_tags: 120,
            max_bytes: 1 << 20,
            retain_ms: 500,
        });
        for i in 0..100 {
            r.push(video(i * 40, i == 0));
        }
        assert_eq!(r.first_seq(), 0, "GOP protected beyond retain_ms");
        for i in 100..130 {
            r.push(video(i * 40, false));
        }
        assert_eq!(r.newest_start(), None, "the GOP start fell off the cap");
        // Without a GOP to protect, only the retain window stays.
        assert_eq!(r.len(), 13);
    }

    #[test]
    fn byte_cap_and_waiters() {
        let mut r = Ring::new(CacheLimits {
            max_tags: 1000,
            max_bytes: 100,
            retain_ms: 10_000,
        });
        for i in 0..20 {
            r.push(video(i * 40, true));
        }
        assert!(r.bytes() <= 100);
        let w = futures_waker();
        let mut epoch = None;
        r.register(&w, &mut epoch);
        r.register(&w, &mut epoch);
        assert_eq!(r.waiting(), 1, "registered once per epoch");
        assert_eq!(r.take_waiters().len(), 1);
        r.register(&w, &mut epoch);
        assert_eq!(r.waiting(), 1);
    }

    pub(crate) fn futures_waker() -> Waker {
        Waker::noop().clone()
    }
}
