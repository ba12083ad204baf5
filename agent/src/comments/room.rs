//! One room (one stream key) on one agent: its recent buffer, its
//! connections, its role — the sequencer that numbers posts, or a follower
//! fed by an upstream link — and the fan-out.
//!
//! **Fan-out.** New comments wake the room's flusher, which waits out the
//! coalescing window (none when the last batch is older than the window),
//! takes every comment after the last published one as one batch, encodes
//! it once per format as one WebSocket frame, and offers that frame to
//! every connection: a non-blocking write of shared bytes, connection after
//! connection, shard by shard on the runtime's workers. Only a connection
//! whose socket is full involves its own task (to wait for it to drain).
//!
//! **Order.** Batches go out one at a time (the flush lock), in sequence
//! order; a joining connection gets its welcome, then its catch-up from the
//! buffer up to the last published number, under the room's state lock, so
//! nothing falls between its catch-up and the next batch, and a batch it
//! already has is skipped by its cursor.

use super::Shared;
use super::forward::{Forwards, Origin, Post};
use super::frame::{self, Comment, Format, Out, Reason};
use super::member::{Member, Offer};
use super::ring::Ring;
use super::sequencer::{Decision, Sequencer};
use super::ws;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vantage_shared::stream::StreamKey;

/// Connections per fan-out shard before the shards run in parallel.
const INLINE_FANOUT: usize = 512;
/// Comments per catch-up frame.
const CATCHUP_CHUNK: usize = 256;

/// Who numbers this room's comments.
#[derive(Debug)]
pub enum Role {
    /// This agent (the stream's origin).
    Sequencer(Sequencer),
    /// The upstream link's sequencer.
    Follower,
}

/// Where a joining connection starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The last `backlog` comments, then everything new.
    Fresh { backlog: usize },
    /// Everything after `seq` of `epoch` still held (a gap notice for what
    /// is not). Another epoch than the room's: like `Fresh`.
    Since {
        seq: u64,
        epoch: Option<String>,
        backlog: usize,
    },
}

/// The upstream link's state, for `/v1/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpstreamView {
    pub node: String,
    pub url: String,
    pub connected: bool,
    pub local_addr: String,
    pub since_ms: u64,
}

pub(crate) struct State {
    pub role: Role,
    pub epoch: Arc<str>,
    pub ring: Ring,
    /// The last number handed to the fan-out.
    pub published: u64,
    pub forwards: Forwards,
    pub upstream: Option<UpstreamView>,
}

/// One batch, encoded lazily once per format.
struct Batch {
    first: u64,
    last: u64,
    comments: Vec<Arc<Comment>>,
    json: OnceLock<Bytes>,
    bin: OnceLock<Bytes>,
}

impl Batch {
    fn frame(&self, format: Format) -> &Bytes {
        let cell = match format {
            Format::Json => &self.json,
            Format::Binary => &self.bin,
        };
        cell.get_or_init(|| ws::data_frame(format, &frame::batch(&self.comments, format)))
    }
}

