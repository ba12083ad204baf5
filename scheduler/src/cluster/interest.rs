//! Directory subscriptions shared through the database: a replica's route
//! streams receive each node's `subscribe`/`unsubscribe` keys; the replica
//! queues them here ([`Outbox`]) and writes them to `route_interest`, where
//! the leader reads what is new (by sequence number) and plans with it.
//!
//! Writes are serialised by a transaction-level advisory lock, so sequence
//! numbers are committed in order and a reader that saw sequence `s` never
//! later finds a row below `s`. A write that fails (the database is away)
//! stays queued, merged with what comes next, and goes in when it is back.

use sqlx::{PgPool, Row};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Advisory lock key serialising `route_interest` writers.
const WRITE_LOCK: i64 = 0x7661_6e74_0019;

/// A node's subscription changes not yet written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// `add` is the node's whole set (the first request of a stream).
    pub replace: bool,
    pub add: BTreeSet<String>,
    pub remove: BTreeSet<String>,
}

impl Pending {
    /// `self` followed by `next`.
    pub fn then(mut self, next: Pending) -> Pending {
        if next.replace {
            return next;
        }
        for k in next.add {
            self.remove.remove(&k);
            self.add.insert(k);
        }
        for k in next.remove {
            self.add.remove(&k);
            if !self.replace {
                self.remove.insert(k);
            }
        }
        self
    }
}

