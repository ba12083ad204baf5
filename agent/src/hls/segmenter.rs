//! From a stream's FLV tags to LL-HLS segments and parts (pure code).
//!
//! One segmenter per stream, fed from the stream's ring like one viewer,
//! whatever the number of HLS clients: every part is muxed once and served
//! to all of them from memory.
//!
//! * It starts at a video keyframe (the GOP cache rule: the ring hands a
//!   new reader the codec configuration and the newest GOP), or at any
//!   audio frame of an audio-only stream.
//! * A *segment* starts at a keyframe once the current one is at least
//!   `min_segment_ms` long (so one segment per GOP at 1–2 s GOPs).
//! * A *part* is closed before it would exceed `part_target_ms`, and at
//!   every segment boundary. Parts are cut on the main track (video, else
//!   audio); audio samples go into the part their decode time falls in.
//! * At most `window` complete segments are kept (memory is bounded by
//!   that many segments' media), plus the one being built.
//!
//! H.264 and AAC only (what CMAF `avc1`/`mp4a` carry); other codecs are
//! left out of HLS (still relayed as FLV and RTMP).

use super::fmp4::{self, AudioTrack, Sample, VideoTrack};
use bytes::Bytes;
use std::collections::VecDeque;
use vantage_shared::flv::amf::Metadata;
use vantage_shared::flv::{Tag, TagKind, VideoCodec};

/// Segmenter settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmenterConfig {
    /// Longest part, ms (`PART-TARGET`).
    pub part_target_ms: i64,
    /// A keyframe starts a new segment once the current one is this long.
    pub min_segment_ms: i64,
    /// Complete segments kept.
    pub window: usize,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        SegmenterConfig {
            part_target_ms: 500,
            min_segment_ms: 1000,
            window: 6,
        }
    }
}

/// One LL-HLS part: a `moof` + `mdat` fragment.
#[derive(Debug, Clone)]
pub struct Part {
    pub duration_ms: i64,
    /// Starts with a keyframe.
    pub independent: bool,
    pub data: Bytes,
}

/// One media segment: its parts, in order.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Media sequence number.
    pub msn: u64,
    /// Init segment version it needs (`init{v}.mp4`).
    pub init: u32,
    pub parts: Vec<Part>,
    pub complete: bool,
    /// Timeline position of its first sample, ms.
    pub start_ts: i64,
    /// Wall clock of its first sample at ingest, ms since the epoch.
    pub wall_ms: i64,
    /// The whole segment (its parts in one buffer), once complete.
    pub whole: Option<Bytes>,
}

impl Segment {
    pub fn duration_ms(&self) -> i64 {
        self.parts.iter().map(|p| p.duration_ms).sum()
    }
}

/// The segmenter of one stream.
#[derive(Debug)]
pub struct Segmenter {
    cfg: SegmenterConfig,
    has_video: bool,
    size: (u16, u16),
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    inits: VecDeque<(u32, Bytes)>,
    started: bool,
    pending_video: Option<Sample>,
    pending_audio: Option<Sample>,
    cur_video: Vec<Sample>,
    cur_audio: Vec<Sample>,
    part_start: i64,
    segments: VecDeque<Segment>,
    next_msn: u64,
    frag_seq: u32,
    /// Smallest wall clock minus timeline position seen (the live edge).
    wall_base: Option<i64>,
    /// Parts and segments made so far (counters).
    pub parts_made: u64,
    pub segments_made: u64,
}

impl Segmenter {
    /// `has_video`: the stream carries video (from its FLV header).
    pub fn new(cfg: SegmenterConfig, has_video: bool) -> Segmenter {
        Segmenter {
            cfg,
            has_video,
            size: (0, 0),
            video: None,
            audio: None,
            inits: VecDeque::new(),
            started: false,
            pending_video: None,
            pending_audio: None,
            cur_video: Vec::new(),
            cur_audio: Vec::new(),
            part_start: 0,
            segments: VecDeque::new(),
            next_msn: 0,
            frag_seq: 1,
            wall_base: None,
            parts_made: 0,
            segments_made: 0,
        }
    }

