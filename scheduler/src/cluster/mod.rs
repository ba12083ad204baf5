//! Several scheduler replicas on one PostgreSQL database, any one of which
//! may die (docs/operations.md, "Replicas").
//!
//! * **Who plans.** One replica leads at a time. The lease is a row in the
//!   database ([`lease`]) held for `lease_ms` by the database's clock and
//!   renewed every third of that; taking a lapsed lease increments the
//!   *term*. Only the leader steps the plan. It writes every new table
//!   version to the database ([`tables::commit`]) in a transaction that first
//!   checks, under a row lock, that it still holds the lease under its term
//!   (the fence), and announces a table to route streams only once that
//!   commit succeeded. The leader also stops leading on its own clock a
//!   little before the lease can lapse in the database, so after a pause
//!   (SIGSTOP, a VM freeze) it knows at once that it may no longer lead.
//! * **Terms.** Every table carries the term it was planned under; a new
//!   leader gives every table a new version under its term. Agents and
//!   followers refuse tables of an older term than the one they hold, so a
//!   paused or partitioned ex-leader can never overwrite a newer plan.
//! * **Followers** serve the leader's committed tables to the agents whose
//!   route stream they hold: they read what is new in `route_tables` when
//!   the database notifies them (`LISTEN vantage`) and at least every
//!   second, and send deltas computed against what each agent holds.
//! * **The whole world on every replica.** Agents report over QUIC to every
//!   replica they are configured with, so each replica's registry, liveness
//!   and viewer routing work from first-hand data at most one report
//!   interval old; nothing per report goes through the database.
//! * **Writes from any replica.** Weight changes, drains and enrollments are
//!   committed to the database by the replica that takes them and picked up
//!   by the others (notification, then a poll every second). Directory
//!   subscriptions received on a follower's route streams are written to
//!   `route_interest` ([`interest`]) for the leader to plan with.
//!
//! With SQLite (the default) there is one replica: it always leads, under a
//! term kept in the store, and a second scheduler on the same SQLite file is
//! refused at start ([`lock`]).

pub mod interest;
pub mod lease;
pub mod lock;
pub mod metrics;
pub mod replicas;
pub mod sync;
pub mod tables;

#[cfg(test)]
mod tests;

pub use metrics::ClusterMetrics;
pub use tables::StoredTable;

use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What a replica does right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Plans and commits tables (always, with SQLite).
    Leader,
    /// Serves the leader's tables, takes over when its lease lapses.
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

/// The replica's view of the cluster.
#[derive(Debug, Clone)]
pub struct State {
    pub role: Role,
    /// The term this replica leads under, or the latest term it saw.
    pub term: u64,
    /// Until when this replica may act as the leader, by its own clock.
    pub lease_until: Option<Instant>,
    /// The replica the lease row names and how long it has left (ms, the
    /// database's clock; negative: lapsed).
    pub leader_id: String,
    pub leader_remaining_ms: i64,
    /// Since when (unix ms) the role holds.
    pub since_ms: i64,
}

/// How replicas coordinate.
#[derive(Debug)]
pub enum Mode {
    /// SQLite: this is the only replica, always the leader.
    Single,
    /// PostgreSQL: a lease, committed tables, shared subscriptions.
    Replicated(PgPool),
}

/// This replica's membership in the cluster; shared by every component.
#[derive(Debug)]
pub struct Cluster {
    /// `--scheduler-id`: the name other replicas and the dashboard show.
    pub replica_id: String,
    /// Unique per process (replica id and a random suffix): what the lease
    /// row holds, so a restarted replica never mistakes a lease of its
    /// previous life for its own.
    pub holder: String,
    /// Where this replica's HTTP API is reached (dashboard links).
    pub http_url: String,
    pub lease: Duration,
    pub started_at_ms: i64,
    mode: Mode,
    state: Mutex<State>,
    /// Whether the last coordination statement reached the database.
    store_ok: AtomicBool,
    pub metrics: ClusterMetrics,
    /// Tables planned and not yet committed, newest per node.
    outbox: Mutex<HashMap<Arc<str>, Arc<StoredTable>>>,
    pub(crate) outbox_ready: Notify,
    /// Subscription changes of this replica's route streams, waiting to be
    /// written to the database.
    pub(crate) interest: interest::Outbox,
    /// Something changed in the database (a notification): poll now.
    pub(crate) wake: Notify,
    replicas: Mutex<Vec<replicas::ReplicaRow>>,
    /// Commit sequence of the last committed table read (followers).
    pub(crate) table_seq: std::sync::atomic::AtomicI64,
    /// Sequence of the last subscription row read (the leader).
    pub(crate) interest_seq: std::sync::atomic::AtomicI64,
    /// Highest agent term recorded as the lease's floor by this replica.
    floor_noted: std::sync::atomic::AtomicU64,
    /// Route streams open on this replica: node id → stream number.
    streams: Mutex<HashMap<String, u64>>,
    next_stream: std::sync::atomic::AtomicU64,
}

