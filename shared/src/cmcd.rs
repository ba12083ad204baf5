//! CTA-5004 Common Media Client Data (CMCD v1): what a player says about
//! its buffer, throughput and session on each request.
//!
//! Three transports, one syntax (a Structured-Field-like dictionary:
//! comma-separated `key=value`, strings in double quotes with `\"`/`\\`
//! escapes, tokens bare (`ot=v`), integers and decimals bare, a boolean true
//! as the bare key (`bs`), false as `key=?0` or omitted):
//!
//! * the `CMCD=` query parameter, URL-encoded: [`parse_query`] (a whole query
//!   string) or [`parse_query_value`] (the still-encoded value);
//! * the `CMCD-Request`, `CMCD-Object`, `CMCD-Status` and `CMCD-Session`
//!   headers: [`parse_headers`];
//! * a JSON beacon body, one object or an array of objects: [`parse_json`];
//! * the raw text: [`parse`].
//!
//! All v1 keys land in typed fields of [`Cmcd`]; unknown (custom) keys are
//! kept in [`Cmcd::unknown`]. A bad value of one key is a [`KeyError`]
//! warning in [`Parsed::warnings`] and the rest is still parsed. Only input
//! beyond the size or key-count limits, or not UTF-8, fails as a whole
//! ([`CmcdError`]). Nothing here panics on any input.
//!
//! Here: the types, the encoder and the transports; the dictionary syntax
//! (cursor, bare items, typing each key) is in `syntax`.

use std::collections::BTreeMap;

use serde::Serialize;

/// Largest raw CMCD text accepted from one query value or one header.
pub const MAX_INPUT_LEN: usize = 4096;
/// Largest JSON beacon body.
pub const MAX_JSON_LEN: usize = 64 * 1024;
/// Largest number of objects in one JSON beacon.
pub const MAX_JSON_OBJECTS: usize = 256;
/// Most keys in one parse (all headers together count as one).
pub const MAX_KEYS: usize = 64;
/// Longest `cid`/`sid`, as the spec says.
pub const MAX_ID_LEN: usize = 64;
/// Longest other string value (`nor`, custom keys).
pub const MAX_STRING_LEN: usize = 1024;
/// Largest integer (Structured Fields allow 15 digits).
pub const MAX_INTEGER: i64 = 999_999_999_999_999;

/// The header names that carry CMCD.
pub const HEADER_NAMES: [&str; 4] = ["CMCD-Request", "CMCD-Object", "CMCD-Status", "CMCD-Session"];

/// Every CMCD v1 key, typed. Integers in kbit/s or ms as the spec defines.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cmcd {
    /// Encoded bitrate of the object, kbit/s.
    pub br: Option<u64>,
    /// Buffer length, ms (rounded to 100 ms by players).
    pub bl: Option<u64>,
    /// Buffer starvation since the previous request.
    pub bs: Option<bool>,
    /// Content id.
    pub cid: Option<String>,
    /// Object duration, ms.
    pub d: Option<u64>,
    /// Deadline: ms until the buffer would run dry.
    pub dl: Option<u64>,
    /// Measured throughput, kbit/s.
    pub mtp: Option<u64>,
    /// Next object request (relative URL).
    pub nor: Option<String>,
    /// Next range request, `start-end`.
    pub nrr: Option<String>,
    /// Object type.
    pub ot: Option<ObjectType>,
    /// Playback rate (1 = real time).
    pub pr: Option<f64>,
    /// Requested maximum throughput, kbit/s.
    pub rtp: Option<u64>,
    /// Streaming format.
    pub sf: Option<StreamingFormat>,
    /// Session id.
    pub sid: Option<String>,
    /// Stream type.
    pub st: Option<StreamType>,
    /// Startup: the object is needed urgently (start, seek, recovery).
    pub su: Option<bool>,
    /// Top bitrate the client can play, kbit/s.
    pub tb: Option<u64>,
    /// CMCD version (absent means 1).
    pub v: Option<u64>,
    /// Custom and future keys, as parsed.
    pub unknown: BTreeMap<String, Value>,
}

