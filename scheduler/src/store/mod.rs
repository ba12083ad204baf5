//! Persistence of the scheduler (DESIGN §9): nodes, versioned weight sets, route table versions
//! per node, events and per-minute telemetry roll-ups.
//!
//! One [`Store`] serves both backends through sqlx's `Any` driver: an SQLite file by default
//! (`sqlite://PATH?mode=rwc`, created if missing, WAL journal, 5 s busy timeout) or PostgreSQL
//! (`postgres://…`). Each backend has its own migration set (`migrations/sqlite`,
//! `migrations/postgres`, embedded in the binary and applied by [`Store::open`]); the queries are
//! shared. Timestamps are unix milliseconds, versions i64, booleans 0/1.
//!
//! Two kinds of writes:
//! - awaited and durable (committed when the call returns): weight sets ([`Store::insert_weights`])
//!   and enrollment ([`Store::upsert_node`]);
//! - fire-and-forget ([`Store::record`]): queued without blocking to one writer task that commits
//!   every 250 ms or 1,000 ops in a single transaction. The hot path lives in memory elsewhere; this
//!   is how it reaches the disk without one write per report. [`Store::flush`] waits for
//!   everything queued so far (shutdown, tests).

mod error;
mod model;
mod queries;
mod writer;

#[cfg(test)]
pub(crate) mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};
use vantage_shared::score::Weights;

pub use error::StoreError;
pub use model::{
    Backend, EventRecord, NodeRecord, Rollup, RouteHead, RouteVersionRecord, WeightSet, WriteOp,
};
pub use writer::{FLUSH_EVERY, MAX_BATCH, QUEUE_CAPACITY, WriteStats};

use error::is_unique_violation;
pub(crate) use error::redact_url as redact;
use error::redact_url;
use writer::{Counters, Msg, Writer};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a connection waits for a locked SQLite database before failing.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// How long a PostgreSQL operation waits for a connection before it fails
/// (the database is unreachable: API writes answer 503, queued writes wait).
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts of `insert_weights` when concurrent writers pick the same version.
const WEIGHT_VERSION_ATTEMPTS: u32 = 16;

