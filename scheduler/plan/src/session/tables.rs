//! Route tables as agents receive them: versions, the log of what changed
//! between versions, and turning the plan into whole tables or deltas
//! (`proto/vantage/v1/routes.proto`).
//!
//! A node's table holds the stream → origin directory of the streams it
//! subscribed to ([`super::interest`]), an upstream list per origin it can
//! pull from (`origins`), one
//! per static-origin pattern (`streams`), its probe targets and the
//! cluster-wide settings (TTL, report interval, weight-set version, probe
//! key). Its *content hash* — every entry without scores, summed as
//! entries change — decides whether a step gave it a new version: the
//! version moves exactly when the content does, and each move is logged
//! with the keys that changed, so an agent holding version `h` gets only
//! those entries (a delta on top of `h`) while the log reaches back to
//! `h`, and the whole table otherwise.

use super::*;
use crate::edge::{FNV_OFFSET, finalise, fnv};
use crate::graph::NONE;
use std::collections::VecDeque;
use vantage_proto::v1::{
    DirectoryEntry, OriginRoute, ProbeTarget, RouteTable, StreamRoute, Upstream, UpstreamKind,
};

/// Versions of the log kept per node; older holders get a whole table.
const LOG_VERSIONS: usize = 64;

/// What changed in a node's table at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableChange {
    /// Origin and pattern routes upserted or removed.
    pub sources: Vec<SourceKey>,
    /// Directory keys upserted or removed.
    pub directory: Vec<StreamKey>,
    pub probes: bool,
}

/// A node's table bookkeeping.
#[derive(Debug, Clone, Default)]
pub(crate) struct Book {
    pub(crate) version: u64,
    pub(crate) hash: u64,
    /// Changes of versions `base + 1 ..= version`, in order.
    log: VecDeque<(u64, TableChange)>,
    /// Deltas can start from any held version in `base..version`.
    base: u64,
}

impl Book {
    /// The table's content moved to `hash`: a new version, logged with
    /// `change` when there is one (`None`: only a whole table describes
    /// it).
    pub(super) fn advance(&mut self, hash: u64, change: Option<TableChange>) {
        self.version += 1;
        self.hash = hash;
        match change {
            Some(c) if self.base > 0 => {
                self.log.push_back((self.version, c));
                while self.log.len() > LOG_VERSIONS {
                    if let Some((v, _)) = self.log.pop_front() {
                        self.base = v;
                    }
                }
            }
            _ => {
                self.log.clear();
                self.base = self.version;
            }
        }
    }
}

/// What a subscriber should be sent.
#[derive(Debug, Clone, PartialEq)]
pub enum TableUpdate {
    Full(RouteTable),
    Delta(RouteTable),
}

impl TableUpdate {
    pub fn table(&self) -> &RouteTable {
        match self {
            TableUpdate::Full(t) | TableUpdate::Delta(t) => t,
        }
    }

    pub fn into_table(self) -> RouteTable {
        match self {
            TableUpdate::Full(t) | TableUpdate::Delta(t) => t,
        }
    }

    pub fn is_delta(&self) -> bool {
        matches!(self, TableUpdate::Delta(_))
    }
}

/// Hash of the settings every table carries.
pub(crate) fn params_hash(st: &PlanSettings) -> u64 {
    let mut h = fnv(FNV_OFFSET, b"params");
    h = fnv(h, &st.table_ttl_s.to_le_bytes());
    h = fnv(h, &st.report_interval_ms.to_le_bytes());
    h = fnv(h, &st.weights_version.to_le_bytes());
    h = fnv(h, &st.probe_key);
    finalise(h)
}

pub(crate) fn dir_entry_hash(key: &StreamKey, origin: &str) -> u64 {
    let h = fnv(fnv(FNV_OFFSET, key.as_str().as_bytes()), &[0x1f]);
    finalise(fnv(h, origin.as_bytes()))
}

/// Scores in tables are quantised to 0.001.
fn quantise(x: f32) -> f64 {
    (f64::from(x) * 1e3).round() / 1e3
}

impl PlanSession {
    /// Versions the store remembers (`(node id, version, content hash)`):
    /// a node whose first plan has that content keeps that version, so an
    /// agent holding it is sent nothing after a scheduler restart.
    pub fn restore_versions(&mut self, heads: impl IntoIterator<Item = (String, u64, u64)>) {
        for (id, version, hash) in heads {
            let b = self.books.entry(Arc::from(id.as_str())).or_default();
            if version > b.version {
                b.version = version;
                b.hash = hash;
                b.log.clear();
                b.base = 0;
            }
        }
    }

    /// The version of `id`'s table (0: none yet).
    pub fn version(&self, id: &str) -> u64 {
        self.books.get(id).map_or(0, |b| b.version)
    }

