//! Publishing route tables: one `watch` channel per node and the xDS
//! bookkeeping around it.
//!
//! * A new plan for a node is hashed (without version, nonce and time); an
//!   identical table keeps its version, a different one gets `version + 1`.
//!   Versions are per node, monotonic and persisted (`route_versions`), so a
//!   restarted scheduler continues where it stopped and an agent that
//!   reconnects holding the current version is sent nothing.
//! * A NACKed version is parked: it is never sent again; the next different
//!   table gets a new version.
//! * [`grpc`] serves the `RouteDiscovery` stream on top of this.

pub mod grpc;

use crate::store::{RouteHead, Store, WriteOp};
use dashmap::DashMap;
use prost::Message;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use vantage_proto::v1::RouteTable;

/// Publication state of one node.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub version: u64,
    pub hash: String,
    pub acked_version: u64,
    pub acked_at_ms: Option<i64>,
    pub nacked: Option<Nack>,
    pub last_nonce: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Nack {
    pub version: u64,
    pub detail: String,
    pub at_ms: i64,
}

#[derive(Debug)]
pub struct Channel {
    tx: watch::Sender<Option<Arc<RouteTable>>>,
    status: Mutex<Status>,
}

impl Channel {
    fn new(status: Status) -> Self {
        Self {
            tx: watch::Sender::new(None),
            status: Mutex::new(status),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<RouteTable>>> {
        self.tx.subscribe()
    }

    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    pub fn current(&self) -> Option<Arc<RouteTable>> {
        self.tx.borrow().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        // A poisoned lock only means another task panicked mid-update of
        // plain data; the data is still usable.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_parked(&self, version: u64) -> bool {
        self.lock()
            .nacked
            .as_ref()
            .is_some_and(|n| n.version == version)
    }
}

/// Hash of what a table decides: everything but version, nonce, time and
/// the informational scores. A plan whose only difference is a score (load
/// wobbling between reports) keeps the version and is not pushed; a change
/// of any candidate, order, probe target or setting is.
pub fn content_hash(table: &RouteTable) -> String {
    content_hash_in_place(&mut table.clone())
}

/// [`content_hash`] without copying the table: the excluded fields are
/// cleared for the encoding and put back afterwards.
fn content_hash_in_place(t: &mut RouteTable) -> String {
    let version = std::mem::take(&mut t.version);
    let nonce = std::mem::take(&mut t.nonce);
    let generated_at_ms = std::mem::take(&mut t.generated_at_ms);
    let mut scores: Vec<f64> = Vec::new();
    for r in &mut t.streams {
        scores.extend(r.upstreams.iter_mut().map(|u| std::mem::take(&mut u.score)));
    }
    for r in &mut t.redirects {
        scores.extend(r.edges.iter_mut().map(|e| std::mem::take(&mut e.score)));
    }
    let hash = hex::encode(Sha256::digest(t.encode_to_vec()));
    let mut back = scores.into_iter();
    for r in &mut t.streams {
        for u in &mut r.upstreams {
            u.score = back.next().unwrap_or_default();
        }
    }
    for r in &mut t.redirects {
        for e in &mut r.edges {
            e.score = back.next().unwrap_or_default();
        }
    }
    t.version = version;
    t.nonce = nonce;
    t.generated_at_ms = generated_at_ms;
    hash
}

/// [`content_hash`] of every table, on up to `threads` threads: a whole
/// plan's tables are hashed before the first is published, and at a
/// thousand nodes and more the hashing is a visible share of the time from
/// a weight change to the agents' ACKs.
pub fn content_hashes(tables: &mut [RouteTable], threads: usize) -> Vec<String> {
    let chunk = tables.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = tables
            .chunks_mut(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter_mut()
                        .map(content_hash_in_place)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(hashes) => hashes,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

#[derive(Debug)]
pub struct Publisher {
    channels: DashMap<String, Arc<Channel>>,
    store: Store,
}

/// Outcome of [`Publisher::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Unchanged,
    /// Same content as before the restart: published under the stored version.
    Restored(u64),
    NewVersion(u64),
}

impl Publisher {
    /// Starts from the versions the store remembers.
    pub fn new(store: Store, heads: Vec<RouteHead>) -> Self {
        let channels = DashMap::new();
        for h in heads {
            channels.insert(
                h.node_id,
                Arc::new(Channel::new(Status {
                    version: h.version,
                    hash: h.hash,
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

    /// Offers a freshly planned table for a node.
    pub fn publish(&self, mut table: RouteTable, now_ms: i64) -> Published {
        let hash = content_hash_in_place(&mut table);
        self.publish_hashed(table, hash, now_ms)
    }

    /// [`Publisher::publish`] of a table whose [`content_hash`] is known
    /// (see [`content_hashes`]).
    pub fn publish_hashed(&self, mut table: RouteTable, hash: String, now_ms: i64) -> Published {
        let ch = self.channel(&table.node_id);
        let mut st = ch.lock();
        let have_table = ch.tx.borrow().is_some();
        let outcome = if st.hash == hash {
            if have_table {
                return Published::Unchanged;
            }
            Published::Restored(st.version)
        } else {
            st.version += 1;
            st.hash = hash.clone();
            Published::NewVersion(st.version)
        };
        table.version = st.version;
        table.generated_at_ms = now_ms;
        if let Published::NewVersion(v) = outcome {
            self.store.record(WriteOp::RouteVersion {
                node_id: table.node_id.clone(),
                version: v,
                hash,
                created_at_ms: now_ms,
            });
        }
        drop(st);
        ch.tx.send_replace(Some(Arc::new(table)));
        outcome
    }

    /// Records an ACK of `version` (sent with `nonce`). Returns false if stale.
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

    pub fn set_nonce(&self, node_id: &str, nonce: &str) {
        self.channel(node_id).lock().last_nonce = nonce.to_owned();
    }
}

/// JSON rendering of a table for the API and dashboard.
pub fn table_json(t: &RouteTable) -> serde_json::Value {
    use serde_json::json;
    use vantage_proto::v1::{ProbeReason, UpstreamKind};
    let kind = |k: i32| {
        UpstreamKind::try_from(k)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("UPSTREAM_KIND_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default()
    };
    let reason = |r: i32| {
        ProbeReason::try_from(r)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("PROBE_REASON_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default()
    };
    json!({
        "node_id": t.node_id,
        "version": t.version,
        "generated_at_ms": t.generated_at_ms,
        "ttl_s": t.ttl_s,
        "report_interval_ms": t.report_interval_ms,
        "weights_version": t.weights_version,
        "streams": t.streams.iter().map(|s| json!({
            "stream": s.stream,
            "upstreams": s.upstreams.iter().map(|u| json!({
                "kind": kind(u.kind), "node_id": u.node_id, "url": u.url, "score": u.score, "hops": u.hops,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "probe_targets": t.probe_targets.iter().map(|p| json!({
            "node_id": p.node_id, "addr": p.addr, "reason": reason(p.reason),
        })).collect::<Vec<_>>(),
        "redirects": t.redirects.iter().map(|r| json!({
            "group": r.group,
            "edges": r.edges.iter().map(|e| json!({"node_id": e.node_id, "url": e.url, "score": e.score})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::{StreamRoute, Upstream};

    fn table(score: f64, second: &str) -> RouteTable {
        let up = |id: &str, score: f64| Upstream {
            node_id: id.to_owned(),
            url: format!("http://{id}:8080"),
            score,
            ..Upstream::default()
        };
        RouteTable {
            node_id: "a".into(),
            version: 7,
            nonce: "n".into(),
            generated_at_ms: 42,
            streams: vec![StreamRoute {
                stream: "live/x".into(),
                upstreams: vec![up("b", score), up(second, score + 0.5)],
            }],
            ..RouteTable::default()
        }
    }

    #[test]
    fn content_hash_ignores_scores_and_bookkeeping_but_not_choices() {
        let a = table(0.1, "c");
        let mut b = table(0.3, "c");
        b.version = 8;
        b.nonce = "other".into();
        b.generated_at_ms = 43;
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&table(0.1, "d")));
        // The in-place variant hashes the same and leaves the table as it was.
        let mut c = a.clone();
        assert_eq!(content_hash_in_place(&mut c), content_hash(&a));
        assert_eq!(c, a);
    }
}
