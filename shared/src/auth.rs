//! Enrollment tokens and per-node credentials (token mode).
//!
//! A new node presents the cluster's enrollment token once; the scheduler
//! answers with a node credential `vn1.<node-id>.<secret>` that the agent
//! stores and presents from then on (QUIC Hello and gRPC `authorization`
//! metadata). The scheduler keeps only a SHA-256 of the secret. Once a node
//! id is enrolled, the enrollment token alone no longer admits it, so a
//! holder of the token cannot take over another node's id. In mTLS mode the
//! certificate identity replaces both.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "vn1";

/// A random URL-safe secret of 32 bytes.
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Lowercase hex SHA-256 of a secret, as stored by the scheduler.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of a presented secret with the expected one.
/// An empty secret never matches (not even an empty one): a missing
/// setting must never turn into "any empty token is accepted".
pub fn secrets_equal(a: &str, b: &str) -> bool {
    !a.is_empty() && bytes_equal(a.as_bytes(), b.as_bytes())
}

/// Constant-time byte comparison (lengths are not secret).
pub fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A parsed node credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCredential {
    pub node_id: String,
    pub secret: String,
}

impl NodeCredential {
    pub fn issue(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            secret: random_secret(),
        }
    }

    pub fn encode(&self) -> String {
        format!("{PREFIX}.{}.{}", self.node_id, self.secret)
    }

    /// Parses `vn1.<node-id>.<secret>`. Node ids may contain dots and secrets
    /// (URL-safe base64) never do, so the secret follows the last dot.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.trim().strip_prefix(PREFIX)?.strip_prefix('.')?;
        let (node_id, secret) = rest.rsplit_once('.')?;
        if node_id.is_empty() || secret.len() < 16 {
            return None;
        }
        Some(Self {
            node_id: node_id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// Node ids: 1–64 characters of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_round_trip() {
        let c = NodeCredential::issue("edge-1.par");
        let parsed = NodeCredential::parse(&c.encode()).unwrap();
        assert_eq!(parsed, c);
        assert!(NodeCredential::parse("vn1.x.short").is_none());
        assert!(NodeCredential::parse("garbage").is_none());
        assert!(secrets_equal(&hash_secret("a"), &hash_secret("a")));
        assert!(!secrets_equal(&hash_secret("a"), &hash_secret("b")));
        assert!(valid_node_id("edge-1.par"));
        assert!(!valid_node_id("-x"));
        assert!(!valid_node_id("a b"));
        assert!(!valid_node_id(""));
    }
}
