//! FLV container: file header, tags, an incremental demuxer and a muxer.
//!
//! The model (Adobe FLV v10.1 §E, plus the "enhanced RTMP" v1/v2 video and
//! audio extensions):
//!
//! ```text
//! "FLV" 0x01 flags:u8 data_offset:u32   (data_offset ≥ 9; bytes past 9 are skipped)
//! PreviousTagSize0:u32 = 0
//! { tag_type:u8 data_size:u24 timestamp:u24 timestamp_ext:u8 stream_id:u24 body PreviousTagSize:u32 }*
//! ```
//!
//! * [`Demuxer`] takes bytes in any chunking ([`Demuxer::push`]) and hands
//!   out the [`FileHeader`] then [`Tag`]s ([`Demuxer::next_tag`]). A tag's
//!   body is a slice of the demuxer's own buffer (no copy per tag).
//! * [`Tag::encode`] produces header + body + PreviousTagSize as ONE
//!   contiguous [`Bytes`], so a relay encodes a tag once and shares it with
//!   every viewer; [`Tag::with_timestamp`] is a cheap copy for timestamp
//!   rewriting (the body is reference-counted).
//! * [`Tag::is_keyframe`], [`Tag::is_sequence_header`], [`Tag::is_metadata`]
//!   and [`Tag::video_codec`] look only at the first bytes of the body.
//! * [`amf`] reads the `onMetaData` script tag into a flat list of values.
//!
//! Strictness: a PreviousTagSize that differs from `11 + data_size` is an
//! error ([`FlvError::BadPreviousTagSize`]), as is PreviousTagSize0 ≠ 0. Real
//! muxers (ffmpeg, OBS, librtmp dumps) always write the exact value, and a
//! mismatch almost always means a truncated or spliced byte stream whose
//! following tags would be read from the wrong offset; failing fast is safer
//! for a relay than resynchronising on guessed boundaries. Encrypted tags
//! (filter bit) are refused ([`FlvError::Filtered`]).

pub mod amf;
mod demux;
mod tag;

#[cfg(test)]
mod tests;

use bytes::{BufMut, Bytes, BytesMut};

pub use demux::Demuxer;
pub use tag::Tag;

/// Length of the FLV file header (signature, version, flags, data offset).
pub const HEADER_LEN: usize = 9;
/// Length of a tag header (type, size, timestamp, stream id).
pub const TAG_HEADER_LEN: usize = 11;
/// Length of a PreviousTagSize field.
pub const PREV_TAG_SIZE_LEN: usize = 4;
/// Largest body an FLV tag can describe (24-bit data size).
pub const MAX_BODY_LEN: usize = 0x00FF_FFFF;
/// Largest data offset accepted in a file header: room for future header
/// extensions, not for an attacker to make the demuxer skip megabytes.
pub const MAX_DATA_OFFSET: u32 = 64 * 1024;
/// A sensible default for [`Demuxer::new`]: 8 MiB covers 4K intra frames.
pub const DEFAULT_MAX_TAG_SIZE: usize = 8 * 1024 * 1024;

/// FLV tag type codes.
pub const TAG_TYPE_AUDIO: u8 = 8;
pub const TAG_TYPE_VIDEO: u8 = 9;
pub const TAG_TYPE_SCRIPT: u8 = 18;

/// The FLV file header's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub has_audio: bool,
    pub has_video: bool,
}

impl FileHeader {
    /// The 9-byte header (version 1, data offset 9) followed by
    /// PreviousTagSize0 (4 zero bytes): 13 bytes, what a viewer gets first.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + PREV_TAG_SIZE_LEN);
        b.put_slice(b"FLV");
        b.put_u8(1);
        b.put_u8(self.flags());
        b.put_u32(HEADER_LEN as u32);
        b.put_u32(0);
        b.freeze()
    }

    /// The flags byte: audio = 0x04, video = 0x01.
    pub fn flags(&self) -> u8 {
        (if self.has_audio { 0x04 } else { 0 }) | (if self.has_video { 0x01 } else { 0 })
    }
}

/// What a tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagKind {
    Audio,
    Video,
    Script,
}

impl TagKind {
    /// The FLV tag type code (8, 9, 18).
    pub fn code(self) -> u8 {
        match self {
            TagKind::Audio => TAG_TYPE_AUDIO,
            TagKind::Video => TAG_TYPE_VIDEO,
            TagKind::Script => TAG_TYPE_SCRIPT,
        }
    }

    /// The kind of a tag type code, `None` for unknown codes.
    pub fn from_code(code: u8) -> Option<TagKind> {
        match code {
            TAG_TYPE_AUDIO => Some(TagKind::Audio),
            TAG_TYPE_VIDEO => Some(TagKind::Video),
            TAG_TYPE_SCRIPT => Some(TagKind::Script),
            _ => None,
        }
    }
}

/// Video codec of a video tag.
///
/// Legacy FLV codec ids: 2 Sorenson H.263, 3 screen video, 4 VP6, 5 VP6
/// alpha, 6 screen video 2, 7 AVC, 12 HEVC (the widespread non-Adobe
/// extension). Enhanced RTMP tags carry a FourCC instead: `avc1` → `Avc`,
/// `hvc1` → `Hevc`, any other FourCC (`av01`, `vp09`, …) → `Other(0)` — see
/// [`Tag::video_fourcc`] for which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    Avc,
    Hevc,
    Other(u8),
}

/// Legacy FLV codec id of AVC.
pub const CODEC_ID_AVC: u8 = 7;
/// Legacy (non-Adobe extension) FLV codec id of HEVC.
pub const CODEC_ID_HEVC: u8 = 12;
/// Legacy FLV sound format of AAC.
pub const SOUND_FORMAT_AAC: u8 = 10;

/// Why a byte stream is not acceptable FLV. Every error is final for the
/// stream: the demuxer returns the same error again on later calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("not an FLV stream (signature is not \"FLV\")")]
    BadSignature,
    #[error("unsupported FLV version {0} (only 1 exists)")]
    UnsupportedVersion(u8),
    #[error("bad FLV header length (data offset) {0}")]
    BadHeaderLength(u32),
    #[error("FLV tag body of {size} bytes exceeds the limit of {max} bytes")]
    TagTooLarge { size: usize, max: usize },
    #[error("unknown FLV tag type {0}")]
    UnknownTagType(u8),
    #[error("FLV PreviousTagSize is {got}, expected {expected}")]
    BadPreviousTagSize { expected: u32, got: u32 },
    #[error("encrypted (filtered) FLV tags are not supported")]
    Filtered,
    #[error("FLV stream ended inside the header or a tag ({buffered} bytes pending)")]
    Truncated { buffered: usize },
}

impl FlvError {
    /// A short, stable label for metrics (`reason="…"`).
    pub fn label(&self) -> &'static str {
        match self {
            FlvError::BadSignature => "bad_signature",
            FlvError::UnsupportedVersion(_) => "unsupported_version",
            FlvError::BadHeaderLength(_) => "bad_header_length",
            FlvError::TagTooLarge { .. } => "tag_too_large",
            FlvError::UnknownTagType(_) => "unknown_tag_type",
            FlvError::BadPreviousTagSize { .. } => "bad_previous_tag_size",
            FlvError::Filtered => "filtered",
            FlvError::Truncated { .. } => "truncated",
        }
    }
}
