//! Who this agent is to the scheduler: the enrollment token, the node
//! credential the scheduler issued at enrollment (token mode), or a client
//! certificate (mTLS).
//!
//! The credential lives in `<data-dir>/node.credential` (mode 0600). It is
//! published on a `watch` channel: the telemetry client stores it when a
//! `Welcome` carries one and forgets it after an `UNKNOWN_NODE` rejection;
//! the route client waits for it before subscribing.

use crate::disk::write_atomic;
use std::path::{Path, PathBuf};
use tokio::sync::watch;
use tracing::{info, warn};
use vantage_shared::auth::NodeCredential;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("credential file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credential issued by the scheduler is malformed")]
    Malformed,
    #[error("credential issued by the scheduler names node {got:?}, this agent is {want:?}")]
    WrongNode { got: String, want: String },
}

/// Token, stored credential and mTLS flag of this agent.
#[derive(Debug)]
pub struct Identity {
    node_id: String,
    token: Option<String>,
    mtls: bool,
    path: PathBuf,
    credential: watch::Sender<Option<String>>,
    /// Held by the telemetry session that enrolls (several replicas: one
    /// enrollment at a time).
    enrolling: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Identity {
    /// Opens the credential store at `path`. A missing file means "not
    /// enrolled yet"; an unreadable or foreign credential is ignored with a
    /// warning (the agent re-enrolls with its token).
    pub fn open(
        node_id: &str,
        token: Option<String>,
        mtls: bool,
        path: &Path,
    ) -> Result<Self, IdentityError> {
        let stored = match std::fs::read_to_string(path) {
            Ok(text) => match NodeCredential::parse(&text) {
                Some(c) if c.node_id == node_id => Some(c.encode()),
                Some(c) => {
                    warn!(path = %path.display(), stored_node = %c.node_id,
                        "stored credential belongs to another node id; ignoring it");
                    None
                }
                None => {
                    warn!(path = %path.display(), "stored credential is malformed; ignoring it");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(IdentityError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(Self {
            node_id: node_id.to_owned(),
            token,
            mtls,
            path: path.to_owned(),
            credential: watch::Sender::new(stored),
            enrolling: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Whether a client certificate identifies this agent.
    pub fn is_mtls(&self) -> bool {
        self.mtls
    }

    /// Waits for the right to enroll (one telemetry session at a time).
    pub async fn enrollment(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.enrolling.clone().lock_owned().await
    }

    /// The stored credential, if enrolled.
    pub fn credential(&self) -> Option<String> {
        self.credential.borrow().clone()
    }

    /// Follows the credential as it is stored and forgotten.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.credential.subscribe()
    }

    /// Stores a credential issued in `Welcome`.
    pub fn store(&self, credential: &str) -> Result<(), IdentityError> {
        let parsed = NodeCredential::parse(credential).ok_or(IdentityError::Malformed)?;
        if parsed.node_id != self.node_id {
            return Err(IdentityError::WrongNode {
                got: parsed.node_id,
                want: self.node_id.clone(),
            });
        }
        let encoded = parsed.encode();
        if self.credential().as_deref() == Some(encoded.as_str()) {
            return Ok(());
        }
        write_atomic(&self.path, format!("{encoded}\n").as_bytes(), true).map_err(|source| {
            IdentityError::Io {
                path: self.path.clone(),
                source,
            }
        })?;
        info!(path = %self.path.display(), "stored node credential");
        self.credential.send_replace(Some(encoded));
        Ok(())
    }

    /// Deletes the stored credential (after `UNKNOWN_NODE`).
    pub fn forget(&self) -> Result<(), IdentityError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(IdentityError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        self.credential.send_replace(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_reload_and_forget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.credential");
        let id = Identity::open("edge-1", Some("tok".into()), false, &path).unwrap();
        assert_eq!(id.credential(), None);
        let cred = NodeCredential::issue("edge-1").encode();
        let mut rx = id.subscribe();
        id.store(&cred).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().as_deref(), Some(cred.as_str()));

        let again = Identity::open("edge-1", None, false, &path).unwrap();
        assert_eq!(again.credential().as_deref(), Some(cred.as_str()));
        // A credential stored for another node id is not used.
        let other = Identity::open("edge-2", None, false, &path).unwrap();
        assert_eq!(other.credential(), None);
        assert!(matches!(
            other.store(&cred),
            Err(IdentityError::WrongNode { .. })
        ));
        assert!(matches!(id.store("garbage"), Err(IdentityError::Malformed)));

        id.forget().unwrap();
        assert!(!path.exists());
        assert_eq!(id.credential(), None);
        id.forget().unwrap();
    }

    #[test]
    fn malformed_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.credential");
        std::fs::write(&path, "not a credential").unwrap();
        let id = Identity::open("edge-1", None, false, &path).unwrap();
        assert_eq!(id.credential(), None);
    }
}
