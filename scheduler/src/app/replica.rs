//! What [`App`] does as one replica of several (`crate::cluster`): taking
//! over as the leader (a new planning session from what the database and
//! the last leader's tables say), stepping down, following the leader's
//! committed tables, and adopting weights, drains and subscriptions other
//! replicas wrote.

use super::*;
use crate::cluster::{StoredTable, interest, tables};
use std::collections::HashMap;
use vantage_plan::{RouteEntry, SourceKey};
use vantage_proto::v1::UpstreamKind;
use vantage_shared::stream::{StreamKey, StreamPattern};

/// Tables read per statement while following.
const FOLLOW_BATCH: i64 = 1_000;

impl App {
    /// Takes over as the leader under `term` (the lease was just taken):
    /// reads every table the last leader committed, the latest weights,
    /// drains and subscriptions, and builds a new planning session from
    /// them — versions continue from the committed ones, the committed
    /// routes are the hysteresis input, every table gets a new version under
    /// the new term at the first step — then plans at once.
    pub(crate) async fn become_leader(
        &self,
        term: u64,
        lease_until: Instant,
    ) -> Result<(), String> {
        let Some(pool) = self.cluster.pool().cloned() else {
            return Ok(());
        };
        let started = Instant::now();
        self.follow_tables()
            .await
            .map_err(|e| format!("reading the committed tables: {e}"))?;
        self.sync_weights()
            .await
            .map_err(|e| format!("reading the weights: {e}"))?;
        self.sync_drains()
            .await
            .map_err(|e| format!("reading drains: {e}"))?;
        self.write_interest().await;
        let (wanted, interest_seq) = interest::read_all(&pool)
            .await
            .map_err(|e| format!("reading subscriptions: {e}"))?;

        let ws = self.weights();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let mut plan = PlanSession::new(
            plan_settings(&self.config, &ws, &self.probe_key, &self.publish_policy()),
            threads,
        );
        plan.set_term(term);
        let committed = self.publisher.tables();
        plan.restore_versions(
            committed
                .iter()
                .map(|t| (t.node_id.to_string(), t.version, t.hash)),
        );
        plan.seed_routes(committed.iter().flat_map(|t| routes_of(t)).collect());
        let mut subscribed = 0;
        for (node, keys) in &wanted {
            let keys: Vec<StreamKey> = keys
                .iter()
                .filter_map(|k| StreamKey::parse(k).ok())
                .collect();
            subscribed += keys.len();
            plan.subscribe(node, &keys, &[], true);
        }
        for v in self.registry.all_views() {
            plan.offer(v);
        }
        self.pending_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        *self.plan.write().await = plan;
        self.cluster
            .interest_seq
            .store(interest_seq, Ordering::Relaxed);
        self.cluster.lead(term, lease_until, now_ms());
        self.cluster.metrics.changed("acquired");
        info!(
            term,
            tables = committed.len(),
            subscriptions = subscribed,
            took_ms = started.elapsed().as_millis(),
            "this replica leads now: planning with the committed state"
        );
        self.event(
            "",
            "leader",
            &format!("{} term {term}", self.cluster.replica_id),
        );
        self.replan_at_once();
        Ok(())
    }

    /// Stops leading (`kind`: lost, released); queued tables are dropped,
    /// route streams go on serving the committed tables.
    pub(crate) fn step_down(&self, kind: &str, why: &str) {
        if self.cluster.follow(now_ms()) {
            self.cluster.metrics.changed(kind);
            warn!(
                why,
                "this replica no longer leads; it follows the committed tables"
            );
        }
    }

    /// A new term for the leader or the single replica (an agent held a
    /// table of a term this cluster does not know: the database lost terms):
    /// every table gets a new version under it at the next step.
    pub(crate) fn new_term(&self, term: u64) {
        self.cluster.set_term(term);
        *self.pending_term.lock().unwrap_or_else(|e| e.into_inner()) = Some(term);
        self.cluster.metrics.changed("bumped");
        warn!(term, "moving to a new term past the one an agent holds");
        self.replan_at_once();
    }

