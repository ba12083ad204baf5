//! SQL shared by both backends and the mapping between rows and domain records.
//!
//! Every statement is plain SQL understood by SQLite ≥ 3.35 and PostgreSQL ≥ 11 (`$n`
//! placeholders, `ON CONFLICT`, `RETURNING`, `excluded.`), so one code path serves both through
//! sqlx's `Any` driver. Integers travel as i64, floats as f64, booleans as 0/1.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use vantage_shared::score::Weights;

use super::error::StoreError;
use super::{EventRecord, NodeRecord, Rollup, RouteHead, RouteVersionRecord, WeightSet, WriteOp};

pub(super) const INSERT_WEIGHTS: &str = "\
INSERT INTO weight_sets (version, w_latency, w_loss, w_buffer, w_load, w_distance, w_throughput, created_at_ms, actor, comment) \
SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM weight_sets \
RETURNING version";

const WEIGHT_COLUMNS: &str = "version, w_latency, w_loss, w_buffer, w_load, w_distance, w_throughput, created_at_ms, actor, comment";

pub(super) fn select_weights(limit_clause: &str) -> String {
    format!("SELECT {WEIGHT_COLUMNS} FROM weight_sets ORDER BY version DESC {limit_clause}")
}

/// Upsert of a node; an absent credential hash keeps the stored one, `last_seen_ms` never goes
/// back in time.
pub(super) const UPSERT_NODE: &str = "\
INSERT INTO nodes (id, region, lat, lon, capacity_mbps, public_url, probe_addr, credential_hash, enrolled_at_ms, last_seen_ms, drained) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
ON CONFLICT (id) DO UPDATE SET \
region = excluded.region, lat = excluded.lat, lon = excluded.lon, capacity_mbps = excluded.capacity_mbps, \
public_url = excluded.public_url, probe_addr = excluded.probe_addr, \
credential_hash = COALESCE(excluded.credential_hash, nodes.credential_hash), \
enrolled_at_ms = excluded.enrolled_at_ms, \
last_seen_ms = CASE WHEN excluded.last_seen_ms > nodes.last_seen_ms THEN excluded.last_seen_ms ELSE nodes.last_seen_ms END, \
drained = excluded.drained";

/// Enrollment: a new node, or one known without a credential (facts
/// recorded before it enrolled); a node that has a credential already is
/// left alone (no row changes: the caller refuses the enrollment).
pub(super) const ENROLL_NODE: &str = "\
INSERT INTO nodes (id, region, lat, lon, capacity_mbps, public_url, probe_addr, credential_hash, enrolled_at_ms, last_seen_ms, drained) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
ON CONFLICT (id) DO UPDATE SET \
region = excluded.region, lat = excluded.lat, lon = excluded.lon, capacity_mbps = excluded.capacity_mbps, \
public_url = excluded.public_url, probe_addr = excluded.probe_addr, \
credential_hash = excluded.credential_hash, enrolled_at_ms = excluded.enrolled_at_ms \
WHERE nodes.credential_hash IS NULL";

pub(super) const SELECT_NODE: &str = "\
SELECT id, region, lat, lon, capacity_mbps, public_url, probe_addr, credential_hash, enrolled_at_ms, last_seen_ms, drained \
FROM nodes WHERE id = $1";

pub(super) const SELECT_NODES: &str = "\
SELECT id, region, lat, lon, capacity_mbps, public_url, probe_addr, credential_hash, enrolled_at_ms, last_seen_ms, drained \
FROM nodes ORDER BY id";

const NODE_SEEN: &str = "UPDATE nodes SET last_seen_ms = $2 WHERE id = $1 AND last_seen_ms < $2";

/// Route versions and ACKs come a thousand at a time (one per node and
/// plan), so they are written with multi-row statements of up to this many
/// rows instead of one statement each: one round trip to the database per
/// chunk. Not more: sqlx looks every parameter of a SQLite statement up by
/// position (`sqlite3_bind_parameter_name`, a linear scan of the
/// statement's parameter names), so binding costs grow with the square of
/// the rows per statement — at 250 rows it was about 30 % of the store
/// thread's time. With at most this many distinct chunk lengths per query
/// the prepared statements stay in sqlx's statement cache.
const ROWS_PER_STATEMENT: usize = 32;

/// `INSERT INTO route_versions … VALUES ($1, $2, $3, $4), … ON CONFLICT DO
/// NOTHING` for `rows` rows: within a statement as across statements, the
/// first row of a (node, version) wins.
fn insert_route_versions(rows: usize) -> String {
    format!(
        "INSERT INTO route_versions (node_id, version, hash, created_at_ms) VALUES {} \
         ON CONFLICT (node_id, version) DO NOTHING",
        value_rows(rows, 4)
    )
}

