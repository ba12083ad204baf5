//! One FLV tag: what it is (kind, keyframe, sequence header, codec) and its
//! encoding.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CODEC_ID_AVC, CODEC_ID_HEVC, MAX_BODY_LEN, PREV_TAG_SIZE_LEN, SOUND_FORMAT_AAC, TAG_HEADER_LEN,
    TagKind, VideoCodec,
};

/// An FLV tag. `body` is reference-counted: cloning a tag or rewriting its
/// timestamp never copies media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub kind: TagKind,
    /// Milliseconds, including the extended (upper 8 bits) timestamp byte.
    pub timestamp_ms: u32,
    /// 24 bits on the wire (always 0 in practice); higher bits are dropped
    /// when encoding.
    pub stream_id: u32,
    pub body: Bytes,
}

/// Enhanced-RTMP video/audio packet types used below.
const EX_SEQUENCE_START: u8 = 0;
const EX_CODED_FRAMES: u8 = 1;
const EX_SEQUENCE_END: u8 = 2;
const EX_CODED_FRAMES_X: u8 = 3;
const EX_MPEG2TS_SEQUENCE_START: u8 = 5;
const EX_VIDEO_MULTITRACK: u8 = 6;
const EX_MOD_EX: u8 = 7;
const EX_AUDIO_MULTITRACK: u8 = 5;
/// Legacy sound format 9 announces an enhanced-RTMP audio ex-header.
const SOUND_FORMAT_EX_HEADER: u8 = 9;

/// What the first bytes of a video body say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VideoInfo {
    frame_type: u8,
    codec: VideoCodec,
    fourcc: Option<[u8; 4]>,
    packet: Packet,
    /// Offset of the SI24 composition time, when the packet carries one.
    cts_at: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packet {
    SequenceHeader,
    Coded,
    EndOfSequence,
    Other,
}

impl Tag {
    /// A tag with stream id 0.
    pub fn new(kind: TagKind, timestamp_ms: u32, body: Bytes) -> Tag {
        Tag {
            kind,
            timestamp_ms,
            stream_id: 0,
            body,
        }
    }

    pub fn is_video(&self) -> bool {
        self.kind == TagKind::Video
    }

    pub fn is_audio(&self) -> bool {
        self.kind == TagKind::Audio
    }

    /// A video tag of frame type 1 (key frame), legacy or enhanced-RTMP.
    /// Note that AVC/HEVC sequence headers and end-of-sequence markers are
    /// sent with frame type 1 too: use [`Tag::is_coded_keyframe`] to find
    /// where a viewer can start decoding.
    pub fn is_keyframe(&self) -> bool {
        self.video_info().is_some_and(|v| v.frame_type == 1)
    }

    /// A key frame that carries coded picture data (not a sequence header,
    /// end of sequence or metadata): a GOP start.
    pub fn is_coded_keyframe(&self) -> bool {
        self.video_info()
            .is_some_and(|v| v.frame_type == 1 && v.packet == Packet::Coded)
    }

    /// A codec configuration record: AVC/HEVC packet type 0, enhanced-RTMP
    /// SequenceStart (video or audio), or AAC packet type 0.
    pub fn is_sequence_header(&self) -> bool {
        match self.kind {
            TagKind::Video => self
                .video_info()
                .is_some_and(|v| v.packet == Packet::SequenceHeader),
            TagKind::Audio => self.audio_packet() == Some(Packet::SequenceHeader),
            TagKind::Script => false,
        }
    }

    /// The end-of-sequence marker of AVC/HEVC (packet type 2) or enhanced
    /// SequenceEnd.
    pub fn is_end_of_sequence(&self) -> bool {
        self.video_info()
            .is_some_and(|v| v.packet == Packet::EndOfSequence)
    }

    /// A script tag named `onMetaData` (or `@setDataFrame` + `onMetaData`,
    /// as some RTMP-to-FLV writers leave it).
    pub fn is_metadata(&self) -> bool {
        if self.kind != TagKind::Script {
            return false;
        }
        let body = &self.body[..];
        match amf0_string(body) {
            Some((b"onMetaData", _)) => true,
            Some((b"@setDataFrame", rest)) => {
                matches!(amf0_string(rest), Some((b"onMetaData", _)))
            }
            _ => false,
        }
    }