    pub fn config(&self) -> SegmenterConfig {
        self.cfg
    }

    /// Segments held, oldest first (the last may be incomplete).
    pub fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }

    /// The init segment of version `v`, if still held.
    pub fn init(&self, v: u32) -> Option<&Bytes> {
        self.inits.iter().find(|(x, _)| *x == v).map(|(_, b)| b)
    }

    /// RFC 6381 codecs of the current tracks.
    pub fn codecs(&self) -> Vec<String> {
        let v = self.video.as_ref().map(VideoTrack::codec);
        let a = self.audio.as_ref().map(AudioTrack::codec);
        v.into_iter().chain(a).collect()
    }

    /// Whether part `part` of segment `msn` exists (a complete segment
    /// counts as having all its parts and the next segment's part 0 as
    /// following it).
    pub fn has_part(&self, msn: u64, part: Option<usize>) -> bool {
        let Some(seg) = self.segments.iter().find(|s| s.msn == msn) else {
            return self.segments.front().is_some_and(|s| msn < s.msn);
        };
        match part {
            None => seg.complete,
            Some(p) => seg.complete || p < seg.parts.len(),
        }
    }

    /// Takes one tag at timeline position `ts`, read at wall clock
    /// `wall_ms`. Returns true when a part was completed.
    pub fn push(&mut self, tag: &Tag, ts: i64, wall_ms: i64) -> bool {
        match tag.kind {
            TagKind::Script => {
                if let Some(m) = Metadata::parse(&tag.body) {
                    let dim = |v: Option<f64>| v.map_or(0, |x| x.clamp(0.0, 65535.0) as u16);
                    self.size = (dim(m.width), dim(m.height));
                }
                false
            }
            TagKind::Video => self.video_tag(tag, ts, wall_ms),
            TagKind::Audio => self.audio_tag(tag, ts, wall_ms),
        }
    }

    fn video_tag(&mut self, tag: &Tag, ts: i64, wall_ms: i64) -> bool {
        if tag.video_codec() != Some(VideoCodec::Avc) || tag.video_fourcc().is_some() {
            return false;
        }
        if tag.is_sequence_header() {
            let avcc = tag.body.slice(tag.body.len().min(5)..);
            self.video = Some(VideoTrack {
                avcc,
                width: self.size.0,
                height: self.size.1,
            });
            return false;
        }
        if !matches!(tag.body.get(1), Some(1)) || self.video.is_none() {
            return false;
        }
        let key = tag.is_coded_keyframe();
        if !self.started {
            if !key {
                return false;
            }
            self.start(ts, wall_ms);
        }
        self.note_wall(ts, wall_ms);
        let sample = Sample {
            dts: ts,
            duration: 0,
            cts: tag.composition_time_ms().unwrap_or(0),
            keyframe: key,
            data: tag.body.slice(5..),
        };
        let cut = self.cut_before(&sample, self.pending_video.as_ref().map(|p| p.dts));
        if let Some(mut prev) = self.pending_video.take() {
            prev.duration = dur(prev.dts, ts);
            self.cur_video.push(prev);
        }
        let done = match cut {
            Cut::None => false,
            Cut::Part => self.close_part(ts, false),
            Cut::Segment => self.close_part(ts, true),
        };
        self.pending_video = Some(sample);
        done
    }

    fn audio_tag(&mut self, tag: &Tag, ts: i64, wall_ms: i64) -> bool {
        if tag.sound_format() != Some(vantage_shared::flv::SOUND_FORMAT_AAC) {
            return false;
        }
        if tag.is_sequence_header() {
            self.audio = Some(AudioTrack {
                asc: tag.body.slice(tag.body.len().min(2)..),
            });
            return false;
        }
        if self.audio.is_none() || tag.body.len() < 2 {
            return false;
        }
        if !self.started {
            if self.has_video {
                return false;
            }
            self.start(ts, wall_ms);
        }
        self.note_wall(ts, wall_ms);
        let sample = Sample {
            dts: ts,
            duration: 0,
            cts: 0,
            keyframe: true,
            data: tag.body.slice(2..),
        };
        let cut = if self.has_video {
            Cut::None
        } else {
            self.cut_before(&sample, self.pending_audio.as_ref().map(|p| p.dts))
        };
        if let Some(mut prev) = self.pending_audio.take() {
            prev.duration = dur(prev.dts, ts);
            self.cur_audio.push(prev);
        }
        let done = match cut {
            Cut::None => false,
            Cut::Part => self.close_part(ts, false),
            Cut::Segment => self.close_part(ts, true),
        };
        self.pending_audio = Some(sample);
        done
    }

    fn note_wall(&mut self, ts: i64, wall_ms: i64) {
        let d = wall_ms - ts;
        self.wall_base = Some(self.wall_base.map_or(d, |b| b.min(d)));
    }

    fn start(&mut self, ts: i64, wall_ms: i64) {
        self.started = true;
        self.part_start = ts;
        let v = self.inits.back().map_or(0, |(v, _)| v + 1);
        let init = fmp4::init_segment(self.video.as_ref(), self.audio.as_ref());
        self.inits.push_back((v, init));
        self.open_segment(ts, wall_ms);
    }

    fn open_segment(&mut self, ts: i64, wall_ms: i64) {
        let init = self.inits.back().map_or(0, |(v, _)| *v);
        let wall = self.wall_base.map_or(wall_ms, |b| ts + b);
        self.segments.push_back(Segment {
            msn: self.next_msn,
            init,
            parts: Vec::new(),
            complete: false,
            start_ts: ts,
            wall_ms: wall,
            whole: None,
        });
        self.next_msn += 1;
        while self.segments.iter().filter(|s| s.complete).count() > self.cfg.window {
            self.segments.pop_front();
        }
        while self.inits.len() > 1
            && self.inits.front().map(|(v, _)| *v) != self.segments.front().map(|s| s.init)
        {
            self.inits.pop_front();
        }
    }

    /// Whether the part (or segment) ends before main-track sample `s`;
    /// `prev` is the previous main-track sample's time.
    fn cut_before(&self, s: &Sample, prev: Option<i64>) -> Cut {
        let Some(prev) = prev else { return Cut::None };
        let seg_start = self.segments.back().map_or(self.part_start, |g| g.start_ts);
        if s.keyframe && self.has_video && s.dts - seg_start >= self.cfg.min_segment_ms {
            return Cut::Segment;
        }
        if !self.has_video && s.dts - seg_start >= self.cfg.min_segment_ms {
            return Cut::Segment;
        }
        let frame = (s.dts - prev).clamp(1, 1000);
        if s.dts + frame - self.part_start > self.cfg.part_target_ms {
            Cut::Part
        } else {
            Cut::None
        }
    }

    /// Closes the part ending at `end`; opens a new segment when `segment`.
    fn close_part(&mut self, end: i64, segment: bool) -> bool {
        let video = std::mem::take(&mut self.cur_video);
        let split = self.cur_audio.partition_point(|a| a.dts < end);
        let audio: Vec<Sample> = self.cur_audio.drain(..split).collect();
        let made = if video.is_empty() && audio.is_empty() {
            false
        } else {
            let data = fmp4::fragment(self.frag_seq, &video, &audio);
            self.frag_seq = self.frag_seq.wrapping_add(1);
            let independent =
                video.first().is_some_and(|v| v.keyframe) || (!self.has_video && !audio.is_empty());
            if let Some(seg) = self.segments.back_mut() {
                seg.parts.push(Part {
                    duration_ms: (end - self.part_start).max(1),
                    independent,
                    data,
                });
            }
            self.parts_made += 1;
            true
        };
        self.part_start = end;
        if segment {
            if let Some(seg) = self.segments.back_mut() {
                seg.complete = true;
                let mut whole =
                    bytes::BytesMut::with_capacity(seg.parts.iter().map(|p| p.data.len()).sum());
                for p in &seg.parts {
                    whole.extend_from_slice(&p.data);
                }
                seg.whole = Some(whole.freeze());
                self.segments_made += 1;
            }
            let wall = self.wall_base.map_or(0, |b| end + b);
            self.open_segment(end, wall);
        }
        made
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    None,
    Part,
    Segment,
}