    /// The content hash of `id`'s table at its version.
    pub fn content_hash(&self, id: &str) -> u64 {
        self.books.get(id).map_or(0, |b| b.hash)
    }

    /// After the sources were planned: probe targets, content hashes,
    /// versions and logs of every node whose table changed.
    pub(super) fn finish_step(
        &mut self,
        out: SourcesOutcome,
        probes_all: bool,
        report: &mut StepReport,
    ) {
        let n = self.graph.len();
        let mut changes: BTreeMap<u32, TableChange> = BTreeMap::new();
        for (s, vs) in &out.routes {
            report.routes_changed += vs.len();
            for &v in vs {
                changes
                    .entry(v)
                    .or_default()
                    .sources
                    .push(self.sources[*s].key.clone());
            }
        }
        for r in &out.removed {
            report.routes_changed += r.routed.len();
            for &(v, _) in &r.routed {
                changes.entry(v).or_default().sources.push(r.key.clone());
            }
        }
        // Route sums of the nodes whose routes moved (all after a rebuild).
        let touched: Vec<u32> = if report.full {
            (0..n as u32).collect()
        } else {
            changes.keys().copied().collect()
        };
        let sums = crate::par::map(touched.len(), self.threads, |i| {
            let v = touched[i];
            self.sources
                .iter()
                .fold(0u64, |acc, s| acc.wrapping_add(s.hash_of(v)))
        });
        for (&v, sum) in touched.iter().zip(sums) {
            self.route_sum[v as usize] = sum;
        }
        // Probe targets.
        let probe_nodes: Vec<u32> = if probes_all {
            (0..n as u32).collect()
        } else {
            touched
        };
        let fresh = crate::par::map(probe_nodes.len(), self.threads, |i| {
            self.probe_targets(probe_nodes[i])
        });
        for (v, fresh) in probe_nodes.into_iter().zip(fresh) {
            // The hash covers what the table lists: ids, probe addresses
            // (a node's advertised address may change), reasons.
            let h = fresh.iter().fold(fnv(FNV_OFFSET, b"probes"), |h, &(u, r)| {
                let view = &self.graph.views[u as usize];
                let h = fnv(fnv(h, view.id.as_bytes()), &[0x1f]);
                fnv(fnv(h, view.probe_addr.as_bytes()), &[0x1e, r as u8])
            });
            let h = finalise(h);
            if h != self.probe_hash[v as usize] || fresh != self.probes[v as usize] {
                self.probe_hash[v as usize] = h;
                self.probes[v as usize] = fresh;
                changes.entry(v).or_default().probes = true;
            }
        }
        // Directory entries that changed, for their subscribers.
        for (v, keys) in self.apply_dir_changes(&out.dir_changes) {
            changes.entry(v).or_default().directory = keys;
        }
        // Versions: every node after a rebuild (the settings may have
        // moved), else the nodes with changes.
        let nodes: Vec<u32> = if report.full {
            (0..n as u32).collect()
        } else {
            changes.keys().copied().collect()
        };
        for v in nodes {
            let hash = self.node_hash(v);
            let id = self.graph.ids[v as usize].clone();
            let book = self.books.entry(id.clone()).or_default();
            if book.hash == hash {
                continue;
            }
            let change = changes.remove(&v).unwrap_or_default();
            book.advance(hash, Some(change));
            report.changed.push(id);
        }
    }

    /// Node `v`'s content hash: its routes, directory entries, probe
    /// targets and the settings every table carries (never 0).
    pub(super) fn node_hash(&self, v: u32) -> u64 {
        let vi = v as usize;
        self.route_sum[vi]
            .wrapping_add(self.dir_sum(v))
            .wrapping_add(self.probe_hash[vi])
            .wrapping_add(self.params_hash)
            .max(1)
    }

    /// What to send a subscriber of `id` that holds version `held` (0 =
    /// none, or unknown): nothing when it holds the current version, a
    /// delta when the log reaches back to `held`, else the whole table.
    /// `None` also for an unknown node.
    pub fn table_update(&self, id: &str, held: u64) -> Option<TableUpdate> {
        let book = self.books.get(id)?;
        let &v = self.graph.index.get(id)?;
        if held == book.version || book.version == 0 {
            return None;
        }
        if held == 0 || held < book.base || held > book.version {
            return Some(TableUpdate::Full(self.whole_table(v, book.version)));
        }
        let mut sources: BTreeSet<&SourceKey> = BTreeSet::new();
        let mut dir: BTreeSet<&StreamKey> = BTreeSet::new();
        let mut probes = false;
        for (version, c) in &book.log {
            if *version > held {
                sources.extend(&c.sources);
                dir.extend(c.directory.iter());
                probes |= c.probes;
            }
        }
        let mut t = self.table_head(v, book.version);
        t.base_version = held;
        for key in sources {
            let route = self
                .source_index
                .get(key)
                .map(|&s| &self.sources[s])
                .filter(|s| !s.route(v).is_empty());
            match (key, route) {
                (SourceKey::Origin(_), Some(s)) => t.origins.push(self.origin_route(s, v)),
                (SourceKey::Pattern(_), Some(s)) => t.streams.push(self.stream_route(s, v)),
                (SourceKey::Origin(id), None) => t.removed_origins.push(id.to_string()),
                (SourceKey::Pattern(p), None) => t.removed_patterns.push(p.to_string()),
            }
        }
        let interest = self.interest.get(&self.graph.ids[v as usize]);
        for key in dir {
            if interest.is_some_and(|i| i.keys.contains_key(key)) {
                t.directory.push(self.dir_entry(key));
            } else {
                t.removed_streams.push(key.to_string());
            }
        }
        if probes {
            t.probe_targets = self.probe_list(v);
            t.probe_targets_changed = true;
        }
        Some(TableUpdate::Delta(t))
    }

