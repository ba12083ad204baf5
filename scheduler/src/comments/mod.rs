//! Live comments, the scheduler's part: the cluster's signing keys for
//! poster and agent-link tokens and the blocklist, kept in the store
//! (`cluster_settings`: `comment_keys`, `comment_blocklist`), pushed to
//! every agent over `CommentControl/WatchSettings` ([`grpc`]) on each
//! change, and managed over the HTTP API (`api/comments.rs`): blocklist
//! edits, key rotation, minting poster tokens.
//!
//! Replicas sharing a PostgreSQL store see each other's changes within
//! [`RELOAD_PERIOD`] (each reloads from the store and pushes what moved).

pub mod grpc;

use crate::store::{Store, StoreError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vantage_proto::v1::{CommentKey, CommentSettings};
use vantage_shared::clock::now_ms;
use vantage_shared::comment_token::{self, Claims, Key};

/// How often the settings are re-read from the store (other replicas).
pub const RELOAD_PERIOD: Duration = Duration::from_secs(5);
/// Keys kept: the current one and the one before (tokens signed with it
/// stay valid until they expire).
pub const KEYS_KEPT: usize = 2;
/// Blocklist bounds.
pub const MAX_PATTERNS: usize = 100_000;
pub const MAX_PATTERN_BYTES: usize = 256;
/// Longest poster token life (seconds).
pub const MAX_TOKEN_TTL_S: i64 = 7 * 24 * 3600;

const KEYS_SETTING: &str = "comment_keys";
const BLOCKLIST_SETTING: &str = "comment_blocklist";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct StoredKey {
    kid: String,
    key_hex: String,
    created_at_ms: i64,
}

/// The blocklist as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Blocklist {
    pub version: u64,
    pub updated_at_ms: i64,
    pub patterns: Vec<String>,
}

/// What is wrong with a blocklist or a token request.
#[derive(Debug, thiserror::Error)]
pub enum CommentsError {
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Metrics of `vantage_scheduler_comment_*`.
#[derive(Debug, Clone, Default)]
pub struct CommentMetrics {
    pub subscribers: Gauge,
    pub settings_version: Gauge,
    pub tokens_issued: Counter,
    pub settings_pushed: Counter,
}

impl CommentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("vantage_scheduler_comment");
        r.register(
            "settings_subscribers",
            "Agents subscribed to comment settings (keys, blocklist)",
            m.subscribers.clone(),
        );
        r.register(
            "settings_version",
            "Version of the comment settings in force",
            m.settings_version.clone(),
        );
        r.register(
            "tokens_issued",
            "Poster tokens minted by POST /v1/comments/tokens",
            m.tokens_issued.clone(),
        );
        r.register(
            "settings_pushed",
            "Comment settings messages sent to agents",
            m.settings_pushed.clone(),
        );
        m
    }
}

/// The cluster's comment settings.
#[derive(Debug)]
pub struct CommentControl {
    store: Store,
    /// Serialises changes (rotate, blocklist edits, reloads).
    edit: Mutex<()>,
    tx: watch::Sender<Arc<CommentSettings>>,
    pub metrics: CommentMetrics,
}

fn new_key(now: i64) -> StoredKey {
    let secret: [u8; 32] = rand::random();
    let tag: [u8; 4] = rand::random();
    StoredKey {
        kid: format!("k{}-{}", now, hex::encode(tag)),
        key_hex: hex::encode(secret),
        created_at_ms: now,
    }
}

