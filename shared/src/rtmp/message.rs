//! RTMP messages: type ids, protocol and user control messages, AMF0
//! commands, and the mapping between audio/video/data messages and FLV tags
//! (an RTMP media payload *is* an FLV tag body, enhanced-RTMP ex-headers
//! included).

use super::RtmpError;
use super::chunk::{self, Header};
use crate::flv::amf::{self, Value};
use crate::flv::{TAG_HEADER_LEN, Tag, TagKind};
use bytes::{Bytes, BytesMut};

pub const SET_CHUNK_SIZE: u8 = 1;
pub const ABORT: u8 = 2;
pub const ACKNOWLEDGEMENT: u8 = 3;
pub const USER_CONTROL: u8 = 4;
pub const WINDOW_ACK_SIZE: u8 = 5;
pub const SET_PEER_BANDWIDTH: u8 = 6;
pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const DATA_AMF3: u8 = 15;
pub const COMMAND_AMF3: u8 = 17;
pub const DATA_AMF0: u8 = 18;
pub const COMMAND_AMF0: u8 = 20;
pub const AGGREGATE: u8 = 22;

/// User control event: the server starts sending a stream.
pub const STREAM_BEGIN: u16 = 0;
/// User control event: the stream ended.
pub const STREAM_EOF: u16 = 1;
/// User control event from the client: its buffer length.
pub const SET_BUFFER_LENGTH: u16 = 3;
pub const PING_REQUEST: u16 = 6;
pub const PING_RESPONSE: u16 = 7;

/// Chunk stream ids the server uses.
pub const CSID_CONTROL: u8 = 2;
pub const CSID_COMMAND: u8 = 3;
pub const CSID_AUDIO: u8 = 4;
pub const CSID_VIDEO: u8 = 6;
pub const CSID_DATA: u8 = 5;

/// One complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

pub(crate) fn read_u32(p: &[u8], what: &'static str) -> Result<u32, RtmpError> {
    p.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| RtmpError::BadMessage {
            what,
            detail: format!("{} bytes, want 4", p.len()),
        })
}

/// A protocol control or user control message, encoded on chunk stream 2.
fn control(type_id: u8, payload: &[u8], chunk_size: u32) -> Bytes {
    let h = Header {
        csid: CSID_CONTROL,
        timestamp: 0,
        type_id,
        stream_id: 0,
    };
    chunk::encode(&h, payload, chunk_size)
}

/// Set Chunk Size (sent before the new size applies, so encoded with the old).
pub fn set_chunk_size(size: u32, old_chunk_size: u32) -> Bytes {
    control(SET_CHUNK_SIZE, &size.to_be_bytes(), old_chunk_size)
}

pub fn window_ack_size(size: u32, chunk_size: u32) -> Bytes {
    control(WINDOW_ACK_SIZE, &size.to_be_bytes(), chunk_size)
}

/// Set Peer Bandwidth with limit type 2 (dynamic).
pub fn set_peer_bandwidth(size: u32, chunk_size: u32) -> Bytes {
    let mut p = size.to_be_bytes().to_vec();
    p.push(2);
    control(SET_PEER_BANDWIDTH, &p, chunk_size)
}

pub fn acknowledgement(received: u32, chunk_size: u32) -> Bytes {
    control(ACKNOWLEDGEMENT, &received.to_be_bytes(), chunk_size)
}

/// A user control event with a 4-byte argument (stream id, timestamp).
pub fn user_control(event: u16, arg: u32, chunk_size: u32) -> Bytes {
    let mut p = event.to_be_bytes().to_vec();
    p.extend_from_slice(&arg.to_be_bytes());
    control(USER_CONTROL, &p, chunk_size)
}

/// A user control event: (event type, its first 4-byte argument if any).
pub fn parse_user_control(p: &[u8]) -> Result<(u16, Option<u32>), RtmpError> {
    let ev = p.get(..2).ok_or_else(|| RtmpError::BadMessage {
        what: "user control",
        detail: format!("{} bytes", p.len()),
    })?;
    let event = u16::from_be_bytes([ev[0], ev[1]]);
    Ok((event, read_u32(&p[2..], "user control").ok()))
}

/// An AMF0 command: name, transaction id, command object and arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub transaction: f64,
    /// The command object (`connect`), or `Null`.
    pub object: Value,
    pub args: Vec<Value>,
}

impl Command {
    /// Parses a command message payload (type 20; type 17 starts with one
    /// AMF3 format byte, 0, then AMF0).
    pub fn parse(payload: &[u8], type_id: u8) -> Result<Command, RtmpError> {
        let body = if type_id == COMMAND_AMF3 {
            payload.get(1..).unwrap_or_default()
        } else {
            payload
        };
        let values = amf::read_all(body).map_err(|e| RtmpError::BadAmf {
            what: "command",
            detail: e.to_string(),
        })?;
        let mut it = values.into_iter();
        let bad = |detail: &str| RtmpError::BadMessage {
            what: "command",
            detail: detail.to_owned(),
        };
        let name = match it.next() {
            Some(Value::String(s)) => s,
            _ => return Err(bad("the first value is not the command name")),
        };
        let transaction = match it.next() {
            Some(Value::Number(n)) => n,
            None => 0.0,
            Some(_) => return Err(bad("the transaction id is not a number")),
        };
        let object = it.next().unwrap_or(Value::Null);
        Ok(Command {
            name,
            transaction,
            object,
            args: it.collect(),
        })
    }

    /// The AMF0 payload.
    pub fn payload(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(128);
        amf::write_value(&mut out, &Value::String(self.name.clone()));
        amf::write_value(&mut out, &Value::Number(self.transaction));
        amf::write_value(&mut out, &self.object);
        for a in &self.args {
            amf::write_value(&mut out, a);
        }
        out.freeze()
    }

