//! The CMCD dictionary syntax: a cursor over `key=value` members, bare
//! items (integers, decimals, strings, tokens, booleans), typing each v1
//! key into [`Cmcd`], and URL decoding for the query transport.

use super::*;

/// A syntactic value before typing.
#[derive(Debug)]
pub(super) enum Raw {
    Integer(i64),
    Decimal(f64),
    String(String),
    Token(String),
    Boolean(bool),
    Invalid(&'static str),
}

/// Parses one dictionary into `out`, counting keys against [`MAX_KEYS`].
pub(super) fn parse_into(text: &str, out: &mut Parsed, keys: &mut usize) -> Result<(), CmcdError> {
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
pub(super) fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_alphabetic() || b[0] == b'*')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.*".contains(c))
}

/// A key name fit for a warning (bounded).
pub(super) fn truncate(key: &str) -> String {
    key.chars().take(64).collect()
}

/// Types `value` for `key` and stores it, or records a warning.
pub(super) fn assign(out: &mut Parsed, key: String, value: Raw) {
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
pub(super) fn percent_decode(s: &str) -> Result<String, CmcdError> {
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