/// What a replica needs to know to join.
#[derive(Debug, Clone)]
pub struct Settings {
    pub replica_id: String,
    pub http_url: String,
    pub lease: Duration,
}

impl Cluster {
    pub fn new(settings: Settings, mode: Mode, term: u64, metrics: ClusterMetrics) -> Self {
        let now = vantage_shared::clock::now_ms();
        let single = matches!(mode, Mode::Single);
        let holder = format!("{}#{:08x}", settings.replica_id, rand::random::<u32>());
        let state = State {
            role: if single { Role::Leader } else { Role::Follower },
            term,
            lease_until: None,
            leader_id: if single {
                settings.replica_id.clone()
            } else {
                String::new()
            },
            leader_remaining_ms: 0,
            since_ms: now,
        };
        metrics.set_state(state.role, term);
        Cluster {
            replica_id: settings.replica_id,
            holder,
            http_url: settings.http_url,
            lease: settings.lease,
            started_at_ms: now,
            mode,
            state: Mutex::new(state),
            store_ok: AtomicBool::new(true),
            metrics,
            outbox: Mutex::new(HashMap::new()),
            outbox_ready: Notify::new(),
            interest: interest::Outbox::default(),
            wake: Notify::new(),
            replicas: Mutex::new(Vec::new()),
            table_seq: std::sync::atomic::AtomicI64::new(0),
            interest_seq: std::sync::atomic::AtomicI64::new(0),
            floor_noted: std::sync::atomic::AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
            next_stream: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A route stream of `node_id` opened here: its number.
    pub fn open_stream(&self, node_id: &str) -> u64 {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_owned(), id);
        id
    }

    /// Route stream `stream` of `node_id` closed.
    pub fn close_stream(&self, node_id: &str, stream: u64) {
        let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if s.get(node_id) == Some(&stream) {
            s.remove(node_id);
        }
        drop(s);
        self.interest.forget(node_id, stream);
    }

    /// The route stream of `node_id` open here, if any.
    pub fn stream_of(&self, node_id: &str) -> Option<u64> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
    }

    /// Whether `term` is higher than any agent term this replica recorded
    /// (and records it): the floor is written once per new term.
    pub(crate) fn note_floor(&self, term: u64) -> bool {
        self.floor_noted.fetch_max(term, Ordering::Relaxed) < term
    }

