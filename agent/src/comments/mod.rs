//! Live comments (danmaku): a WebSocket room per stream key on the media
//! port, `GET /{app}/{stream}/comments` (docs/protocol.md, "Live
//! comments").
//!
//! **Model.** Each room has one *sequencer*, the agent its stream is
//! published on (the route table names no upstream for it and the relay
//! holds it as origin), which numbers posts; every other agent holding the
//! room is a *follower* with one upstream link per room, to the same
//! upstream candidates the video uses (see [`upstream_candidates`]), over
//! which posts go up and numbered comments come down. Every connection of
//! the room on every agent receives the same comments in the sequencer's
//! order, exactly once; reconnecting clients and links resume from their
//! last number out of the room's recent buffer.
//!
//! * [`frame`] — messages, JSON and binary; [`ws`] — WebSocket frames,
//!   upgrade, tungstenite adapter.
//! * [`room`] — one room: buffer ([`ring`]), role ([`sequencer`] or
//!   follower with [`forward`]ed posts), connections ([`member`]), fan-out.
//! * [`conn`] — a client connection's task: reading, posts, heartbeats.
//! * [`link`] — a follower room's upstream link: failover, resume.
//! * [`control`] — signing keys and blocklist from the scheduler.
//! * [`filter`] (blocklist), [`limits`] (rates), [`config`], [`metrics`],
//!   [`report`] (load fields, `/v1/status`).
//!
//! Entry points: [`Comments::new`], [`Comments::run`] (housekeeping), the
//! media server calls [`Comments::accept`] for upgrade requests.

pub mod config;
pub mod conn;
pub mod control;
pub mod filter;
pub mod forward;
pub mod frame;
pub mod limits;
pub mod link;
pub mod member;
pub mod metrics;
pub mod report;
pub mod ring;
pub mod room;
pub mod sequencer;
pub mod ws;

pub use config::CommentsConfig;
pub use metrics::CommentMetrics;

use crate::relay::{Candidate, Relay};
use room::{Role, Room};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use vantage_shared::comment_token::Keys;
use vantage_shared::stream::StreamKey;

/// How often housekeeping runs (idle and slow connections, beats, roles).
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// An empty room is kept this long (its buffer serves reconnects).
const EMPTY_ROOM_LINGER: Duration = Duration::from_secs(30);

/// Keys and blocklist in force (from the scheduler).
#[derive(Debug, Default)]
pub struct Settings {
    pub version: u64,
    pub keys: Keys,
    pub blocklist: filter::Blocklist,
    pub blocklist_version: u64,
}

/// Why a room cannot be had here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// No live stream of that key: not published here, no upstream known.
    NoStream,
    /// The stream comes from a static origin outside the cluster, which
    /// holds no room.
    StaticOrigin,
}

/// The service's state, shared by rooms and connections.
pub struct Shared {
    pub cfg: CommentsConfig,
    pub node_id: String,
    pub metrics: CommentMetrics,
    pub io: member::Io,
    pub shards: usize,
    pub cancel: CancellationToken,
    clock: Instant,
    /// Counters behind the report's rates.
    pub delivered: AtomicU64,
    pub sequenced: AtomicU64,
    pub posts: AtomicU64,
    settings: watch::Sender<Arc<Settings>>,
    relay: Relay,
    rooms: Mutex<HashMap<StreamKey, Arc<Room>>>,
    next_member: AtomicU64,
    next_post: AtomicU64,
    pub connections: AtomicUsize,
    /// Distinguishes this process's post ids from an earlier run's.
    boot: String,
    rates: Mutex<report::Rates>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comments")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Milliseconds of the service's monotonic clock (never 0).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.borrow().clone()
    }

    pub fn next_member_id(&self) -> u64 {
        self.next_member.fetch_add(1, Ordering::Relaxed)
    }

    /// A post id no other post of any agent has.
    pub fn post_id(&self) -> String {
        let n = self.next_post.fetch_add(1, Ordering::Relaxed);
        format!("n/{}/{}/{n}", self.node_id, self.boot)
    }

    pub fn relay(&self) -> &Relay {
        &self.relay
    }
}

/// The live comments service; cheap to clone.
#[derive(Clone, Debug)]
pub struct Comments {
    inner: Arc<Shared>,
}

/// A handle that does not keep the service alive (held by the relay).
#[derive(Clone, Debug)]
pub struct WeakComments(Weak<Shared>);

impl WeakComments {
    pub fn upgrade(&self) -> Option<Comments> {
        self.0.upgrade().map(|inner| Comments { inner })
    }
}