/// ACKs of `rows` (node, version, at) triples in one `UPDATE … FROM
/// (VALUES …)` (SQLite ≥ 3.33 and PostgreSQL; both name the columns of a
/// VALUES list column1, column2, …). Unknown versions match nothing.
fn ack_route_versions(rows: usize) -> String {
    format!(
        "UPDATE route_versions SET acked_at_ms = v.column3 FROM (VALUES {}) AS v \
         WHERE route_versions.node_id = v.column1 AND route_versions.version = v.column2",
        value_rows(rows, 3)
    )
}

/// `($1, $2), ($3, $4)` for `rows` rows of `cols` parameters.
fn value_rows(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const ROUTE_NACK: &str = "UPDATE route_versions SET nacked_at_ms = $3, nack_detail = $4 WHERE node_id = $1 AND version = $2";

/// Latest version row per node, plus the highest version that node acknowledged (0 = none).
pub(super) const ROUTE_HEADS: &str = "\
SELECT r.node_id, r.version, r.hash, \
COALESCE((SELECT MAX(a.version) FROM route_versions a WHERE a.node_id = r.node_id AND a.acked_at_ms IS NOT NULL), 0) AS acked_version \
FROM route_versions r \
WHERE r.version = (SELECT MAX(m.version) FROM route_versions m WHERE m.node_id = r.node_id) \
ORDER BY r.node_id";

pub(super) const ROUTE_HISTORY: &str = "\
SELECT node_id, version, hash, created_at_ms, acked_at_ms, nacked_at_ms, nack_detail \
FROM route_versions WHERE node_id = $1 ORDER BY version DESC LIMIT $2";

const INSERT_EVENT: &str =
    "INSERT INTO events (at_ms, node_id, kind, detail) VALUES ($1, $2, $3, $4)";

pub(super) const SELECT_EVENTS: &str =
    "SELECT at_ms, node_id, kind, detail FROM events ORDER BY at_ms DESC, id DESC LIMIT $1";

pub(super) const SELECT_NODE_EVENTS: &str = "SELECT at_ms, node_id, kind, detail FROM events \
WHERE node_id = $1 ORDER BY at_ms DESC, id DESC LIMIT $2";

const UPSERT_ROLLUP: &str = "\
INSERT INTO telemetry_rollups (node_id, minute_ms, reports, cpu_avg, utilisation_avg, egress_mbps_avg, viewers_max) \
VALUES ($1, $2, $3, $4, $5, $6, $7) \
ON CONFLICT (node_id, minute_ms) DO UPDATE SET \
reports = excluded.reports, cpu_avg = excluded.cpu_avg, utilisation_avg = excluded.utilisation_avg, \
egress_mbps_avg = excluded.egress_mbps_avg, viewers_max = excluded.viewers_max";

pub(super) const SELECT_ROLLUPS: &str = "\
SELECT node_id, minute_ms, reports, cpu_avg, utilisation_avg, egress_mbps_avg, viewers_max \
FROM telemetry_rollups WHERE node_id = $1 AND minute_ms >= $2 ORDER BY minute_ms";

pub(super) const PRUNE_EVENTS: &str = "DELETE FROM events WHERE at_ms < $1";
pub(super) const PRUNE_ROLLUPS: &str = "DELETE FROM telemetry_rollups WHERE minute_ms < $1";

// ---- values ----------------------------------------------------------------------------------

pub(super) fn to_i64(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::InvalidValue {
        what,
        detail: format!("{v} exceeds the largest storable integer {}", i64::MAX),
    })
}

fn to_u64(what: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::InvalidValue {
        what,
        detail: format!("stored value {v} is negative"),
    })
}

fn to_u32(what: &'static str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::InvalidValue {
        what,
        detail: format!("stored value {v} is outside 0..=u32::MAX"),
    })
}

/// SQLite stores NaN as NULL (breaking NOT NULL columns) while PostgreSQL keeps it: refuse
/// non-finite floats so both backends behave alike.
pub(super) fn finite(what: &'static str, v: f64) -> Result<f64, StoreError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(StoreError::InvalidValue {
            what,
            detail: format!("{v} is not a finite number"),
        })
    }
}

pub(super) fn check_node(rec: &NodeRecord) -> Result<(), StoreError> {
    finite("node.lat", rec.lat)?;
    finite("node.lon", rec.lon)?;
    finite("node.capacity_mbps", rec.capacity_mbps)?;
    Ok(())
}

fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col)
        .map_err(StoreError::query("decoding a row"))
}

