//! Upstream trees of the planned policies (`qoe`, `oracle`): a
//! [`PlanSession`] of the planning core, driven as the scheduler's planning
//! loop drives its own.
//!
//! A planning round offers the session the fresh inputs of every node that
//! changed since the last round, then steps it if the session says a plan
//! is due — it decides by itself (urgent changes such as a node going down
//! or coming back at once, moved inputs after `replan_interval_ms`, a new
//! probe rotation epoch, the periodic plan from scratch). The deadband is
//! the session's too. Nothing here decides routes: the round only reads the
//! session's answers back, into per-node caches refreshed for the nodes
//! whose table changed in the step (`route_for` per stream, probe
//! targets).

use std::collections::HashMap;
use vantage_plan::{NodeView, PlanSession, PlanSettings};
use vantage_shared::stream::StreamKey;

/// The stream key of stream slot `i`.
pub fn stream_key(i: usize) -> String {
    format!("live/s{i}")
}

/// A planning session and the simulator's index-based copies of its
/// answers.
pub struct Planning {
    session: PlanSession,
    ids: Vec<String>,
    index: HashMap<String, u16>,
    keys: Vec<StreamKey>,
    /// Upstream candidates per (node, stream), `node * streams + stream`.
    routes: Vec<Vec<u16>>,
    probes: Vec<Vec<u16>>,
    /// Steps taken.
    pub steps: u64,
}

impl std::fmt::Debug for Planning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planning")
            .field("session", &self.session)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Planning {
    /// A session for nodes `ids` (world order) and the streams `keys`
    /// (by slot).
    pub fn new(settings: PlanSettings, ids: Vec<String>, keys: Vec<StreamKey>) -> Self {
        let n = ids.len();
        let streams = keys.len();
        Planning {
            // One thread: runs are parallel already, and a step's result
            // does not depend on it.
            session: PlanSession::new(settings, 1),
            index: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i as u16))
                .collect(),
            ids,
            keys,
            routes: vec![Vec::new(); n * streams],
            probes: vec![Vec::new(); n],
            steps: 0,
        }
    }

    /// Node ids, by index.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// One round at `now_ms`: offers `views`, steps when a plan is due.
    /// Returns whether it stepped.
    pub fn round(&mut self, views: impl IntoIterator<Item = NodeView>, now_ms: u64) -> bool {
        for v in views {
            self.session.offer(v);
        }
        let now = now_ms as i64;
        if !self.session.due(now) {
            return false;
        }
        let report = self.session.step(now);
        self.steps += 1;
        let streams = self.keys.len();
        for id in &report.changed {
            let Some(&n) = self.index.get(&**id) else {
                continue;
            };
            let n = usize::from(n);
            for (s, key) in self.keys.iter().enumerate() {
                let list = &mut self.routes[n * streams + s];
                list.clear();
                list.extend(
                    self.session
                        .route_for(id, key)
                        .into_iter()
                        .filter_map(|(u, _)| self.index.get(u).copied()),
                );
            }
            self.probes[n] = self
                .session
                .probe_targets_of(id)
                .into_iter()
                .filter_map(|t| self.index.get(t).copied())
                .collect();
        }
        true
    }

    /// Upstream candidates of `node` for stream slot `stream`, best first;
    /// `None`: no route (pull from the origin).
    pub fn upstreams(&self, node: usize, stream: usize) -> Option<&[u16]> {
        self.routes
            .get(node * self.keys.len() + stream)
            .filter(|l| !l.is_empty())
            .map(Vec::as_slice)
    }

    /// Probe targets of `node` from its latest table.
    pub fn probe_targets(&self, node: usize) -> &[u16] {
        self.probes.get(node).map_or(&[], Vec::as_slice)
    }
}
