//! Store tests. Every scenario runs against SQLite (temp dir) and against PostgreSQL when
//! `VANTAGE_TEST_POSTGRES_URL` names a server where we may create databases
//! (`source scripts/postgres.sh` starts one). Each PostgreSQL test creates its own database
//! `vantage_t_<random>` and drops it at the end. Without the variable the PostgreSQL tests print
//! "SKIPPED: ..." and pass, unless `CI=true`, where they fail.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, Row};
use vantage_shared::score::Weights;

use super::*;

// ---- harness ---------------------------------------------------------------------------------

const PG_ENV: &str = "VANTAGE_TEST_POSTGRES_URL";

pub(crate) struct TestDb {
    pub(crate) url: String,
    _dir: Option<tempfile::TempDir>,
    /// (admin URL, database name) of a PostgreSQL database to drop at the end.
    pg: Option<(String, String)>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb {
            url: Store::sqlite_url(&dir.path().join("vantage.db")),
            _dir: Some(dir),
            pg: None,
        }
    }

    pub(crate) async fn postgres() -> Option<TestDb> {
        let admin = match std::env::var(PG_ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "{PG_ENV} not set while CI=true: PostgreSQL tests must run in CI \
                         (source scripts/postgres.sh first)"
                    );
                }
                eprintln!("SKIPPED: {PG_ENV} not set");
                return None;
            }
        };
        sqlx::any::install_default_drivers();
        let name = format!("vantage_t_{:016x}", rand::random::<u64>());
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}: {e}"));
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        conn.close().await.unwrap();
        Some(TestDb {
            url: with_database(&admin, &name),
            _dir: None,
            pg: Some((admin, name)),
        })
    }
}

/// Drops the PostgreSQL database, also when the test panicked (on a thread of its own: `Drop`
/// cannot await, and may run inside the test's runtime).
impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = sqlx::AnyConnection::connect(&admin).await?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("could not drop the test database: {dropped:?}");
        }
    }
}

/// `postgres://u@h:p/db?x` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs one scenario (`async fn(&str)` taking a database URL) on both backends.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn sqlite() {
                let db = super::TestDb::sqlite();
                super::$scenario(&db.url).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(db) = super::TestDb::postgres().await else { return };
                super::$scenario(&db.url).await;
            }
        }
    )*};
}

on_both_backends!(
    reopen_keeps_data_and_migrations_are_idempotent,
    weight_versions_increase_and_persist,
    concurrent_weight_inserts_get_unique_versions,
    route_heads_report_latest_and_acked_versions,
    a_plan_worth_of_versions_and_acks_spans_statements,
    recorded_writes_persist_after_flush,
    many_records_few_transactions,
    full_queue_drops_and_counts,
    invalid_ops_are_dropped_and_reported,
    failed_batch_is_retried_then_dropped_and_writer_continues,
    cluster_settings_first_writer_wins,
    cluster_settings_put_replaces_for_every_replica,
);

async fn cluster_settings_first_writer_wins(url: &str) {
    let a = Store::open(url).await.unwrap();
    let b = Store::open(url).await.unwrap();
    let first = a.cluster_setting("probe_key", "aaaa", 1).await.unwrap();
    let second = b.cluster_setting("probe_key", "bbbb", 2).await.unwrap();
    assert_eq!(first, "aaaa");
    assert_eq!(second, "aaaa", "a second replica reads the first value");
    a.close().await.unwrap();
    b.close().await.unwrap();
    let again = Store::open(url).await.unwrap();
    assert_eq!(
        again.cluster_setting("probe_key", "cccc", 3).await.unwrap(),
        "aaaa"
    );
    again.close().await.unwrap();
}

