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

/// A syntactic value before typing.
#[derive(Debug)]
enum Raw {
    Integer(i64),
    Decimal(f64),
    String(String),
    Token(String),
    Boolean(bool),
    Invalid(&'static str),
}

/// Parses one dictionary into `out`, counting keys against [`MAX_KEYS`].
fn parse_into(text: &str, out: &mut Parsed, keys: &mut usize) -> Result<(), CmcdError> {
    check_len(text.len(), MAX_INPUT_LEN)?;
    let mut p = Cursor {
        s: text.as_bytes(),
        i: 0,
    };
    loop {
        p.skip_ws();
        if p.at_end() {
            return Ok(());
        }
        if p.eat(b',') {
            continue; // empty member: tolerated
        }
        *keys += 1;
        if *keys > MAX_KEYS {
            return Err(CmcdError::TooManyKeys { max: MAX_KEYS });
        }
        let key = p.take_while(|c| c != b'=' && c != b',');
        let key = String::from_utf8_lossy(key).trim().to_string();
        if !valid_key(&key) {
            out.warnings.push(KeyError {
                key: truncate(&key),
                kind: KeyErrorKind::BadKey,
            });
            p.skip_member();
            continue;
        }
        let value = if p.eat(b'=') {
            p.bare_or_string()
        } else {
            Raw::Boolean(true)
        };
        p.skip_ws();
        if !(p.at_end() || p.peek() == Some(b',')) {
            out.warnings.push(KeyError {
                key,
                kind: KeyErrorKind::Syntax("garbage after the value"),
            });
            p.skip_member();
            continue;
        }
        assign(out, key, value);
    }
}

/// Byte cursor over the dictionary text.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// Skips to the next top-level comma (quotes respected).
    fn skip_member(&mut self) {
        let mut quoted = false;
        while let Some(c) = self.peek() {
            match c {
                b'\\' if quoted => self.i += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => return,
                _ => {}
            }
            self.i += 1;
        }
    }

    fn bare_or_string(&mut self) -> Raw {
        if self.eat(b'"') {
            let mut s = Vec::new();
            let mut bad_escape = false;
            loop {
                match self.peek() {
                    None => return Raw::Invalid("unterminated string"),
                    Some(b'"') => {
                        self.i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        self.i += 1;
                        match self.peek() {
                            Some(c @ (b'"' | b'\\')) => s.push(c),
                            // Read on to the closing quote, then refuse.
                            _ => bad_escape = true,
                        }
                        self.i += 1;
                    }
                    Some(c) => {
                        s.push(c);
                        self.i += 1;
                    }
                }
            }
            if bad_escape {
                return Raw::Invalid("bad escape in string");
            }
            // The input is a &str and we only split at ASCII bytes.
            return match String::from_utf8(s) {
                Ok(s) => Raw::String(s),
                Err(_) => Raw::Invalid("bad string"),
            };
        }
        let item = self.take_while(|c| c != b',' && c != b' ' && c != b'\t');
        let Ok(item) = std::str::from_utf8(item) else {
            return Raw::Invalid("bad bare item");
        };
        bare_item(item)
    }
}

/// Types a bare (unquoted) item: boolean `?1`/`?0`, integer, decimal, token.
fn bare_item(item: &str) -> Raw {
    match item {
        "" => return Raw::Invalid("empty value"),
        "?1" => return Raw::Boolean(true),
        "?0" => return Raw::Boolean(false),
        _ => {}
    }
    let first = item.as_bytes()[0];
    if first == b'-' || first.is_ascii_digit() {
        let digits = item.strip_prefix('-').unwrap_or(item);
        if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
            return match item.parse::<i64>() {
                Ok(n) if n.abs() <= MAX_INTEGER => Raw::Integer(n),
                _ => Raw::Invalid("integer out of range"),
            };
        }
        let decimal_shape = digits.bytes().filter(|c| *c == b'.').count() == 1
            && digits.bytes().all(|c| c.is_ascii_digit() || c == b'.')
            && !digits.starts_with('.')
            && !digits.ends_with('.')
            && digits.len() <= 16;
        return match (decimal_shape, item.parse::<f64>()) {
            (true, Ok(f)) if f.is_finite() => Raw::Decimal(f),
            _ => Raw::Invalid("bad number"),
        };
    }
    if first.is_ascii_alphabetic() || first == b'*' {
        let ok = item
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c));
        return if ok {
            Raw::Token(item.to_string())
        } else {
            Raw::Invalid("bad token")
        };
    }
    Raw::Invalid("unrecognised value")
}

/// Keys: a letter or `*`, then letters, digits, `_ - . *`. Structured
/// Fields wants lower case, but the CMCD spec's own custom-key example
/// (`com.example-myNumericKey`) has capitals, so they are tolerated.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_alphabetic() || b[0] == b'*')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.*".contains(c))
}

/// A key name fit for a warning (bounded).
fn truncate(key: &str) -> String {
    key.chars().take(64).collect()
}

