//! Publishing route tables. The planning session (`vantage-plan`) holds
//! every node's table, its version and the log of what changed between
//! versions; this module tells each node's route stream when its version
//! moves (one `watch` channel per node), keeps the xDS bookkeeping (nonce,
//! ACK, NACK) and records versions in the store.
//!
//! * Versions are per node and monotonic; a version moves exactly when the
//!   table's content (everything but scores) does. They are persisted
//!   (`route_versions`, with the content hash), so a restarted scheduler
//!   continues where it stopped and an agent that reconnects holding the
//!   current content is sent nothing.
//! * A NACKed version is not sent again on that stream; the next version
//!   goes out as a whole table. A new stream (the agent reconnected, maybe
//!   fixed) gets the current version whole, NACKed or not.
//! * [`grpc`] serves the `RouteDiscovery` stream on top of this.

pub mod grpc;
pub mod interest;

use crate::store::{RouteHead, Store, WriteOp};
use dashmap::DashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Publication state of one node.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub version: u64,
    pub hash: String,
    pub acked_version: u64,
    pub acked_at_ms: Option<i64>,
    pub nacked: Option<Nack>,
    pub last_nonce: String,
    /// Whole tables and deltas sent to this node since the scheduler
    /// started, and their encoded size.
    pub sent_full: u64,
    pub sent_delta: u64,
    pub sent_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Nack {
    pub version: u64,
    pub detail: String,
    pub at_ms: i64,
}

/// One node's channel: the version in force, watched by its route stream.
#[derive(Debug)]
pub struct Channel {
    tx: watch::Sender<u64>,
    status: Mutex<Status>,
}

impl Channel {
    fn new(status: Status) -> Self {
        Self {
            tx: watch::Sender::new(0),
            status: Mutex::new(status),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        // A poisoned lock only means another task panicked mid-update of
        // plain data; the data is still usable.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The per-node channels.
#[derive(Debug)]
pub struct Publisher {
    channels: DashMap<String, Arc<Channel>>,
    store: Store,
}

impl Publisher {
    /// Starts from the versions the store remembers.
    pub fn new(store: Store, heads: &[RouteHead]) -> Self {
        let channels = DashMap::new();
        for h in heads {
            channels.insert(
                h.node_id.clone(),
                Arc::new(Channel::new(Status {
                    version: h.version,
                    hash: h.hash.clone(),
                    acked_version: h.acked_version,
                    ..Status::default()
                })),
            );
        }
        Self { channels, store }
    }

    pub fn channel(&self, node_id: &str) -> Arc<Channel> {
        self.channels
            .entry(node_id.to_owned())
            .or_insert_with(|| Arc::new(Channel::new(Status::default())))
            .clone()
    }

    pub fn get(&self, node_id: &str) -> Option<Arc<Channel>> {
        self.channels.get(node_id).map(|c| c.clone())
    }

    /// `node_id`'s table is at `version` with content `hash` (after a
    /// plan step; also at start-up for the version the plan kept).
    pub fn published(&self, node_id: &str, version: u64, hash: u64, now_ms: i64) {
        let ch = self.channel(node_id);
        let hash = format!("{hash:016x}");
        let mut st = ch.lock();
        let new = version > st.version || st.hash != hash;
        st.version = version;
        st.hash = hash.clone();
        drop(st);
        if new {
            self.store.record(WriteOp::RouteVersion {
                node_id: node_id.to_owned(),
                version,
                hash,
                created_at_ms: now_ms,
            });
        }
        ch.tx.send_replace(version);
    }

    /// Records that a table went out (`delta` or whole, `bytes` encoded).
    pub fn sent(&self, node_id: &str, nonce: &str, delta: bool, bytes: usize) {
        let ch = self.channel(node_id);
        let mut st = ch.lock();
        st.last_nonce = nonce.to_owned();
        if delta {
            st.sent_delta += 1;
        } else {
            st.sent_full += 1;
        }
        st.sent_bytes += bytes as u64;
    }

    /// Records an ACK of `version`. Returns false if stale.
    pub fn ack(&self, node_id: &str, version: u64, now_ms: i64) -> bool {
        let ch = self.channel(node_id);
        let mut st = ch.lock();
        if version < st.acked_version || version > st.version {
            return false;
        }
        st.acked_version = version;
        st.acked_at_ms = Some(now_ms);
        drop(st);
        self.store.record(WriteOp::RouteAck {
            node_id: node_id.to_owned(),
            version,
            at_ms: now_ms,
        });
        true
    }

    /// Parks a NACKed version.
    pub fn nack(&self, node_id: &str, version: u64, detail: &str, now_ms: i64) {
        let ch = self.channel(node_id);
        ch.lock().nacked = Some(Nack {
            version,
            detail: detail.to_owned(),
            at_ms: now_ms,
        });
        self.store.record(WriteOp::RouteNack {
            node_id: node_id.to_owned(),
            version,
            at_ms: now_ms,
            detail: detail.to_owned(),
        });
    }
}

/// The content hash a store row holds, as the planning session keeps it
/// (16 hex digits; rows of older schedulers hold another hash: `None`,
/// and that node's first table simply gets a new version).
pub fn parse_hash(hex: &str) -> Option<u64> {
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_hashes_parse_back_and_old_ones_do_not() {
        assert_eq!(
            parse_hash(&format!("{:016x}", 0xdead_beef_u64)),
            Some(0xdead_beef)
        );
        assert_eq!(parse_hash(&"ab".repeat(32)), None);
        assert_eq!(parse_hash(""), None);
    }
}