async fn cluster_settings_put_replaces_for_every_replica(url: &str) {
    let a = Store::open(url).await.unwrap();
    let b = Store::open(url).await.unwrap();
    a.put_cluster_setting("comment_blocklist", "one", 1)
        .await
        .unwrap();
    assert_eq!(
        b.cluster_setting("comment_blocklist", "default", 2)
            .await
            .unwrap(),
        "one"
    );
    b.put_cluster_setting("comment_blocklist", "two", 3)
        .await
        .unwrap();
    assert_eq!(
        a.cluster_setting("comment_blocklist", "default", 4)
            .await
            .unwrap(),
        "two"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

fn node(id: &str, credential: Option<&str>, seen: i64) -> NodeRecord {
    NodeRecord {
        id: id.to_owned(),
        region: "eu-west".to_owned(),
        lat: 48.85,
        lon: 2.35,
        capacity_mbps: 1000.0,
        public_url: format!("http://{id}.example:8080"),
        probe_addr: "127.0.0.1:7500".to_owned(),
        credential_hash: credential.map(str::to_owned),
        enrolled_at_ms: 1_000,
        last_seen_ms: seen,
        drained: false,
    }
}

fn event(at_ms: i64, node_id: &str, kind: &str) -> WriteOp {
    WriteOp::Event(EventRecord {
        at_ms,
        node_id: node_id.to_owned(),
        kind: kind.to_owned(),
        detail: format!("{kind} at {at_ms}"),
    })
}

fn weights(latency: f64) -> Weights {
    Weights {
        latency,
        ..Weights::default()
    }
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(&store.inner.pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

// ---- scenarios (both backends) ---------------------------------------------------------------

async fn reopen_keeps_data_and_migrations_are_idempotent(url: &str) {
    let store = Store::open(url).await.unwrap();
    store.ping().await.unwrap();
    store
        .insert_weights(&weights(0.5), "alice", "first", 10)
        .await
        .unwrap();
    store
        .upsert_node(&node("edge-1", Some("h1"), 20))
        .await
        .unwrap();
    store.record(event(30, "edge-1", "up"));
    store.close().await.unwrap();
    drop(store);

    // Second open runs the migrator again: nothing re-applied, nothing lost.
    let store = Store::open(url).await.unwrap();
    let migrations = count(&store, "SELECT COUNT(*) FROM _sqlx_migrations").await;
    let expected = match store.backend() {
        Backend::Sqlite => SQLITE_MIGRATIONS.iter().count(),
        Backend::Postgres => POSTGRES_MIGRATIONS.iter().count(),
    };
    assert_eq!(migrations, expected as i64);
    assert_eq!(
        store.latest_weights().await.unwrap().unwrap().comment,
        "first"
    );
    assert_eq!(
        store.load_nodes().await.unwrap(),
        vec![node("edge-1", Some("h1"), 20)]
    );
    assert_eq!(store.events(None, 10).await.unwrap().len(), 1);
    store.close().await.unwrap();

    // And a third time, concurrently with a live handle.
    let a = Store::open(url).await.unwrap();
    let b = Store::open(url).await.unwrap();
    assert_eq!(a.load_nodes().await.unwrap().len(), 1);
    assert_eq!(b.load_nodes().await.unwrap().len(), 1);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

async fn weight_versions_increase_and_persist(url: &str) {
    let store = Store::open(url).await.unwrap();
    assert_eq!(store.latest_weights().await.unwrap(), None);
    assert!(store.weight_history(10).await.unwrap().is_empty());

    for (i, latency) in [0.1, 0.2, 0.3].into_iter().enumerate() {
        let set = store
            .insert_weights(
                &weights(latency),
                "ops",
                &format!("change {i}"),
                100 + i as i64,
            )
            .await
            .unwrap();
        assert_eq!(set.version, i as u64 + 1);
        assert_eq!(set.weights.latency, latency);
    }

    // Refused weights neither fail later reads nor consume a version.
    let zero = Weights {
        latency: 0.0,
        loss: 0.0,
        buffer: 0.0,
        load: 0.0,
        distance: 0.0,
        throughput: 0.0,
    };
    assert!(matches!(
        store.insert_weights(&zero, "ops", "bad", 1).await,
        Err(StoreError::InvalidWeights(_))
    ));

    let history = store.weight_history(2).await.unwrap();
    assert_eq!(
        history.iter().map(|w| w.version).collect::<Vec<_>>(),
        vec![3, 2],
        "newest first, limited"
    );
    assert_eq!(history[1].comment, "change 1");
    assert_eq!(history[1].created_at_ms, 101);
    assert_eq!(history[1].actor, "ops");

    // Durable: another handle sees it without the first being closed.
    let other = Store::open(url).await.unwrap();
    let latest = other.latest_weights().await.unwrap().unwrap();
    assert_eq!(latest.version, 3);
    assert_eq!(latest.weights, weights(0.3));
    other.close().await.unwrap();
    store.close().await.unwrap();

    let store = Store::open(url).await.unwrap();
    assert_eq!(store.latest_weights().await.unwrap().unwrap(), latest);
    let next = store
        .insert_weights(&weights(0.9), "ops", "after reopen", 500)
        .await
        .unwrap();
    assert_eq!(next.version, 4);
    assert_eq!(store.weight_history(100).await.unwrap().len(), 4);
    store.close().await.unwrap();
}

async fn concurrent_weight_inserts_get_unique_versions(url: &str) {
    let a = Store::open(url).await.unwrap();
    let b = Store::open(url).await.unwrap(); // a second "replica"
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                s.insert_weights(
                    &weights(0.1 + f64::from(i) / 100.0),
                    "race",
                    "",
                    i64::from(i),
                )
                .await
                .unwrap()
                .version
            })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for t in tasks {
        assert!(versions.insert(t.await.unwrap()), "duplicate version");
    }
    assert_eq!(versions, (1..=12).collect::<BTreeSet<u64>>());
    assert_eq!(a.latest_weights().await.unwrap().unwrap().version, 12);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

async fn route_heads_report_latest_and_acked_versions(url: &str) {
    let store = Store::open(url).await.unwrap();
    assert!(store.route_heads().await.unwrap().is_empty());
    let version = |node: &str, v: u64, hash: &str| WriteOp::RouteVersion {
        node_id: node.to_owned(),
        version: v,
        hash: hash.to_owned(),
        created_at_ms: 1_000 + v as i64,
    };
    store.record(version("a", 1, "h1"));
    store.record(version("a", 2, "h2"));
    store.record(version("b", 1, "b1"));
    store.record(WriteOp::RouteAck {
        node_id: "a".into(),
        version: 1,
        at_ms: 2_001,
    });
    store.record(version("a", 3, "h3"));
    store.record(version("a", 2, "other")); // duplicate: ignored
    store.record(WriteOp::RouteAck {
        node_id: "a".into(),
        version: 2,
        at_ms: 2_002,
    });
    store.record(WriteOp::RouteNack {
        node_id: "a".into(),
        version: 3,
        at_ms: 2_003,
        detail: "stream pattern invalid".into(),
    });
    store.record(WriteOp::RouteAck {
        node_id: "ghost".into(),
        version: 7,
        at_ms: 2_004,
    }); // unknown version: no effect, no error
    store.flush().await.unwrap();

    let heads = store.route_heads().await.unwrap();
    assert_eq!(
        heads,
        vec![
            RouteHead {
                node_id: "a".into(),
                version: 3,
                hash: "h3".into(),
                acked_version: 2,
            },
            RouteHead {
                node_id: "b".into(),
                version: 1,
                hash: "b1".into(),
                acked_version: 0,
            },
        ]
    );

    let history = store.route_history("a", 10).await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0].version, 3);
    assert_eq!(history[0].nacked_at_ms, Some(2_003));
    assert_eq!(
        history[0].nack_detail.as_deref(),
        Some("stream pattern invalid")
    );
    assert_eq!(history[0].acked_at_ms, None);
    assert_eq!(
        history[1].hash, "h2",
        "duplicate version kept the first hash"
    );
    assert_eq!(history[1].acked_at_ms, Some(2_002));
    store.close().await.unwrap();

    let store = Store::open(url).await.unwrap();
    assert_eq!(store.route_heads().await.unwrap(), heads, "persisted");
    store.close().await.unwrap();
}

/// 700 nodes × 2 versions and their ACKs in one flush: more rows than one
/// multi-row statement holds, repeated ACKs, and an ACK of a version that
/// arrives in a later batch.
async fn a_plan_worth_of_versions_and_acks_spans_statements(url: &str) {
    let store = Store::open(url).await.unwrap();
    const NODES: usize = 700;
    for v in 1..=2u64 {
        for n in 0..NODES {
            store.record(WriteOp::RouteVersion {
                node_id: format!("n{n:04}"),
                version: v,
                hash: format!("h{n}-{v}"),
                created_at_ms: v as i64,
            });
        }
    }
    for n in 0..NODES {
        // Version 2 ACKed by the even nodes, twice (the later time wins).
        let acked = if n % 2 == 0 { 2 } else { 1 };
        for at in [10, 20] {
            store.record(WriteOp::RouteAck {
                node_id: format!("n{n:04}"),
                version: acked,
                at_ms: at,
            });
        }
    }
    store.flush().await.unwrap();
    let heads = store.route_heads().await.unwrap();
    assert_eq!(heads.len(), NODES);
    for (n, h) in heads.iter().enumerate() {
        assert_eq!(h.node_id, format!("n{n:04}"));
        assert_eq!(h.version, 2);
        assert_eq!(h.hash, format!("h{n}-2"));
        assert_eq!(h.acked_version, if n % 2 == 0 { 2 } else { 1 });
    }
    let history = store.route_history("n0000", 10).await.unwrap();
    assert_eq!(history[0].acked_at_ms, Some(20), "last ACK time kept");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM route_versions").await,
        2 * NODES as i64
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM route_versions WHERE acked_at_ms IS NOT NULL"
        )
        .await,
        NODES as i64
    );
    store.close().await.unwrap();
}

