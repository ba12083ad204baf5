//! Admitting a publisher: the one function every publish path goes
//! through (HTTP-FLV `POST`/`PUT`, RTMP `publish`), so a check added here
//! (publish credentials, per-client limits) applies to all of them.
//!
//! A stream key has at most one publisher on a node: a second one is
//! refused ([`Refused::Conflict`], HTTP 409, RTMP `NetStream.Publish.BadName`)
//! while the first is live. A relayed stream is taken over by a local
//! publisher. The returned [`Publishing`] ends the stream when it is
//! dropped, however the publisher's connection ends.

use super::Relay;
use super::stream::{Phase, Stream};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;
use vantage_shared::stream::StreamKey;

/// Why a publisher was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The agent drains: no new publishers.
    Draining,
    /// The stream is already published to this node.
    Conflict,
}

impl Refused {
    /// The message a publisher is told.
    pub fn message(self, node_id: &str, key: &StreamKey) -> String {
        match self {
            Refused::Draining => format!(
                "{node_id} is draining and accepts no new viewers or publishers of {key}; retry via the scheduler"
            ),
            Refused::Conflict => format!("stream {key} is already being published to this node"),
        }
    }
}

/// An admitted publisher: the stream it writes to as source `generation`,
/// cancelled when another source takes over or the relay stops. Dropping
/// it ends the stream.
pub struct Publishing {
    relay: Relay,
    pub stream: Arc<Stream>,
    pub generation: u64,
    pub cancel: CancellationToken,
    finished: bool,
}

impl Relay {
    /// Admits a publisher of `key` (`protocol` names the path in logs:
    /// `http-flv`, `rtmp`). Counts `relay_publishes_total{result="accepted"}`
    /// or `{result="conflict"}`.
    pub(crate) fn admit_publisher(
        &self,
        key: &StreamKey,
        protocol: &'static str,
    ) -> Result<Publishing, Refused> {
        if self.is_draining() {
            return Err(Refused::Draining);
        }
        let Ok((stream, generation, cancel)) = self.stream_for_publish(key) else {
            self.metrics().publish("conflict");
            return Err(Refused::Conflict);
        };
        self.metrics().publish("accepted");
        info!(stream = %key, protocol, "publish started");
        Ok(Publishing {
            relay: self.clone(),
            stream,
            generation,
            cancel,
            finished: false,
        })
    }
}

impl Publishing {
    /// The publisher ended in an orderly way (its result is counted by the
    /// caller); the stream ends now.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        if self.stream.end_source(self.generation, Phase::Ended) {
            self.relay.remove(&self.stream);
        }
        if !self.finished {
            self.relay.metrics().publish("closed");
            info!(stream = %self.stream.key, "publisher went away");
        }
    }
}

/// Why a viewer could not be attached to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayRefused {
    /// Not published here and no upstream known (HTTP 404).
    NoSource,
    /// Every upstream said it does not have it (HTTP 404).
    NotFound(String),
    /// No upstream could be reached (HTTP 502).
    Failed(String),
    /// Nothing delivered within `play_wait` (HTTP 504).
    Timeout,
    /// The stream ended while the viewer joined (HTTP 404).
    Ended,
}

impl PlayRefused {
    /// The HTTP status the media port answers with.
    pub fn status(&self) -> u16 {
        match self {
            PlayRefused::NoSource | PlayRefused::NotFound(_) | PlayRefused::Ended => 404,
            PlayRefused::Failed(_) => 502,
            PlayRefused::Timeout => 504,
        }
    }

    /// The message a viewer is told.
    pub fn message(&self, key: &StreamKey, play_wait: std::time::Duration) -> String {
        match self {
            PlayRefused::NoSource => {
                format!("stream {key} is not published here and no upstream is known for it")
            }
            PlayRefused::NotFound(m) => format!("stream {key} not found: {m}"),
            PlayRefused::Failed(m) => format!("no upstream could deliver {key}: {m}"),
            PlayRefused::Timeout => format!(
                "no upstream delivered {key} within {} ms",
                play_wait.as_millis()
            ),
            PlayRefused::Ended => format!("stream {key} ended"),
        }
    }
}

impl Relay {
    /// Attaches a viewer to `key` (every play path goes through here): the
    /// stream held here, or one pull started with `via` as the loop guard
    /// (after the stream's directory entry was asked for:
    /// [`Relay::await_directory`]; `hint` is the origin a downstream relay
    /// named); waits up to `play_wait` for it to be live. `slot` makes the
    /// viewer's slot once the stream is live.
    pub(crate) async fn attach_viewer(
        &self,
        key: &StreamKey,
        via: &str,
        hint: Option<&str>,
        slot: impl Fn(&Stream) -> Arc<super::viewer::ViewerSlot>,
    ) -> Result<(Arc<Stream>, Arc<super::viewer::ViewerSlot>), PlayRefused> {
        self.await_directory(key, hint).await;
        for _ in 0..2 {
            let stream = self
                .stream_for_play(key, via, hint)
                .map_err(|_| PlayRefused::NoSource)?;
            let mut rx = stream.phase.subscribe();
            let waited = tokio::time::timeout(
                self.config().play_wait,
                rx.wait_for(|p| *p != Phase::Connecting),
            )
            .await;
            let phase = match waited {
                Ok(Ok(p)) => p.clone(),
                Ok(Err(_)) => Phase::Ended,
                Err(_) => return Err(PlayRefused::Timeout),
            };
            match phase {
                Phase::Live => {}
                Phase::NotFound(m) => return Err(PlayRefused::NotFound(m)),
                Phase::Failed(m) => return Err(PlayRefused::Failed(m)),
                Phase::Ended | Phase::Connecting => continue,
            }
            let s = slot(&stream);
            if stream.attach(s.clone()) {
                return Ok((stream, s));
            }
        }
        Err(PlayRefused::Ended)
    }
}