/// Types `value` for `key` and stores it, or records a warning.
fn assign(out: &mut Parsed, key: String, value: Raw) {
    let c = &mut out.cmcd;
    let result: Result<(), KeyErrorKind> = match key.as_str() {
        "br" => integer(value).map(|v| c.br = Some(v)),
        "bl" => integer(value).map(|v| c.bl = Some(v)),
        "d" => integer(value).map(|v| c.d = Some(v)),
        "dl" => integer(value).map(|v| c.dl = Some(v)),
        "mtp" => integer(value).map(|v| c.mtp = Some(v)),
        "rtp" => integer(value).map(|v| c.rtp = Some(v)),
        "tb" => integer(value).map(|v| c.tb = Some(v)),
        "v" => integer(value).map(|v| c.v = Some(v)),
        "bs" => boolean(value).map(|v| c.bs = Some(v)),
        "su" => boolean(value).map(|v| c.su = Some(v)),
        "cid" => string(value, MAX_ID_LEN).map(|v| c.cid = Some(v)),
        "sid" => string(value, MAX_ID_LEN).map(|v| c.sid = Some(v)),
        "nor" => string(value, MAX_STRING_LEN).map(|v| c.nor = Some(v)),
        "nrr" => string(value, MAX_STRING_LEN).and_then(|v| {
            if valid_range(&v) {
                c.nrr = Some(v);
                Ok(())
            } else {
                Err(KeyErrorKind::BadRange)
            }
        }),
        "pr" => decimal(value).map(|v| c.pr = Some(v)),
        "ot" => token(value, ObjectType::from_token).map(|v| c.ot = Some(v)),
        "sf" => token(value, StreamingFormat::from_token).map(|v| c.sf = Some(v)),
        "st" => token(value, StreamType::from_token).map(|v| c.st = Some(v)),
        _ => match value {
            Raw::Invalid(why) => Err(KeyErrorKind::Syntax(why)),
            Raw::String(s) if s.chars().count() > MAX_STRING_LEN => Err(KeyErrorKind::TooLong {
                len: s.chars().count(),
                max: MAX_STRING_LEN,
            }),
            other => {
                let v = match other {
                    Raw::Integer(i) => Value::Integer(i),
                    Raw::Decimal(f) => Value::Decimal(f),
                    Raw::String(s) => Value::String(s),
                    Raw::Token(t) => Value::Token(t),
                    Raw::Boolean(b) => Value::Boolean(b),
                    Raw::Invalid(_) => return,
                };
                c.unknown.insert(key.clone(), v);
                Ok(())
            }
        },
    };
    if let Err(kind) = result {
        out.warnings.push(KeyError { key, kind });
    }
}

fn integer(v: Raw) -> Result<u64, KeyErrorKind> {
    match v {
        Raw::Integer(i) => u64::try_from(i).map_err(|_| KeyErrorKind::Negative),
        Raw::Invalid(why) => Err(KeyErrorKind::Syntax(why)),
        _ => Err(KeyErrorKind::ExpectedInteger),
    }
}

fn decimal(v: Raw) -> Result<f64, KeyErrorKind> {
    let f = match v {
        Raw::Integer(i) => i as f64,
        Raw::Decimal(f) => f,
        Raw::Invalid(why) => return Err(KeyErrorKind::Syntax(why)),
        _ => return Err(KeyErrorKind::ExpectedDecimal),
    };
    if f < 0.0 {
        Err(KeyErrorKind::Negative)
    } else {
        Ok(f)
    }
}

/// Booleans: bare key, `?1`/`?0`; the tokens `true`/`false` are tolerated.
fn boolean(v: Raw) -> Result<bool, KeyErrorKind> {
    match v {
        Raw::Boolean(b) => Ok(b),
        Raw::Token(t) if t == "true" => Ok(true),
        Raw::Token(t) if t == "false" => Ok(false),
        Raw::Invalid(why) => Err(KeyErrorKind::Syntax(why)),
        _ => Err(KeyErrorKind::ExpectedBoolean),
    }
}

fn string(v: Raw, max: usize) -> Result<String, KeyErrorKind> {
    match v {
        Raw::String(s) => {
            let len = s.chars().count();
            if len > max {
                Err(KeyErrorKind::TooLong { len, max })
            } else {
                Ok(s)
            }
        }
        Raw::Invalid(why) => Err(KeyErrorKind::Syntax(why)),
        _ => Err(KeyErrorKind::ExpectedString),
    }
}

/// Tokens; a quoted string holding a known token is tolerated (JSON has no
/// tokens, and some players quote them).
fn token<T>(v: Raw, from: fn(&str) -> Option<T>) -> Result<T, KeyErrorKind> {
    match v {
        Raw::Token(t) | Raw::String(t) => {
            from(&t).ok_or_else(|| KeyErrorKind::UnknownToken(t.chars().take(16).collect()))
        }
        Raw::Invalid(why) => Err(KeyErrorKind::Syntax(why)),
        _ => Err(KeyErrorKind::ExpectedToken),
    }
}

/// `start-end`, `start-` or `-suffix` with decimal digits.
fn valid_range(s: &str) -> bool {
    let Some((a, b)) = s.split_once('-') else {
        return false;
    };
    let digits = |x: &str| x.bytes().all(|c| c.is_ascii_digit());
    (!a.is_empty() || !b.is_empty()) && digits(a) && digits(b)
}

/// URL-decodes a query value: `%XX` escapes and `+` as space. A `%` not
/// followed by two hex digits is kept as is.
fn percent_decode(s: &str) -> Result<String, CmcdError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| CmcdError::BadEncoding)
}

#[cfg(test)]
mod tests;
