//! Keys and blocklist from the scheduler: one `CommentControl/WatchSettings`
//! server stream on the route service's address, with the node's credential
//! (the same as the route subscription), resubscribed with jittered
//! backoff. Each message replaces keys and blocklist at once (hot reload),
//! is stored in `<data-dir>/comments.pb` (owner-only: it holds the keys)
//! and is loaded from there at start, so posting keeps working while the
//! scheduler is away.

use super::filter::{Blocklist, MAX_PATTERNS};
use super::{Comments, Settings};
use crate::disk::write_atomic;
use crate::identity::Identity;
use crate::routes::error_chain;
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tracing::{debug, info, warn};
use vantage_proto::v1::comment_control_client::CommentControlClient;
use vantage_proto::v1::{CommentSettings, CommentSettingsRequest};
use vantage_shared::backoff::Backoff;
use vantage_shared::comment_token::{Key, Keys};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Largest settings message accepted.
const MAX_SETTINGS_BYTES: usize = 16 << 20;
/// Most keys a message may hold.
const MAX_KEYS: usize = 16;

/// Why settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0} keys (at most {MAX_KEYS})")]
    TooManyKeys(usize),
    #[error("key {0:?} is shorter than 16 bytes")]
    ShortKey(String),
    #[error("{0} blocklist patterns (at most {MAX_PATTERNS})")]
    TooManyPatterns(usize),
}

/// Checks and compiles a settings message.
pub fn compile(s: &CommentSettings) -> Result<(Settings, usize), SettingsError> {
    if s.keys.len() > MAX_KEYS {
        return Err(SettingsError::TooManyKeys(s.keys.len()));
    }
    if let Some(k) = s.keys.iter().find(|k| k.key.len() < 16) {
        return Err(SettingsError::ShortKey(k.kid.clone()));
    }
    if s.blocklist.len() > MAX_PATTERNS {
        return Err(SettingsError::TooManyPatterns(s.blocklist.len()));
    }
    let (blocklist, skipped) = Blocklist::new(s.blocklist.iter().map(String::as_str));
    Ok((
        Settings {
            version: s.version,
            keys: Keys(
                s.keys
                    .iter()
                    .map(|k| Key {
                        kid: k.kid.clone(),
                        secret: k.key.clone(),
                    })
                    .collect(),
            ),
            blocklist,
            blocklist_version: s.blocklist_version,
        },
        skipped,
    ))
}

/// Keeps the settings subscription alive.
pub struct ControlClient {
    comments: Comments,
    url: String,
    tls: ClientTlsConfig,
    identity: Arc<Identity>,
    path: PathBuf,
}

impl ControlClient {
    pub fn new(
        comments: Comments,
        url: String,
        tls: ClientTlsConfig,
        identity: Arc<Identity>,
        path: PathBuf,
    ) -> ControlClient {
        ControlClient {
            comments,
            url,
            tls,
            identity,
            path,
        }
    }

    /// Applies the settings stored on disk, if any.
    pub fn load_stored(&self) {
        match load(&self.path) {
            Ok(Some(s)) => match self.apply(&s, false) {
                Ok(()) => info!(version = s.version, "comment settings loaded from disk"),
                Err(e) => {
                    warn!(path = %self.path.display(), error = %e, "stored comment settings refused")
                }
            },
            Ok(None) => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "stored comment settings unreadable")
            }
        }
    }

    fn apply(&self, s: &CommentSettings, store: bool) -> Result<(), SettingsError> {
        let m = &self.comments.shared().metrics;
        let label = |result| super::metrics::ResultLabel { result };
        let (settings, skipped) = match compile(s) {
            Ok(x) => x,
            Err(e) => {
                m.settings_updates.get_or_create(&label("invalid")).inc();
                return Err(e);
            }
        };
        if skipped > 0 {
            warn!(
                skipped,
                "blocklist patterns skipped (empty or longer than 256 bytes)"
            );
        }
        self.comments.set_settings(settings);
        m.settings_updates.get_or_create(&label("applied")).inc();
        if store && let Err(e) = write_atomic(&self.path, &s.encode_to_vec(), true) {
            warn!(path = %self.path.display(), error = %e, "could not store the comment settings");
        }
        Ok(())
    }

    /// Subscribes until `cancel`, resubscribing with backoff.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut credentials = self.identity.subscribe();
        loop {
            let credential = if self.identity.is_mtls() {
                self.identity.credential()
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    c = credentials.wait_for(Option::is_some) => match c {
                        Ok(c) => c.clone(),
                        Err(_) => return,
                    },
                }
            };
            let started = Instant::now();
            match self.subscribe(credential, &cancel).await {
                Ok(()) => return,
                Err(e) => warn!(error = %e, "comment settings stream failed"),
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff.reset();
            }
            let delay = backoff.next_delay(&mut rand::rng());
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One subscription; `Ok` when cancelled.
    async fn subscribe(
        &self,
        credential: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| error_chain(&e))?
            .tls_config(self.tls.clone())
            .map_err(|e| error_chain(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            c = endpoint.connect() => c.map_err(|e| format!("connecting: {}", error_chain(&e)))?,
        };
        let mut client =
            CommentControlClient::new(channel).max_decoding_message_size(MAX_SETTINGS_BYTES);
        let mut request = tonic::Request::new(CommentSettingsRequest {
            node_id: self.comments.shared().node_id.clone(),
            version: self.comments.settings().version,
        });
        if let Some(c) = credential {
            let v = MetadataValue::try_from(format!("Bearer {c}"))
                .map_err(|_| "credential is not valid as gRPC metadata".to_owned())?;
            request.metadata_mut().insert("authorization", v);
        }
        let mut stream = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = client.watch_settings(request) => r.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?.into_inner(),
        };
        debug!("subscribed to comment settings");
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                m = stream.message() => m.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?,
            };
            let Some(s) = msg else {
                return Err("the scheduler ended the stream".into());
            };
            match self.apply(&s, true) {
                Ok(()) => info!(
                    version = s.version,
                    keys = s.keys.len(),
                    blocklist = s.blocklist.len(),
                    "comment settings applied"
                ),
                Err(e) => warn!(version = s.version, error = %e, "comment settings refused"),
            }
        }
    }
}

/// Reads stored settings; `Ok(None)` when there are none.
pub fn load(path: &Path) -> Result<Option<CommentSettings>, String> {
    match std::fs::read(path) {
        Ok(b) => CommentSettings::decode(b.as_slice())
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::CommentKey;

    #[test]
    fn compiles_and_checks_settings() {
        let mut s = CommentSettings {
            version: 3,
            keys: vec![CommentKey {
                kid: "a".into(),
                key: vec![1; 32],
                created_at_ms: 0,
            }],
            blocklist: vec!["bad".into(), String::new()],
            blocklist_version: 2,
            generated_at_ms: 0,
        };
        let (c, skipped) = compile(&s).unwrap();
        assert_eq!(
            (c.version, c.keys.0.len(), c.blocklist.len(), skipped),
            (3, 1, 1, 1)
        );
        assert!(c.blocklist.blocks("so BAD"));
        s.keys[0].key = vec![1; 8];
        assert!(matches!(compile(&s), Err(SettingsError::ShortKey(_))));
    }
}
