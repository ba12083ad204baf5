//! From an FLV byte stream (a publisher's body or an upstream's response)
//! to the tags a hub publishes, with one output timeline per stream.
//!
//! Pure code: a [`Session`] is one source connection; the [`Timeline`]
//! outlives sessions. The first session of a stream passes timestamps
//! through. A later session (failover, upstream switch, a publisher taking
//! over a relayed stream) is *spliced*: its tags are dropped until its first
//! start point (a coded keyframe; any audio frame in an audio-only stream),
//! then its codec configuration is sent restamped, then the keyframe, with
//! an offset that keeps the viewers' timestamps monotonic:
//!
//! * if the new source continues the same clock (its keyframe lands after
//!   the last tag sent and at most [`MAX_CONTINUATION_MS`] later), the
//!   previous offset is kept — a true continuation;
//! * otherwise the keyframe is placed one frame interval after the last tag
//!   sent.
//!
//! Within a session, a backward jump of more than [`BACKWARD_JUMP_MS`] or a
//! forward jump of more than [`FORWARD_JUMP_MS`] is treated the same way,
//! and small reorderings are clamped so output timestamps never decrease.

use super::hub::{ConfigKind, Outgoing, wire_ts};
use vantage_shared::flv::{Demuxer, FileHeader, FlvError, Tag, TagKind};

/// A new source whose clock lands at most this far after the last tag sent
/// is taken as continuing the same clock.
pub const MAX_CONTINUATION_MS: i64 = 3_000;
pub const BACKWARD_JUMP_MS: i64 = 1_000;
pub const FORWARD_JUMP_MS: i64 = 10_000;
/// Frame interval assumed until one is measured.
pub const DEFAULT_FRAME_MS: i64 = 40;

/// The output clock of one stream, across sessions.
#[derive(Debug, Clone)]
pub struct Timeline {
    last_out: Option<i64>,
    offset: i64,
    frame_ms: i64,
    last_frame_out: Option<i64>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            last_out: None,
            offset: 0,
            frame_ms: DEFAULT_FRAME_MS,
            last_frame_out: None,
        }
    }
}

impl Timeline {
    /// Last output timestamp.
    pub fn last_out(&self) -> Option<i64> {
        self.last_out
    }

    /// Measured interval between frames of the main track, ms.
    pub fn frame_ms(&self) -> i64 {
        self.frame_ms
    }
}

#[derive(Debug, Default)]
struct Pending {
    metadata: Option<Tag>,
    video: Option<Tag>,
    audio: Option<Tag>,
}

/// One source connection's demuxer and splice state.
#[derive(Debug)]
pub struct Session {
    demux: Demuxer,
    /// `None` until spliced.
    offset: Option<i64>,
    last_in: Option<i64>,
    seen_video: bool,
    header_taken: bool,
    /// The header of a source without an FLV byte stream (RTMP).
    given_header: Option<FileHeader>,
    pending: Pending,
    /// Media tags dropped while waiting for a splice point.
    pub dropped: u64,
    /// Tags accepted from this source.
    pub tags: u64,
}

/// What kind of configuration a tag carries, if any.
pub fn config_kind(tag: &Tag) -> Option<ConfigKind> {
    match tag.kind {
        TagKind::Script => Some(ConfigKind::Metadata),
        TagKind::Video if tag.is_sequence_header() => Some(ConfigKind::Video),
        TagKind::Audio if tag.is_sequence_header() => Some(ConfigKind::Audio),
        _ => None,
    }
}

impl Session {
    /// `max_tag` bounds one tag's body; larger tags are malformed input.
    pub fn new(max_tag: usize) -> Session {
        Session {
            demux: Demuxer::new(max_tag),
            offset: None,
            last_in: None,
            seen_video: false,
            header_taken: false,
            given_header: None,
            pending: Pending::default(),
            dropped: 0,
            tags: 0,
        }
    }

    /// The FLV header, once, as soon as it has been read.
    pub fn take_header(&mut self) -> Option<FileHeader> {
        if self.header_taken {
            return None;
        }
        let h = self.header()?;
        self.header_taken = true;
        Some(h)
    }

    /// For sources that deliver tags rather than FLV bytes (RTMP): the
    /// header to announce (what the stream carries). Ignored once taken.
    pub fn set_header(&mut self, h: FileHeader) {
        if !self.header_taken {
            self.given_header = Some(h);
        }
    }

    fn header(&self) -> Option<FileHeader> {
        self.demux.header().or(self.given_header)
    }

    /// Whether this session is past its splice point (sending media).
    pub fn spliced(&self) -> bool {
        self.offset.is_some()
    }

    /// Feeds bytes; appends what viewers should get to `out`. Tags read
    /// before an error are still appended.
    pub fn push(
        &mut self,
        tl: &mut Timeline,
        data: &[u8],
        out: &mut Vec<Outgoing>,
    ) -> Result<(), FlvError> {
        self.demux.push(data);
        while let Some(tag) = self.demux.next_tag()? {
            self.accept(tl, tag, out);
        }
        Ok(())
    }