async fn recorded_writes_persist_after_flush(url: &str) {
    let store = Store::open(url).await.unwrap();
    // Enrollment is durable and awaited.
    store
        .upsert_node(&node("n1", Some("cred-1"), 100))
        .await
        .unwrap();

    // Re-announcement without credential keeps it; fields are updated.
    let mut info = node("n1", None, 150);
    info.region = "us-east".into();
    info.drained = true;
    store.record(WriteOp::NodeInfo(info));
    store.record(WriteOp::NodeInfo(node("n2", None, 50)));
    store.record(WriteOp::NodeSeen {
        node_id: "n1".into(),
        at_ms: 400,
    });
    store.record(WriteOp::NodeSeen {
        node_id: "n1".into(),
        at_ms: 300, // older: must not move last_seen back
    });
    store.record(WriteOp::NodeSeen {
        node_id: "n2".into(),
        at_ms: 60,
    });
    store.record(WriteOp::NodeSeen {
        node_id: "unknown".into(),
        at_ms: 60,
    });
    for (t, n, k) in [
        (10, "n1", "up"),
        (20, "n2", "up"),
        (30, "n1", "drain"),
        (40, "n2", "down"),
    ] {
        store.record(event(t, n, k));
    }
    let rollup = |reports: u32, viewers_max: u32| Rollup {
        node_id: "n1".into(),
        minute_ms: 60_000,
        reports,
        cpu_avg: 0.25,
        utilisation_avg: 0.5,
        egress_mbps_avg: 120.5,
        viewers_max,
    };
    store.record(WriteOp::Rollup(rollup(30, 10)));
    store.record(WriteOp::Rollup(rollup(60, 12))); // same minute: replaces
    store.flush().await.unwrap();
    store.close().await.unwrap();

    let store = Store::open(url).await.unwrap();
    let nodes = store.load_nodes().await.unwrap();
    assert_eq!(nodes.len(), 2, "unknown node not created by NodeSeen");
    let n1 = &nodes[0];
    assert_eq!(n1.id, "n1");
    assert_eq!(n1.credential_hash.as_deref(), Some("cred-1"));
    assert_eq!(n1.region, "us-east");
    assert!(n1.drained);
    assert_eq!(n1.last_seen_ms, 400);
    assert_eq!(nodes[1].last_seen_ms, 60);
    assert_eq!(nodes[1].credential_hash, None);

    // A new credential replaces the old one.
    store
        .upsert_node(&node("n1", Some("cred-2"), 0))
        .await
        .unwrap();
    let n1 = store.load_nodes().await.unwrap().remove(0);
    assert_eq!(n1.credential_hash.as_deref(), Some("cred-2"));
    assert_eq!(n1.last_seen_ms, 400, "last_seen never goes back");

    let all = store.events(None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        vec![40, 30, 20, 10],
        "newest first"
    );
    assert_eq!(all[1].detail, "drain at 30");
    let n1_events = store.events(Some("n1"), 1).await.unwrap();
    assert_eq!(n1_events.len(), 1);
    assert_eq!(n1_events[0].kind, "drain");

    assert_eq!(store.rollups("n1", 0).await.unwrap(), vec![rollup(60, 12)]);
    assert!(store.rollups("n1", 120_000).await.unwrap().is_empty());

    assert_eq!(
        store.prune(35).await.unwrap(),
        3,
        "the 3 events older than 35 ms"
    );
    assert_eq!(store.events(None, 10).await.unwrap().len(), 1);
    assert_eq!(store.rollups("n1", 0).await.unwrap().len(), 1);
    assert_eq!(
        store.prune(60_001).await.unwrap(),
        2,
        "last event + the roll-up"
    );
    assert!(store.rollups("n1", 0).await.unwrap().is_empty());
    store.close().await.unwrap();
}

