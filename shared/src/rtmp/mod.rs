//! RTMP (Adobe RTMP 1.0 specification, plus the "enhanced RTMP" codec
//! extensions carried inside audio/video payloads): the server side of the
//! handshake, the chunk stream (decoder with limits, encoder), message
//! types and AMF0 commands. Pure code, no I/O: the agent's RTMP listener
//! (`agent/src/rtmp/`) drives it, the test harness uses the same encoder
//! to speak RTMP, fuzz targets feed it arbitrary bytes (`shared/fuzz`).
//!
//! ```text
//! C0 C1 → S0 S1 S2 → C2            handshake (1 + 1536 + 1536 bytes each way)
//! { basic header (fmt:2 csid:6|14|22) message header (11/7/3/0 bytes)
//!   [extended timestamp:32] payload ≤ chunk size }*
//! ```
//!
//! * [`handshake`] — C0/C1 validation and the S0/S1/S2 answer (the "simple"
//!   handshake: what ffmpeg, OBS and librtmp accept for plain `rtmp://`).
//! * [`chunk`] — [`ChunkDecoder`] reassembles messages from chunks of any
//!   size, bounded by [`Limits`] (chunk size, message length, chunk streams,
//!   buffered bytes); [`encode_message`] writes one message as chunks.
//! * [`message`] — message type ids, protocol control and user control
//!   messages, [`Command`] (AMF0/AMF3-wrapped commands), FLV ↔ RTMP tag
//!   mapping.

pub mod chunk;
pub mod handshake;
pub mod message;

#[cfg(test)]
mod tests;

pub use chunk::{ChunkDecoder, Limits, encode_message};
pub use message::{Command, Message};

/// Why RTMP input is refused. Every error is final for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtmpError {
    #[error("RTMP version {0} is not supported (only 3, plain RTMP)")]
    BadVersion(u8),
    #[error("chunk size {size} outside 1..={max}")]
    BadChunkSize { size: u32, max: u32 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { len: u32, max: u32 },
    #[error("more than {0} chunk streams in use")]
    TooManyChunkStreams(usize),
    #[error("more than {0} bytes of partial messages buffered")]
    TooMuchBuffered(usize),
    #[error("chunk of stream {csid} continues a message that was never started (fmt {fmt})")]
    NoPreviousHeader { csid: u32, fmt: u8 },
    #[error("malformed {what} message: {detail}")]
    BadMessage { what: &'static str, detail: String },
    #[error("bad AMF0 in {what}: {detail}")]
    BadAmf { what: &'static str, detail: String },
}

impl RtmpError {
    /// A short, stable label for metrics (`reason="…"`).
    pub fn label(&self) -> &'static str {
        match self {
            RtmpError::BadVersion(_) => "bad_version",
            RtmpError::BadChunkSize { .. } => "bad_chunk_size",
            RtmpError::MessageTooLarge { .. } => "message_too_large",
            RtmpError::TooManyChunkStreams(_) => "too_many_chunk_streams",
            RtmpError::TooMuchBuffered(_) => "too_much_buffered",
            RtmpError::NoPreviousHeader { .. } => "bad_chunk_header",
            RtmpError::BadMessage { .. } => "bad_message",
            RtmpError::BadAmf { .. } => "bad_amf",
        }
    }
}