/// A value of a key this parser does not type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Integer(i64),
    Decimal(f64),
    String(String),
    Token(String),
    Boolean(bool),
}

/// `ot`: what the requested object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ObjectType {
    #[serde(rename = "m")]
    Manifest,
    #[serde(rename = "a")]
    Audio,
    #[serde(rename = "v")]
    Video,
    #[serde(rename = "av")]
    Muxed,
    #[serde(rename = "i")]
    Init,
    #[serde(rename = "c")]
    Caption,
    #[serde(rename = "tt")]
    TimedText,
    #[serde(rename = "k")]
    Key,
    #[serde(rename = "o")]
    Other,
}

impl ObjectType {
    pub fn from_token(t: &str) -> Option<ObjectType> {
        Some(match t {
            "m" => ObjectType::Manifest,
            "a" => ObjectType::Audio,
            "v" => ObjectType::Video,
            "av" => ObjectType::Muxed,
            "i" => ObjectType::Init,
            "c" => ObjectType::Caption,
            "tt" => ObjectType::TimedText,
            "k" => ObjectType::Key,
            "o" => ObjectType::Other,
            _ => return None,
        })
    }
}

/// `sf`: the streaming format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum StreamingFormat {
    #[serde(rename = "d")]
    Dash,
    #[serde(rename = "h")]
    Hls,
    #[serde(rename = "s")]
    Smooth,
    #[serde(rename = "o")]
    Other,
}

impl StreamingFormat {
    pub fn from_token(t: &str) -> Option<StreamingFormat> {
        Some(match t {
            "d" => StreamingFormat::Dash,
            "h" => StreamingFormat::Hls,
            "s" => StreamingFormat::Smooth,
            "o" => StreamingFormat::Other,
            _ => return None,
        })
    }
}

/// `st`: VOD or live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum StreamType {
    #[serde(rename = "v")]
    Vod,
    #[serde(rename = "l")]
    Live,
}

impl StreamType {
    pub fn from_token(t: &str) -> Option<StreamType> {
        match t {
            "v" => Some(StreamType::Vod),
            "l" => Some(StreamType::Live),
            _ => None,
        }
    }
}

impl Cmcd {
    /// No key at all.
    pub fn is_empty(&self) -> bool {
        *self == Cmcd::default()
    }

    /// Takes every key `other` has (the later source wins, like a repeated
    /// key in one dictionary).
    pub fn merge(&mut self, other: Cmcd) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            br, bl, bs, cid, d, dl, mtp, nor, nrr, ot, pr, rtp, sf, sid, st, su, tb, v
        );
        self.unknown.extend(other.unknown);
    }
}