/// The upstream candidates of room `key`: the same the video of `key` is
/// pulled from (route table, else static origin), best first. The one place
/// comments ask for upstreams.
///
/// The route table lists only the streams an agent subscribes to (the
/// on-demand directory): a room subscribes to its key like a play does and
/// keeps it subscribed while it lives. With `wait` (opening a room, a link
/// looking for an upstream) a key the table does not list yet waits for
/// the scheduler's answer like a play (up to 2 s); without (housekeeping),
/// the subscription is only refreshed.
pub(crate) async fn upstream_candidates(
    relay: &Relay,
    key: &StreamKey,
    wait: bool,
) -> Vec<Candidate> {
    if wait {
        relay.await_directory(key, None).await;
    } else {
        relay.interest().want(key);
    }
    relay.candidates(key)
}

/// Whether `key` is published on this agent (its origin).
fn published_here(relay: &Relay, key: &StreamKey) -> bool {
    relay
        .streams()
        .iter()
        .any(|s| &s.key == key && s.role() == crate::relay::stream::Role::Origin)
}

/// The candidates that are agents (a static origin holds no room).
fn agent_candidates(cands: Vec<Candidate>) -> (Vec<Candidate>, bool) {
    let total = cands.len();
    let agents: Vec<Candidate> = cands.into_iter().filter(|c| c.label != c.url).collect();
    let static_only = total > 0 && agents.is_empty();
    (agents, static_only)
}

impl Comments {
    pub fn new(
        cfg: CommentsConfig,
        node_id: impl Into<String>,
        relay: Relay,
        metrics: CommentMetrics,
    ) -> Comments {
        let shards = std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .clamp(2, 16)
            * 2;
        let now = Instant::now();
        let io = member::Io {
            bytes_out: metrics.write_bytes.clone(),
            writes: metrics.writes.clone(),
        };
        Comments {
            inner: Arc::new(Shared {
                cfg,
                node_id: node_id.into(),
                metrics,
                io,
                shards,
                cancel: CancellationToken::new(),
                clock: now,
                delivered: AtomicU64::new(0),
                sequenced: AtomicU64::new(0),
                posts: AtomicU64::new(0),
                settings: watch::Sender::new(Arc::new(Settings::default())),
                relay,
                rooms: Mutex::new(HashMap::new()),
                next_member: AtomicU64::new(1),
                next_post: AtomicU64::new(1),
                connections: AtomicUsize::new(0),
                boot: format!("{:x}", vantage_shared::clock::now_ms()),
                rates: Mutex::new(report::Rates::new(now)),
            }),
        }
    }

    pub fn downgrade(&self) -> WeakComments {
        WeakComments(Arc::downgrade(&self.inner))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner
    }

    pub fn config(&self) -> &CommentsConfig {
        &self.inner.cfg
    }

    /// Replaces keys and blocklist (from the scheduler or disk).
    pub fn set_settings(&self, s: Settings) {
        let m = &self.inner.metrics;
        m.settings_version
            .set(i64::try_from(s.version).unwrap_or(i64::MAX));
        m.blocklist_patterns
            .set(i64::try_from(s.blocklist.len()).unwrap_or(i64::MAX));
        self.inner.settings.send_replace(Arc::new(s));
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.inner.settings()
    }

    /// Comment connections open now.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// The room of `key`, created (with its flusher, and its upstream link
    /// on a follower) when absent.
    pub async fn room(&self, key: &StreamKey) -> Result<Arc<Room>, NoRoom> {
        if let Some(r) = lock(&self.inner.rooms).get(key) {
            return Ok(r.clone());
        }
        let relay = &self.inner.relay;
        let (agents, static_only) = agent_candidates(upstream_candidates(relay, key, true).await);
        let role = if !agents.is_empty() {
            Role::Follower
        } else if published_here(relay, key) {
            Role::Sequencer(sequencer::Sequencer::new(
                0,
                self.inner.cfg.room_rate,
                self.inner.now_ms(),
            ))
        } else if static_only {
            return Err(NoRoom::StaticOrigin);
        } else {
            return Err(NoRoom::NoStream);
        };
        let follower = matches!(role, Role::Follower);
        let epoch: Arc<str> = if follower {
            Arc::from("")
        } else {
            self.new_epoch()
        };
        let mut rooms = lock(&self.inner.rooms);
        if let Some(r) = rooms.get(key) {
            return Ok(r.clone());
        }
        let room = Arc::new(Room::new(key.clone(), self.inner.clone(), role, epoch));
        rooms.insert(key.clone(), room.clone());
        self.inner
            .metrics
            .rooms
            .set(i64::try_from(rooms.len()).unwrap_or(i64::MAX));
        drop(rooms);
        info!(room = %key, role = if follower { "follower" } else { "sequencer" }, "comment room opened");
        tokio::spawn(flusher(room.clone()));
        if follower {
            tokio::spawn(link::run(self.clone(), room.clone()));
        }
        Ok(room)
    }

