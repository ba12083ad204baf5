//! Publish authorisation (docs/security.md): who may publish a stream on
//! an agent, decided by the scheduler's `[publish]` settings and sent to
//! every agent in its route table ([`PublishPolicy`]), where the agent
//! enforces it for HTTP-FLV and RTMP alike.
//!
//! * `token` — a publish token (JWT HS256, [`vantage_shared::publish_token`])
//!   signed with a cluster publish key; the admin API issues them
//!   (`POST /v1/publish-tokens`) and rotates the keys.
//! * `webhook` — the operator's own auth service answers an `on_publish`
//!   call (SRS / nginx-rtmp convention), per app.
//! * `open` — anyone who reaches the media port may publish: `--dev`'s
//!   default, announced at start-up.
//!
//! The keys live in the store (`cluster_settings`, key `publish_keys`), so
//! scheduler replicas share them; the newest signs new tokens, older ones
//! still verify until deleted (rotation: `POST /v1/publish-keys`, then
//! `DELETE /v1/publish-keys/{id}` once tokens signed with the old key have
//! expired or been replaced).

use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::RwLock;
use vantage_proto::v1::{AppPublishRule, PublishKey, PublishPolicy};
use vantage_shared::publish_token::SigningKey;

/// How publishers of an app are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PublishAuth {
    /// A publish token signed with a cluster publish key.
    Token,
    /// The operator's `on_publish` webhook says yes.
    Webhook,
    /// Nobody is asked (development).
    Open,
}

impl PublishAuth {
    fn proto(self) -> i32 {
        use vantage_proto::v1::PublishAuth as P;
        match self {
            PublishAuth::Token => P::Token as i32,
            PublishAuth::Webhook => P::Webhook as i32,
            PublishAuth::Open => P::Open as i32,
        }
    }
}

/// A rule for one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRule {
    pub app: String,
    pub auth: PublishAuth,
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// `[publish]` of the scheduler config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Apps without a rule. Default `token`; `open` with `--dev`.
    pub auth: Option<PublishAuth>,
    /// The `on_publish` webhook of `auth = "webhook"`.
    pub webhook_url: Option<String>,
    /// How long agents wait for a webhook (then refuse). Default 3000.
    pub webhook_timeout_ms: u32,
    /// Longest lifetime `POST /v1/publish-tokens` issues. Default 30 days.
    pub token_max_ttl_s: u64,
    /// Per-app rules (`[[publish.apps]]`).
    pub apps: Vec<AppRule>,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            auth: None,
            webhook_url: None,
            webhook_timeout_ms: 3000,
            token_max_ttl_s: 30 * 86_400,
            apps: Vec::new(),
        }
    }
}

fn check_webhook(url: &Option<String>, what: &str) -> Result<(), String> {
    match url {
        None => Err(format!("{what} needs a webhook_url")),
        Some(u) => match url::Url::parse(u) {
            Ok(p) if p.scheme() == "http" && p.host().is_some() => Ok(()),
            Ok(_) => Err(format!("{what}: webhook_url {u:?} must be an http:// URL")),
            Err(e) => Err(format!("{what}: webhook_url {u:?}: {e}")),
        },
    }
}

impl PublishConfig {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.auth == Some(PublishAuth::Webhook) {
            check_webhook(&self.webhook_url, "publish auth = webhook")
                .map_err(|m| ("publish.webhook_url", m))?;
        }
        if !(100..=30_000).contains(&self.webhook_timeout_ms) {
            return Err((
                "publish.webhook_timeout_ms",
                "must be 100..=30000".to_owned(),
            ));
        }
        if !(60..=366 * 86_400).contains(&self.token_max_ttl_s) {
            return Err((
                "publish.token_max_ttl_s",
                "must be 60..=31622400".to_owned(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.apps {
            if vantage_shared::stream::StreamKey::parse(&format!("{}/x", r.app)).is_err() {
                return Err(("publish.apps", format!("{:?} is not an app name", r.app)));
            }
            if !seen.insert(r.app.as_str()) {
                return Err(("publish.apps", format!("app {:?} has two rules", r.app)));
            }
            if r.auth == PublishAuth::Webhook {
                check_webhook(&r.webhook_url, &format!("app {:?}", r.app))
                    .map_err(|m| ("publish.apps", m))?;
            }
        }
        Ok(())
    }

    /// Whether any app may publish without a credential.
    pub fn any_open(&self) -> bool {
        self.auth == Some(PublishAuth::Open)
            || self.apps.iter().any(|r| r.auth == PublishAuth::Open)
    }

    /// The policy agents enforce, with `keys` (newest first).
    pub fn policy(&self, keys: &[SigningKey]) -> PublishPolicy {
        PublishPolicy {
            auth: self.auth.unwrap_or(PublishAuth::Token).proto(),
            webhook_url: self.webhook_url.clone().unwrap_or_default(),
            webhook_timeout_ms: self.webhook_timeout_ms,
            apps: self
                .apps
                .iter()
                .map(|r| AppPublishRule {
                    app: r.app.clone(),
                    auth: r.auth.proto(),
                    webhook_url: r.webhook_url.clone().unwrap_or_default(),
                })
                .collect(),
            keys: keys
                .iter()
                .map(|k| PublishKey {
                    id: k.id.clone(),
                    secret: k.secret.clone(),
                })
                .collect(),
        }
    }
}

/// A stored publish key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    id: String,
    /// Hex.
    secret: String,
    created_at_ms: i64,
}

/// What the API lists of a key (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created_at_ms: i64,
    /// The key that signs new tokens.
    pub current: bool,
}

/// The cluster's publish keys, newest first.
#[derive(Debug, Default)]
pub struct PublishKeys {
    keys: RwLock<Vec<(SigningKey, i64)>>,
}

const SETTING: &str = "publish_keys";
/// Most keys kept at once (rotation adds one; delete old ones).
pub const MAX_KEYS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored publish keys are unreadable: {0}")]
    Corrupt(String),
    #[error("no publish key {0:?}")]
    Unknown(String),
    #[error("the only publish key cannot be deleted; rotate first")]
    Last,
    #[error("{MAX_KEYS} publish keys already; delete an old one first")]
    Full,
}