pub(super) fn weight_set(row: &AnyRow) -> Result<WeightSet, StoreError> {
    Ok(WeightSet {
        version: to_u64("weight_sets.version", get(row, "version")?)?,
        weights: Weights {
            latency: get(row, "w_latency")?,
            loss: get(row, "w_loss")?,
            buffer: get(row, "w_buffer")?,
            load: get(row, "w_load")?,
            distance: get(row, "w_distance")?,
            throughput: get(row, "w_throughput")?,
        },
        created_at_ms: get(row, "created_at_ms")?,
        actor: get(row, "actor")?,
        comment: get(row, "comment")?,
    })
}

pub(super) fn node(row: &AnyRow) -> Result<NodeRecord, StoreError> {
    Ok(NodeRecord {
        id: get(row, "id")?,
        region: get(row, "region")?,
        lat: get(row, "lat")?,
        lon: get(row, "lon")?,
        capacity_mbps: get(row, "capacity_mbps")?,
        public_url: get(row, "public_url")?,
        probe_addr: get(row, "probe_addr")?,
        credential_hash: get(row, "credential_hash")?,
        enrolled_at_ms: get(row, "enrolled_at_ms")?,
        last_seen_ms: get(row, "last_seen_ms")?,
        drained: get::<i64>(row, "drained")? != 0,
    })
}

pub(super) fn route_head(row: &AnyRow) -> Result<RouteHead, StoreError> {
    Ok(RouteHead {
        node_id: get(row, "node_id")?,
        version: to_u64("route_versions.version", get(row, "version")?)?,
        hash: get(row, "hash")?,
        acked_version: to_u64("route_versions.version", get(row, "acked_version")?)?,
    })
}

pub(super) fn route_version(row: &AnyRow) -> Result<RouteVersionRecord, StoreError> {
    Ok(RouteVersionRecord {
        node_id: get(row, "node_id")?,
        version: to_u64("route_versions.version", get(row, "version")?)?,
        hash: get(row, "hash")?,
        created_at_ms: get(row, "created_at_ms")?,
        acked_at_ms: get(row, "acked_at_ms")?,
        nacked_at_ms: get(row, "nacked_at_ms")?,
        nack_detail: get(row, "nack_detail")?,
    })
}

pub(super) fn event(row: &AnyRow) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        at_ms: get(row, "at_ms")?,
        node_id: get(row, "node_id")?,
        kind: get(row, "kind")?,
        detail: get(row, "detail")?,
    })
}

pub(super) fn rollup(row: &AnyRow) -> Result<Rollup, StoreError> {
    Ok(Rollup {
        node_id: get(row, "node_id")?,
        minute_ms: get(row, "minute_ms")?,
        reports: to_u32("telemetry_rollups.reports", get(row, "reports")?)?,
        cpu_avg: get(row, "cpu_avg")?,
        utilisation_avg: get(row, "utilisation_avg")?,
        egress_mbps_avg: get(row, "egress_mbps_avg")?,
        viewers_max: to_u32("telemetry_rollups.viewers_max", get(row, "viewers_max")?)?,
    })
}

// ---- node upsert (awaited and batched) ------------------------------------------------------