    /// An agent announced holding a table of `term` (Hello, route request).
    /// A term newer than any this cluster knows means the database lost
    /// terms (restored from a backup, or new): the single replica moves past
    /// it at once; with several, the lease row records it and the leader
    /// moves past it at its next renewal.
    pub fn observe_agent_term(&self, term: u64) {
        if term <= self.cluster.term() {
            return;
        }
        match self.cluster.pool() {
            None => {
                let next = term + 1;
                self.new_term(next);
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store
                        .put_cluster_setting("term", &next.to_string(), now_ms())
                        .await
                    {
                        warn!("the new term is not saved: {e}");
                    }
                });
            }
            Some(pool) => {
                if !self.cluster.note_floor(term) {
                    return;
                }
                let pool = pool.clone();
                let cluster = self.cluster.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::cluster::lease::raise_floor(&pool, term).await {
                        cluster.metrics.store_error("lease");
                        warn!("cannot record the term an agent holds: {e}");
                    }
                });
            }
        }
    }

    /// Reads the tables committed since the last read and serves the newer
    /// ones; returns how many were taken.
    pub(crate) async fn follow_tables(&self) -> Result<usize, sqlx::Error> {
        let Some(pool) = self.cluster.pool() else {
            return Ok(0);
        };
        let mut taken = 0;
        loop {
            let after = self.cluster.table_seq.load(Ordering::Relaxed);
            let rows = tables::read_after(pool, after, FOLLOW_BATCH).await?;
            let n = rows.len();
            for r in rows {
                self.cluster.table_seq.fetch_max(r.seq, Ordering::Relaxed);
                match r.table {
                    Ok(t) => match self.publisher.offer(Arc::new(t)) {
                        crate::publish::Offer::Taken => {
                            taken += 1;
                            self.cluster.metrics.tables_followed.inc();
                        }
                        crate::publish::Offer::OlderTerm => {
                            self.cluster.metrics.refused("older_term");
                            warn!("a committed table of an older term was refused");
                        }
                        crate::publish::Offer::NotNewer => {
                            self.cluster.metrics.refused("not_newer")
                        }
                    },
                    Err(e) => {
                        self.cluster.metrics.refused("undecodable");
                        warn!("a committed table is unreadable: {e}");
                    }
                }
            }
            if (n as i64) < FOLLOW_BATCH {
                return Ok(taken);
            }
        }
    }

    /// Adopts a newer weight set another replica stored.
    pub(crate) async fn sync_weights(&self) -> Result<(), StoreError> {
        let latest = self.store.latest_weights_version().await?;
        if latest <= self.weights().version {
            return Ok(());
        }
        if let Some(ws) = self.store.latest_weights().await? {
            info!(
                version = ws.version,
                actor = ws.actor,
                "weights changed through another replica"
            );
            self.adopt_weights(ws);
        }
        Ok(())
    }

    /// Drains ordered through another replica.
    pub(crate) async fn sync_drains(&self) -> Result<(), StoreError> {
        for id in self.store.drained_nodes().await? {
            let known = self.registry.with(&id, |e| e.draining);
            match known {
                Some(false) => {
                    info!(node_id = id, "drained through another replica");
                    self.drain_local(&id);
                }
                Some(true) => {}
                None => {
                    // Enrolled through another replica and not seen here yet.
                    if let Some(rec) = self.store.load_node(&id).await? {
                        self.registry.insert(entry_of(rec));
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the subscription changes this replica's route streams queued.
    pub(crate) async fn write_interest(&self) {
        let Some(pool) = self.cluster.pool() else {
            return;
        };
        let changes = self.cluster.interest.take();
        if changes.is_empty() {
            return;
        }
        let write = interest::write(pool, &self.cluster.holder, &changes);
        match tokio::time::timeout(self.cluster.statement_timeout() * 2, write).await {
            Ok(Ok(())) => {
                self.cluster.metrics.interest_writes.inc();
            }
            other => {
                if let Ok(Err(e)) = other {
                    debug!("subscriptions not written yet: {e}");
                }
                self.cluster.metrics.store_error("interest");
                let cluster = self.cluster.clone();
                self.cluster
                    .interest
                    .requeue(changes, move |node| cluster.stream_of(node));
            }
        }
    }

    /// The leader: plans with the subscriptions other replicas wrote since
    /// the last read (its own writes it applied when it took them).
    pub(crate) async fn read_interest(&self) -> Result<(), sqlx::Error> {
        let Some(pool) = self.cluster.pool() else {
            return Ok(());
        };
        loop {
            let after = self.cluster.interest_seq.load(Ordering::Relaxed);
            let rows = interest::read_after(pool, after, 5_000).await?;
            let n = rows.len();
            let mut by_node: HashMap<String, (Vec<StreamKey>, Vec<StreamKey>)> = HashMap::new();
            let mut last = after;
            for r in rows {
                last = last.max(r.seq);
                if r.writer == self.cluster.holder {
                    continue;
                }
                let Ok(key) = StreamKey::parse(&r.stream) else {
                    continue;
                };
                let e = by_node.entry(r.node_id).or_default();
                if r.wanted {
                    e.0.push(key);
                } else {
                    e.1.push(key);
                }
            }
            if !by_node.is_empty() && self.cluster.is_leader() {
                let mut out = Vec::new();
                let mut plan = self.plan.write().await;
                for (node, (add, remove)) in &by_node {
                    let done = plan.subscribe(node, add, remove, false);
                    if done.version > 0
                        && let Some(t) = plan.table(node)
                    {
                        out.push(StoredTable::new(t, plan.content_hash(node)));
                    }
                }
                drop(plan);
                self.cluster.queue_tables(out);
            }
            self.cluster.interest_seq.store(last, Ordering::Relaxed);
            if n < 5_000 {
                return Ok(());
            }
        }
    }

    /// Takes a weight set as the one in force (stored by another replica).
    fn adopt_weights(&self, ws: WeightSet) {
        self.metrics.weights_version.set(ws.version as i64);
        if let Some(r) = &self.recorder {
            r.weights(now_ms(), &ws);
        }
        let settings = plan_settings(&self.config, &ws, &self.probe_key, &self.publish_policy());
        *self.weights.write().unwrap_or_else(|e| e.into_inner()) = ws;
        *self
            .pending_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(settings);
        if self.cluster.is_leader() {
            self.replan_at_once();
        }
    }
}

/// A node entry from its stored record (start-up, or a node another
/// replica enrolled).
pub(crate) fn entry_of(rec: crate::store::NodeRecord) -> NodeEntry {
    let mut e = NodeEntry::new(
        rec.id.clone(),
        NodeInfo {
            region: rec.region,
            coord: Coord::new(rec.lat, rec.lon),
            capacity_mbps: rec.capacity_mbps,
            public_url: rec.public_url,
            probe_addr: rec.probe_addr,
            agent_version: String::new(),
            static_origins: BTreeMap::new(),
        },
        rec.enrolled_at_ms,
    );
    e.credential_hash = rec.credential_hash;
    e.draining = rec.drained;
    e
}

/// The routes a committed table holds, as hysteresis input for a new
/// planning session.
fn routes_of(t: &StoredTable) -> Vec<RouteEntry> {
    let ups = |ups: &[vantage_proto::v1::Upstream]| -> Vec<(String, u32)> {
        ups.iter()
            .map(|u| {
                if u.kind == UpstreamKind::Origin as i32 {
                    (String::new(), 0)
                } else {
                    (u.node_id.clone(), u.hops)
                }
            })
            .collect()
    };
    let node = t.node_id.to_string();
    let origins = t.table.origins.iter().map(|o| RouteEntry {
        node: node.clone(),
        source: SourceKey::Origin(Arc::from(o.origin.as_str())),
        upstreams: ups(&o.upstreams),
    });
    let patterns = t.table.streams.iter().filter_map(|s| {
        Some(RouteEntry {
            node: node.clone(),
            source: SourceKey::Pattern(StreamPattern::parse(&s.stream).ok()?),
            upstreams: ups(&s.upstreams),
        })
    });
    origins.chain(patterns).collect()
}
