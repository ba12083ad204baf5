//! Incremental FLV demuxer: bytes in (any chunking), header then tags out.

use bytes::{Buf, BytesMut};

use super::{
    FileHeader, FlvError, HEADER_LEN, MAX_BODY_LEN, MAX_DATA_OFFSET, PREV_TAG_SIZE_LEN,
    TAG_HEADER_LEN, Tag, TagKind,
};

/// Where the demuxer is in the byte stream.
#[derive(Debug)]
enum State {
    /// Waiting for the 9-byte file header.
    Header,
    /// Skipping header bytes past the 9 we know (data offset > 9).
    SkipOffset(usize),
    /// Waiting for PreviousTagSize0.
    PrevTagSize0,
    /// Reading tags.
    Tags,
    /// Failed; the error is returned again by every call.
    Failed(FlvError),
}

/// Push-driven FLV demuxer.
///
/// ```
/// use vantage_shared::flv::{Demuxer, FileHeader, Tag, TagKind};
/// let mut wire = FileHeader { has_audio: false, has_video: true }.encode().to_vec();
/// wire.extend_from_slice(&Tag::new(TagKind::Video, 40, vec![0x17, 1, 0, 0, 0].into()).encode());
/// let mut d = Demuxer::new(1 << 20);
/// d.push(&wire[..5]);
/// assert_eq!(d.next_tag(), Ok(None)); // needs more bytes
/// d.push(&wire[5..]);
/// let tag = d.next_tag().unwrap().unwrap();
/// assert!(tag.is_keyframe() && tag.timestamp_ms == 40);
/// assert_eq!(d.header().map(|h| h.has_video), Some(true));
/// ```
///
/// Memory: the demuxer buffers at most one incomplete tag plus whatever the
/// caller pushes without pulling; call [`Demuxer::next_tag`] until it
/// returns `Ok(None)` after each [`Demuxer::push`]. Tag bodies are slices of
/// the internal buffer (`split_to` + `freeze`), so a tag costs no copy here.
#[derive(Debug)]
pub struct Demuxer {
    buf: BytesMut,
    state: State,
    header: Option<FileHeader>,
    max_tag_size: usize,
    consumed: u64,
    tags: u64,
}

impl Demuxer {
    /// A demuxer refusing tag bodies larger than `max_tag_size` bytes
    /// (clamped to FLV's own limit, [`MAX_BODY_LEN`]).
    pub fn new(max_tag_size: usize) -> Self {
        Demuxer {
            buf: BytesMut::new(),
            state: State::Header,
            header: None,
            max_tag_size: max_tag_size.min(MAX_BODY_LEN),
            consumed: 0,
            tags: 0,
        }
    }

    /// Appends received bytes. After a failure the bytes are dropped.
    pub fn push(&mut self, data: &[u8]) {
        if matches!(self.state, State::Failed(_)) {
            return;
        }
        self.buf.extend_from_slice(data);
        // Header errors are kept in the state and surface in next_tag.
        let _ = self.advance_preamble();
    }

    /// The file header, once its 9 bytes have arrived and were valid.
    pub fn header(&self) -> Option<FileHeader> {
        self.header
    }