/// Checks and tidies blocklist patterns: trimmed, non-empty, at most
/// [`MAX_PATTERN_BYTES`], at most [`MAX_PATTERNS`], duplicates removed.
pub fn clean_patterns(patterns: Vec<String>) -> Result<Vec<String>, CommentsError> {
    if patterns.len() > MAX_PATTERNS {
        return Err(CommentsError::Invalid(format!(
            "{} patterns; at most {MAX_PATTERNS}",
            patterns.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(patterns.len());
    for p in patterns {
        let t = p.trim();
        if t.is_empty() || t.trim_matches('*').trim().is_empty() {
            return Err(CommentsError::Invalid(format!("pattern {p:?} is empty")));
        }
        if t.len() > MAX_PATTERN_BYTES {
            return Err(CommentsError::Invalid(format!(
                "pattern {:?}… is longer than {MAX_PATTERN_BYTES} bytes",
                t.chars().take(20).collect::<String>()
            )));
        }
        if t.chars().any(char::is_control) {
            return Err(CommentsError::Invalid(format!(
                "pattern {t:?} holds a control character"
            )));
        }
        out.push(t.to_owned());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

impl CommentControl {
    /// Loads (creating the first key when there is none) from `store`.
    pub async fn load(store: Store, metrics: CommentMetrics) -> Result<Self, CommentsError> {
        let settings = Self::read(&store).await?;
        metrics
            .settings_version
            .set(i64::try_from(settings.version).unwrap_or(i64::MAX));
        info!(
            version = settings.version,
            keys = settings.keys.len(),
            blocklist = settings.blocklist.len(),
            "comment settings loaded"
        );
        Ok(Self {
            store,
            edit: Mutex::new(()),
            tx: watch::Sender::new(Arc::new(settings)),
            metrics,
        })
    }

    async fn read(store: &Store) -> Result<CommentSettings, CommentsError> {
        let now = now_ms();
        let default_keys = serde_json::to_string(&vec![new_key(now)]).unwrap_or_default();
        let keys_json = store
            .cluster_setting(KEYS_SETTING, &default_keys, now)
            .await?;
        let keys: Vec<StoredKey> = serde_json::from_str(&keys_json).map_err(|e| {
            CommentsError::Invalid(format!("stored {KEYS_SETTING} is not valid: {e}"))
        })?;
        let default_list = serde_json::to_string(&Blocklist::default()).unwrap_or_default();
        let list_json = store
            .cluster_setting(BLOCKLIST_SETTING, &default_list, now)
            .await?;
        let list: Blocklist = serde_json::from_str(&list_json).map_err(|e| {
            CommentsError::Invalid(format!("stored {BLOCKLIST_SETTING} is not valid: {e}"))
        })?;
        Ok(Self::settings_of(&keys, &list))
    }

    /// The message agents get. Its version is the time of the last change
    /// (of keys or blocklist), so every replica computes the same one.
    fn settings_of(keys: &[StoredKey], list: &Blocklist) -> CommentSettings {
        let keys_at = keys.iter().map(|k| k.created_at_ms).max().unwrap_or(0);
        let version = u64::try_from(keys_at.max(list.updated_at_ms)).unwrap_or(0);
        CommentSettings {
            version,
            keys: keys
                .iter()
                .filter_map(|k| {
                    Some(CommentKey {
                        kid: k.kid.clone(),
                        key: hex::decode(&k.key_hex).ok()?,
                        created_at_ms: k.created_at_ms,
                    })
                })
                .collect(),
            blocklist: list.patterns.clone(),
            blocklist_version: list.version,
            generated_at_ms: now_ms(),
        }
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<CommentSettings> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<CommentSettings>> {
        self.tx.subscribe()
    }

    fn publish(&self, s: CommentSettings) {
        let changed = {
            let cur = self.tx.borrow();
            cur.version != s.version
                || cur.keys != s.keys
                || cur.blocklist != s.blocklist
                || cur.blocklist_version != s.blocklist_version
        };
        if changed {
            self.metrics
                .settings_version
                .set(i64::try_from(s.version).unwrap_or(i64::MAX));
            self.tx.send_replace(Arc::new(s));
        }
    }

    async fn stored_keys(&self) -> Result<Vec<StoredKey>, CommentsError> {
        let now = now_ms();
        let json = self
            .store
            .cluster_setting(
                KEYS_SETTING,
                &serde_json::to_string(&vec![new_key(now)]).unwrap_or_default(),
                now,
            )
            .await?;
        serde_json::from_str(&json)
            .map_err(|e| CommentsError::Invalid(format!("stored {KEYS_SETTING}: {e}")))
    }

    /// The blocklist as stored.
    pub async fn blocklist(&self) -> Result<Blocklist, CommentsError> {
        let json = self
            .store
            .cluster_setting(
                BLOCKLIST_SETTING,
                &serde_json::to_string(&Blocklist::default()).unwrap_or_default(),
                now_ms(),
            )
            .await?;
        serde_json::from_str(&json)
            .map_err(|e| CommentsError::Invalid(format!("stored {BLOCKLIST_SETTING}: {e}")))
    }

    /// Replaces the blocklist; returns it with its new version.
    pub async fn set_blocklist(&self, patterns: Vec<String>) -> Result<Blocklist, CommentsError> {
        let patterns = clean_patterns(patterns)?;
        let _g = self.edit.lock().await;
        let old = self.blocklist().await?;
        let now = now_ms();
        let list = Blocklist {
            version: old.version + 1,
            updated_at_ms: now.max(old.updated_at_ms + 1),
            patterns,
        };
        let json = serde_json::to_string(&list).unwrap_or_default();
        self.store
            .put_cluster_setting(BLOCKLIST_SETTING, &json, now)
            .await?;
        let keys = self.stored_keys().await?;
        self.publish(Self::settings_of(&keys, &list));
        info!(
            version = list.version,
            patterns = list.patterns.len(),
            "comment blocklist replaced"
        );
        Ok(list)
    }

    /// A new current key; the previous one stays valid (rotation).
    pub async fn rotate(&self) -> Result<Vec<String>, CommentsError> {
        let _g = self.edit.lock().await;
        let mut keys = self.stored_keys().await?;
        let now = now_ms();
        let newest = keys.iter().map(|k| k.created_at_ms).max().unwrap_or(0);
        let mut k = new_key(now.max(newest + 1));
        k.created_at_ms = now.max(newest + 1);
        keys.insert(0, k);
        keys.truncate(KEYS_KEPT);
        let json = serde_json::to_string(&keys).unwrap_or_default();
        self.store
            .put_cluster_setting(KEYS_SETTING, &json, now)
            .await?;
        let list = self.blocklist().await?;
        self.publish(Self::settings_of(&keys, &list));
        info!(kid = %keys[0].kid, "comment signing key rotated");
        Ok(keys.into_iter().map(|k| k.kid).collect())
    }

    /// Mints a poster token for `sub` (display `name`), limited to `room`
    /// (a key or a `prefix*` pattern) when given, valid `ttl_s` seconds.
    pub fn mint(
        &self,
        sub: &str,
        name: Option<&str>,
        room: Option<&str>,
        ttl_s: i64,
    ) -> Result<(String, i64, String), CommentsError> {
        let invalid = |m: String| Err(CommentsError::Invalid(m));
        let n = sub.chars().count();
        if n == 0 || n > comment_token::MAX_SUB_CHARS || sub.chars().any(char::is_control) {
            return invalid("sub must be 1-64 printable characters".into());
        }
        if let Some(name) = name {
            let n = name.chars().count();
            if n == 0 || n > comment_token::MAX_NAME_CHARS || name.chars().any(char::is_control) {
                return invalid("name must be 1-32 printable characters".into());
            }
        }
        if let Some(r) = room {
            let key = r.strip_suffix('*').unwrap_or(r);
            if r.len() > 128 || (key != r && key.is_empty() && r != "*") {
                return invalid(format!(
                    "room {r:?} is not a stream key or a prefix pattern"
                ));
            }
        }
        if !(1..=MAX_TOKEN_TTL_S).contains(&ttl_s) {
            return invalid(format!("ttl_s must be 1..={MAX_TOKEN_TTL_S}"));
        }
        let settings = self.current();
        let Some(k) = settings.keys.first() else {
            return invalid("no comment key".into());
        };
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now + ttl_s,
            iat: Some(now),
            name: name.map(str::to_owned),
            room: room.map(str::to_owned),
            ..Default::default()
        };
        let key = Key {
            kid: k.kid.clone(),
            secret: k.key.clone(),
        };
        self.metrics.tokens_issued.inc();
        Ok((
            comment_token::sign(&key, &claims),
            claims.exp,
            k.kid.clone(),
        ))
    }

    /// Re-reads the store every [`RELOAD_PERIOD`] until `cancel` (changes
    /// made through another replica).
    pub async fn reload_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_PERIOD) => {}
            }
            let _g = self.edit.lock().await;
            match Self::read(&self.store).await {
                Ok(s) => self.publish(s),
                Err(e) => warn!(error = %e, "reloading comment settings"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked_and_tidied() {
        let p = clean_patterns(vec![" b ".into(), "a".into(), "b".into(), "*x*".into()]).unwrap();
        assert_eq!(p, ["*x*", "a", "b"]);
        assert!(clean_patterns(vec!["  ".into()]).is_err());
        assert!(clean_patterns(vec!["**".into()]).is_err());
        assert!(clean_patterns(vec!["x".repeat(300)]).is_err());
        assert!(clean_patterns(vec!["a\u{0}b".into()]).is_err());
    }

    #[test]
    fn settings_version_follows_the_last_change() {
        let keys = vec![
            StoredKey {
                kid: "a".into(),
                key_hex: hex::encode([1u8; 32]),
                created_at_ms: 100,
            },
            StoredKey {
                kid: "old".into(),
                key_hex: "zz".into(),
                created_at_ms: 50,
            },
        ];
        let list = Blocklist {
            version: 3,
            updated_at_ms: 200,
            patterns: vec!["x".into()],
        };
        let s = CommentControl::settings_of(&keys, &list);
        assert_eq!((s.version, s.keys.len(), s.blocklist_version), (200, 1, 3));
    }
}