    /// A new epoch name for a room this agent starts numbering.
    pub(crate) fn new_epoch(&self) -> Arc<str> {
        Arc::from(format!(
            "{}-{}",
            self.inner.node_id,
            vantage_shared::clock::now_ms()
        ))
    }

    pub(crate) fn rooms(&self) -> Vec<Arc<Room>> {
        lock(&self.inner.rooms).values().cloned().collect()
    }

    /// Housekeeping until `cancel`: idle and slow connections, the
    /// sequencer's beats, role changes, expired forwards, empty rooms.
    /// Then every connection is closed with 1001.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let beat = last_beat.elapsed() >= self.inner.cfg.beat_interval;
            if beat {
                last_beat = Instant::now();
            }
            for room in self.rooms() {
                self.housekeep(&room, beat).await;
            }
        }
        for room in self.rooms() {
            room.close_all(ws::close::GOING_AWAY, "agent shutting down");
        }
        // Let connection tasks send their close frames.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.inner.cancel.cancel();
    }

    async fn housekeep(&self, room: &Arc<Room>, beat: bool) {
        let svc = &self.inner;
        let now = svc.now_ms();
        let idle = u64::try_from(svc.cfg.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let write = u64::try_from(svc.cfg.write_timeout.as_millis()).unwrap_or(u64::MAX);
        // Idle and slow connections: a scan of atomics under each shard's
        // lock (no reference taken, no outbox lock), closes after it.
        let idle_or_slow = |m: &member::Member| {
            m.closing().is_none()
                && (now.saturating_sub(m.last_rx_ms()) > idle
                    || m.blocked_since_ms()
                        .is_some_and(|t| now.saturating_sub(t) > write))
        };
        for m in room.select(idle_or_slow) {
            if now.saturating_sub(m.last_rx_ms()) > idle {
                svc.metrics.close("idle");
                m.request_close(ws::close::IDLE, "idle timeout: no heartbeat", true, &svc.io);
            } else {
                svc.metrics.close("slow_reader");
                m.request_close(ws::close::SLOW, "slow reader", false, &svc.io);
            }
        }
        {
            let mut st = room.state();
            st.ring.trim(vantage_shared::clock::now_ms());
        }
        room.expire_forwards();
        let sequencer = room.is_sequencer();
        if sequencer && beat {
            room.beat();
        }
        // Role: the route table may now name an upstream for a room this
        // agent numbers (the stream moved), or none for a follower whose
        // stream is now published here.
        let (agents, _) = agent_candidates(upstream_candidates(&svc.relay, &room.key, false).await);
        if sequencer && !agents.is_empty() {
            info!(room = %room.key, "the stream's origin is elsewhere now: following it");
            room.become_follower();
            tokio::spawn(link::run(self.clone(), room.clone()));
        } else if !sequencer && agents.is_empty() && published_here(&svc.relay, &room.key) {
            info!(room = %room.key, "the stream is published here now: numbering its comments");
            room.become_sequencer(self.new_epoch()).await;
        }
        if let Some(since) = room.empty_since_ms()
            && now.saturating_sub(since)
                > u64::try_from(EMPTY_ROOM_LINGER.as_millis()).unwrap_or(u64::MAX)
        {
            let mut rooms = lock(&svc.rooms);
            if rooms.get(&room.key).is_some_and(|r| Arc::ptr_eq(r, room)) && room.members() == 0 {
                rooms.remove(&room.key);
                svc.metrics
                    .rooms
                    .set(i64::try_from(rooms.len()).unwrap_or(i64::MAX));
                drop(rooms);
                room.cancel.cancel();
                debug!(room = %room.key, "empty comment room closed");
            }
        }
    }
}

/// A room's flusher: one batch per coalescing window at most; the first
/// comment after a quiet window goes out at once. A follower passes its
/// upstream's batches on as they come (they were coalesced at the
/// sequencer: one window end to end, not one per hop).
async fn flusher(room: Arc<Room>) {
    let mut last: Option<Instant> = None;
    while room.wait_for_comments().await {
        let window = if room.is_sequencer() {
            room.svc.cfg.coalesce
        } else {
            Duration::ZERO
        };
        if let Some(l) = last {
            let due = l + window;
            if due > Instant::now() {
                tokio::select! {
                    _ = room.cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
        }
        last = Some(Instant::now());
        room.flush().await;
    }
}
