//! The RTMP chunk stream: messages cut into chunks of at most the chunk
//! size, interleaved by chunk stream id (csid), with header compression.
//!
//! | fmt | message header | meaning |
//! |---|---|---|
//! | 0 | timestamp:24 length:24 type:8 stream id:32 LE | a new message, absolute time |
//! | 1 | delta:24 length:24 type:8 | same stream id |
//! | 2 | delta:24 | same stream id, length and type |
//! | 3 | — | a continuation chunk, or a new message repeating the last header and delta |
//!
//! A timestamp field of `0xFFFFFF` means a 32-bit extended timestamp
//! follows; fmt 3 chunks repeat it when their chunk stream's last header had
//! one. As ffmpeg does, a fmt 3 chunk that starts a new message after a
//! fmt 0 header adds that header's timestamp field as the delta.
//!
//! [`ChunkDecoder`] applies Set Chunk Size (type 1) and Abort (type 2)
//! itself, because they change how the following bytes are read, and hands
//! every complete message out (control messages included). Its memory is
//! bounded by [`Limits`]: it never trusts a declared length before the bytes
//! arrived.

use super::RtmpError;
use super::message::{self, Message};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;

/// The chunk size both sides start with.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// The largest chunk size the protocol allows (31 bits).
pub const MAX_PROTOCOL_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
const EXTENDED: u32 = 0x00FF_FFFF;

/// Bounds of one decoder (one connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest chunk size a peer may set.
    pub max_chunk_size: u32,
    /// Largest message length accepted.
    pub max_message_len: u32,
    /// Most chunk streams with state at once.
    pub max_chunk_streams: usize,
    /// Most bytes of partially received messages held at once.
    pub max_buffered: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chunk_size: 65_536,
            max_message_len: 8 * 1024 * 1024,
            max_chunk_streams: 64,
            max_buffered: 16 * 1024 * 1024,
        }
    }
}

/// What is remembered of a chunk stream between chunks.
#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    /// The last header's timestamp field (delta, or absolute for fmt 0).
    ts_field: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    /// The message being assembled.
    partial: Option<BytesMut>,
}

/// Push-driven chunk stream decoder.
#[derive(Debug)]
pub struct ChunkDecoder {
    buf: BytesMut,
    chunk_size: u32,
    streams: HashMap<u32, ChunkStream>,
    buffered: usize,
    limits: Limits,
    failed: Option<RtmpError>,
    received: u64,
}