async fn many_records_few_transactions(url: &str) {
    let store = Store::open(url).await.unwrap();
    const N: usize = 3_000;
    for i in 0..N {
        store.record(event(i as i64, &format!("n{}", i % 7), "report"));
        store.record(WriteOp::NodeSeen {
            node_id: format!("n{}", i % 7),
            at_ms: i as i64,
        });
    }
    store.flush().await.unwrap();
    let stats = store.write_stats();
    assert_eq!(stats.ops_written, 2 * N as u64);
    assert_eq!(stats.ops_dropped, 0);
    assert_eq!(stats.queue_depth, 0);
    assert!(
        stats.batches >= (2 * N / MAX_BATCH) as u64 && stats.batches <= 20,
        "{} ops in {} transactions",
        stats.ops_written,
        stats.batches
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, N as i64);

    // An idle writer commits nothing; a lone write is committed within a tick without flush.
    let before = store.write_stats().batches;
    store.record(event(-1, "n0", "lonely"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.write_stats().batches == before {
        assert!(Instant::now() < deadline, "lone write never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.write_stats().batches, before + 1);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM events").await,
        N as i64 + 1
    );
    store.close().await.unwrap();
}

async fn full_queue_drops_and_counts(url: &str) {
    let store = Store::open(url).await.unwrap();
    // Single-threaded test runtime: the writer cannot run while this loop does not yield, so
    // exactly QUEUE_CAPACITY ops fit and the rest are dropped, without blocking.
    let extra = 25;
    let started = Instant::now();
    for i in 0..QUEUE_CAPACITY + extra {
        store.record(WriteOp::NodeSeen {
            node_id: format!("n{}", i % 10),
            at_ms: i as i64,
        });
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "record must not block"
    );
    assert_eq!(store.dropped_writes(), extra as u64);
    let stats = store.write_stats();
    assert_eq!(stats.ops_dropped_queue_full, extra as u64);
    assert_eq!(stats.queue_depth, QUEUE_CAPACITY as u64);

    store.flush().await.unwrap();
    let stats = store.write_stats();
    assert_eq!(stats.ops_written, QUEUE_CAPACITY as u64);
    assert_eq!(stats.ops_dropped, extra as u64);
    store.close().await.unwrap();
}

async fn invalid_ops_are_dropped_and_reported(url: &str) {
    let store = Store::open(url).await.unwrap();
    store.record(event(1, "n1", "up"));
    store.record(WriteOp::Rollup(Rollup {
        node_id: "n1".into(),
        minute_ms: 0,
        reports: 1,
        cpu_avg: f64::NAN,
        utilisation_avg: 0.0,
        egress_mbps_avg: 0.0,
        viewers_max: 0,
    }));
    store.record(WriteOp::RouteVersion {
        node_id: "n1".into(),
        version: u64::MAX,
        hash: "h".into(),
        created_at_ms: 0,
    });
    store.record(event(2, "n1", "down"));
    match store.flush().await {
        Err(StoreError::WritesLost { ops: 2, last_error }) => {
            assert!(last_error.contains("route version"), "{last_error}")
        }
        other => panic!("expected 2 lost writes, got {other:?}"),
    }
    assert_eq!(store.dropped_writes(), 2);
    assert_eq!(
        store.events(None, 10).await.unwrap().len(),
        2,
        "valid ops written"
    );
    store.flush().await.unwrap(); // losses are reported once

    let mut bad = node("n1", None, 0);
    bad.lat = f64::NAN;
    assert!(matches!(
        store.upsert_node(&bad).await,
        Err(StoreError::InvalidValue {
            what: "node.lat",
            ..
        })
    ));
    store.close().await.unwrap();
}

async fn failed_batch_is_retried_then_dropped_and_writer_continues(url: &str) {
    let store = Store::open(url).await.unwrap();
    store.upsert_node(&node("n1", None, 0)).await.unwrap();
    sqlx::query("DROP TABLE events")
        .execute(&store.inner.pool)
        .await
        .unwrap();
    store.record(event(1, "n1", "up"));
    store.record(event(2, "n1", "down"));
    match store.flush().await {
        Err(StoreError::WritesLost { ops: 2, .. }) => {}
        other => panic!("expected the batch to be lost, got {other:?}"),
    }
    let stats = store.write_stats();
    assert_eq!(stats.batch_errors, 2, "one attempt + one retry");
    assert_eq!(stats.ops_dropped_failed, 2);
    assert!(
        stats.last_error.as_deref().unwrap_or("").contains("events"),
        "{stats:?}"
    );

    // The writer keeps going.
    store.record(WriteOp::NodeSeen {
        node_id: "n1".into(),
        at_ms: 99,
    });
    store.flush().await.unwrap();
    assert_eq!(store.load_nodes().await.unwrap()[0].last_seen_ms, 99);
    store.close().await.unwrap();
}

// ---- SQLite specifics ------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd ?#% name.db");
    let store = Store::open(&Store::sqlite_url(&path)).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(path.is_file(), "database created at the exact path");
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&store.inner.pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let busy: i64 = sqlx::query("PRAGMA busy_timeout")
        .fetch_one(&store.inner.pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    assert_eq!(busy, SQLITE_BUSY_TIMEOUT_MS as i64);
    store.close().await.unwrap();
}

#[tokio::test]
async fn open_errors_say_what_failed() {
    let err = Store::open("mysql://localhost/x").await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let url = Store::sqlite_url(&dir.path().join("missing-dir").join("v.db"));
    let err = Store::open(&url).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot open database URL {url}: ")),
        "{msg}"
    );

    // Nothing listens on port 1; the password must not leak into the message.
    let err = Store::open("postgres://vantage:s3cret@127.0.0.1:1/vantage")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot open database URL postgres://vantage:***@127.0.0.1:1/vantage: "),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"));
    assert!(err.is_transient(), "connection refused is worth retrying");
}

#[test]
fn backend_from_url() {
    assert_eq!(Backend::from_url("sqlite://a.db"), Some(Backend::Sqlite));
    assert_eq!(Backend::from_url("sqlite::memory:"), Some(Backend::Sqlite));
    assert_eq!(
        Backend::from_url("postgres://h/db"),
        Some(Backend::Postgres)
    );
    assert_eq!(
        Backend::from_url("postgresql://h/db"),
        Some(Backend::Postgres)
    );
    assert_eq!(Backend::from_url("mysql://h/db"), None);
}

#[test]
fn database_name_replacement() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:54329/postgres", "t1"),
        "postgres://postgres@127.0.0.1:54329/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "t2"),
        "postgres://u:p@h/t2?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "t3"),
        "postgres://h:5432/t3"
    );
}