/// Handle to the database; cheap to clone. The writer task stops once every clone is dropped,
/// after committing what was queued.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    queue: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects, applies the migrations of the backend and starts the batch writer task.
    /// Must be called inside a tokio runtime.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        let backend = Backend::from_url(url)
            .ok_or_else(|| StoreError::UnsupportedUrl { url: shown.clone() })?;
        sqlx::any::install_default_drivers();

        let open_error = |source: sqlx::Error| StoreError::Open {
            url: shown.clone(),
            source,
        };

        // One direct connection first: it fails fast with the real cause (the pool would retry a
        // refused connection until its acquire timeout and report only "timed out").
        let mut first = AnyConnection::connect(url).await.map_err(open_error)?;
        if backend == Backend::Sqlite {
            // Persistent in the file; set here while no other connection exists (switching to
            // WAL needs an exclusive lock that the busy timeout does not wait for).
            let mode: String = sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_one(&mut first)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(open_error)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(url = %shown, journal_mode = %mode, "SQLite refused WAL mode");
            }
        }
        first.close().await.map_err(open_error)?;

        let options = AnyPoolOptions::new()
            .acquire_timeout(match backend {
                Backend::Sqlite => Duration::from_secs(10),
                // A replica must notice an unreachable database quickly:
                // writes answer 503 and the batch writer waits for it.
                Backend::Postgres => PG_ACQUIRE_TIMEOUT,
            })
            .max_connections(match backend {
                // One writer at a time anyway; a few readers alongside thanks to WAL.
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            });
        let options = match backend {
            Backend::Sqlite => options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        format!(
                            "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                             PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
                        )
                        .as_str(),
                    )
                    .await?;
                    Ok(())
                })
            }),
            Backend::Postgres => options,
        };
        let pool = options.connect(url).await.map_err(open_error)?;

        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                url: shown.clone(),
                source,
            })?;

        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        tokio::spawn(
            Writer {
                pool: pool.clone(),
                rx,
                counters: counters.clone(),
            }
            .run(),
        );
        tracing::info!(url = %shown, backend = backend.as_str(), "store open");
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                queue,
                counters,
            }),
        })
    }

    /// `sqlite://PATH?mode=rwc` (created if missing). `%`, `?` and `#` in the path are escaped.
    pub fn sqlite_url(path: &Path) -> String {
        let mut escaped = String::new();
        for c in path.to_string_lossy().chars() {
            match c {
                '%' => escaped.push_str("%25"),
                '?' => escaped.push_str("%3F"),
                '#' => escaped.push_str("%23"),
                c => escaped.push(c),
            }
        }
        format!("sqlite://{escaped}?mode=rwc")
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// A round trip to the database (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.inner
            .pool
            .execute("SELECT 1")
            .await
            .map_err(StoreError::query("pinging the database"))?;
        Ok(())
    }

    /// Stores a new weight set as version `latest + 1`; committed when this returns.
    pub async fn insert_weights(
        &self,
        weights: &Weights,
        actor: &str,
        comment: &str,
        now_ms: i64,
    ) -> Result<WeightSet, StoreError> {
        weights.validate()?;
        for attempt in 1..=WEIGHT_VERSION_ATTEMPTS {
            // One statement computes max + 1 and inserts: atomic on SQLite (single writer); on
            // PostgreSQL two concurrent writers may pick the same version, the primary key
            // refuses the second and it tries again.
            let result = sqlx::query(queries::INSERT_WEIGHTS)
                .bind(weights.latency)
                .bind(weights.loss)
                .bind(weights.buffer)
                .bind(weights.load)
                .bind(weights.distance)
                .bind(weights.throughput)
                .bind(now_ms)
                .bind(actor)
                .bind(comment)
                .fetch_one(&self.inner.pool)
                .await;
            match result {
                Ok(row) => {
                    let version: i64 = row
                        .try_get("version")
                        .map_err(StoreError::query("reading the new weight set version"))?;
                    return Ok(WeightSet {
                        version: u64::try_from(version).map_err(|_| StoreError::InvalidValue {
                            what: "weight_sets.version",
                            detail: format!("{version} is negative"),
                        })?,
                        weights: *weights,
                        created_at_ms: now_ms,
                        actor: actor.to_owned(),
                        comment: comment.to_owned(),
                    });
                }
                Err(e) if is_unique_violation(&e) => {
                    tracing::debug!(attempt, "weight set version taken concurrently; retrying");
                    // Jitter so that colliding writers spread out.
                    let ms = rand::random_range(1..=5) * u64::from(attempt);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Err(e) => return Err(StoreError::query("inserting a weight set")(e)),
            }
        }
        Err(StoreError::VersionConflict {
            attempts: WEIGHT_VERSION_ATTEMPTS,
        })
    }

    pub async fn latest_weights(&self) -> Result<Option<WeightSet>, StoreError> {
        let row = sqlx::query(&queries::select_weights("LIMIT 1"))
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(StoreError::query("reading the latest weight set"))?;
        row.as_ref().map(queries::weight_set).transpose()
    }

    /// Up to `limit` weight sets, newest first.
    pub async fn weight_history(&self, limit: u32) -> Result<Vec<WeightSet>, StoreError> {
        sqlx::query(&queries::select_weights("LIMIT $1"))
            .bind(i64::from(limit))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("reading the weight set history"))?
            .iter()
            .map(queries::weight_set)
            .collect()
    }

    /// Inserts or updates a node; committed when this returns (enrollment).
    pub async fn upsert_node(&self, rec: &NodeRecord) -> Result<(), StoreError> {
        queries::check_node(rec)?;
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(StoreError::query("upserting a node"))?;
        queries::upsert_node(&mut conn, rec)
            .await
            .map_err(StoreError::query("upserting a node"))
    }

    /// Enrolls a node: inserts it, or fills in the credential of a node
    /// known without one; committed when this returns. `false` when the node
    /// is enrolled already (another replica enrolled it first: the
    /// credential in the store stays, and this enrollment is refused).
    pub async fn enroll_node(&self, rec: &NodeRecord) -> Result<bool, StoreError> {
        queries::check_node(rec)?;
        let done = sqlx::query(queries::ENROLL_NODE)
            .bind(&rec.id)
            .bind(&rec.region)
            .bind(rec.lat)
            .bind(rec.lon)
            .bind(rec.capacity_mbps)
            .bind(&rec.public_url)
            .bind(&rec.probe_addr)
            .bind(rec.credential_hash.as_deref())
            .bind(rec.enrolled_at_ms)
            .bind(rec.last_seen_ms)
            .bind(i64::from(rec.drained))
            .execute(&self.inner.pool)
            .await
            .map_err(StoreError::query("enrolling a node"))?;
        Ok(done.rows_affected() > 0)
    }

    /// One node, if the store knows it (a node enrolled through another
    /// replica).
    pub async fn load_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        sqlx::query(queries::SELECT_NODE)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(StoreError::query("loading a node"))?
            .as_ref()
            .map(queries::node)
            .transpose()
    }

    /// Sets a node's persisted drain flag; committed when this returns (an
    /// operator's drain through any replica holds cluster-wide). `false`
    /// when the node is unknown.
    pub async fn set_drained(&self, id: &str, drained: bool) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE nodes SET drained = $2 WHERE id = $1")
            .bind(id)
            .bind(i64::from(drained))
            .execute(&self.inner.pool)
            .await
            .map_err(StoreError::query("setting a drain"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Ids of the nodes whose drain flag is set.
    pub async fn drained_nodes(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query("SELECT id FROM nodes WHERE drained = 1 ORDER BY id")
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("loading drained nodes"))?
            .iter()
            .map(|r| {
                r.try_get::<String, _>(0)
                    .map_err(StoreError::query("loading drained nodes"))
            })
            .collect()
    }

    /// The version of the latest weight set (0: none).
    pub async fn latest_weights_version(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM weight_sets")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(StoreError::query("reading the weight set version"))?;
        let v: i64 = row
            .try_get(0)
            .map_err(StoreError::query("reading the weight set version"))?;
        Ok(u64::try_from(v).unwrap_or(0))
    }

    /// A cluster-wide setting; when absent, stores `default` first. All
    /// replicas agree: the first writer wins and everyone reads its value.
    pub async fn cluster_setting(
        &self,
        key: &str,
        default: &str,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO cluster_settings (key, value, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(default)
        .bind(now_ms)
        .execute(&self.inner.pool)
        .await
        .map_err(StoreError::query("writing a cluster setting"))?;
        let row = sqlx::query("SELECT value FROM cluster_settings WHERE key = $1")
            .bind(key)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(StoreError::query("reading a cluster setting"))?;
        row.try_get::<String, _>(0)
            .map_err(StoreError::query("reading a cluster setting"))
    }

    /// Sets a cluster-wide setting (insert or replace).
    pub async fn put_cluster_setting(
        &self,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cluster_settings (key, value, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .bind(now_ms)
        .execute(&self.inner.pool)
        .await
        .map_err(StoreError::query("writing a cluster setting"))?;
        Ok(())
    }

    /// Every node, by id.
    pub async fn load_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        sqlx::query(queries::SELECT_NODES)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("loading nodes"))?
            .iter()
            .map(queries::node)
            .collect()
    }

    /// For every node with route versions: the latest one and the highest acknowledged one.
    pub async fn route_heads(&self) -> Result<Vec<RouteHead>, StoreError> {
        sqlx::query(queries::ROUTE_HEADS)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("loading route heads"))?
            .iter()
            .map(queries::route_head)
            .collect()
    }

    /// Up to `limit` route versions of a node, newest first, with their ACK/NACK outcome.
    pub async fn route_history(
        &self,
        node_id: &str,
        limit: u32,
    ) -> Result<Vec<RouteVersionRecord>, StoreError> {
        sqlx::query(queries::ROUTE_HISTORY)
            .bind(node_id)
            .bind(i64::from(limit))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("loading route history"))?
            .iter()
            .map(queries::route_version)
            .collect()
    }

    /// Up to `limit` events, newest first, of one node or of all.
    pub async fn events(
        &self,
        node_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let query = match node_id {
            Some(id) => sqlx::query(queries::SELECT_NODE_EVENTS)
                .bind(id)
                .bind(i64::from(limit)),
            None => sqlx::query(queries::SELECT_EVENTS).bind(i64::from(limit)),
        };
        query
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("loading events"))?
            .iter()
            .map(queries::event)
            .collect()
    }

    /// Roll-ups of a node from `since_minute_ms` on, oldest first.
    pub async fn rollups(
        &self,
        node_id: &str,
        since_minute_ms: i64,
    ) -> Result<Vec<Rollup>, StoreError> {
        sqlx::query(queries::SELECT_ROLLUPS)
            .bind(node_id)
            .bind(since_minute_ms)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("loading roll-ups"))?
            .iter()
            .map(queries::rollup)
            .collect()
    }

    /// Deletes events and roll-ups older than `before_ms`; returns how many rows went.
    pub async fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(StoreError::query("pruning"))?;
        let mut removed = 0;
        for sql in [queries::PRUNE_EVENTS, queries::PRUNE_ROLLUPS] {
            removed += sqlx::query(sql)
                .bind(before_ms)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::query("pruning"))?
                .rows_affected();
        }
        tx.commit().await.map_err(StoreError::query("pruning"))?;
        Ok(removed)
    }

    /// Queues a write for the batch writer. Never blocks: when the queue is full the op is
    /// dropped and counted ([`Store::dropped_writes`]).
    pub fn record(&self, op: WriteOp) {
        if self.inner.queue.try_send(Msg::Op(op)).is_err() {
            let n = self.inner.counters.drop_queue_full();
            // Log the 1st, 2nd, 4th, 8th... drop: visible without flooding the log.
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    capacity = QUEUE_CAPACITY,
                    "database write queue full; dropping writes"
                );
            }
        }
    }

    /// Waits until everything queued before this call is committed. Returns
    /// [`StoreError::WritesLost`] if queued writes were lost since the previous `flush`.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .queue
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Flushes, then closes every connection. Other clones of this `Store` fail afterwards.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        self.inner.pool.close().await;
        flushed
    }

    /// Queued writes that will never be written (queue full, invalid, or lost with a batch).
    pub fn dropped_writes(&self) -> u64 {
        self.inner.counters.dropped_total()
    }

    pub fn write_stats(&self) -> WriteStats {
        let depth = QUEUE_CAPACITY.saturating_sub(self.inner.queue.capacity());
        self.inner.counters.snapshot(depth as u64)
    }
}
