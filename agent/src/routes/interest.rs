//! The streams this agent wants directory entries for (the on-demand
//! directory, `proto/vantage/v1/routes.proto`).
//!
//! A viewer or a downstream relay asking for a stream the table does not
//! list makes the relay [`want`](Interest::want) it: the route client sends
//! the subscription at once and the relay waits (briefly) for the table
//! that answers it — the stream's origin, or no origin while it is
//! published nowhere. Keys no stream here has used for a while
//! (`--relay-directory-linger-ms`, 60 s) are unsubscribed by
//! [`sweep`](Interest::sweep). The keys the
//! table lists are wanted too (the scheduler may subscribe a node itself),
//! and on every new route stream the whole set goes out again: the first
//! request of a stream replaces what the scheduler held.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use vantage_shared::stream::StreamKey;

/// Most keys wanted at once; beyond it the least recently used key that no
/// stream holds is dropped (a flood of requests for made-up keys cannot
/// grow the set, nor the table, without bound).
pub const MAX_KEYS: usize = 20_000;
/// Most keys per request (the scheduler takes up to 10,000).
pub const KEYS_PER_REQUEST: usize = 5_000;

/// The wanted set, shared by the relay (which wants keys) and the route
/// client (which sends the changes).
#[derive(Clone, Default)]
pub struct Interest {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the route client: changes to send.
    changed: Notify,
    /// A route stream is open (waiting for an answer makes sense).
    connected: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Key → last time a stream used it.
    wanted: HashMap<StreamKey, Instant>,
    /// Changes not sent yet.
    add: BTreeSet<StreamKey>,
    remove: BTreeSet<StreamKey>,
}

impl std::fmt::Debug for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interest")
            .field("wanted", &self.lock().wanted.len())
            .finish_non_exhaustive()
    }
}

