//! Tokens of live comments: compact JWTs (RFC 7519) signed with HMAC-SHA256
//! (`HS256`) by a key the scheduler distributes to every agent
//! (`CommentSettings.keys`, `proto/vantage/v1/comments.proto`).
//!
//! * **Poster tokens** let a viewer post to a room. Reading is anonymous.
//!   Claims: `sub` (poster id, 1–64 characters, required), `exp` (unix
//!   seconds, required), optional `nbf`, `iat`, `name` (display name, ≤ 32
//!   characters; `sub` is shown when absent) and `room` (an exact
//!   `app/stream` or a pattern such as `live/*`: the rooms it may post to).
//! * **Link tokens** let an agent forward posts to its upstream agent
//!   (`sub` = the agent's node id, `lnk: true`, a few minutes of life).
//!   A poster token is never accepted as a link token nor the reverse.
//!
//! The header is `{"alg":"HS256","typ":"JWT","kid":KID}`; `kid` names the
//! key (keys rotate: several may be valid at once; without `kid` every key
//! is tried). Other algorithms, `alg: none` included, are refused. Clocks
//! may differ by [`LEEWAY_S`].
//!
//! Pure: the caller passes `now` (unix seconds).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted (bytes).
pub const MAX_TOKEN_BYTES: usize = 2048;
/// Tolerated clock difference for `exp` and `nbf` (seconds).
pub const LEEWAY_S: i64 = 30;
/// Longest `sub` (characters).
pub const MAX_SUB_CHARS: usize = 64;
/// Longest `name` (characters).
pub const MAX_NAME_CHARS: usize = 32;

/// One signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The keys in force, current first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys(pub Vec<Key>);

impl Keys {
    /// The key new tokens are signed with.
    pub fn current(&self) -> Option<&Key> {
        self.0.first()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Set on agent link tokens only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lnk: bool,
}

impl Claims {
    /// What viewers see as the author.
    pub fn display(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.sub)
    }

    /// Whether the token allows posting to room `key` (`app/stream`).
    pub fn allows_room(&self, key: &str) -> bool {
        match self.room.as_deref() {
            None => true,
            Some(p) => match p.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => p == key,
            },
        }
    }
}

/// What is wrong with a token. [`TokenError::reason`] is the reason code
/// returned to the poster and the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no signing key configured yet (the scheduler distributes it)")]
    NoKeys,
    #[error("token malformed: {0}")]
    Malformed(&'static str),
    #[error("token algorithm {0:?} is not HS256")]
    Algorithm(String),
    #[error("token names unknown key {0:?}")]
    UnknownKey(String),
    #[error("token signature does not verify")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token is for another kind of client")]
    WrongKind,
    #[error("token does not allow this room")]
    WrongRoom,
}

impl TokenError {
    /// Reason code: `no_key`, `expired_token`, `wrong_room` or `bad_token`.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::NoKeys => "no_key",
            TokenError::Expired => "expired_token",
            TokenError::WrongRoom => "wrong_room",
            _ => "bad_token",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts every key length"),
    }
}