/// Subscription changes waiting to be written, by node, with the route
/// stream (a number unique in this process) they came from.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: Mutex<HashMap<String, (u64, Pending)>>,
    pub(crate) ready: Notify,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Pending)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn queue(&self, node_id: &str, stream: u64, change: Pending) {
        let mut p = self.lock();
        let merged = match p.remove(node_id) {
            Some((_, old)) => old.then(change),
            None => change,
        };
        p.insert(node_id.to_owned(), (stream, merged));
        drop(p);
        self.ready.notify_one();
    }

    /// Forgets what route stream `stream` queued and could not write yet
    /// once it closed: the agent's next stream, wherever it opens, sends its
    /// whole set again (and a write of the closed stream landing after that
    /// would undo it).
    pub fn forget(&self, node_id: &str, stream: u64) {
        let mut p = self.lock();
        if p.get(node_id).is_some_and(|(s, _)| *s == stream) {
            p.remove(node_id);
        }
    }

    pub fn take(&self) -> Vec<(String, Pending)> {
        self.lock().drain().map(|(n, (_, p))| (n, p)).collect()
    }

    /// Puts back changes whose write failed, before anything queued since
    /// (a stream that closed meanwhile has been forgotten: not put back).
    pub fn requeue(&self, failed: Vec<(String, Pending)>, open: impl Fn(&str) -> Option<u64>) {
        let mut p = self.lock();
        for (node, old) in failed {
            let merged = match p.remove(&node) {
                Some((s, newer)) => Some((s, old.then(newer))),
                None => open(&node).map(|s| (s, old)),
            };
            if let Some(m) = merged {
                p.insert(node, m);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Writes every node's queued changes in one transaction (`writer`: the
/// replica's lease holder id, so the leader can skip its own echoes).
pub async fn write(
    pool: &PgPool,
    writer: &str,
    changes: &[(String, Pending)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut *tx)
        .await?;
    for (node, p) in changes {
        let add: Vec<&str> = p.add.iter().map(String::as_str).collect();
        if p.replace {
            sqlx::query(
                "UPDATE route_interest SET wanted = false, seq = nextval('route_interest_seq'), \
                 writer = $3 WHERE node_id = $1 AND wanted AND NOT (stream = ANY($2::text[]))",
            )
            .bind(node)
            .bind(&add)
            .bind(writer)
            .execute(&mut *tx)
            .await?;
        } else if !p.remove.is_empty() {
            let remove: Vec<&str> = p.remove.iter().map(String::as_str).collect();
            sqlx::query(
                "UPDATE route_interest SET wanted = false, seq = nextval('route_interest_seq'), \
                 writer = $3 WHERE node_id = $1 AND wanted AND stream = ANY($2::text[])",
            )
            .bind(node)
            .bind(&remove)
            .bind(writer)
            .execute(&mut *tx)
            .await?;
        }
        if !add.is_empty() {
            sqlx::query(
                "INSERT INTO route_interest (node_id, stream, wanted, seq, writer) \
                 SELECT $1, s, true, nextval('route_interest_seq'), $3 FROM UNNEST($2::text[]) AS s \
                 ON CONFLICT (node_id, stream) DO UPDATE SET wanted = true, seq = excluded.seq, \
                 writer = excluded.writer WHERE NOT route_interest.wanted",
            )
            .bind(node)
            .bind(&add)
            .bind(writer)
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query("SELECT pg_notify('vantage', 'interest')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// One row of `route_interest` read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestRow {
    pub node_id: String,
    pub stream: String,
    pub wanted: bool,
    pub seq: i64,
    pub writer: String,
}

/// Rows changed after `after_seq`, oldest first.
pub async fn read_after(
    pool: &PgPool,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<InterestRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT node_id, stream, wanted, seq, writer FROM route_interest \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(InterestRow {
                node_id: r.try_get(0)?,
                stream: r.try_get(1)?,
                wanted: r.try_get(2)?,
                seq: r.try_get(3)?,
                writer: r.try_get(4)?,
            })
        })
        .collect()
}

/// Every wanted key by node, and the sequence number they are current at
/// (read first: rows written meanwhile are read again after it, harmlessly).
pub async fn read_all(pool: &PgPool) -> Result<(HashMap<String, Vec<String>>, i64), sqlx::Error> {
    let max: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM route_interest")
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    let rows = sqlx::query("SELECT node_id, stream FROM route_interest WHERE wanted")
        .fetch_all(pool)
        .await?;
    let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
    for r in &rows {
        by_node
            .entry(r.try_get(0)?)
            .or_default()
            .push(r.try_get(1)?);
    }
    Ok((by_node, max))
}

/// Deletes withdrawn keys the leader has read (below `seq`).
pub async fn prune(pool: &PgPool, seq: i64) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM route_interest WHERE NOT wanted AND seq <= $1")
            .bind(seq)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    fn changes(add: &[&str], remove: &[&str]) -> Pending {
        Pending {
            replace: false,
            add: set(add),
            remove: set(remove),
        }
    }

    #[test]
    fn queued_changes_merge_as_if_applied_in_order() {
        let replace = Pending {
            replace: true,
            add: set(&["a", "b"]),
            remove: BTreeSet::new(),
        };
        // A replace then changes: still a replace, of the resulting set.
        let r = replace.clone().then(changes(&["c"], &["a"]));
        assert_eq!(
            r,
            Pending {
                replace: true,
                add: set(&["b", "c"]),
                remove: BTreeSet::new()
            }
        );
        // Changes then a replace: the replace alone.
        assert_eq!(changes(&["x"], &["y"]).then(replace.clone()), replace);
        // Changes then changes: the later one wins per key.
        assert_eq!(
            changes(&["a", "b"], &["c"]).then(changes(&["c"], &["a"])),
            changes(&["b", "c"], &["a"])
        );
    }

    #[test]
    fn a_failed_write_goes_back_before_newer_changes() {
        let o = Outbox::default();
        o.queue("n", 1, changes(&["a"], &[]));
        let taken = o.take();
        o.queue("n", 1, changes(&[], &["a"]));
        o.requeue(taken, |_| Some(1));
        // add a, then remove a: a is removed.
        assert_eq!(o.take(), vec![("n".to_owned(), changes(&[], &["a"]))]);
        assert!(o.is_empty());
        // A closed stream's changes are forgotten, and not put back.
        o.queue("n", 2, changes(&["b"], &[]));
        let taken = o.take();
        o.requeue(taken, |_| None);
        assert!(o.is_empty());
        o.queue("n", 3, changes(&["c"], &[]));
        o.forget("n", 2);
        assert!(!o.is_empty(), "another stream's changes stay");
        o.forget("n", 3);
        assert!(o.is_empty());
    }
}