    /// The next complete tag. `Ok(None)`: more bytes are needed. An error
    /// is final: this and every later call return it.
    pub fn next_tag(&mut self) -> Result<Option<Tag>, FlvError> {
        if !self.advance_preamble()? {
            return Ok(None);
        }
        if self.buf.len() < TAG_HEADER_LEN {
            return Ok(None);
        }
        let h = &self.buf[..TAG_HEADER_LEN];
        // Two reserved bits (ignored), the filter bit, then the 5-bit type.
        if h[0] & 0x20 != 0 {
            return self.fail(FlvError::Filtered);
        }
        let type_code = h[0] & 0x1F;
        let Some(kind) = TagKind::from_code(type_code) else {
            return self.fail(FlvError::UnknownTagType(type_code));
        };
        let size = u24(&h[1..4]) as usize;
        if size > self.max_tag_size {
            return self.fail(FlvError::TagTooLarge {
                size,
                max: self.max_tag_size,
            });
        }
        let timestamp_ms = u24(&h[4..7]) | (u32::from(h[7]) << 24);
        let stream_id = u24(&h[8..11]);
        let total = TAG_HEADER_LEN + size + PREV_TAG_SIZE_LEN;
        if self.buf.len() < total {
            // Make room for the whole tag at once so its body ends up in
            // one allocation instead of growing chunk by chunk.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let at = TAG_HEADER_LEN + size;
        let got = u32::from_be_bytes([
            self.buf[at],
            self.buf[at + 1],
            self.buf[at + 2],
            self.buf[at + 3],
        ]);
        let expected = (TAG_HEADER_LEN + size) as u32;
        if got != expected {
            return self.fail(FlvError::BadPreviousTagSize { expected, got });
        }
        self.buf.advance(TAG_HEADER_LEN);
        let body = self.buf.split_to(size).freeze();
        self.buf.advance(PREV_TAG_SIZE_LEN);
        self.consumed += total as u64;
        self.tags += 1;
        Ok(Some(Tag {
            kind,
            timestamp_ms,
            stream_id,
            body,
        }))
    }

    /// Bytes received and not yet returned as header or tags.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes consumed as header and complete tags so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Tags returned so far.
    pub fn tags_read(&self) -> u64 {
        self.tags
    }

    /// The error the stream failed with, if it did.
    pub fn error(&self) -> Option<&FlvError> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Call at the end of the input: `Ok` when it ended on a tag boundary
    /// (after at least a complete header), [`FlvError::Truncated`] when it
    /// stopped inside the header or a tag, or the stream's earlier error.
    pub fn finish(&mut self) -> Result<(), FlvError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        match self.state {
            State::Tags if self.buf.is_empty() => Ok(()),
            _ => Err(FlvError::Truncated {
                buffered: self.buf.len(),
            }),
        }
    }

    /// Moves through header, skipped bytes and PreviousTagSize0. `Ok(true)`
    /// once tags can be read.
    fn advance_preamble(&mut self) -> Result<bool, FlvError> {
        loop {
            match &mut self.state {
                State::Tags => return Ok(true),
                State::Failed(e) => return Err(e.clone()),
                State::Header => {
                    if self.buf.len() < HEADER_LEN {
                        // Check the signature early so a non-FLV body is
                        // refused at its first bytes.
                        if self.buf.iter().zip(b"FLV").any(|(a, b)| a != b) {
                            self.fail(FlvError::BadSignature)?;
                        }
                        return Ok(false);
                    }
                    let mut h = [0u8; HEADER_LEN];
                    h.copy_from_slice(&self.buf[..HEADER_LEN]);
                    if &h[..3] != b"FLV" {
                        self.fail(FlvError::BadSignature)?;
                    }
                    if h[3] != 1 {
                        self.fail(FlvError::UnsupportedVersion(h[3]))?;
                    }
                    let flags = h[4];
                    let offset = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
                    if offset < HEADER_LEN as u32 || offset > MAX_DATA_OFFSET {
                        self.fail(FlvError::BadHeaderLength(offset))?;
                    }
                    self.header = Some(FileHeader {
                        has_audio: flags & 0x04 != 0,
                        has_video: flags & 0x01 != 0,
                    });
                    self.buf.advance(HEADER_LEN);
                    self.consumed += HEADER_LEN as u64;
                    self.state = State::SkipOffset(offset as usize - HEADER_LEN);
                }
                State::SkipOffset(left) => {
                    let n = (*left).min(self.buf.len());
                    *left -= n;
                    let done = *left == 0;
                    self.buf.advance(n);
                    self.consumed += n as u64;
                    if !done {
                        return Ok(false);
                    }
                    self.state = State::PrevTagSize0;
                }
                State::PrevTagSize0 => {
                    if self.buf.len() < PREV_TAG_SIZE_LEN {
                        return Ok(false);
                    }
                    let got = self.buf.get_u32();
                    self.consumed += PREV_TAG_SIZE_LEN as u64;
                    if got != 0 {
                        self.fail(FlvError::BadPreviousTagSize { expected: 0, got })?;
                    }
                    self.state = State::Tags;
                }
            }
        }
    }

    /// Records a final error and returns it.
    fn fail<T>(&mut self, e: FlvError) -> Result<T, FlvError> {
        self.state = State::Failed(e.clone());
        // Nothing after an error is ever read: free the buffer.
        self.buf = BytesMut::new();
        Err(e)
    }
}

fn u24(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
}
