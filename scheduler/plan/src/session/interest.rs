//! The on-demand directory: each node's table lists only the streams the
//! node subscribed to (an agent subscribes to a stream when a viewer or a
//! downstream relay asks for it), each with its origin or with none while
//! the stream is published nowhere. A stream that starts, ends or moves
//! changes the tables of its subscribers only, and a subscription changes
//! one table, at once, without a planning step.
//!
//! Per node the session keeps the keys subscribed with the hash each entry
//! contributes to the node's content hash (so the hash moves by the entries
//! that changed), and per key the nodes subscribed to it.

use super::*;
use crate::session::tables::dir_entry_hash;

/// Most stream keys one node may subscribe to; further subscriptions are
/// not taken (counted by the caller).
pub const MAX_INTEREST: usize = 100_000;

/// One node's subscriptions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interest {
    /// Key → the hash of its entry as the node's table lists it.
    pub(crate) keys: BTreeMap<StreamKey, u64>,
    /// Sum of the entry hashes: the directory's part of the content hash.
    pub(crate) sum: u64,
}

/// What a [`PlanSession::subscribe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscribed {
    /// Keys added and removed.
    pub added: usize,
    pub removed: usize,
    /// Keys not taken: the node holds [`MAX_INTEREST`] keys.
    pub refused: usize,
    /// The node's table has a new version (0: unchanged, or the node has
    /// not been planned yet — its first table will list the keys).
    pub version: u64,
}

impl PlanSession {
    /// The hash of `key`'s entry as a subscriber's table lists it.
    fn entry_hash(&self, key: &StreamKey) -> u64 {
        let origin = self
            .directory
            .get(key)
            .map_or("", |&o| self.graph.ids[o as usize].as_ref());
        dir_entry_hash(key, origin)
    }

    /// Changes node `id`'s subscriptions: with `replace`, the node's keys
    /// become exactly `add` (an agent's first request on a new stream);
    /// otherwise `add` are added and `remove` removed. When the node's
    /// table changed its version moves at once, with the keys logged for
    /// a delta.
    pub fn subscribe(
        &mut self,
        id: &str,
        add: &[StreamKey],
        remove: &[StreamKey],
        replace: bool,
    ) -> Subscribed {
        let mut out = Subscribed::default();
        let id: Arc<str> = match self.graph.index.get(id) {
            Some(&v) => self.graph.ids[v as usize].clone(),
            None => Arc::from(id),
        };
        let mut changed: Vec<StreamKey> = Vec::new();
        let mut interest = self.interest.remove(&id).unwrap_or_default();
        let mut drop_key =
            |k: &StreamKey, interest: &mut Interest, changed: &mut Vec<StreamKey>| {
                if let Some(h) = interest.keys.remove(k) {
                    interest.sum = interest.sum.wrapping_sub(h);
                    if let Some(w) = self.watchers.get_mut(k) {
                        w.remove(&id);
                        if w.is_empty() {
                            self.watchers.remove(k);
                        }
                    }
                    changed.push(k.clone());
                    true
                } else {
                    false
                }
            };
        if replace {
            let keep: BTreeSet<&StreamKey> = add.iter().collect();
            let gone: Vec<StreamKey> = interest
                .keys
                .keys()
                .filter(|k| !keep.contains(k))
                .cloned()
                .collect();
            for k in &gone {
                out.removed += usize::from(drop_key(k, &mut interest, &mut changed));
            }
        }
        for k in remove {
            out.removed += usize::from(drop_key(k, &mut interest, &mut changed));
        }
        for k in add {
            if interest.keys.contains_key(k) {
                continue;
            }
            if interest.keys.len() >= MAX_INTEREST {
                out.refused += 1;
                continue;
            }
            let h = self.entry_hash(k);
            interest.keys.insert(k.clone(), h);
            interest.sum = interest.sum.wrapping_add(h);
            self.watchers
                .entry(k.clone())
                .or_default()
                .insert(id.clone());
            changed.push(k.clone());
            out.added += 1;
        }
        if !interest.keys.is_empty() {
            self.interest.insert(id.clone(), interest);
        }
        if changed.is_empty() {
            return out;
        }
        let Some(&v) = self.graph.index.get(&*id) else {
            return out;
        };
        if self.books.get(&id).is_none_or(|b| b.version == 0) {
            return out;
        }
        let hash = self.node_hash(v);
        let book = self.books.entry(id).or_default();
        if book.hash != hash {
            changed.sort();
            changed.dedup();
            book.advance(
                hash,
                Some(TableChange {
                    directory: changed,
                    ..TableChange::default()
                }),
            );
            out.version = book.version;
        }
        out
    }

    /// After the directory changed at `keys`: every subscriber's entry
    /// hashes and sums brought up to date. Returns, per subscriber planned
    /// (by index), the keys its table lists differently.
    pub(super) fn apply_dir_changes(
        &mut self,
        keys: &[StreamKey],
    ) -> BTreeMap<u32, Vec<StreamKey>> {
        let mut out: BTreeMap<u32, Vec<StreamKey>> = BTreeMap::new();
        for k in keys {
            let Some(watchers) = self.watchers.get(k) else {
                continue;
            };
            let h = self.entry_hash(k);
            for w in watchers {
                let Some(interest) = self.interest.get_mut(w) else {
                    continue;
                };
                if let Some(old) = interest.keys.insert(k.clone(), h) {
                    interest.sum = interest.sum.wrapping_sub(old).wrapping_add(h);
                }
                if let Some(&v) = self.graph.index.get(w) {
                    out.entry(v).or_default().push(k.clone());
                }
            }
        }
        out
    }

    /// The directory's part of node `v`'s content hash.
    pub(super) fn dir_sum(&self, v: u32) -> u64 {
        self.interest
            .get(&self.graph.ids[v as usize])
            .map_or(0, |i| i.sum)
    }

    /// The streams node `id` subscribed to, in key order.
    pub fn subscriptions(&self, id: &str) -> impl Iterator<Item = &StreamKey> {
        self.interest
            .get(id)
            .into_iter()
            .flat_map(|i| i.keys.keys())
    }

    /// Nodes subscribed to `key`, in id order.
    pub fn subscribers(&self, key: &StreamKey) -> impl Iterator<Item = &str> {
        self.watchers
            .get(key)
            .into_iter()
            .flat_map(|w| w.iter().map(|id| id.as_ref()))
    }

    /// Subscriptions held, over every node.
    pub fn subscription_count(&self) -> usize {
        self.interest.values().map(|i| i.keys.len()).sum()
    }
}