impl ChunkDecoder {
    pub fn new(limits: Limits) -> ChunkDecoder {
        ChunkDecoder {
            buf: BytesMut::new(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
            buffered: 0,
            limits,
            failed: None,
            received: 0,
        }
    }

    /// Appends received bytes. Call [`ChunkDecoder::next_message`] until it
    /// returns `Ok(None)` after each push.
    pub fn push(&mut self, data: &[u8]) {
        self.received += data.len() as u64;
        self.buf.extend_from_slice(data);
    }

    /// New limits from now on (a connection admitted to publish gets larger
    /// ones than one still negotiating). The chunk size in force stays.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bytes pushed so far (for acknowledgements).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The peer's current chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes held: unparsed input plus partial messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.buffered
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    /// After an error every call returns it again.
    pub fn next_message(&mut self) -> Result<Option<Message>, RtmpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            match self.next_chunk() {
                Ok(Some(Some(m))) => return Ok(Some(m)),
                Ok(Some(None)) => continue,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.failed = Some(e.clone());
                    self.buf.clear();
                    self.streams.clear();
                    return Err(e);
                }
            }
        }
    }

    /// Reads one chunk: `None` when incomplete, `Some(None)` when the chunk
    /// did not complete a message.
    fn next_chunk(&mut self) -> Result<Option<Option<Message>>, RtmpError> {
        let b = &self.buf[..];
        let Some(&b0) = b.first() else {
            return Ok(None);
        };
        let fmt = b0 >> 6;
        let (csid, mut pos) = match b0 & 0x3F {
            0 => match b.get(1) {
                Some(&x) => (64 + u32::from(x), 2),
                None => return Ok(None),
            },
            1 => match b.get(1..3) {
                Some(x) => (64 + u32::from(x[0]) + 256 * u32::from(x[1]), 3),
                None => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        let Some(h) = b.get(pos..pos + header_len) else {
            return Ok(None);
        };
        pos += header_len;
        if !self.streams.contains_key(&csid) {
            if fmt != 0 {
                return Err(RtmpError::NoPreviousHeader { csid, fmt });
            }
            if self.streams.len() >= self.limits.max_chunk_streams {
                return Err(RtmpError::TooManyChunkStreams(
                    self.limits.max_chunk_streams,
                ));
            }
        }
        let prev = self.streams.get(&csid);
        let continuing = prev.is_some_and(|s| s.partial.is_some());
        let ts_field = if fmt < 3 {
            u24(h)
        } else {
            prev.map_or(0, |s| s.ts_field)
        };
        let extended = if fmt < 3 {
            ts_field == EXTENDED
        } else {
            prev.is_some_and(|s| s.extended)
        };
        let ext_value = if extended {
            let Some(x) = b.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some(u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        } else {
            None
        };
        let (length, type_id) = match fmt {
            0 | 1 => (u24(&h[3..]), h[6]),
            _ => prev.map_or((0, 0), |s| (s.length, s.type_id)),
        };
        if length > self.limits.max_message_len {
            return Err(RtmpError::MessageTooLarge {
                len: length,
                max: self.limits.max_message_len,
            });
        }
        let have = prev
            .and_then(|s| s.partial.as_ref())
            .map_or(0, BytesMut::len);
        // A new header while a message is half-read restarts the message
        // (the old bytes are dropped), as an Abort would.
        let restart = fmt < 3 && continuing;
        let have = if restart { 0 } else { have };
        let want = (length as usize - have.min(length as usize)).min(self.chunk_size as usize);
        if b.len() < pos + want {
            return Ok(None);
        }
        // The whole chunk is here: commit.
        let s = self.streams.entry(csid).or_default();
        if restart && let Some(p) = s.partial.take() {
            self.buffered -= p.len();
        }
        if s.partial.is_none() {
            // A new message: its header and timestamp.
            let field = ext_value.unwrap_or(ts_field);
            match fmt {
                0 => {
                    s.timestamp = field;
                    s.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
                }
                _ => s.timestamp = s.timestamp.wrapping_add(field),
            }
            s.ts_field = if fmt < 3 { field } else { s.ts_field };
            s.extended = extended;
            s.length = length;
            s.type_id = type_id;
            s.partial = Some(BytesMut::with_capacity((length as usize).min(64 * 1024)));
        }
        self.buf.advance(pos);
        let chunk = self.buf.split_to(want);
        let Some(partial) = s.partial.as_mut() else {
            return Ok(Some(None));
        };
        partial.extend_from_slice(&chunk);
        self.buffered += chunk.len();
        if self.buffered > self.limits.max_buffered {
            return Err(RtmpError::TooMuchBuffered(self.limits.max_buffered));
        }
        if partial.len() < s.length as usize {
            return Ok(Some(None));
        }
        let payload = s.partial.take().map(BytesMut::freeze).unwrap_or_default();
        self.buffered -= payload.len();
        let m = Message {
            csid,
            timestamp: s.timestamp,
            type_id: s.type_id,
            stream_id: s.stream_id,
            payload,
        };
        self.apply_control(&m)?;
        Ok(Some(Some(m)))
    }

    /// Set Chunk Size and Abort change how the next chunks are read.
    fn apply_control(&mut self, m: &Message) -> Result<(), RtmpError> {
        match m.type_id {
            message::SET_CHUNK_SIZE => {
                let size = message::read_u32(&m.payload, "Set Chunk Size")? & 0x7FFF_FFFF;
                if size == 0 || size > self.limits.max_chunk_size {
                    return Err(RtmpError::BadChunkSize {
                        size,
                        max: self.limits.max_chunk_size,
                    });
                }
                self.chunk_size = size;
            }
            message::ABORT => {
                let csid = message::read_u32(&m.payload, "Abort")?;
                if let Some(s) = self.streams.get_mut(&csid)
                    && let Some(p) = s.partial.take()
                {
                    self.buffered -= p.len();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn u24(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
}

fn put_u24(out: &mut BytesMut, v: u32) {
    out.put_u8((v >> 16) as u8);
    out.put_u8((v >> 8) as u8);
    out.put_u8(v as u8);
}

/// The header fields of a message to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Chunk stream id, 2..=63 (one-byte basic header).
    pub csid: u8,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
}

/// Bytes [`encode_message`] writes for a `len`-byte payload.
pub fn encoded_len(h: &Header, len: usize, chunk_size: u32) -> usize {
    let ext = if h.timestamp >= EXTENDED { 4 } else { 0 };
    let chunks = len.div_ceil(chunk_size.max(1) as usize).max(1);
    12 + ext + len + (chunks - 1) * (1 + ext)
}

/// Appends `payload` as one message: a fmt 0 chunk, then fmt 3
/// continuation chunks every `chunk_size` bytes.
pub fn encode_message(h: &Header, payload: &[u8], chunk_size: u32, out: &mut BytesMut) {
    let csid = h.csid.clamp(2, 63);
    let chunk_size = chunk_size.max(1) as usize;
    let ext = h.timestamp >= EXTENDED;
    out.reserve(encoded_len(h, payload.len(), chunk_size as u32));
    out.put_u8(csid);
    put_u24(out, if ext { EXTENDED } else { h.timestamp });
    put_u24(out, payload.len().min(0x00FF_FFFF) as u32);
    out.put_u8(h.type_id);
    out.put_u32_le(h.stream_id);
    if ext {
        out.put_u32(h.timestamp);
    }
    let mut chunks = payload.chunks(chunk_size);
    if let Some(first) = chunks.next() {
        out.put_slice(first);
    }
    for c in chunks {
        out.put_u8(0xC0 | csid);
        if ext {
            out.put_u32(h.timestamp);
        }
        out.put_slice(c);
    }
}

/// [`encode_message`] into a new buffer.
pub fn encode(h: &Header, payload: &[u8], chunk_size: u32) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(h, payload, chunk_size, &mut out);
    out.freeze()
}
