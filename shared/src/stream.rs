//! Stream keys and patterns.
//!
//! A stream key is `app/stream` (the path `/{app}/{stream}.flv` without the
//! leading slash and extension). A pattern is a key or a prefix ending in
//! `*` (`live/*`, `*`). Keys are restricted to a safe alphabet so they can be
//! used in URLs, file names and metric labels without escaping.

use serde::{Deserialize, Serialize};
use std::fmt;

const MAX_KEY_LEN: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamKeyError {
    #[error("stream key must be `app/stream`, got {0:?}")]
    Shape(String),
    #[error("stream key {0:?} has characters outside [A-Za-z0-9._-]")]
    Alphabet(String),
    #[error("stream key longer than {MAX_KEY_LEN} bytes")]
    TooLong,
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A validated `app/stream` key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamKey(String);

impl StreamKey {
    pub fn parse(s: &str) -> Result<Self, StreamKeyError> {
        if s.len() > MAX_KEY_LEN {
            return Err(StreamKeyError::TooLong);
        }
        let Some((app, stream)) = s.split_once('/') else {
            return Err(StreamKeyError::Shape(s.to_owned()));
        };
        if app.is_empty() || stream.is_empty() || stream.contains('/') {
            return Err(StreamKeyError::Shape(s.to_owned()));
        }
        if !valid_part(app) || !valid_part(stream) {
            return Err(StreamKeyError::Alphabet(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn app(&self) -> &str {
        self.0.split_once('/').map(|(a, _)| a).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.0.split_once('/').map(|(_, s)| s).unwrap_or("")
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamKey {
    type Error = StreamKeyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<StreamKey> for String {
    fn from(k: StreamKey) -> String {
        k.0
    }
}

/// A key or a prefix pattern ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamPattern(String);

impl StreamPattern {
    pub fn parse(s: &str) -> Result<Self, StreamKeyError> {
        if s.len() > MAX_KEY_LEN {
            return Err(StreamKeyError::TooLong);
        }
        if let Some(prefix) = s.strip_suffix('*') {
            let ok = prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
                && prefix.matches('/').count() <= 1;
            return if ok {
                Ok(Self(s.to_owned()))
            } else {
                Err(StreamKeyError::Alphabet(s.to_owned()))
            };
        }
        StreamKey::parse(s).map(|k| Self(k.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_exact(&self) -> bool {
        !self.0.ends_with('*')
    }

    pub fn matches(&self, key: &StreamKey) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => key.as_str().starts_with(prefix),
            None => self.0 == key.0,
        }
    }

    /// Longer (more specific) patterns win; exact keys beat any prefix.
    pub fn specificity(&self) -> usize {
        if self.is_exact() {
            usize::MAX
        } else {
            self.0.len()
        }
    }
}

impl fmt::Display for StreamPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamPattern {
    type Error = StreamKeyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<StreamPattern> for String {
    fn from(p: StreamPattern) -> String {
        p.0
    }
}

/// Fills `{app}` and `{stream}` in an origin URL template. A template with
/// neither gets `/{app}/{stream}.flv` appended.
pub fn origin_url(template: &str, key: &StreamKey) -> String {
    if template.contains("{app}") || template.contains("{stream}") {
        template
            .replace("{app}", key.app())
            .replace("{stream}", key.name())
    } else {
        format!("{}/{}.flv", template.trim_end_matches('/'), key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_patterns() {
        let k = StreamKey::parse("live/x").unwrap();
        assert_eq!((k.app(), k.name()), ("live", "x"));
        assert!(StreamKey::parse("live").is_err());
        assert!(StreamKey::parse("a/b/c").is_err());
        assert!(StreamKey::parse("live/x y").is_err());
        let p = StreamPattern::parse("live/*").unwrap();
        assert!(p.matches(&k));
        assert!(!StreamPattern::parse("game/*").unwrap().matches(&k));
        assert!(StreamPattern::parse("*").unwrap().matches(&k));
        assert!(StreamPattern::parse("live/x").unwrap().specificity() > p.specificity());
        assert_eq!(
            origin_url("http://o:80", &k),
            "http://o:80/live/x.flv".to_string()
        );
        assert_eq!(
            origin_url("http://o/{app}/{stream}.flv?x=1", &k),
            "http://o/live/x.flv?x=1"
        );
    }
}