fn dur(from: i64, to: i64) -> u32 {
    u32::try_from((to - from).clamp(1, 10_000)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc_config() -> Tag {
        Tag::new(
            TagKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 0]),
        )
    }

    fn aac_config() -> Tag {
        Tag::new(
            TagKind::Audio,
            0,
            Bytes::from_static(&[0xAF, 0, 0x12, 0x10]),
        )
    }

    fn frame(ts: i64, key: bool) -> Tag {
        let b0 = if key { 0x17 } else { 0x27 };
        Tag::new(
            TagKind::Video,
            ts as u32,
            Bytes::from(vec![b0, 1, 0, 0, 0, 0, 0, 0, 2, 0x65, 0x88]),
        )
    }

    fn aac(ts: i64) -> Tag {
        Tag::new(
            TagKind::Audio,
            ts as u32,
            Bytes::from_static(&[0xAF, 1, 0x21, 0x10]),
        )
    }

    /// 25 fps video with a 1 s GOP and 23 ms audio, for `ms`.
    fn feed(s: &mut Segmenter, from: i64, ms: i64) {
        let mut a = from;
        for i in 0..ms / 40 {
            let ts = from + i * 40;
            while a <= ts {
                s.push(&aac(a), a, a + 1_000_000);
                a += 23;
            }
            s.push(&frame(ts, ts % 1000 == 0), ts, ts + 1_000_000);
        }
    }

    #[test]
    fn segments_start_at_keyframes_and_parts_stay_within_the_target() {
        let mut s = Segmenter::new(SegmenterConfig::default(), true);
        s.push(&avc_config(), 0, 0);
        s.push(&aac_config(), 0, 0);
        // Mid-GOP frames before the first keyframe are not used.
        s.push(&frame(960, false), 960, 1_000_960);
        feed(&mut s, 1000, 10_000);
        let segs = s.segments();
        assert_eq!(segs.front().unwrap().start_ts, 4000, "the last 6 of 9");
        let complete: Vec<&Segment> = segs.iter().filter(|g| g.complete).collect();
        assert_eq!(complete.len(), 6, "the window");
        for g in &complete {
            assert_eq!(g.duration_ms(), 1000, "one segment per 1 s GOP");
            assert!(g.parts[0].independent);
            for p in &g.parts {
                assert!(p.duration_ms <= 500, "part of {} ms", p.duration_ms);
                assert!(p.data.starts_with(&[0, 0]) && &p.data[4..8] == b"moof");
            }
            assert_eq!(g.parts.len(), 3, "480 + 480 + 40 ms");
        }
        assert_eq!(s.segments_made, 9);
        assert!(s.parts_made >= 27);
        assert_eq!(s.codecs(), ["avc1.64001f", "mp4a.40.2"]);
        assert!(s.init(segs[0].init).is_some());
        assert_eq!(
            segs.back().unwrap().wall_ms,
            segs.back().unwrap().start_ts + 1_000_000
        );
        let last = segs.back().unwrap();
        assert!(s.has_part(last.msn, Some(0)) || last.parts.is_empty());
        assert!(!s.has_part(last.msn + 1, Some(0)));
        assert!(s.has_part(last.msn - 1, None));
    }

    #[test]
    fn audio_only_streams_cut_on_audio() {
        let mut s = Segmenter::new(SegmenterConfig::default(), false);
        s.push(&aac_config(), 0, 0);
        for i in 0..200 {
            s.push(&aac(i * 23), i * 23, i * 23);
        }
        assert!(s.segments_made >= 3);
        assert!(
            s.segments()
                .iter()
                .all(|g| g.parts.iter().all(|p| p.duration_ms <= 500))
        );
        assert_eq!(s.codecs(), ["mp4a.40.2"]);
    }
}