impl Cmcd {
    /// The CMCD text form: keys in alphabetical order, `true` booleans as
    /// bare keys, `false` as `key=?0`. [`parse`] reads it back.
    pub fn encode(&self) -> String {
        let mut members: Vec<(String, String)> = Vec::new();
        let mut int = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                members.push((k.to_string(), v.to_string()));
            }
        };
        int("br", self.br);
        int("bl", self.bl);
        int("d", self.d);
        int("dl", self.dl);
        int("mtp", self.mtp);
        int("rtp", self.rtp);
        int("tb", self.tb);
        int("v", self.v);
        for (k, v) in [("bs", self.bs), ("su", self.su)] {
            if let Some(b) = v {
                members.push((k.to_string(), encode_bool(b)));
            }
        }
        for (k, v) in [
            ("cid", &self.cid),
            ("nor", &self.nor),
            ("nrr", &self.nrr),
            ("sid", &self.sid),
        ] {
            if let Some(s) = v {
                members.push((k.to_string(), quote(s)));
            }
        }
        if let Some(pr) = self.pr {
            members.push(("pr".to_string(), encode_decimal(pr)));
        }
        if let Some(ot) = self.ot {
            members.push(("ot".to_string(), token_of(&ot)));
        }
        if let Some(sf) = self.sf {
            members.push(("sf".to_string(), token_of(&sf)));
        }
        if let Some(st) = self.st {
            members.push(("st".to_string(), token_of(&st)));
        }
        for (k, v) in &self.unknown {
            let v = match v {
                Value::Integer(i) => i.to_string(),
                Value::Decimal(f) => encode_decimal(*f),
                Value::String(s) => quote(s),
                Value::Token(t) => t.clone(),
                Value::Boolean(b) => encode_bool(*b),
            };
            members.push((k.clone(), v));
        }
        members.sort();
        members
            .into_iter()
            .map(|(k, v)| if v.is_empty() { k } else { format!("{k}={v}") })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// [`Cmcd::encode`] URL-encoded, ready for `?CMCD=`.
    pub fn encode_query_value(&self) -> String {
        let mut out = String::new();
        for b in self.encode().bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

/// `true` is the bare key (empty value here), `false` is `?0`.
fn encode_bool(b: bool) -> String {
    if b { String::new() } else { "?0".to_string() }
}

fn encode_decimal(f: f64) -> String {
    let s = format!("{f:.3}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The token of a CMCD enum (its serde name).
fn token_of<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The result of a parse: the data and what was wrong with single keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub cmcd: Cmcd,
    pub warnings: Vec<KeyError>,
}

/// A problem with one key; the key is left out, the rest is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CMCD key {key:?}: {kind}")]
pub struct KeyError {
    pub key: String,
    pub kind: KeyErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyErrorKind {
    #[error("malformed: {0}")]
    Syntax(&'static str),
    #[error("not a valid key name")]
    BadKey,
    #[error("expected an integer")]
    ExpectedInteger,
    #[error("expected a number")]
    ExpectedDecimal,
    #[error("expected a string")]
    ExpectedString,
    #[error("expected a boolean")]
    ExpectedBoolean,
    #[error("expected a token")]
    ExpectedToken,
    #[error("negative value")]
    Negative,
    #[error("value of {len} characters exceeds {max}")]
    TooLong { len: usize, max: usize },
    #[error("unknown token {0:?}")]
    UnknownToken(String),
    #[error("not a byte range (start-end)")]
    BadRange,
}

impl KeyErrorKind {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            KeyErrorKind::Syntax(_) => "syntax",
            KeyErrorKind::BadKey => "bad_key",
            KeyErrorKind::ExpectedInteger
            | KeyErrorKind::ExpectedDecimal
            | KeyErrorKind::ExpectedString
            | KeyErrorKind::ExpectedBoolean
            | KeyErrorKind::ExpectedToken => "bad_type",
            KeyErrorKind::Negative => "negative",
            KeyErrorKind::TooLong { .. } => "too_long",
            KeyErrorKind::UnknownToken(_) => "unknown_token",
            KeyErrorKind::BadRange => "bad_range",
        }
    }
}

/// Why a whole CMCD input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmcdError {
    #[error("CMCD input of {len} bytes exceeds {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("more than {max} CMCD keys")]
    TooManyKeys { max: usize },
    #[error("CMCD input is not valid UTF-8 (after URL decoding)")]
    BadEncoding,
    #[error("CMCD JSON: {0}")]
    Json(String),
    #[error("more than {max} objects in a CMCD JSON beacon")]
    TooManyObjects { max: usize },
}

impl CmcdError {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CmcdError::TooLarge { .. } => "too_large",
            CmcdError::TooManyKeys { .. } => "too_many_keys",
            CmcdError::BadEncoding => "bad_encoding",
            CmcdError::Json(_) => "json",
            CmcdError::TooManyObjects { .. } => "too_many_objects",
        }
    }
}

/// Parses CMCD text (already URL-decoded), e.g.
/// `bl=21300,br=3200,bs,ot=v,sid="6e2f…"`.
pub fn parse(text: &str) -> Result<Parsed, CmcdError> {
    let mut out = Parsed::default();
    let mut keys = 0;
    parse_into(text, &mut out, &mut keys)?;
    Ok(out)
}