impl Interest {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wants `key` (used now). Returns true when it was not wanted yet: a
    /// subscription goes out.
    pub fn want(&self, key: &StreamKey) -> bool {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(t) = st.wanted.get_mut(key) {
            *t = now;
            return false;
        }
        if st.wanted.len() >= MAX_KEYS {
            // The least recently used key goes.
            if let Some(old) = st
                .wanted
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                st.wanted.remove(&old);
                st.add.remove(&old);
                st.remove.insert(old);
            }
        }
        st.wanted.insert(key.clone(), now);
        st.remove.remove(key);
        st.add.insert(key.clone());
        drop(st);
        self.inner.changed.notify_one();
        true
    }

    /// Marks keys listed by the table as wanted without sending anything
    /// (the scheduler lists them already).
    pub fn adopt<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut st = self.lock();
        for k in keys {
            let Ok(key) = StreamKey::parse(k) else {
                continue;
            };
            if !st.wanted.contains_key(&key) && st.wanted.len() < MAX_KEYS {
                st.wanted.insert(key, now);
            }
        }
    }

    /// Unsubscribes keys that `in_use` says no stream holds and that were
    /// last used more than `linger` ago. Returns how many went.
    pub fn sweep(&self, linger: Duration, in_use: impl Fn(&StreamKey) -> bool) -> usize {
        let now = Instant::now();
        let mut st = self.lock();
        let mut gone = Vec::new();
        for (k, t) in st.wanted.iter_mut() {
            if in_use(k) {
                *t = now;
            } else if now.duration_since(*t) >= linger {
                gone.push(k.clone());
            }
        }
        for k in &gone {
            st.wanted.remove(k);
            st.add.remove(k);
            st.remove.insert(k.clone());
        }
        drop(st);
        if !gone.is_empty() {
            self.inner.changed.notify_one();
        }
        gone.len()
    }

    /// Whether `key` is wanted.
    pub fn is_wanted(&self, key: &StreamKey) -> bool {
        self.lock().wanted.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.lock().wanted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a route stream is open.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.inner.connected.store(up, Ordering::Relaxed);
    }

    /// Every wanted key, in chunks of [`KEYS_PER_REQUEST`] (at least one,
    /// maybe empty): what a new route stream's first requests carry. The
    /// pending changes are part of it.
    pub(crate) fn take_all(&self) -> Vec<Vec<String>> {
        let mut st = self.lock();
        st.add.clear();
        st.remove.clear();
        let mut keys: Vec<String> = st.wanted.keys().map(|k| k.as_str().to_owned()).collect();
        drop(st);
        keys.sort();
        let mut chunks: Vec<Vec<String>> = keys
            .chunks(KEYS_PER_REQUEST)
            .map(<[String]>::to_vec)
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        chunks
    }

    /// Changes not sent yet: (subscribe, unsubscribe), at most
    /// [`KEYS_PER_REQUEST`] of each (the rest stay pending).
    pub(crate) fn take_changes(&self) -> (Vec<String>, Vec<String>) {
        let mut st = self.lock();
        let take = |set: &mut BTreeSet<StreamKey>| -> Vec<String> {
            let keys: Vec<StreamKey> = set.iter().take(KEYS_PER_REQUEST).cloned().collect();
            for k in &keys {
                set.remove(k);
            }
            keys.into_iter().map(|k| k.as_str().to_owned()).collect()
        };
        let add = take(&mut st.add);
        let remove = take(&mut st.remove);
        (add, remove)
    }

    /// Whether changes are waiting to be sent.
    pub(crate) fn has_changes(&self) -> bool {
        let st = self.lock();
        !st.add.is_empty() || !st.remove.is_empty()
    }

    /// Resolves when there may be changes to send.
    pub(crate) async fn changed(&self) {
        self.inner.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> StreamKey {
        StreamKey::parse(s).unwrap()
    }

    #[test]
    fn wanting_sends_once_and_sweeping_unsubscribes_unused_keys() {
        let i = Interest::default();
        assert!(i.want(&key("live/a")));
        assert!(!i.want(&key("live/a")), "already wanted");
        assert!(i.want(&key("live/b")));
        assert_eq!(
            i.take_changes(),
            (vec!["live/a".to_owned(), "live/b".to_owned()], vec![])
        );
        assert!(!i.has_changes());
        // live/a is in use; live/b lingered long enough.
        assert_eq!(i.sweep(Duration::ZERO, |k| k.as_str() == "live/a"), 1);
        assert_eq!(i.take_changes(), (vec![], vec!["live/b".to_owned()]));
        assert!(i.is_wanted(&key("live/a")));
        assert!(!i.is_wanted(&key("live/b")));
        // Not yet lingered: kept.
        assert_eq!(i.sweep(Duration::from_secs(60), |_| false), 0);
        // Wanted again before the unsubscription went out: no net change.
        i.sweep(Duration::ZERO, |_| false);
        i.want(&key("live/a"));
        assert_eq!(i.take_changes(), (vec!["live/a".to_owned()], vec![]));
    }

    #[test]
    fn a_new_stream_sends_every_key_in_chunks() {
        let i = Interest::default();
        assert_eq!(i.take_all(), vec![Vec::<String>::new()]);
        for n in 0..(KEYS_PER_REQUEST + 3) {
            i.want(&key(&format!("live/k{n}")));
        }
        let chunks = i.take_all();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), KEYS_PER_REQUEST);
        assert_eq!(chunks[1].len(), 3);
        assert!(!i.has_changes(), "the whole set replaces pending changes");
    }

    #[test]
    fn the_set_is_bounded_and_the_oldest_key_goes() {
        let i = Interest::default();
        for n in 0..MAX_KEYS {
            i.want(&key(&format!("live/k{n}")));
        }
        while i.has_changes() {
            i.take_changes();
        }
        i.want(&key("live/new"));
        assert_eq!(i.len(), MAX_KEYS);
        let (add, remove) = i.take_changes();
        assert_eq!(add, vec!["live/new".to_owned()]);
        assert_eq!(remove.len(), 1);
    }

    #[test]
    fn adopted_table_keys_are_swept_like_any_other() {
        let i = Interest::default();
        i.adopt(["live/a", "not a key"]);
        assert!(i.is_wanted(&key("live/a")));
        assert!(!i.has_changes(), "the table lists it already");
        assert_eq!(i.sweep(Duration::ZERO, |_| false), 1);
        assert_eq!(i.take_changes(), (vec![], vec!["live/a".to_owned()]));
    }
}