/// Signs `claims` with `key`.
pub fn sign(key: &Key, claims: &Claims) -> String {
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": key.kid});
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{h}.{p}");
    let mut m = mac(&key.secret);
    m.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Verifies `token` against `keys` at `now_s` (unix seconds): signature,
/// algorithm, `exp`/`nbf` (± [`LEEWAY_S`]), the shape of `sub`/`name`, and
/// the token kind (`link` = an agent link token).
pub fn verify(keys: &Keys, token: &str, now_s: i64, link: bool) -> Result<Claims, TokenError> {
    if keys.is_empty() {
        return Err(TokenError::NoKeys);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("longer than 2048 bytes"));
    }
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed("header"))?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm(header.alg));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed("signature encoding"))?;
    let signing_input = &token.trim()[..h.len() + 1 + p.len()];
    let candidates: Vec<&Key> = match &header.kid {
        Some(kid) => {
            let k: Vec<&Key> = keys.0.iter().filter(|k| &k.kid == kid).collect();
            if k.is_empty() {
                return Err(TokenError::UnknownKey(kid.clone()));
            }
            k
        }
        None => keys.0.iter().collect(),
    };
    let verified = candidates.iter().any(|k| {
        let mut m = mac(&k.secret);
        m.update(signing_input.as_bytes());
        // Constant-time comparison.
        m.verify_slice(&sig).is_ok()
    });
    if !verified {
        return Err(TokenError::Signature);
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed("claims"))?;
    let sub_chars = claims.sub.chars().count();
    if sub_chars == 0 || sub_chars > MAX_SUB_CHARS || claims.sub.chars().any(char::is_control) {
        return Err(TokenError::Malformed(
            "sub must be 1-64 printable characters",
        ));
    }
    if let Some(n) = &claims.name
        && (n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control) || n.is_empty())
    {
        return Err(TokenError::Malformed(
            "name must be 1-32 printable characters",
        ));
    }
    if claims.lnk != link {
        return Err(TokenError::WrongKind);
    }
    if claims.exp + LEEWAY_S < now_s {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_S > now_s) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys(vec![
            Key {
                kid: "k2".into(),
                secret: vec![2; 32],
            },
            Key {
                kid: "k1".into(),
                secret: vec![1; 32],
            },
        ])
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            room: Some("live/*".into()),
            ..Default::default()
        }
    }

    #[test]
    fn signs_and_verifies_with_current_and_previous_keys() {
        let k = keys();
        for key in &k.0 {
            let t = sign(key, &claims(1000));
            let c = verify(&k, &t, 900, false).unwrap();
            assert_eq!(c.sub, "alice");
            assert!(c.allows_room("live/x") && !c.allows_room("vod/x"));
        }
    }

    #[test]
    fn refuses_expired_tampered_foreign_and_wrong_kind() {
        let k = keys();
        let t = sign(&k.0[0], &claims(1000));
        assert_eq!(
            verify(&k, &t, 1000 + LEEWAY_S + 1, false),
            Err(TokenError::Expired)
        );
        assert_eq!(TokenError::Expired.reason(), "expired_token");
        // Another payload under the same signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                sub: "mallory".into(),
                exp: 5000,
                ..Default::default()
            })
            .unwrap(),
        );
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(verify(&k, &forged, 900, false), Err(TokenError::Signature));
        // Signed with a key nobody distributed.
        let stranger = Key {
            kid: "k2".into(),
            secret: vec![9; 32],
        };
        let t2 = sign(&stranger, &claims(1000));
        assert_eq!(verify(&k, &t2, 900, false), Err(TokenError::Signature));
        // alg none.
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let t3 = format!("{none_header}.{}.", parts[1]);
        assert!(matches!(
            verify(&k, &t3, 900, false),
            Err(TokenError::Algorithm(_))
        ));
        // A poster token is not a link token.
        assert_eq!(verify(&k, &t, 900, true), Err(TokenError::WrongKind));
        assert_eq!(
            verify(&Keys::default(), &t, 900, false),
            Err(TokenError::NoKeys)
        );
        assert!(verify(&k, "a.b", 900, false).is_err());
        assert!(verify(&k, &"x".repeat(5000), 900, false).is_err());
    }

    #[test]
    fn unknown_kid_and_not_yet_valid() {
        let k = keys();
        let other = Key {
            kid: "k9".into(),
            secret: vec![2; 32],
        };
        let t = sign(&other, &claims(1000));
        assert_eq!(
            verify(&k, &t, 900, false),
            Err(TokenError::UnknownKey("k9".into()))
        );
        let mut c = claims(1000);
        c.nbf = Some(950);
        let t = sign(&k.0[0], &c);
        assert_eq!(verify(&k, &t, 900, false), Err(TokenError::NotYetValid));
        assert!(verify(&k, &t, 949, false).is_ok());
    }
}