    /// Takes one tag of a source that is not an FLV byte stream (RTMP);
    /// appends what viewers should get to `out`.
    pub fn push_tag(&mut self, tl: &mut Timeline, tag: Tag, out: &mut Vec<Outgoing>) {
        self.accept(tl, tag, out);
    }

    fn has_video(&self) -> bool {
        self.seen_video || self.header().is_some_and(|h| h.has_video)
    }

    fn is_start(&self, tag: &Tag) -> bool {
        tag.is_coded_keyframe()
            || (tag.is_audio() && !tag.is_sequence_header() && !self.has_video())
    }

    fn accept(&mut self, tl: &mut Timeline, tag: Tag, out: &mut Vec<Outgoing>) {
        self.tags += 1;
        if tag.is_video() {
            self.seen_video = true;
        }
        let in_ts = i64::from(tag.timestamp_ms);
        let config = config_kind(&tag);
        let offset = match (self.offset, tl.last_out) {
            (Some(off), _) => {
                let jumped = self.last_in.is_some_and(|last| {
                    in_ts + BACKWARD_JUMP_MS < last || in_ts > last + FORWARD_JUMP_MS
                });
                if jumped {
                    let off = tl.last_out.unwrap_or(0) + tl.frame_ms - in_ts;
                    self.offset = Some(off);
                    tl.offset = off;
                    off
                } else {
                    off
                }
            }
            // First source of the stream: timestamps pass through.
            (None, None) => {
                self.offset = Some(0);
                tl.offset = 0;
                0
            }
            (None, Some(last_out)) => {
                if let Some(kind) = config {
                    let slot = match kind {
                        ConfigKind::Metadata => &mut self.pending.metadata,
                        ConfigKind::Video => &mut self.pending.video,
                        ConfigKind::Audio => &mut self.pending.audio,
                    };
                    *slot = Some(tag);
                    return;
                }
                if !self.is_start(&tag) {
                    self.dropped += 1;
                    return;
                }
                let same_clock = in_ts + tl.offset;
                let off = if same_clock > last_out && same_clock - last_out <= MAX_CONTINUATION_MS {
                    tl.offset
                } else {
                    last_out + tl.frame_ms - in_ts
                };
                self.offset = Some(off);
                tl.offset = off;
                let ts = (in_ts + off).max(last_out);
                let pending = std::mem::take(&mut self.pending);
                let configs = [
                    (ConfigKind::Metadata, pending.metadata),
                    (ConfigKind::Video, pending.video),
                    (ConfigKind::Audio, pending.audio),
                ];
                for (kind, t) in configs {
                    if let Some(t) = t {
                        let t = t.with_timestamp(wire_ts(ts));
                        out.push(Outgoing {
                            data: t.encode(),
                            ts,
                            start: false,
                            config: Some((kind, t)),
                            urgent: true,
                            // Viewers have metadata already; joiners get
                            // the new one.
                            inline: kind != ConfigKind::Metadata,
                        });
                    }
                }
                off
            }
        };
        self.emit(tl, tag, in_ts, offset, config, out);
    }

    fn emit(
        &mut self,
        tl: &mut Timeline,
        tag: Tag,
        in_ts: i64,
        offset: i64,
        config: Option<ConfigKind>,
        out: &mut Vec<Outgoing>,
    ) {
        let ts = (in_ts + offset).max(tl.last_out.unwrap_or(i64::MIN));
        let start = config.is_none() && self.is_start(&tag);
        let tag = if ts == in_ts {
            tag
        } else {
            tag.with_timestamp(wire_ts(ts))
        };
        let main_track = if self.has_video() {
            tag.is_video()
        } else {
            tag.is_audio()
        };
        if config.is_none() && main_track {
            if let Some(prev) = tl.last_frame_out {
                let d = ts - prev;
                if (1..=200).contains(&d) {
                    tl.frame_ms = d;
                }
            }
            tl.last_frame_out = Some(ts);
        }
        tl.last_out = Some(ts);
        self.last_in = Some(in_ts);
        let urgent = !tag.is_audio() || !self.has_video();
        // Metadata past the start only updates what joiners get.
        let inline = config != Some(ConfigKind::Metadata) || ts == 0;
        out.push(Outgoing {
            data: tag.encode(),
            ts,
            start,
            config: config.map(|k| (k, tag)),
            urgent,
            inline,
        });
    }

