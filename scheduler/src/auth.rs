//! Who may report and subscribe as which node.
//!
//! * mTLS mode: the client certificate's subject CN is the node id; a Hello
//!   or a route subscription naming another id is refused.
//! * Token mode: a new node id enrolls once with the cluster's enrollment
//!   token and receives a per-node credential; afterwards only that
//!   credential admits the id (DESIGN §2: no node can report or subscribe as
//!   another node id).

use crate::registry::Registry;
use std::sync::Arc;
use vantage_proto::v1::{Hello, RejectReason};
use vantage_shared::auth::{NodeCredential, hash_secret, secrets_equal, valid_node_id};

#[derive(Debug, Clone)]
pub enum Mode {
    Token { enrollment_token: String },
    Mtls,
}

/// Result of a successful Hello check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Known node, proven by credential or certificate.
    Known,
    /// New node enrolled with the token: store the hash, hand out the credential.
    Enroll(NodeCredential),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    pub reason: RejectReason,
    pub detail: String,
}

fn refuse(reason: RejectReason, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

#[derive(Debug)]
pub struct Auth {
    mode: Mode,
    registry: Arc<Registry>,
}

impl Auth {
    pub fn new(mode: Mode, registry: Arc<Registry>) -> Self {
        Self { mode, registry }
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Checks the identity claims of a Hello. `peer_cn` is the CN of the
    /// client certificate, when one was presented.
    pub fn admit(&self, hello: &Hello, peer_cn: Option<&str>) -> Result<Admission, Refusal> {
        if !valid_node_id(&hello.node_id) {
            return Err(refuse(
                RejectReason::InvalidHello,
                format!("invalid node id {:?}", hello.node_id),
            ));
        }
        match &self.mode {
            Mode::Mtls => match peer_cn {
                Some(cn) if cn == hello.node_id => Ok(Admission::Known),
                Some(cn) => Err(refuse(
                    RejectReason::IdentityMismatch,
                    format!(
                        "certificate is for {cn:?}, Hello claims {:?}",
                        hello.node_id
                    ),
                )),
                None => Err(refuse(
                    RejectReason::IdentityMismatch,
                    "no client certificate",
                )),
            },
            Mode::Token { enrollment_token } => {
                if !hello.node_credential.is_empty() {
                    self.check_credential(&hello.node_id, &hello.node_credential)
                        .map(|()| Admission::Known)
                } else {
                    if !secrets_equal(&hello.enrollment_token, enrollment_token) {
                        return Err(refuse(RejectReason::BadToken, "wrong enrollment token"));
                    }
                    let enrolled = self
                        .registry
                        .with(&hello.node_id, |e| e.credential_hash.is_some())
                        .unwrap_or(false);
                    if enrolled {
                        return Err(refuse(
                            RejectReason::DuplicateNode,
                            format!(
                                "node id {:?} is already enrolled; present its credential",
                                hello.node_id
                            ),
                        ));
                    }
                    Ok(Admission::Enroll(NodeCredential::issue(&hello.node_id)))
                }
            }
        }
    }

    /// Checks a node credential for `node_id` (token mode).
    pub fn check_credential(&self, node_id: &str, credential: &str) -> Result<(), Refusal> {
        let Some(cred) = NodeCredential::parse(credential) else {
            return Err(refuse(RejectReason::BadToken, "malformed node credential"));
        };
        if cred.node_id != node_id {
            return Err(refuse(
                RejectReason::IdentityMismatch,
                format!("credential belongs to {:?}, not {node_id:?}", cred.node_id),
            ));
        }
        let stored = self
            .registry
            .with(node_id, |e| e.credential_hash.clone())
            .flatten();
        match stored {
            None => Err(refuse(
                RejectReason::UnknownNode,
                format!("node {node_id:?} is not enrolled here"),
            )),
            Some(h) if secrets_equal(&h, &hash_secret(&cred.secret)) => Ok(()),
            Some(_) => Err(refuse(RejectReason::BadToken, "wrong node credential")),
        }
    }

    /// Checks a route subscription: bearer credential (token mode) or
    /// certificate CN (mTLS) must name `node_id`.
    pub fn check_subscriber(
        &self,
        node_id: &str,
        bearer: Option<&str>,
        peer_cn: Option<&str>,
    ) -> Result<(), Refusal> {
        match &self.mode {
            Mode::Mtls => match peer_cn {
                Some(cn) if cn == node_id => Ok(()),
                _ => Err(refuse(
                    RejectReason::IdentityMismatch,
                    "client certificate does not name this node",
                )),
            },
            Mode::Token { .. } => match bearer {
                Some(c) => self.check_credential(node_id, c),
                None => Err(refuse(
                    RejectReason::BadToken,
                    "missing `authorization: Bearer <node credential>`",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{NodeEntry, NodeInfo};

    fn hello(id: &str, token: &str, cred: &str) -> Hello {
        Hello {
            node_id: id.into(),
            enrollment_token: token.into(),
            node_credential: cred.into(),
            ..Default::default()
        }
    }

    #[test]
    fn token_mode_enrolls_once_then_requires_the_credential() {
        let reg = Arc::new(Registry::new());
        let auth = Auth::new(
            Mode::Token {
                enrollment_token: "tok".into(),
            },
            reg.clone(),
        );
        assert_eq!(
            auth.admit(&hello("a", "bad", ""), None).unwrap_err().reason,
            RejectReason::BadToken
        );
        let Admission::Enroll(cred) = auth.admit(&hello("a", "tok", ""), None).unwrap() else {
            panic!("expected enrollment")
        };
        let mut e = NodeEntry::new(
            "a".into(),
            NodeInfo {
                region: String::new(),
                coord: None,
                capacity_mbps: 1.0,
                public_url: String::new(),
                probe_addr: String::new(),
                agent_version: String::new(),
                static_origins: Default::default(),
            },
            0,
        );
        e.credential_hash = Some(hash_secret(&cred.secret));
        reg.insert(e);
        // the token alone no longer admits "a"
        assert_eq!(
            auth.admit(&hello("a", "tok", ""), None).unwrap_err().reason,
            RejectReason::DuplicateNode
        );
        assert_eq!(
            auth.admit(&hello("a", "", &cred.encode()), None).unwrap(),
            Admission::Known
        );
        // a's credential cannot be used for b
        assert_eq!(
            auth.admit(&hello("b", "", &cred.encode()), None)
                .unwrap_err()
                .reason,
            RejectReason::IdentityMismatch
        );
        let forged = NodeCredential {
            node_id: "a".into(),
            secret: "x".repeat(40),
        };
        assert_eq!(
            auth.admit(&hello("a", "", &forged.encode()), None)
                .unwrap_err()
                .reason,
            RejectReason::BadToken
        );
        assert!(
            auth.check_subscriber("a", Some(&cred.encode()), None)
                .is_ok()
        );
        assert!(
            auth.check_subscriber("b", Some(&cred.encode()), None)
                .is_err()
        );
        assert!(auth.check_subscriber("a", None, None).is_err());
    }

    #[test]
    fn mtls_binds_the_certificate_name() {
        let auth = Auth::new(Mode::Mtls, Arc::new(Registry::new()));
        assert!(auth.admit(&hello("a", "", ""), Some("a")).is_ok());
        assert_eq!(
            auth.admit(&hello("a", "", ""), Some("b"))
                .unwrap_err()
                .reason,
            RejectReason::IdentityMismatch
        );
        assert!(auth.admit(&hello("a", "", ""), None).is_err());
        assert!(auth.check_subscriber("a", None, Some("a")).is_ok());
        assert!(auth.check_subscriber("a", None, Some("b")).is_err());
    }
}