pub(super) async fn upsert_node(conn: &mut AnyConnection, rec: &NodeRecord) -> sqlx::Result<()> {
    sqlx::query(UPSERT_NODE)
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
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// ---- batched writes --------------------------------------------------------------------------

/// A [`WriteOp`] checked to be storable (integers fit i64, floats finite).
#[derive(Debug)]
pub(super) enum Prepared {
    NodeSeen {
        node_id: String,
        at_ms: i64,
    },
    NodeInfo(NodeRecord),
    RouteVersion {
        node_id: String,
        version: i64,
        hash: String,
        created_at_ms: i64,
    },
    RouteAck {
        node_id: String,
        version: i64,
        at_ms: i64,
    },
    RouteNack {
        node_id: String,
        version: i64,
        at_ms: i64,
        detail: String,
    },
    Event(EventRecord),
    Rollup(Rollup),
}

impl Prepared {
    pub(super) fn new(op: WriteOp) -> Result<Prepared, StoreError> {
        Ok(match op {
            WriteOp::NodeSeen { node_id, at_ms } => Prepared::NodeSeen { node_id, at_ms },
            WriteOp::NodeInfo(rec) => {
                check_node(&rec)?;
                Prepared::NodeInfo(rec)
            }
            WriteOp::RouteVersion {
                node_id,
                version,
                hash,
                created_at_ms,
            } => Prepared::RouteVersion {
                node_id,
                version: to_i64("route version", version)?,
                hash,
                created_at_ms,
            },
            WriteOp::RouteAck {
                node_id,
                version,
                at_ms,
            } => Prepared::RouteAck {
                node_id,
                version: to_i64("route version", version)?,
                at_ms,
            },
            WriteOp::RouteNack {
                node_id,
                version,
                at_ms,
                detail,
            } => Prepared::RouteNack {
                node_id,
                version: to_i64("route version", version)?,
                at_ms,
                detail,
            },
            WriteOp::Event(ev) => Prepared::Event(ev),
            WriteOp::Rollup(r) => {
                finite("rollup.cpu_avg", r.cpu_avg)?;
                finite("rollup.utilisation_avg", r.utilisation_avg)?;
                finite("rollup.egress_mbps_avg", r.egress_mbps_avg)?;
                Prepared::Rollup(r)
            }
        })
    }
}

/// Applies a batch inside the caller's transaction. Applied in queue order, except that
/// `NodeSeen` ops are coalesced to one update per node (the latest time) and run last, and
/// repeated roll-ups of the same (node, minute) keep only the last one: both are idempotent
/// "latest value wins" writes, so the result is the same as applying every op in order.
pub(super) async fn apply_batch(conn: &mut AnyConnection, ops: &[Prepared]) -> sqlx::Result<()> {
    let mut seen: HashMap<&str, i64> = HashMap::new();
    let mut last_rollup: HashMap<(&str, i64), usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Prepared::Rollup(r) = op {
            last_rollup.insert((r.node_id.as_str(), r.minute_ms), i);
        }
    }

    for (i, op) in ops.iter().enumerate() {
        match op {
            Prepared::NodeSeen { node_id, at_ms } => {
                let t = seen.entry(node_id.as_str()).or_insert(*at_ms);
                *t = (*t).max(*at_ms);
            }
            Prepared::NodeInfo(rec) => upsert_node(conn, rec).await?,
            // Written below, after every other op of the batch, in
            // multi-row statements: versions first, then ACKs, then NACKs
            // (an ACK or NACK never precedes its version in the queue; the
            // columns they set are independent).
            Prepared::RouteVersion { .. }
            | Prepared::RouteAck { .. }
            | Prepared::RouteNack { .. } => {}
            Prepared::Event(ev) => {
                sqlx::query(INSERT_EVENT)
                    .bind(ev.at_ms)
                    .bind(&ev.node_id)
                    .bind(&ev.kind)
                    .bind(&ev.detail)
                    .execute(&mut *conn)
                    .await?;
            }
            Prepared::Rollup(r) => {
                if last_rollup.get(&(r.node_id.as_str(), r.minute_ms)) != Some(&i) {
                    continue; // superseded later in this batch
                }
                sqlx::query(UPSERT_ROLLUP)
                    .bind(&r.node_id)
                    .bind(r.minute_ms)
                    .bind(i64::from(r.reports))
                    .bind(r.cpu_avg)
                    .bind(r.utilisation_avg)
                    .bind(r.egress_mbps_avg)
                    .bind(i64::from(r.viewers_max))
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }

    for (node_id, at_ms) in seen {
        sqlx::query(NODE_SEEN)
            .bind(node_id)
            .bind(at_ms)
            .execute(&mut *conn)
            .await?;
    }
    write_route_versions(conn, ops).await?;
    write_route_acks(conn, ops).await?;
    for op in ops {
        if let Prepared::RouteNack {
            node_id,
            version,
            at_ms,
            detail,
        } = op
        {
            sqlx::query(ROUTE_NACK)
                .bind(node_id)
                .bind(*version)
                .bind(*at_ms)
                .bind(detail)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Every [`Prepared::RouteVersion`] of the batch, in queue order.
async fn write_route_versions(conn: &mut AnyConnection, ops: &[Prepared]) -> sqlx::Result<()> {
    let rows: Vec<(&str, i64, &str, i64)> = ops
        .iter()
        .filter_map(|op| match op {
            Prepared::RouteVersion {
                node_id,
                version,
                hash,
                created_at_ms,
            } => Some((node_id.as_str(), *version, hash.as_str(), *created_at_ms)),
            _ => None,
        })
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = insert_route_versions(chunk.len());
        let mut q = sqlx::query(&sql);
        for &(node_id, version, hash, created_at_ms) in chunk {
            q = q.bind(node_id).bind(version).bind(hash).bind(created_at_ms);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Every [`Prepared::RouteAck`] of the batch; of repeated ACKs of one
/// (node, version) the last one's time is kept, as one UPDATE each would.
async fn write_route_acks(conn: &mut AnyConnection, ops: &[Prepared]) -> sqlx::Result<()> {
    let mut last: HashMap<(&str, i64), i64> = HashMap::new();
    for op in ops {
        if let Prepared::RouteAck {
            node_id,
            version,
            at_ms,
        } = op
        {
            last.insert((node_id.as_str(), *version), *at_ms);
        }
    }
    let rows: Vec<_> = last.into_iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = ack_route_versions(chunk.len());
        let mut q = sqlx::query(&sql);
        for &((node_id, version), at_ms) in chunk {
            q = q.bind(node_id).bind(version).bind(at_ms);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