fn new_key(now_ms: i64) -> StoredKey {
    StoredKey {
        id: format!("k{}", hex::encode(rand::random::<[u8; 4]>())),
        secret: hex::encode(rand::random::<[u8; 32]>()),
        created_at_ms: now_ms,
    }
}

fn decode(stored: &[StoredKey]) -> Result<Vec<(SigningKey, i64)>, KeysError> {
    stored
        .iter()
        .map(|k| {
            let secret = hex::decode(&k.secret)
                .map_err(|e| KeysError::Corrupt(format!("key {}: {e}", k.id)))?;
            Ok((
                SigningKey {
                    id: k.id.clone(),
                    secret,
                },
                k.created_at_ms,
            ))
        })
        .collect()
}

impl PublishKeys {
    /// Loads the keys, creating the first one when there is none.
    pub async fn load(store: &Store, now_ms: i64) -> Result<PublishKeys, KeysError> {
        let first = serde_json::to_string(&[new_key(now_ms)]).unwrap_or_default();
        let text = store.cluster_setting(SETTING, &first, now_ms).await?;
        let stored: Vec<StoredKey> =
            serde_json::from_str(&text).map_err(|e| KeysError::Corrupt(e.to_string()))?;
        let keys = decode(&stored)?;
        if keys.is_empty() {
            return Err(KeysError::Corrupt("no keys".into()));
        }
        Ok(PublishKeys {
            keys: RwLock::new(keys),
        })
    }

    /// The keys, newest first.
    pub fn keys(&self) -> Vec<SigningKey> {
        read(&self.keys).iter().map(|(k, _)| k.clone()).collect()
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> Option<SigningKey> {
        read(&self.keys).first().map(|(k, _)| k.clone())
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        read(&self.keys)
            .iter()
            .enumerate()
            .map(|(i, (k, at))| KeyInfo {
                id: k.id.clone(),
                created_at_ms: *at,
                current: i == 0,
            })
            .collect()
    }

    async fn save(&self, store: &Store, keys: Vec<(SigningKey, i64)>) -> Result<(), KeysError> {
        let stored: Vec<StoredKey> = keys
            .iter()
            .map(|(k, at)| StoredKey {
                id: k.id.clone(),
                secret: hex::encode(&k.secret),
                created_at_ms: *at,
            })
            .collect();
        let text = serde_json::to_string(&stored).map_err(|e| KeysError::Corrupt(e.to_string()))?;
        store
            .put_cluster_setting(SETTING, &text, vantage_shared::clock::now_ms())
            .await?;
        *write(&self.keys) = keys;
        Ok(())
    }

    /// Adds a new current key; returns it (its secret is shown once, for
    /// operators who mint tokens themselves).
    pub async fn rotate(&self, store: &Store, now_ms: i64) -> Result<SigningKey, KeysError> {
        let mut keys = read(&self.keys).clone();
        if keys.len() >= MAX_KEYS {
            return Err(KeysError::Full);
        }
        let fresh = decode(&[new_key(now_ms)])?;
        let key = fresh[0].0.clone();
        keys.insert(0, fresh[0].clone());
        self.save(store, keys).await?;
        Ok(key)
    }

    /// Deletes a key: tokens it signed stop verifying once agents have
    /// their next table.
    pub async fn delete(&self, store: &Store, id: &str) -> Result<(), KeysError> {
        let mut keys = read(&self.keys).clone();
        let before = keys.len();
        keys.retain(|(k, _)| k.id != id);
        if keys.len() == before {
            return Err(KeysError::Unknown(id.chars().take(64).collect()));
        }
        if keys.is_empty() {
            return Err(KeysError::Last);
        }
        self.save(store, keys).await
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_rules_are_checked() {
        let ok: PublishConfig = toml::from_str(
            "auth = \"token\"\n[[apps]]\napp = \"hook\"\nauth = \"webhook\"\nwebhook_url = \"http://a/b\"\n",
        )
        .unwrap();
        ok.validate().unwrap();
        assert!(!ok.any_open());
        let p = ok.policy(&[SigningKey {
            id: "k1".into(),
            secret: vec![1; 32],
        }]);
        assert_eq!(p.apps.len(), 1);
        assert_eq!(p.keys[0].id, "k1");
        for bad in [
            "auth = \"webhook\"",
            "[[apps]]\napp = \"a\"\nauth = \"webhook\"",
            "[[apps]]\napp = \"a/b\"\nauth = \"open\"",
            "[[apps]]\napp = \"a\"\nauth = \"open\"\n[[apps]]\napp = \"a\"\nauth = \"token\"",
            "auth = \"webhook\"\nwebhook_url = \"https://x/\"",
            "token_max_ttl_s = 1",
        ] {
            let c: PublishConfig = toml::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<PublishConfig>("autth = \"token\"").is_err());
    }
}