    /// At end of input: an error if the source stopped inside a tag.
    pub fn finish(&mut self) -> Result<(), FlvError> {
        self.demux.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    fn flv(tags: &[Tag]) -> Bytes {
        let mut b = BytesMut::new();
        b.extend_from_slice(
            &FileHeader {
                has_audio: true,
                has_video: true,
            }
            .encode(),
        );
        for t in tags {
            t.encode_into(&mut b);
        }
        b.freeze()
    }

    fn v(ts: u32, key: bool) -> Tag {
        Tag::new(
            TagKind::Video,
            ts,
            Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0, 1, 2, 3]),
        )
    }

    fn a(ts: u32) -> Tag {
        Tag::new(TagKind::Audio, ts, Bytes::from_static(&[0xAF, 1, 5, 5]))
    }

    fn vcfg() -> Tag {
        Tag::new(
            TagKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
        )
    }

    fn run(s: &mut Session, tl: &mut Timeline, tags: &[Tag], with_header: bool) -> Vec<Outgoing> {
        let mut data = flv(tags);
        if !with_header {
            data = data.slice(13..);
        }
        let mut out = Vec::new();
        s.push(tl, &data, &mut out).unwrap();
        out
    }

    #[test]
    fn first_session_passes_timestamps_through() {
        let mut tl = Timeline::default();
        let mut s = Session::new(1 << 20);
        let out = run(
            &mut s,
            &mut tl,
            &[vcfg(), v(1000, true), a(1010), v(1040, false)],
            true,
        );
        assert!(s.take_header().is_some());
        assert!(s.take_header().is_none());
        let ts: Vec<i64> = out.iter().map(|o| o.ts).collect();
        assert_eq!(ts, [0, 1000, 1010, 1040]);
        assert!(out[0].config.is_some() && !out[0].start);
        assert!(out[1].start && !out[3].start);
        assert!(!out[2].urgent, "audio alone does not wake viewers");
        assert_eq!(tl.frame_ms(), 40);
    }

    #[test]
    fn a_new_session_is_spliced_at_a_keyframe_with_monotonic_timestamps() {
        let mut tl = Timeline::default();
        let mut s1 = Session::new(1 << 20);
        run(
            &mut s1,
            &mut tl,
            &[vcfg(), v(5000, true), v(5040, false)],
            true,
        );
        // A backup with an unrelated clock, joining mid-GOP.
        let mut s2 = Session::new(1 << 20);
        let out = run(
            &mut s2,
            &mut tl,
            &[vcfg(), v(100, false), a(110), v(140, true), v(180, false)],
            true,
        );
        assert_eq!(s2.dropped, 2);
        let ts: Vec<i64> = out.iter().map(|o| o.ts).collect();
        assert_eq!(ts, [5080, 5080, 5120], "config, keyframe, next frame");
        assert!(out[0].config.is_some());
        assert!(out[1].start);
        assert_eq!(wire_ts(5080), 5080);
        assert_eq!(
            &out[1].data[4..7],
            &[0, 0x13, 0xD8],
            "the tag itself is restamped"
        );
    }

    #[test]
    fn metadata_after_the_start_only_updates_joiners() {
        let meta = Tag::new(
            TagKind::Script,
            0,
            Bytes::from_static(b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00\x00\x00\x09"),
        );
        let mut tl = Timeline::default();
        let mut s1 = Session::new(1 << 20);
        let out = run(
            &mut s1,
            &mut tl,
            &[meta.clone(), v(0, true), v(40, false)],
            true,
        );
        assert!(out[0].inline, "metadata at 0 goes to viewers");
        let mut s2 = Session::new(1 << 20);
        let out = run(&mut s2, &mut tl, &[meta, v(500, true)], true);
        assert!(out[0].config.is_some() && !out[0].inline);
        assert!(out[1].inline && out[1].start);
    }

    #[test]
    fn a_backup_on_the_same_clock_continues_it() {
        let mut tl = Timeline::default();
        let mut s1 = Session::new(1 << 20);
        run(&mut s1, &mut tl, &[v(5000, true), v(5040, false)], true);
        let mut s2 = Session::new(1 << 20);
        let out = run(&mut s2, &mut tl, &[v(5000, false), v(6000, true)], true);
        assert_eq!(out[0].ts, 6000, "same clock: no rewrite");
    }

    #[test]
    fn jumps_inside_a_session_are_smoothed() {
        let mut tl = Timeline::default();
        let mut s = Session::new(1 << 20);
        let out = run(
            &mut s,
            &mut tl,
            &[
                v(50_000, true),
                v(50_040, false),
                v(10, false),
                v(50, false),
            ],
            true,
        );
        let ts: Vec<i64> = out.iter().map(|o| o.ts).collect();
        assert_eq!(ts, [50_000, 50_040, 50_080, 50_120]);
    }

    #[test]
    fn audio_only_streams_start_on_any_audio_frame() {
        let mut tl = Timeline::default();
        let mut s = Session::new(1 << 20);
        let mut data = BytesMut::new();
        data.extend_from_slice(
            &FileHeader {
                has_audio: true,
                has_video: false,
            }
            .encode(),
        );
        a(0).encode_into(&mut data);
        let mut out = Vec::new();
        s.push(&mut tl, &data, &mut out).unwrap();
        assert!(out[0].start && out[0].urgent);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut tl = Timeline::default();
        let mut s = Session::new(1 << 20);
        let mut out = Vec::new();
        assert!(
            s.push(&mut tl, b"GET / HTTP/1.1\r\n\r\n", &mut out)
                .is_err()
        );
    }
}