    /// Route streams open here.
    pub fn route_streams(&self) -> usize {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether replicas coordinate through PostgreSQL.
    pub fn replicated(&self) -> bool {
        matches!(self.mode, Mode::Replicated(_))
    }

    pub(crate) fn pool(&self) -> Option<&PgPool> {
        match &self.mode {
            Mode::Replicated(p) => Some(p),
            Mode::Single => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data: usable after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().clone()
    }

    /// Whether this replica may plan and publish now: always with SQLite;
    /// with PostgreSQL while it holds the lease by its own clock.
    pub fn is_leader(&self) -> bool {
        let st = self.lock();
        match self.mode {
            Mode::Single => true,
            Mode::Replicated(_) => {
                st.role == Role::Leader && st.lease_until.is_some_and(|t| Instant::now() < t)
            }
        }
    }

    pub fn role(&self) -> Role {
        if self.is_leader() {
            Role::Leader
        } else {
            Role::Follower
        }
    }

    pub fn term(&self) -> u64 {
        self.lock().term
    }

    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }

    pub(crate) fn set_store_ok(&self, ok: bool) {
        if self.store_ok.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("the database is reachable again");
            } else {
                tracing::warn!(
                    "the database is unreachable: serving the last state read-only (routes, \
                     /v1/resolve, /play); writes answer 503"
                );
            }
        }
    }

    /// Becomes the leader under `term`, leading until `lease_until`.
    pub(crate) fn lead(&self, term: u64, lease_until: Instant, now_ms: i64) {
        let mut st = self.lock();
        st.role = Role::Leader;
        st.term = term;
        st.lease_until = Some(lease_until);
        st.leader_id = self.replica_id.clone();
        st.since_ms = now_ms;
        self.metrics.set_state(Role::Leader, term);
    }

    /// The lease was renewed: leading until `lease_until`.
    pub(crate) fn extend(&self, lease_until: Instant) {
        self.lock().lease_until = Some(lease_until);
    }

    /// Stops leading (lease lost, lapsed or released). Returns whether this
    /// replica was the leader.
    pub(crate) fn follow(&self, now_ms: i64) -> bool {
        let mut st = self.lock();
        let was = st.role == Role::Leader;
        st.role = Role::Follower;
        st.lease_until = None;
        if was {
            st.since_ms = now_ms;
        }
        self.metrics.set_state(Role::Follower, st.term);
        drop(st);
        self.take_outbox();
        was
    }

    /// What the lease row says (followers: who leads, under which term).
    pub(crate) fn saw_lease(&self, leader_id: &str, term: u64, remaining_ms: i64) {
        let mut st = self.lock();
        st.leader_id = leader_id.to_owned();
        st.leader_remaining_ms = remaining_ms;
        if term > st.term {
            st.term = term;
            self.metrics.set_state(st.role, term);
        }
    }

    /// A new term for the single replica (SQLite) or the leader.
    pub(crate) fn set_term(&self, term: u64) {
        let mut st = self.lock();
        st.term = term;
        self.metrics.set_state(st.role, term);
    }

    /// Queues tables for the committer (newest per node wins).
    pub fn queue_tables(&self, tables: impl IntoIterator<Item = StoredTable>) {
        let mut out = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        for t in tables {
            any = true;
            let newer = out
                .get(&t.node_id)
                .is_none_or(|held| (t.term, t.version) > (held.term, held.version));
            if newer {
                out.insert(t.node_id.clone(), Arc::new(t));
            }
        }
        drop(out);
        if any {
            self.outbox_ready.notify_one();
        }
    }

    /// Takes everything queued for the committer.
    pub(crate) fn take_outbox(&self) -> Vec<Arc<StoredTable>> {
        let mut out = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        out.drain().map(|(_, t)| t).collect()
    }

    /// Puts back tables whose commit failed, unless newer ones were queued
    /// since.
    pub(crate) fn requeue(&self, tables: Vec<Arc<StoredTable>>) {
        let mut out = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        for t in tables {
            let newer_queued = out
                .get(&t.node_id)
                .is_some_and(|held| (held.term, held.version) >= (t.term, t.version));
            if !newer_queued {
                out.insert(t.node_id.clone(), t);
            }
        }
    }

    pub(crate) fn set_replicas(&self, rows: Vec<replicas::ReplicaRow>) {
        *self.replicas.lock().unwrap_or_else(|e| e.into_inner()) = rows;
    }

    /// Every replica's last heartbeat (empty with SQLite, or before the
    /// first heartbeat).
    pub fn replicas(&self) -> Vec<replicas::ReplicaRow> {
        self.replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The lease timings: renew every third of the lease; act as the
    /// leader until four fifths of it passed since the renewal was sent
    /// (the database counts the lease from when it received it, later);
    /// followers try to take a lapsed lease every sixth of it.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    pub fn local_lease(&self) -> Duration {
        self.lease * 4 / 5
    }

    pub fn acquire_every(&self) -> Duration {
        (self.lease / 6).max(Duration::from_millis(50))
    }

    /// The longest a database statement of the coordination loop may take.
    pub fn statement_timeout(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(200))
    }
}

/// This replica's membership: with PostgreSQL, a connection pool of its
/// own for coordination (statements time out instead of hanging on an
/// unreachable database); with SQLite, the single replica under the term
/// kept in the store.
pub async fn join(
    config: &crate::config::Config,
    store: &crate::store::Store,
    prometheus: &mut prometheus_client::registry::Registry,
) -> Result<Cluster, crate::store::StoreError> {
    use crate::store::{Backend, StoreError};
    let metrics = ClusterMetrics::register(prometheus);
    let settings = Settings {
        replica_id: config.scheduler_id.clone(),
        http_url: config.advertise_url.clone(),
        lease: Duration::from_millis(u64::from(config.lease_ms)),
    };
    match store.backend() {
        Backend::Sqlite => {
            let now = vantage_shared::clock::now_ms();
            let term = store
                .cluster_setting("term", "0", now)
                .await?
                .trim()
                .parse()
                .unwrap_or(0);
            Ok(Cluster::new(settings, Mode::Single, term, metrics))
        }
        Backend::Postgres => {
            let url = config.database_url.clone().unwrap_or_default();
            let timeout = (settings.lease / 3).max(Duration::from_millis(200));
            let statement_ms = timeout.as_millis();
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(timeout)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(
                            conn,
                            format!("SET statement_timeout = {statement_ms}").as_str(),
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await
                .map_err(|source| StoreError::Open {
                    url: crate::store::redact(&url),
                    source,
                })?;
            Ok(Cluster::new(settings, Mode::Replicated(pool), 0, metrics))
        }
    }
}

impl Cluster {
    /// Tells the other replicas that something changed (`kind`: weights,
    /// nodes), best effort: they also look every second.
    pub fn notify(&self, kind: &'static str) {
        let Some(pool) = self.pool().cloned() else {
            return;
        };
        tokio::spawn(async move {
            let _ = sqlx::query("SELECT pg_notify('vantage', $1)")
                .bind(kind)
                .execute(&pool)
                .await;
        });
    }
}
