//! Route tables in the database: the leader commits every new version of a
//! node's whole table (`route_tables`, the latest per node, plus the
//! `route_versions` history) behind the lease fence; followers read what is
//! new by commit sequence.

use prost::Message;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use vantage_proto::v1::RouteTable;

/// One node's whole table at one (term, version), as committed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTable {
    pub node_id: Arc<str>,
    pub term: u64,
    pub version: u64,
    /// Content hash (the planning session's; 16 hex digits in the store).
    pub hash: u64,
    /// The whole table (`base_version` 0, no nonce).
    pub table: Arc<RouteTable>,
}

impl StoredTable {
    pub fn new(mut table: RouteTable, hash: u64) -> Self {
        table.base_version = 0;
        table.nonce.clear();
        StoredTable {
            node_id: Arc::from(table.node_id.as_str()),
            term: table.term,
            version: table.version,
            hash,
            table: Arc::new(table),
        }
    }

    /// `(term, version)`: what orders a node's tables.
    pub fn key(&self) -> (u64, u64) {
        (self.term, self.version)
    }

    pub fn hash_hex(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Done,
    /// The lease is no longer ours under this term: nothing was written.
    Fenced,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes `tables` in one transaction if, and only if, `holder` still holds
/// the lease under `term`: the lease row is read `FOR SHARE` first, so a
/// replica taking the lease over waits for this transaction, and a lapsed
/// or taken lease writes nothing ([`Commit::Fenced`]). A row is replaced
/// only by a newer (term, version); followers are notified.
pub async fn commit(
    pool: &PgPool,
    holder: &str,
    term: u64,
    tables: &[Arc<StoredTable>],
) -> Result<Commit, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let held = sqlx::query(
        "SELECT term FROM scheduler_lease WHERE id = 1 AND holder = $1 AND term = $2 \
         AND expires_at_ms >= vantage_now_ms() FOR SHARE",
    )
    .bind(holder)
    .bind(i64_of(term))
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_none() {
        tx.rollback().await?;
        return Ok(Commit::Fenced);
    }
    let ids: Vec<&str> = tables.iter().map(|t| &*t.node_id).collect();
    let terms: Vec<i64> = tables.iter().map(|t| i64_of(t.term)).collect();
    let versions: Vec<i64> = tables.iter().map(|t| i64_of(t.version)).collect();
    let hashes: Vec<String> = tables.iter().map(|t| t.hash_hex()).collect();
    let bodies: Vec<Vec<u8>> = tables.iter().map(|t| t.table.encode_to_vec()).collect();
    sqlx::query(
        "INSERT INTO route_tables (node_id, term, version, hash, body, seq, committed_at_ms) \
         SELECT n, t, v, h, b, nextval('route_tables_seq'), vantage_now_ms() \
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bytea[]) AS u(n, t, v, h, b) \
         ON CONFLICT (node_id) DO UPDATE SET term = excluded.term, version = excluded.version, \
         hash = excluded.hash, body = excluded.body, seq = excluded.seq, \
         committed_at_ms = excluded.committed_at_ms \
         WHERE (route_tables.term, route_tables.version) < (excluded.term, excluded.version)",
    )
    .bind(&ids)
    .bind(&terms)
    .bind(&versions)
    .bind(&hashes)
    .bind(&bodies)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO route_versions (node_id, version, hash, created_at_ms) \
         SELECT n, v, h, vantage_now_ms() FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS u(n, v, h) \
         ON CONFLICT (node_id, version) DO NOTHING",
    )
    .bind(&ids)
    .bind(&versions)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify('vantage', 'routes')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Commit::Done)
}

/// A committed table read back, with its commit sequence number.
#[derive(Debug)]
pub struct Read {
    pub seq: i64,
    /// `Err` when the body does not decode (counted and skipped).
    pub table: Result<StoredTable, String>,
}

/// Tables committed after `after_seq`, oldest first, at most `limit`.
pub async fn read_after(
    pool: &PgPool,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Read>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT node_id, term, version, hash, body, seq FROM route_tables \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let node_id: String = r.try_get(0)?;
            let term: i64 = r.try_get(1)?;
            let version: i64 = r.try_get(2)?;
            let hash: String = r.try_get(3)?;
            let body: Vec<u8> = r.try_get(4)?;
            let seq: i64 = r.try_get(5)?;
            let table = RouteTable::decode(body.as_slice())
                .map_err(|e| format!("table of {node_id} v{version}: {e}"))
                .and_then(|t| {
                    if t.node_id != node_id
                        || i64_of(t.version) != version
                        || i64_of(t.term) != term
                    {
                        return Err(format!(
                            "table row of {node_id} v{version} t{term} holds {} v{} t{}",
                            t.node_id, t.version, t.term
                        ));
                    }
                    let hash = crate::publish::parse_hash(&hash).unwrap_or(0);
                    Ok(StoredTable::new(t, hash))
                });
            Ok(Read { seq, table })
        })
        .collect()
}

/// The highest commit sequence number (0: none): a follower that read
/// further than this is looking at a replaced database and starts over.
pub async fn max_seq(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let r = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM route_tables")
        .fetch_one(pool)
        .await?;
    r.try_get(0)
}
