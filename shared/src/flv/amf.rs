//! Just enough AMF0 to read and write `onMetaData`: numbers, booleans,
//! strings, objects, ECMA and strict arrays, null/undefined and dates.
//! Reading is bounded in nesting depth and element count, so hostile script
//! tags cost little.

use bytes::{BufMut, Bytes, BytesMut};

/// Maximum nesting of objects/arrays the reader follows.
pub const MAX_DEPTH: usize = 8;
/// Maximum values read from one script tag in total.
pub const MAX_VALUES: usize = 1024;

/// An AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Value)>),
    Null,
    Undefined,
    /// ECMA array: an object with a (hint) count.
    EcmaArray(Vec<(String, Value)>),
    StrictArray(Vec<Value>),
    /// Milliseconds since the epoch (the time zone field is ignored).
    Date(f64),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The properties of an object or ECMA array.
    pub fn properties(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(p) | Value::EcmaArray(p) => Some(p),
            _ => None,
        }
    }
}

/// Why a script body is not readable AMF0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmfError {
    #[error("AMF0 data ends early")]
    Truncated,
    #[error("unsupported AMF0 type marker {0:#04x}")]
    UnsupportedMarker(u8),
    #[error("AMF0 nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_VALUES} AMF0 values")]
    TooManyValues,
}

/// Reads all top-level values of a script tag body (typically a name
/// string then an ECMA array).
pub fn read_all(mut b: &[u8]) -> Result<Vec<Value>, AmfError> {
    let mut budget = MAX_VALUES;
    let mut out = Vec::new();
    while !b.is_empty() {
        out.push(read_value(&mut b, 0, &mut budget)?);
    }
    Ok(out)
}

/// The stream metadata most readers care about, from an `onMetaData` tag
/// body (also accepts `@setDataFrame` before the name). Absent fields are
/// `None`; `properties` keeps everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub width: Option<f64>,
    pub height: Option<f64>,
    pub framerate: Option<f64>,
    /// kbit/s, as muxers write it.
    pub videodatarate: Option<f64>,
    pub audiodatarate: Option<f64>,
    pub videocodecid: Option<f64>,
    pub audiocodecid: Option<f64>,
    pub properties: Vec<(String, Value)>,
}