    /// The video codec, `None` for non-video tags and empty bodies.
    pub fn video_codec(&self) -> Option<VideoCodec> {
        self.video_info().map(|v| v.codec)
    }

    /// The FourCC of an enhanced-RTMP video tag (`avc1`, `hvc1`, `av01`,
    /// `vp09`, …), `None` for legacy tags.
    pub fn video_fourcc(&self) -> Option<[u8; 4]> {
        self.video_info().and_then(|v| v.fourcc)
    }

    /// The legacy sound format of an audio tag (10 = AAC, 2 = MP3, 9 =
    /// enhanced-RTMP ex-header, …).
    pub fn sound_format(&self) -> Option<u8> {
        if self.kind != TagKind::Audio {
            return None;
        }
        self.body.first().map(|b| b >> 4)
    }

    /// The composition time offset (pts − dts, ms) of an AVC/HEVC coded
    /// frame; `None` when the tag carries none.
    pub fn composition_time_ms(&self) -> Option<i32> {
        let at = self.video_info()?.cts_at?;
        let b = self.body.get(at..at + 3)?;
        let raw = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // Sign-extend the 24-bit value.
        Some(((raw << 8) as i32) >> 8)
    }

    /// Bytes of the encoded tag: 11 + body + 4.
    pub fn encoded_len(&self) -> usize {
        TAG_HEADER_LEN + self.body.len().min(MAX_BODY_LEN) + PREV_TAG_SIZE_LEN
    }

    /// Tag header + body + PreviousTagSize as one contiguous buffer.
    ///
    /// A body longer than [`MAX_BODY_LEN`] cannot be described by FLV; it is
    /// truncated to that length so the output stays well-formed (the
    /// demuxer never produces such tags).
    pub fn encode(&self) -> Bytes {
        let body = &self.body[..self.body.len().min(MAX_BODY_LEN)];
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.put_header(&mut b, body.len());
        b.put_slice(body);
        b.put_u32((TAG_HEADER_LEN + body.len()) as u32);
        b.freeze()
    }

    /// Appends the encoded tag to `out` (for writers batching several tags).
    pub fn encode_into(&self, out: &mut BytesMut) {
        let body = &self.body[..self.body.len().min(MAX_BODY_LEN)];
        out.reserve(self.encoded_len());
        self.put_header(out, body.len());
        out.put_slice(body);
        out.put_u32((TAG_HEADER_LEN + body.len()) as u32);
    }

    fn put_header(&self, b: &mut BytesMut, body_len: usize) {
        b.put_u8(self.kind.code());
        put_u24(b, body_len as u32);
        put_u24(b, self.timestamp_ms & 0x00FF_FFFF);
        b.put_u8((self.timestamp_ms >> 24) as u8);
        put_u24(b, self.stream_id & 0x00FF_FFFF);
    }

    /// The same tag at another timestamp (the body is shared, not copied).
    pub fn with_timestamp(&self, ts: u32) -> Tag {
        Tag {
            kind: self.kind,
            timestamp_ms: ts,
            stream_id: self.stream_id,
            body: self.body.clone(),
        }
    }

