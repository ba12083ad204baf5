//! Settings of live comments (the `comments_*` keys). Defaults in
//! [`CommentsConfig::default`]; ranges are checked in `crate::config`.

use super::limits::Rate;
use std::time::Duration;

/// Live comment settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CommentsConfig {
    /// Heartbeat interval announced to clients (they send `ping` at least
    /// this often). 20 s.
    pub heartbeat: Duration,
    /// A connection silent for this long is closed (4000). 60 s.
    pub idle_timeout: Duration,
    /// Deliveries to a connection are batched into one write per window;
    /// the first comment after a quiet window goes out at once. 100 ms.
    pub coalesce: Duration,
    /// Comments kept per room for resuming clients and links. 4096.
    pub buffer: usize,
    /// Comments older than this leave the buffer. 10 min.
    pub buffer_age: Duration,
    /// Longest comment text (UTF-8 bytes). 500.
    pub max_text_bytes: usize,
    /// Posts per poster connection: 1/s, bursts of 5.
    pub client_rate: Rate,
    /// Posts per room (at the sequencer): 500/s, bursts of 1000.
    pub room_rate: Rate,
    /// Comment connections at once (viewers and links); more get 503.
    /// 100,000.
    pub max_connections: usize,
    /// Deliveries per second (one comment to one connection) the box is
    /// sized for: reported with the load, so that the scheduler counts the
    /// share in use like egress. 1,000,000 per CPU core (the comments
    /// benchmark measures about 300 ns of CPU per delivery, so this keeps
    /// most of a core for video).
    pub fanout_capacity_per_s: f64,
    /// Bytes queued for one connection that does not read; beyond it the
    /// connection is dropped as a slow reader. 256 KiB.
    pub queue_bytes: usize,
    /// A connection whose queued bytes do not move for this long is
    /// dropped as a slow reader. 10 s.
    pub write_timeout: Duration,
    /// An upstream link without a sequencer heartbeat (`beat`, every
    /// second) for this long fails over to the next candidate. 3 s.
    pub stall_timeout: Duration,
    /// The upgrade must complete, and an upstream link must be welcomed,
    /// within this. 10 s.
    pub handshake_timeout: Duration,
    /// A post forwarded upstream without a decision for this long is
    /// refused with `upstream_unavailable`. 10 s.
    pub forward_timeout: Duration,
    /// Refusals per poster within [`Self::flood_window`] beyond which the
    /// poster is disconnected (1008). 20 in 10 s.
    pub flood_refusals: u32,
    pub flood_window: Duration,
    /// The sequencer's `beat` to downstream links. 1 s.
    pub beat_interval: Duration,
}

impl Default for CommentsConfig {
    fn default() -> Self {
        CommentsConfig {
            heartbeat: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            coalesce: Duration::from_millis(100),
            buffer: 4096,
            buffer_age: Duration::from_secs(600),
            max_text_bytes: 500,
            client_rate: Rate {
                per_s: 1.0,
                burst: 5.0,
            },
            room_rate: Rate {
                per_s: 500.0,
                burst: 1000.0,
            },
            max_connections: 100_000,
            fanout_capacity_per_s: 1e6
                * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
            queue_bytes: 256 * 1024,
            write_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            forward_timeout: Duration::from_secs(10),
            flood_refusals: 20,
            flood_window: Duration::from_secs(10),
            beat_interval: Duration::from_secs(1),
        }
    }
}

impl CommentsConfig {
    /// Largest WebSocket message accepted from a client: a post of the
    /// longest text with every byte escaped, or a token, with room to spare.
    pub fn max_message_bytes(&self) -> usize {
        (2 * self.max_text_bytes + 2560).max(4096)
    }
}