/// Finds the `CMCD` parameter in a query string (without the `?`) and
/// parses it. `Ok(None)` when the query has no such parameter.
pub fn parse_query(query: &str) -> Result<Option<Parsed>, CmcdError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut found = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name.eq_ignore_ascii_case("CMCD") {
            found = Some(value);
        }
    }
    found.map(parse_query_value).transpose()
}

/// Parses the (still URL-encoded) value of a `CMCD=` query parameter.
pub fn parse_query_value(encoded: &str) -> Result<Parsed, CmcdError> {
    check_len(encoded.len(), MAX_INPUT_LEN * 3)?;
    let decoded = percent_decode(encoded)?;
    check_len(decoded.len(), MAX_INPUT_LEN)?;
    parse(&decoded)
}

/// Parses the four `CMCD-*` headers from `(name, value)` pairs (names
/// compared case-insensitively; other headers ignored). `Ok(None)` when
/// none of them is present.
pub fn parse_headers<'a, I>(headers: I) -> Result<Option<Parsed>, CmcdError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let mut out = Parsed::default();
    let mut keys = 0;
    let mut any = false;
    let mut total = 0usize;
    for (name, value) in headers {
        if !HEADER_NAMES.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            continue;
        }
        any = true;
        check_len(value.len(), MAX_INPUT_LEN)?;
        total += value.len();
        check_len(total, MAX_INPUT_LEN * HEADER_NAMES.len())?;
        let text = std::str::from_utf8(value).map_err(|_| CmcdError::BadEncoding)?;
        parse_into(text, &mut out, &mut keys)?;
    }
    Ok(any.then_some(out))
}

/// Parses a JSON beacon: one object, or an array of objects, whose keys are
/// CMCD keys (`{"bl":21300,"bs":true,"ot":"v","sid":"…"}`).
pub fn parse_json(body: &[u8]) -> Result<Vec<Parsed>, CmcdError> {
    check_len(body.len(), MAX_JSON_LEN)?;
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| CmcdError::Json(e.to_string()))?;
    let objects = match v {
        serde_json::Value::Object(o) => vec![o],
        serde_json::Value::Array(items) => {
            if items.len() > MAX_JSON_OBJECTS {
                return Err(CmcdError::TooManyObjects {
                    max: MAX_JSON_OBJECTS,
                });
            }
            items
                .into_iter()
                .map(|i| match i {
                    serde_json::Value::Object(o) => Ok(o),
                    _ => Err(CmcdError::Json("array element is not an object".into())),
                })
                .collect::<Result<_, _>>()?
        }
        _ => return Err(CmcdError::Json("not an object or array".into())),
    };
    objects
        .into_iter()
        .map(|o| {
            if o.len() > MAX_KEYS {
                return Err(CmcdError::TooManyKeys { max: MAX_KEYS });
            }
            let mut out = Parsed::default();
            for (key, value) in o {
                if !valid_key(&key) {
                    out.warnings.push(KeyError {
                        key: truncate(&key),
                        kind: KeyErrorKind::BadKey,
                    });
                    continue;
                }
                let value = match value {
                    serde_json::Value::Bool(b) => Raw::Boolean(b),
                    serde_json::Value::String(s) => Raw::String(s),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) if i.abs() <= MAX_INTEGER => Raw::Integer(i),
                        Some(_) => Raw::Invalid("integer out of range"),
                        None => match n.as_f64() {
                            Some(f) if f.is_finite() => Raw::Decimal(f),
                            _ => Raw::Invalid("number out of range"),
                        },
                    },
                    serde_json::Value::Null => Raw::Invalid("null"),
                    _ => Raw::Invalid("nested value"),
                };
                assign(&mut out, key, value);
            }
            Ok(out)
        })
        .collect()
}

fn check_len(len: usize, max: usize) -> Result<(), CmcdError> {
    if len > max {
        Err(CmcdError::TooLarge { len, max })
    } else {
        Ok(())
    }
}

mod syntax;
use syntax::{Raw, assign, parse_into, percent_decode, truncate, valid_key};

#[cfg(test)]
mod tests;