    fn video_info(&self) -> Option<VideoInfo> {
        if self.kind != TagKind::Video {
            return None;
        }
        let body = &self.body[..];
        let b0 = *body.first()?;
        if b0 & 0x80 == 0 {
            let codec_id = b0 & 0x0F;
            let codec = match codec_id {
                CODEC_ID_AVC => VideoCodec::Avc,
                CODEC_ID_HEVC => VideoCodec::Hevc,
                other => VideoCodec::Other(other),
            };
            let (packet, cts_at) = match codec {
                VideoCodec::Avc | VideoCodec::Hevc => match body.get(1) {
                    Some(0) => (Packet::SequenceHeader, None),
                    Some(1) => (Packet::Coded, Some(2)),
                    Some(2) => (Packet::EndOfSequence, None),
                    _ => (Packet::Other, None),
                },
                VideoCodec::Other(_) => (Packet::Coded, None),
            };
            return Some(VideoInfo {
                frame_type: b0 >> 4,
                codec,
                fourcc: None,
                packet,
                cts_at,
            });
        }
        // Enhanced RTMP: IsExHeader, 3-bit frame type, 4-bit packet type.
        let frame_type = (b0 >> 4) & 0x07;
        let (mut packet_type, mut pos) = resolve_mod_ex(body, b0 & 0x0F, 1)?;
        if packet_type == EX_VIDEO_MULTITRACK {
            // Multitrack type (high nibble) and the tracks' packet type; in
            // every layout the next four bytes are the (first) FourCC.
            packet_type = body.get(pos)? & 0x0F;
            pos += 1;
        }
        let fourcc: [u8; 4] = body.get(pos..pos + 4)?.try_into().ok()?;
        let codec = match &fourcc {
            b"avc1" => VideoCodec::Avc,
            b"hvc1" => VideoCodec::Hevc,
            _ => VideoCodec::Other(0),
        };
        let packet = match packet_type {
            EX_SEQUENCE_START | EX_MPEG2TS_SEQUENCE_START => Packet::SequenceHeader,
            EX_CODED_FRAMES | EX_CODED_FRAMES_X => Packet::Coded,
            EX_SEQUENCE_END => Packet::EndOfSequence,
            _ => Packet::Other,
        };
        // Only single-track CodedFrames of avc1/hvc1 carry a composition time.
        let cts_at = (b0 & 0x0F != EX_VIDEO_MULTITRACK
            && packet_type == EX_CODED_FRAMES
            && matches!(codec, VideoCodec::Avc | VideoCodec::Hevc))
        .then_some(pos + 4);
        Some(VideoInfo {
            frame_type,
            codec,
            fourcc: Some(fourcc),
            packet,
            cts_at,
        })
    }

    fn audio_packet(&self) -> Option<Packet> {
        if self.kind != TagKind::Audio {
            return None;
        }
        let body = &self.body[..];
        let b0 = *body.first()?;
        match b0 >> 4 {
            SOUND_FORMAT_AAC => Some(match body.get(1)? {
                0 => Packet::SequenceHeader,
                _ => Packet::Coded,
            }),
            SOUND_FORMAT_EX_HEADER => {
                let (mut packet_type, pos) = resolve_mod_ex(body, b0 & 0x0F, 1)?;
                if packet_type == EX_AUDIO_MULTITRACK {
                    packet_type = body.get(pos)? & 0x0F;
                }
                Some(match packet_type {
                    EX_SEQUENCE_START => Packet::SequenceHeader,
                    EX_CODED_FRAMES => Packet::Coded,
                    _ => Packet::Other,
                })
            }
            _ => Some(Packet::Coded),
        }
    }
}

/// Skips enhanced-RTMP ModEx prefixes: returns the real packet type and the
/// offset after it. Bounded by the body length (each round consumes bytes).
fn resolve_mod_ex(body: &[u8], packet_type: u8, mut pos: usize) -> Option<(u8, usize)> {
    let mut packet_type = packet_type;
    while packet_type == EX_MOD_EX {
        let mut size = usize::from(*body.get(pos)?) + 1;
        pos += 1;
        if size == 256 {
            let b = body.get(pos..pos + 2)?;
            size = usize::from(u16::from_be_bytes([b[0], b[1]])) + 1;
            pos += 2;
        }
        pos = pos.checked_add(size)?;
        // ModEx type (high nibble) and the next packet type (low nibble).
        packet_type = body.get(pos)? & 0x0F;
        pos += 1;
    }
    Some((packet_type, pos))
}

/// An AMF0 string value (marker 0x02, u16 length, bytes) and what follows.
fn amf0_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    if *b.first()? != 0x02 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*b.get(1)?, *b.get(2)?]));
    let s = b.get(3..3 + len)?;
    Some((s, &b[3 + len..]))
}

fn put_u24(b: &mut BytesMut, v: u32) {
    b.put_u8((v >> 16) as u8);
    b.put_u8((v >> 8) as u8);
    b.put_u8(v as u8);
}
