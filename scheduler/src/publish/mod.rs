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

/// What [`Publisher::publish_plan`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanPublished {
    /// Tables that got a new version.
    pub new_versions: usize,
    /// Publishing stopped early on request.
    pub stopped: bool,
}

/// Below this many tables a plan is hashed and published on one thread.
const PIPELINE_MIN_TABLES: usize = 256;
/// Tables published between two calls of the `stop` check.
const STOP_CHECK_EVERY: usize = 64;

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

    /// Publishes every table of a plan, in order. Hashing is most of the
    /// work, so for large plans a second thread hashes the second half
    /// while this one hashes and publishes the first: the first tables go
    /// out at once, and the last ones no later than hashing on two cores
    /// allows. `stop` is asked every `STOP_CHECK_EVERY` tables; when it
    /// says so, the rest is not published (tables already out stay valid).
    pub fn publish_plan(
        &self,
        mut tables: Vec<RouteTable>,
        now_ms: i64,
        stop: &dyn Fn() -> bool,
    ) -> PlanPublished {
        let mut out = PlanPublished::default();
        let mut offer = |i: usize, table: RouteTable, hash: Option<String>| {
            if out.stopped || (i.is_multiple_of(STOP_CHECK_EVERY) && stop()) {
                out.stopped = true;
                return;
            }
            let published = match hash {
                Some(hash) => self.publish_hashed(table, hash, now_ms),
                None => self.publish(table, now_ms),
            };
            if let Published::NewVersion(v) = published {
                out.new_versions += 1;
                tracing::debug!(version = v, "new route table");
            }
        };
        if tables.len() < PIPELINE_MIN_TABLES {
            for (i, t) in tables.into_iter().enumerate() {
                offer(i, t, None);
            }
            return out;
        }
        let mid = tables.len() / 2;
        let second = tables.split_off(mid);
        std::thread::scope(|scope| {
            let hashing = scope.spawn(move || {
                let mut second = second;
                let hashes: Vec<String> = second.iter_mut().map(content_hash_in_place).collect();
                (second, hashes)
            });
            for (i, t) in tables.into_iter().enumerate() {
                offer(i, t, None);
            }
            let (second, hashes) = match hashing.join() {
                Ok(h) => h,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            for (j, (t, h)) in second.into_iter().zip(hashes).enumerate() {
                offer(mid + j, t, Some(h));
            }
        });
        out
    }

    /// Offers a freshly planned table for a node.
    pub fn publish(&self, mut table: RouteTable, now_ms: i64) -> Published {
        let hash = content_hash_in_place(&mut table);
        self.publish_hashed(table, hash, now_ms)
    }

    /// [`Publisher::publish`] of a table whose [`content_hash`] is known.
    fn publish_hashed(&self, mut table: RouteTable, hash: String, now_ms: i64) -> Published {
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

    fn plan_of(n: usize, second: &str) -> Vec<RouteTable> {
        (0..n)
            .map(|i| RouteTable {
                node_id: format!("n{i:04}"),
                ..table(0.1, second)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_large_plan_is_published_whole_in_order_and_stops_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::sqlite_url(&dir.path().join("s.db")))
            .await
            .unwrap();
        let p = Publisher::new(store, Vec::new());
        let n = 3 * PIPELINE_MIN_TABLES;
        let out = p.publish_plan(plan_of(n, "c"), 1, &|| false);
        assert_eq!(
            out,
            PlanPublished {
                new_versions: n,
                stopped: false
            }
        );
        for i in [0, n / 2 - 1, n / 2, n - 1] {
            let ch = p.get(&format!("n{i:04}")).unwrap();
            assert_eq!(ch.status().version, 1);
            // The published table carries the hash publish() would compute.
            assert_eq!(ch.status().hash, content_hash(&ch.current().unwrap()));
        }
        // Same content: nothing new.
        let out = p.publish_plan(plan_of(n, "c"), 2, &|| false);
        assert_eq!(out.new_versions, 0);
        // A stop request after the first check: only the first batch goes out.
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let stop = || asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
        let out = p.publish_plan(plan_of(n, "d"), 3, &stop);
        assert_eq!(
            out,
            PlanPublished {
                new_versions: STOP_CHECK_EVERY,
                stopped: true
            }
        );
        assert_eq!(p.get("n0000").unwrap().status().version, 2);
        assert_eq!(
            p.get(&format!("n{:04}", n - 1)).unwrap().status().version,
            1
        );
    }
}