    /// `id`'s whole table at its current version.
    pub fn table(&self, id: &str) -> Option<RouteTable> {
        let book = self.books.get(id)?;
        let &v = self.graph.index.get(id)?;
        (book.version > 0).then(|| self.whole_table(v, book.version))
    }

    /// `id`'s table at its current version without the stream directory
    /// (the same in every table): the node's own decisions — routes and
    /// probe targets — as a trace records them.
    pub fn own_table(&self, id: &str) -> Option<RouteTable> {
        let book = self.books.get(id)?;
        let &v = self.graph.index.get(id)?;
        (book.version > 0).then(|| self.routes_table(v, book.version))
    }

    fn table_head(&self, v: u32, version: u64) -> RouteTable {
        RouteTable {
            node_id: self.graph.ids[v as usize].to_string(),
            version,
            ttl_s: self.st.table_ttl_s,
            report_interval_ms: self.st.report_interval_ms,
            weights_version: self.st.weights_version,
            probe_key: self.st.probe_key.clone(),
            ..RouteTable::default()
        }
    }

    fn whole_table(&self, v: u32, version: u64) -> RouteTable {
        let mut t = self.routes_table(v, version);
        t.directory = self
            .subscriptions(&self.graph.ids[v as usize])
            .map(|k| self.dir_entry(k))
            .collect();
        t
    }

    /// `key`'s directory entry as a subscriber's table lists it (no origin
    /// while it is published nowhere).
    fn dir_entry(&self, key: &StreamKey) -> DirectoryEntry {
        DirectoryEntry {
            stream: key.to_string(),
            origin: self
                .directory
                .get(key)
                .map_or_else(String::new, |&o| self.graph.ids[o as usize].to_string()),
        }
    }

    /// Node `v`'s table without the directory.
    fn routes_table(&self, v: u32, version: u64) -> RouteTable {
        let mut t = self.table_head(v, version);
        for s in &self.sources {
            if s.route(v).is_empty() {
                continue;
            }
            match s.key {
                SourceKey::Origin(_) => t.origins.push(self.origin_route(s, v)),
                SourceKey::Pattern(_) => t.streams.push(self.stream_route(s, v)),
            }
        }
        t.probe_targets = self.probe_list(v);
        t
    }

    fn wire_upstreams(&self, s: &Source, v: u32) -> Vec<Upstream> {
        s.route(v)
            .iter()
            .map(|up| match up.node {
                NONE => Upstream {
                    kind: UpstreamKind::Origin as i32,
                    node_id: String::new(),
                    url: s.origin_url(v).unwrap_or_default().to_owned(),
                    score: 0.0,
                    hops: 0,
                },
                u => Upstream {
                    kind: UpstreamKind::Node as i32,
                    node_id: self.graph.ids[u as usize].to_string(),
                    url: self.graph.views[u as usize].public_url.clone(),
                    score: quantise(up.score),
                    hops: u32::from(up.hops),
                },
            })
            .collect()
    }

    fn origin_route(&self, s: &Source, v: u32) -> OriginRoute {
        OriginRoute {
            origin: s.key.name().to_owned(),
            upstreams: self.wire_upstreams(s, v),
        }
    }

    fn stream_route(&self, s: &Source, v: u32) -> StreamRoute {
        StreamRoute {
            stream: s.key.name().to_owned(),
            upstreams: self.wire_upstreams(s, v),
        }
    }

    fn probe_list(&self, v: u32) -> Vec<ProbeTarget> {
        self.probes[v as usize]
            .iter()
            .map(|&(u, r)| ProbeTarget {
                node_id: self.graph.ids[u as usize].to_string(),
                addr: self.graph.views[u as usize].probe_addr.clone(),
                reason: r.wire() as i32,
            })
            .collect()
    }
}