impl Metadata {
    /// Parses a script tag body; `None` when it is not `onMetaData`.
    pub fn parse(body: &[u8]) -> Option<Metadata> {
        let values = read_all(body).ok()?;
        let mut it = values.iter();
        let mut name = it.next()?.as_str()?;
        if name == "@setDataFrame" {
            name = it.next()?.as_str()?;
        }
        if name != "onMetaData" {
            return None;
        }
        let properties = it
            .next()
            .and_then(Value::properties)
            .unwrap_or(&[])
            .to_vec();
        let num = |key: &str| {
            properties
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.as_f64())
        };
        Some(Metadata {
            width: num("width"),
            height: num("height"),
            framerate: num("framerate"),
            videodatarate: num("videodatarate"),
            audiodatarate: num("audiodatarate"),
            videocodecid: num("videocodecid"),
            audiocodecid: num("audiocodecid"),
            properties,
        })
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], AmfError> {
    if b.len() < n {
        return Err(AmfError::Truncated);
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn read_u16(b: &mut &[u8]) -> Result<usize, AmfError> {
    let s = take(b, 2)?;
    Ok(usize::from(u16::from_be_bytes([s[0], s[1]])))
}

fn read_u32(b: &mut &[u8]) -> Result<usize, AmfError> {
    let s = take(b, 4)?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

fn read_f64(b: &mut &[u8]) -> Result<f64, AmfError> {
    let s = take(b, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(f64::from_be_bytes(a))
}

fn read_utf8(b: &mut &[u8], len: usize) -> Result<String, AmfError> {
    Ok(String::from_utf8_lossy(take(b, len)?).into_owned())
}

fn read_value(b: &mut &[u8], depth: usize, budget: &mut usize) -> Result<Value, AmfError> {
    if depth > MAX_DEPTH {
        return Err(AmfError::TooDeep);
    }
    *budget = budget.checked_sub(1).ok_or(AmfError::TooManyValues)?;
    let marker = take(b, 1)?[0];
    Ok(match marker {
        0x00 => Value::Number(read_f64(b)?),
        0x01 => Value::Boolean(take(b, 1)?[0] != 0),
        0x02 => {
            let len = read_u16(b)?;
            Value::String(read_utf8(b, len)?)
        }
        0x03 => Value::Object(read_properties(b, depth, budget)?),
        0x05 => Value::Null,
        0x06 => Value::Undefined,
        0x08 => {
            let _count_hint = read_u32(b)?;
            Value::EcmaArray(read_properties(b, depth, budget)?)
        }
        0x0A => {
            let count = read_u32(b)?;
            // Each element takes at least one byte: a count beyond the
            // remaining input is a lie, refuse before allocating.
            if count > b.len() {
                return Err(AmfError::Truncated);
            }
            let mut items = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                items.push(read_value(b, depth + 1, budget)?);
            }
            Value::StrictArray(items)
        }
        0x0B => {
            let ms = read_f64(b)?;
            take(b, 2)?;
            Value::Date(ms)
        }
        0x0C => {
            let len = read_u32(b)?;
            Value::String(read_utf8(b, len)?)
        }
        other => return Err(AmfError::UnsupportedMarker(other)),
    })
}

/// Properties up to the object end marker (empty key + 0x09). A body that
/// ends without the marker (some muxers cut ECMA arrays) ends the list.
fn read_properties(
    b: &mut &[u8],
    depth: usize,
    budget: &mut usize,
) -> Result<Vec<(String, Value)>, AmfError> {
    let mut props = Vec::new();
    loop {
        if b.is_empty() {
            return Ok(props);
        }
        let len = read_u16(b)?;
        if len == 0 {
            if b.first() == Some(&0x09) {
                take(b, 1)?;
                return Ok(props);
            }
            if b.is_empty() {
                return Ok(props);
            }
        }
        let key = read_utf8(b, len)?;
        let value = read_value(b, depth + 1, budget)?;
        props.push((key, value));
    }
}

/// Writes an AMF0 value.
pub fn write_value(out: &mut BytesMut, v: &Value) {
    match v {
        Value::Number(n) => {
            out.put_u8(0x00);
            out.put_f64(*n);
        }
        Value::Boolean(x) => {
            out.put_u8(0x01);
            out.put_u8(u8::from(*x));
        }
        Value::String(s) => {
            if s.len() <= usize::from(u16::MAX) {
                out.put_u8(0x02);
                out.put_u16(s.len() as u16);
            } else {
                out.put_u8(0x0C);
                out.put_u32(s.len().min(u32::MAX as usize) as u32);
            }
            out.put_slice(&s.as_bytes()[..s.len().min(u32::MAX as usize)]);
        }
        Value::Object(props) => {
            out.put_u8(0x03);
            write_properties(out, props);
        }
        Value::Null => out.put_u8(0x05),
        Value::Undefined => out.put_u8(0x06),
        Value::EcmaArray(props) => {
            out.put_u8(0x08);
            out.put_u32(props.len() as u32);
            write_properties(out, props);
        }
        Value::StrictArray(items) => {
            out.put_u8(0x0A);
            out.put_u32(items.len() as u32);
            for i in items {
                write_value(out, i);
            }
        }
        Value::Date(ms) => {
            out.put_u8(0x0B);
            out.put_f64(*ms);
            out.put_u16(0);
        }
    }
}

fn write_properties(out: &mut BytesMut, props: &[(String, Value)]) {
    for (k, v) in props {
        // Keys are short by construction; longer ones are cut at 64 KiB.
        let key = &k.as_bytes()[..k.len().min(usize::from(u16::MAX))];
        out.put_u16(key.len() as u16);
        out.put_slice(key);
        write_value(out, v);
    }
    out.put_u16(0);
    out.put_u8(0x09);
}

/// The body of an `onMetaData` script tag with these properties (as an
/// ECMA array, like ffmpeg writes it).
pub fn metadata_body(props: &[(String, Value)]) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + props.len() * 24);
    write_value(&mut out, &Value::String("onMetaData".into()));
    write_value(&mut out, &Value::EcmaArray(props.to_vec()));
    out.freeze()
}
