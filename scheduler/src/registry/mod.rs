//! In-memory node state: what every agent said in its Hello and last reports.
//!
//! Hot path: one `DashMap` entry per node, updated by that node's ingest
//! task on every report; the planner, the API and the liveness check read
//! snapshots. Nothing here touches the database; `store` gets batched
//! writes from the callers.

mod node;
#[cfg(test)]
mod tests;

pub use node::{
    Connection, NodeEntry, NodeInfo, NodeState, RollupAcc, Session, held_down_after_ms,
};

use dashmap::DashMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use vantage_plan::NodeView;

/// What [`Registry::tick_aware`] did.
#[derive(Debug, Default)]
pub struct Tick {
    /// State changes `(id, from, to)`, by id.
    pub changes: Vec<(String, NodeState, NodeState)>,
    /// Nodes held short of down because the scheduler was losing reports.
    pub held: usize,
}

/// All nodes, by id.
#[derive(Debug, Default)]
pub struct Registry {
    nodes: DashMap<String, NodeEntry>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, entry: NodeEntry) {
        self.nodes.insert(entry.id.clone(), entry);
    }

    pub fn contains(&self, id: &str) -> bool {
        self.nodes.contains_key(id)
    }

    /// Runs `f` on a node's entry, if it exists.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&NodeEntry) -> R) -> Option<R> {
        self.nodes.get(id).map(|e| f(&e))
    }

    /// Runs `f` on a node's entry mutably, if it exists (and marks it
    /// changed for the planner).
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut NodeEntry) -> R) -> Option<R> {
        self.nodes.get_mut(id).map(|mut e| {
            e.touched += 1;
            f(&mut e)
        })
    }

    /// Inserts with `make` when missing, then runs `f`.
    pub fn upsert<R>(
        &self,
        id: &str,
        make: impl FnOnce() -> NodeEntry,
        f: impl FnOnce(&mut NodeEntry) -> R,
    ) -> R {
        let mut e = self.nodes.entry(id.to_owned()).or_insert_with(make);
        e.touched += 1;
        f(&mut e)
    }

    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// What the planner should be offered: the fresh view of every node
    /// changed since it was last offered (by id).
    pub fn changed_views(&self) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self
            .nodes
            .iter_mut()
            .filter(|e| e.touched != e.offered)
            .map(|mut e| {
                e.offered = e.touched;
                e.fresh_view()
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The fresh view of every node (a new planning session: a replica
    /// that takes over as the leader), marking each as offered.
    pub fn all_views(&self) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self
            .nodes
            .iter_mut()
            .map(|mut e| {
                e.offered = e.touched;
                e.fresh_view()
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Runs `f` on every entry without cloning (one shard lock at a time,
    /// in no particular order).
    pub fn for_each(&self, mut f: impl FnMut(&NodeEntry)) {
        for e in self.nodes.iter() {
            f(&e);
        }
    }

    /// Clones of every entry, sorted by id (API, dashboard).
    pub fn entries(&self) -> Vec<NodeEntry> {
        let mut v: Vec<NodeEntry> = self.nodes.iter().map(|e| e.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Sessions of nodes that are down and have sent nothing for `grace_ms`
    /// (the caller closes them). A session younger than the grace is never
    /// silent: an agent still enrolling, or just welcomed, has not had the
    /// chance to report.
    pub fn silent_sessions(&self, now_ms: i64, grace_ms: i64) -> Vec<Arc<dyn Connection>> {
        let silent_since = |t: i64| now_ms.saturating_sub(t) > grace_ms;
        self.nodes
            .iter()
            .filter(|e| e.state == NodeState::Down)
            .filter(|e| e.last_report_ms.is_none_or(silent_since))
            .filter_map(|e| {
                let s = e.session.as_ref()?;
                silent_since(s.started_ms).then(|| s.connection.clone())?
            })
            .collect()
    }

    /// Re-evaluates every node's state, with no local loss. Returns the
    /// transitions `(id, from, to)`.
    pub fn tick(&self, now_ms: i64, interval_ms: i64) -> Vec<(String, NodeState, NodeState)> {
        self.tick_aware(now_ms, interval_ms, || false).changes
    }

    /// Re-evaluates every node's state, holding nodes short of down while
    /// `local_loss` (asked at most once, and only when a node would go
    /// down) says the scheduler dropped reports itself: see
    /// [`NodeEntry::evaluate`].
    pub fn tick_aware(
        &self,
        now_ms: i64,
        interval_ms: i64,
        mut local_loss: impl FnMut() -> bool,
    ) -> Tick {
        let mut lossy: Option<bool> = None;
        let mut held = 0;
        // Asked only for a node that would go down and can be held.
        let mut hold = || {
            let lossy = *lossy.get_or_insert_with(&mut local_loss);
            held += usize::from(lossy);
            lossy
        };
        let mut changes = Vec::new();
        for mut e in self.nodes.iter_mut() {
            let next = e.evaluate(now_ms, interval_ms, &mut hold);
            if next != e.state {
                changes.push((e.id.clone(), e.state, next));
                if next == NodeState::Down {
                    // Down: its streams are nobody's; published again
                    // later, they are new publishes.
                    e.origin_since.clear();
                }
                e.state = next;
                e.state_since_ms = now_ms;
                e.touched += 1;
            }
        }
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        Tick { changes, held }
    }

    /// Count of nodes per state.
    pub fn state_counts(&self) -> BTreeMap<&'static str, i64> {
        let mut m: BTreeMap<&'static str, i64> =
            NodeState::ALL.iter().map(|s| (s.label(), 0)).collect();
        for e in self.nodes.iter() {
            *m.entry(e.state.label()).or_default() += 1;
        }
        m
    }
}
