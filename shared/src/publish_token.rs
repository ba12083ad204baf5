//! Publish tokens: JSON Web Tokens signed with HMAC-SHA256 (JWT `HS256`,
//! RFC 7519), so any JWT library can mint them with a cluster publish key.
//!
//! ```text
//! header  {"alg":"HS256","typ":"JWT","kid":"<key id>"}
//! payload {"aud":"vantage:publish","sub":"<stream pattern>","exp":<unix s>,"iat":<unix s>}
//! ```
//!
//! `sub` is a stream key (`live/cam1`) or pattern (`live/*`, `*`) the
//! token allows publishing to; `exp` is required. Verification refuses any
//! other `alg` (no `none`), an unknown `kid` (or, without `kid`, a
//! signature no key makes), another audience, an expired token (30 s of
//! clock skew allowed), a token not yet valid (`nbf`), and a stream the
//! pattern does not cover. The scheduler issues tokens
//! (`POST /v1/publish-tokens`) and hands the keys to agents in route
//! tables; agents verify. Pure: callers pass `now` (unix seconds).

use crate::stream::{StreamKey, StreamPattern};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The `aud` of every publish token.
pub const AUDIENCE: &str = "vantage:publish";
/// Clock skew tolerated on `exp` and `nbf`, seconds.
pub const LEEWAY_S: i64 = 30;
/// Longest token accepted (bytes): the rest is refused unread.
pub const MAX_TOKEN_LEN: usize = 2048;

/// A key that signs publish tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub id: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The stream pattern the token covers.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub aud: Audience,
}

/// `aud`: one string or a list (RFC 7519 allows both).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, a: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(x) => x == a,
            Audience::Many(v) => v.iter().any(|x| x == a),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a publish token (expected header.payload.signature)")]
    Malformed,
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("unsupported token algorithm {0:?} (HS256 only)")]
    Algorithm(String),
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    #[error("bad token signature")]
    Signature,
    #[error("token audience is not {AUDIENCE:?}")]
    Audience,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token subject {0:?} is not a stream pattern")]
    Subject(String),
    #[error("token for {pattern:?} does not cover {stream}")]
    Scope { pattern: String, stream: String },
    #[error("no publish keys to check tokens with")]
    NoKeys,
}

impl TokenError {
    /// Whether the token was valid but for another stream (HTTP 403, not 401).
    pub fn is_scope(&self) -> bool {
        matches!(self, TokenError::Scope { .. })
    }

    /// A short label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed | TokenError::TooLong => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::UnknownKey(_) | TokenError::Signature | TokenError::NoKeys => "signature",
            TokenError::Audience | TokenError::Subject(_) => "claims",
            TokenError::Expired | TokenError::NotYetValid => "expired",
            TokenError::Scope { .. } => "scope",
        }
    }
}

fn sign(secret: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Issues a token for `pattern`, valid from `now_s` for `ttl_s` seconds.
pub fn issue(key: &SigningKey, pattern: &StreamPattern, now_s: i64, ttl_s: i64) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
        kid: Some(key.id.clone()),
    };
    let claims = Claims {
        sub: pattern.as_str().to_owned(),
        exp: now_s.saturating_add(ttl_s),
        iat: Some(now_s),
        nbf: None,
        aud: Audience::One(AUDIENCE.into()),
    };
    // Serialising these plain structs cannot fail.
    let h = serde_json::to_vec(&header).unwrap_or_default();
    let c = serde_json::to_vec(&claims).unwrap_or_default();
    let signing_input = format!("{}.{}", b64(&h), b64(&c));
    let sig = sign(&key.secret, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&sig))
}