pub struct Room {
    pub key: StreamKey,
    pub(crate) svc: Arc<Shared>,
    state: Mutex<State>,
    shards: Vec<Mutex<Vec<Arc<Member>>>>,
    links: Mutex<Vec<Arc<Member>>>,
    members: AtomicUsize,
    /// Wakes the flusher.
    wake: Notify,
    flush_lock: tokio::sync::Mutex<()>,
    /// Wakes the upstream link (posts to forward, a role change).
    pub(crate) uplink: Notify,
    pub cancel: CancellationToken,
    /// Since when the room has had no connection (comments clock, ms; 0:
    /// it has some).
    empty_since_ms: AtomicU64,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Room {
    pub(crate) fn new(key: StreamKey, svc: Arc<Shared>, role: Role, epoch: Arc<str>) -> Room {
        let cfg = &svc.cfg;
        let ring = Ring::new(
            cfg.buffer,
            i64::try_from(cfg.buffer_age.as_millis()).unwrap_or(i64::MAX),
        );
        let shards = (0..svc.shards).map(|_| Mutex::new(Vec::new())).collect();
        let now = svc.now_ms();
        Room {
            key,
            state: Mutex::new(State {
                role,
                epoch,
                ring,
                published: 0,
                forwards: Forwards::default(),
                upstream: None,
            }),
            shards,
            links: Mutex::new(Vec::new()),
            members: AtomicUsize::new(0),
            wake: Notify::new(),
            flush_lock: tokio::sync::Mutex::new(()),
            uplink: Notify::new(),
            cancel: svc.cancel.child_token(),
            empty_since_ms: AtomicU64::new(now.max(1)),
            svc,
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn members(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }

    /// Since when the room has been empty (ms), if it is.
    pub fn empty_since_ms(&self) -> Option<u64> {
        match self.empty_since_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn is_sequencer(&self) -> bool {
        matches!(self.state().role, Role::Sequencer(_))
    }

    pub fn epoch(&self) -> Arc<str> {
        self.state().epoch.clone()
    }

    /// Node ids of the downstream agents linked to this room (an upstream
    /// link never goes to one of them: it would loop).
    pub fn downstream_nodes(&self) -> Vec<String> {
        lock(&self.links)
            .iter()
            .filter_map(|m| match &m.kind {
                super::member::Kind::Link { node } => Some(node.clone()),
                super::member::Kind::Viewer => None,
            })
            .collect()
    }

    /// Adds a connection: its welcome and catch-up go first (see the module
    /// docs), then it is in the fan-out.
    pub fn join(&self, member: Arc<Member>, resume: &Resume) {
        let svc = &self.svc;
        let format = member.format;
        let st = self.state();
        let published = st.published;
        let (gap, comments, resumed_at) = match resume {
            // An empty epoch is one a follower room handed out before its
            // link's welcome named the sequencer's: as unknown as none.
            Resume::Since { seq, epoch, .. }
                if epoch
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == &*st.epoch)
                    && *seq <= published =>
            {
                let s = st.ring.since(*seq);
                (s.gap, s.comments, Some(*seq))
            }
            Resume::Since { backlog, .. } | Resume::Fresh { backlog } => {
                (None, st.ring.last(*backlog.min(&svc.cfg.buffer)), None)
            }
        };
        let held: Vec<Arc<Comment>> = comments
            .into_iter()
            .filter(|c| c.seq <= published)
            .collect();
        // The number just before the first comment this connection gets.
        let head = resumed_at
            .or_else(|| held.first().map(|c| c.seq - 1))
            .unwrap_or(published);
        let welcome = Out::Welcome {
            room: self.key.as_str(),
            epoch: &st.epoch,
            head,
            heartbeat_ms: u32::try_from(svc.cfg.heartbeat.as_millis()).unwrap_or(u32::MAX),
            idle_timeout_ms: u32::try_from(svc.cfg.idle_timeout.as_millis()).unwrap_or(u32::MAX),
            max_text_bytes: u32::try_from(svc.cfg.max_text_bytes).unwrap_or(u32::MAX),
        };
        let mut frames = vec![ws::data_frame(format, &welcome.encode(format))];
        if let Some((from, to)) = gap {
            let to = to.min(published);
            if from <= to {
                frames.push(ws::data_frame(
                    format,
                    &Out::Gap { from, to }.encode(format),
                ));
            }
        }
        for chunk in held.chunks(CATCHUP_CHUNK) {
            frames.push(ws::data_frame(format, &frame::batch(chunk, format)));
        }
        member.preload(frames, published, &svc.io);
        let shard = (member.id as usize) % self.shards.len();
        if member.is_link() {
            lock(&self.links).push(member.clone());
        }
        lock(&self.shards[shard]).push(member);
        self.members.fetch_add(1, Ordering::Relaxed);
        self.empty_since_ms.store(0, Ordering::Relaxed);
        drop(st);
    }

    /// Removes a connection.
    pub fn leave(&self, member: &Arc<Member>) {
        let shard = (member.id as usize) % self.shards.len();
        let mut s = lock(&self.shards[shard]);
        if let Some(i) = s.iter().position(|m| Arc::ptr_eq(m, member)) {
            s.swap_remove(i);
            if self.members.fetch_sub(1, Ordering::Relaxed) == 1 {
                self.empty_since_ms
                    .store(self.svc.now_ms().max(1), Ordering::Relaxed);
            }
        }
        drop(s);
        if member.is_link() {
            lock(&self.links).retain(|m| !Arc::ptr_eq(m, member));
        }
    }

    /// The connections for which `pick` holds, one shard lock at a time
    /// (housekeeping's scan: no reference taken on the others).
    pub fn select(&self, mut pick: impl FnMut(&Member) -> bool) -> Vec<Arc<Member>> {
        let mut picked = Vec::new();
        for s in &self.shards {
            picked.extend(lock(s).iter().filter(|m| pick(m)).cloned());
        }
        picked
    }

    /// Every connection now (a snapshot).
    pub fn snapshot(&self) -> Vec<Arc<Member>> {
        let mut all = Vec::with_capacity(self.members());
        for s in &self.shards {
            all.extend(lock(s).iter().cloned());
        }
        all
    }

    /// Wakes the flusher: comments wait to go out.
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    /// Waits for new comments (or cancellation: `false`).
    pub async fn wait_for_comments(&self) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = self.wake.notified() => true,
        }
    }

    /// Sends every comment after the last published one as one batch.
    pub async fn flush(self: &Arc<Self>) {
        let _order = self.flush_lock.lock().await;
        let batch = {
            let mut st = self.state();
            let head = st.ring.head();
            if head <= st.published {
                return;
            }
            let comments: Vec<Arc<Comment>> = st.ring.since(st.published).comments;
            let first = st.published + 1;
            st.published = head;
            Batch {
                first,
                last: head,
                comments,
                json: OnceLock::new(),
                bin: OnceLock::new(),
            }
        };
        let n = batch.comments.len() as u64;
        if n == 0 {
            return;
        }
        let batch = Arc::new(batch);
        let parallel = self.members() > INLINE_FANOUT && self.shards.len() > 1;
        let taken = if parallel {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..self.shards.len() {
                let room = self.clone();
                let batch = batch.clone();
                set.spawn(async move { room.offer_shard(i, &batch) });
            }
            let mut total = 0;
            while let Some(r) = set.join_next().await {
                total += r.unwrap_or(0);
            }
            total
        } else {
            (0..self.shards.len())
                .map(|i| self.offer_shard(i, &batch))
                .sum()
        };
        let m = &self.svc.metrics;
        m.batches.inc();
        m.delivered.inc_by(taken * n);
        self.svc.delivered.fetch_add(taken * n, Ordering::Relaxed);
    }

    /// Offers `batch` to shard `i`; returns the connections that took it.
    fn offer_shard(&self, i: usize, batch: &Batch) -> u64 {
        let members: Vec<Arc<Member>> = lock(&self.shards[i]).clone();
        let now = self.svc.now_ms();
        let mut taken = 0;
        for m in &members {
            match m.offer(
                batch.first,
                batch.last,
                batch.frame(m.format),
                now,
                &self.svc.io,
            ) {
                Offer::Taken => taken += 1,
                Offer::Slow => self.svc.metrics.close("slow_reader"),
                Offer::Had | Offer::Gone => {}
            }
        }
        taken
    }

    /// Sends `frame` (JSON) to the downstream links.
    pub fn to_links(&self, frame: &Bytes) {
        let links: Vec<Arc<Member>> = lock(&self.links).clone();
        let now = self.svc.now_ms();
        for m in links {
            m.send(frame.clone(), now, &self.svc.io);
        }
    }

    /// The sequencer's heartbeat to downstream links.
    pub fn beat(&self) {
        let head = self.state().published;
        let f = ws::data_frame(Format::Json, &Out::Beat { head }.encode(Format::Json));
        self.to_links(&f);
    }

    /// A post accepted at this agent (from a client or a downstream link):
    /// numbered here if this agent sequences the room, else forwarded up.
    pub fn submit(&self, post: Post) {
        let now = self.svc.now_ms();
        let mut st = self.state();
        let decision = match &mut st.role {
            Role::Sequencer(s) => s.decide(&post.id, now),
            Role::Follower => {
                match st.forwards.push(post, now) {
                    Ok(()) => {
                        drop(st);
                        self.uplink.notify_one();
                    }
                    Err(post) => {
                        drop(st);
                        self.svc.metrics.reject(Reason::UpstreamUnavailable);
                        self.answer(&post.origin, Err((Reason::UpstreamUnavailable, 1000)));
                    }
                }
                return;
            }
        };
        let result = self.apply(&mut st, &post, decision);
        drop(st);
        if result.is_ok() {
            self.kick();
        }
        self.answer(&post.origin, result);
    }

    /// Stores a sequencer decision; the answer for the poster.
    fn apply(&self, st: &mut State, post: &Post, d: Decision) -> Result<u64, (Reason, u32)> {
        let m = &self.svc.metrics;
        match d {
            Decision::New(seq) => {
                let c = Comment::new(
                    seq,
                    vantage_shared::clock::now_ms(),
                    post.user.clone(),
                    post.text.clone(),
                );
                st.ring.push(Arc::new(c));
                m.sequenced.inc();
                self.svc.sequenced.fetch_add(1, Ordering::Relaxed);
                Ok(seq)
            }
            Decision::Duplicate(seq) => {
                m.duplicates
                    .get_or_create(&super::metrics::ResultLabel { result: "post" })
                    .inc();
                Ok(seq)
            }
            Decision::RoomRate(wait) => {
                m.reject(Reason::RateRoom);
                Err((Reason::RateRoom, wait))
            }
        }
    }

    /// Sends the decision on a post to whoever sent it.
    pub fn answer(&self, origin: &Origin, result: Result<u64, (Reason, u32)>) {
        if let Some((member, frame)) = origin.answer(result) {
            member.send(frame, self.svc.now_ms(), &self.svc.io);
        }
    }

    /// A comment from the upstream link (a follower's ring follows the
    /// sequencer's numbers; what it has is dropped).
    pub fn ingest(&self, c: Comment) -> bool {
        let mut st = self.state();
        let head = st.ring.head();
        if c.seq <= head {
            drop(st);
            self.svc
                .metrics
                .duplicates
                .get_or_create(&super::metrics::ResultLabel { result: "delivery" })
                .inc();
            return false;
        }
        st.ring.push(Arc::new(c));
        true
    }

    /// The upstream no longer holds `from..=to`: what is pending goes out,
    /// then every connection is told, and numbering continues after `to`.
    pub async fn gap(self: &Arc<Self>, from: u64, to: u64) {
        self.flush().await;
        let _order = self.flush_lock.lock().await;
        {
            let mut st = self.state();
            if to <= st.ring.head() {
                return;
            }
            let head = st.ring.head();
            st.ring.reset(to);
            debug_assert!(head <= to);
            st.published = to;
        }
        self.svc.metrics.gaps.inc();
        self.broadcast_control(&Out::Gap { from, to }, to);
    }

    /// The room's numbering restarts under `epoch` (a new sequencer):
    /// the buffer is emptied and every connection told.
    pub async fn reset(self: &Arc<Self>, epoch: Arc<str>, head: u64) {
        let _order = self.flush_lock.lock().await;
        {
            let mut st = self.state();
            st.epoch = epoch.clone();
            st.ring.reset(head);
            st.published = head;
        }
        self.svc.metrics.resets.inc();
        self.broadcast_control(
            &Out::Reset {
                epoch: &epoch,
                head,
            },
            head,
        );
    }

    /// Sends `out` to every connection and moves their cursors to `cursor`
    /// (under the flush lock).
    fn broadcast_control(&self, out: &Out<'_>, cursor: u64) {
        let json = ws::data_frame(Format::Json, &out.encode(Format::Json));
        let bin = ws::data_frame(Format::Binary, &out.encode(Format::Binary));
        let now = self.svc.now_ms();
        for m in self.snapshot() {
            let f = match m.format {
                Format::Json => json.clone(),
                Format::Binary => bin.clone(),
            };
            m.send(f, now, &self.svc.io);
            m.reset_cursor(cursor);
        }
    }

    /// This agent now numbers the room (its stream is published here).
    /// Posts waiting for an upstream are numbered at once.
    pub async fn become_sequencer(self: &Arc<Self>, epoch: Arc<str>) {
        let head = self.state().ring.head();
        self.reset(epoch, head).await;
        let pending = {
            let mut st = self.state();
            st.role = Role::Sequencer(Sequencer::new(
                head,
                self.svc.cfg.room_rate,
                self.svc.now_ms(),
            ));
            st.upstream = None;
            st.forwards.drain()
        };
        for p in pending {
            self.submit(p);
        }
        self.uplink.notify_one();
    }

    /// Another agent numbers the room now.
    pub fn become_follower(&self) {
        self.state().role = Role::Follower;
        self.uplink.notify_one();
    }

    /// Refuses posts that waited too long for the upstream.
    pub fn expire_forwards(&self) {
        let timeout = u64::try_from(self.svc.cfg.forward_timeout.as_millis()).unwrap_or(u64::MAX);
        let expired = self.state().forwards.expired(self.svc.now_ms(), timeout);
        for p in expired {
            self.svc.metrics.reject(Reason::UpstreamUnavailable);
            self.answer(&p.origin, Err((Reason::UpstreamUnavailable, 1000)));
        }
    }

    /// Closes every connection with `code`.
    pub fn close_all(&self, code: u16, reason: &str) {
        for m in self.snapshot() {
            m.request_close(code, reason, true, &self.svc.io);
        }
    }
}