    /// Encoded as a type 20 message on chunk stream 3.
    pub fn encode(&self, stream_id: u32, chunk_size: u32) -> Bytes {
        let h = Header {
            csid: CSID_COMMAND,
            timestamp: 0,
            type_id: COMMAND_AMF0,
            stream_id,
        };
        chunk::encode(&h, &self.payload(), chunk_size)
    }

    /// A string property of the command object (`app`, `tcUrl`, ...).
    pub fn property(&self, key: &str) -> Option<&Value> {
        self.object
            .properties()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The `i`-th argument as a string (stream names).
    pub fn string_arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).and_then(Value::as_str)
    }
}

/// An object from key/value pairs.
pub fn object(pairs: &[(&str, Value)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

/// `onStatus(0, null, {level, code, description})`.
pub fn on_status(level: &str, code: &str, description: &str) -> Command {
    Command {
        name: "onStatus".into(),
        transaction: 0.0,
        object: Value::Null,
        args: vec![object(&[
            ("level", Value::String(level.into())),
            ("code", Value::String(code.into())),
            ("description", Value::String(description.into())),
        ])],
    }
}

/// The FLV tag an audio, video or AMF0 data message carries (`None` for
/// other types). `@setDataFrame` is stripped from data messages, as FLV
/// files store `onMetaData` directly.
pub fn to_tag(m: &Message) -> Option<Tag> {
    let kind = match m.type_id {
        AUDIO => TagKind::Audio,
        VIDEO => TagKind::Video,
        DATA_AMF0 | DATA_AMF3 => TagKind::Script,
        _ => return None,
    };
    let mut body = m.payload.clone();
    if m.type_id == DATA_AMF3 && !body.is_empty() {
        body = body.slice(1..);
    }
    if kind == TagKind::Script {
        const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";
        if body.starts_with(SET_DATA_FRAME) {
            body = body.slice(SET_DATA_FRAME.len()..);
        }
    }
    Some(Tag::new(kind, m.timestamp, body))
}

/// The tags inside an aggregate message (type 22): FLV tag headers and
/// bodies with back pointers, timestamps rebased on the message's.
pub fn split_aggregate(m: &Message) -> Result<Vec<Tag>, RtmpError> {
    let mut out = Vec::new();
    let mut p = &m.payload[..];
    let mut first_ts = None;
    let bad = |detail: String| RtmpError::BadMessage {
        what: "aggregate",
        detail,
    };
    while !p.is_empty() {
        let h = p
            .get(..TAG_HEADER_LEN)
            .ok_or_else(|| bad(format!("{} bytes left, want a tag header", p.len())))?;
        let size = ((usize::from(h[1])) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let ts = (u32::from(h[7]) << 24)
            | (u32::from(h[4]) << 16)
            | (u32::from(h[5]) << 8)
            | u32::from(h[6]);
        let kind = TagKind::from_code(h[0]).ok_or_else(|| bad(format!("tag type {}", h[0])))?;
        let end = TAG_HEADER_LEN + size;
        if p.len() < end + 4 {
            return Err(bad(format!("tag of {size} bytes runs past the message")));
        }
        let start = m.payload.len() - p.len() + TAG_HEADER_LEN;
        let base = *first_ts.get_or_insert(ts);
        let t = m.timestamp.wrapping_add(ts.wrapping_sub(base));
        out.push(Tag::new(kind, t, m.payload.slice(start..start + size)));
        p = &p[end + 4..];
    }
    Ok(out)
}

/// An encoded FLV tag (header, body, PreviousTagSize: what a relay's ring
/// holds) as an RTMP message on message stream `stream_id`.
pub fn flv_to_chunks(flv: &[u8], stream_id: u32, chunk_size: u32) -> Option<Bytes> {
    let h = flv.get(..TAG_HEADER_LEN)?;
    let size = ((usize::from(h[1])) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
    let body = flv.get(TAG_HEADER_LEN..TAG_HEADER_LEN + size)?;
    let timestamp = (u32::from(h[7]) << 24)
        | (u32::from(h[4]) << 16)
        | (u32::from(h[5]) << 8)
        | u32::from(h[6]);
    let (type_id, csid) = match TagKind::from_code(h[0])? {
        TagKind::Audio => (AUDIO, CSID_AUDIO),
        TagKind::Video => (VIDEO, CSID_VIDEO),
        TagKind::Script => (DATA_AMF0, CSID_DATA),
    };
    let header = Header {
        csid,
        timestamp,
        type_id,
        stream_id,
    };
    Some(chunk::encode(&header, body, chunk_size))
}

/// `Value::Number`.
pub fn num(n: f64) -> Value {
    Value::Number(n)
}

/// `Value::String`.
pub fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// A data message (type 18) with these AMF0 values.
pub fn data(values: &[Value], stream_id: u32, chunk_size: u32) -> Bytes {
    let mut p = BytesMut::new();
    for v in values {
        amf::write_value(&mut p, v);
    }
    let h = Header {
        csid: CSID_DATA,
        timestamp: 0,
        type_id: DATA_AMF0,
        stream_id,
    };
    chunk::encode(&h, &p, chunk_size)
}

/// Appends a media payload as a message (for publishers in tests and tools).
pub fn media(
    type_id: u8,
    timestamp: u32,
    payload: &[u8],
    stream_id: u32,
    chunk_size: u32,
    out: &mut BytesMut,
) {
    let csid = if type_id == AUDIO {
        CSID_AUDIO
    } else {
        CSID_VIDEO
    };
    let h = Header {
        csid,
        timestamp,
        type_id,
        stream_id,
    };
    chunk::encode_message(&h, payload, chunk_size, out);
}