/// Checks `token` against `keys` for publishing `stream` at `now_s`.
pub fn verify(
    token: &str,
    keys: &[SigningKey],
    stream: &StreamKey,
    now_s: i64,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    if keys.is_empty() {
        return Err(TokenError::NoKeys);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Malformed);
    let header: Header = serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm(header.alg.chars().take(16).collect()));
    }
    let sig = decode(s)?;
    let signing_input = &token[..h.len() + 1 + c.len()];
    let candidates: Vec<&SigningKey> = match &header.kid {
        Some(kid) => {
            let k: Vec<&SigningKey> = keys.iter().filter(|k| &k.id == kid).collect();
            if k.is_empty() {
                return Err(TokenError::UnknownKey(kid.chars().take(64).collect()));
            }
            k
        }
        None => keys.iter().collect(),
    };
    let ok = candidates.iter().any(|k| {
        let want = sign(&k.secret, signing_input.as_bytes());
        !want.is_empty() && crate::auth::bytes_equal(&want, &sig)
    });
    if !ok {
        return Err(TokenError::Signature);
    }
    let claims: Claims = serde_json::from_slice(&decode(c)?).map_err(|_| TokenError::Malformed)?;
    if !claims.aud.contains(AUDIENCE) {
        return Err(TokenError::Audience);
    }
    if now_s > claims.exp.saturating_add(LEEWAY_S) {
        return Err(TokenError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| now_s < nbf.saturating_sub(LEEWAY_S))
    {
        return Err(TokenError::NotYetValid);
    }
    let pattern = StreamPattern::parse(&claims.sub)
        .map_err(|_| TokenError::Subject(claims.sub.chars().take(64).collect()))?;
    if !pattern.matches(stream) {
        return Err(TokenError::Scope {
            pattern: claims.sub.clone(),
            stream: stream.to_string(),
        });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(id: &str, b: u8) -> SigningKey {
        SigningKey {
            id: id.into(),
            secret: vec![b; 32],
        }
    }

    fn k(s: &str) -> StreamKey {
        StreamKey::parse(s).unwrap()
    }

    #[test]
    fn issued_tokens_verify_for_their_streams_only() {
        let keys = [key("k2", 2), key("k1", 1)];
        let t = issue(&keys[1], &StreamPattern::parse("live/*").unwrap(), 1000, 60);
        let c = verify(&t, &keys, &k("live/cam"), 1010).unwrap();
        assert_eq!((c.sub.as_str(), c.exp), ("live/*", 1060));
        assert!(
            verify(&t, &keys, &k("vod/cam"), 1010)
                .unwrap_err()
                .is_scope()
        );
        assert_eq!(
            verify(&t, &keys, &k("live/cam"), 1100).unwrap_err(),
            TokenError::Expired
        );
        // A retired key: unknown id.
        assert!(matches!(
            verify(&t, &keys[..1], &k("live/cam"), 1010),
            Err(TokenError::UnknownKey(_))
        ));
        // Another key with the same id: bad signature.
        assert_eq!(
            verify(&t, &[key("k1", 9)], &k("live/cam"), 1010).unwrap_err(),
            TokenError::Signature
        );
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let keys = [key("k1", 1)];
        let t = issue(
            &keys[0],
            &StreamPattern::parse("live/cam").unwrap(),
            1000,
            60,
        );
        let parts: Vec<&str> = t.split('.').collect();
        // alg=none with no signature.
        let none = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let forged = format!("{none}.{}.", parts[1]);
        assert!(matches!(
            verify(&forged, &keys, &k("live/cam"), 1010),
            Err(TokenError::Algorithm(_))
        ));
        // Claims changed after signing.
        let wider = b64(br#"{"sub":"*","exp":99999999999,"aud":"vantage:publish"}"#);
        let tampered = format!("{}.{wider}.{}", parts[0], parts[2]);
        assert_eq!(
            verify(&tampered, &keys, &k("live/cam"), 1010).unwrap_err(),
            TokenError::Signature
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(5000)] {
            assert!(verify(bad, &keys, &k("live/cam"), 1010).is_err(), "{bad}");
        }
        assert_eq!(
            verify(&t, &[], &k("live/cam"), 1010).unwrap_err(),
            TokenError::NoKeys
        );
    }

    #[test]
    fn tokens_minted_elsewhere_with_the_key_verify() {
        // Signed by hand as any JWT library would (no kid, aud as a list).
        let keys = [key("k1", 1)];
        let h = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let c = b64(br#"{"sub":"live/*","exp":2000,"aud":["x","vantage:publish"]}"#);
        let input = format!("{h}.{c}");
        let sig = b64(&sign(&keys[0].secret, input.as_bytes()));
        let t = format!("{input}.{sig}");
        assert!(verify(&t, &keys, &k("live/a"), 1500).is_ok());
        // Without the audience: refused.
        let c = b64(br#"{"sub":"live/*","exp":2000}"#);
        let input = format!("{h}.{c}");
        let sig = b64(&sign(&keys[0].secret, input.as_bytes()));
        assert_eq!(
            verify(&format!("{input}.{sig}"), &keys, &k("live/a"), 1500).unwrap_err(),
            TokenError::Audience
        );
    }
}
