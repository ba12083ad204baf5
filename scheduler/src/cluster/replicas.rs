//! Replica heartbeats (`scheduler_replicas`): every replica refreshes its
//! row every second with its role, term and what it serves; the dashboard
//! and `GET /v1/cluster` list every replica with the age of its row.

use sqlx::{PgPool, Row};

/// A replica seen through its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaRow {
    pub id: String,
    pub http_url: String,
    pub started_at_ms: i64,
    /// Age of the last heartbeat, by the database's clock.
    pub seen_age_ms: i64,
    pub role: String,
    pub term: u64,
    pub nodes: i64,
    pub nodes_up: i64,
    pub agents_connected: i64,
    pub route_streams: i64,
    pub agent_version: String,
}

/// What this replica reports in its heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub id: &'a str,
    pub holder: &'a str,
    pub http_url: &'a str,
    pub started_at_ms: i64,
    pub role: &'a str,
    pub term: u64,
    pub nodes: i64,
    pub nodes_up: i64,
    pub agents_connected: i64,
    pub route_streams: i64,
}

pub async fn beat(pool: &PgPool, h: &Heartbeat<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scheduler_replicas (id, holder, http_url, started_at_ms, seen_at_ms, role, term, \
         nodes, nodes_up, agents_connected, route_streams, agent_version) \
         VALUES ($1, $2, $3, $4, vantage_now_ms(), $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, http_url = excluded.http_url, \
         started_at_ms = excluded.started_at_ms, seen_at_ms = excluded.seen_at_ms, role = excluded.role, \
         term = excluded.term, nodes = excluded.nodes, nodes_up = excluded.nodes_up, \
         agents_connected = excluded.agents_connected, route_streams = excluded.route_streams, \
         agent_version = excluded.agent_version",
    )
    .bind(h.id)
    .bind(h.holder)
    .bind(h.http_url)
    .bind(h.started_at_ms)
    .bind(h.role)
    .bind(i64::try_from(h.term).unwrap_or(i64::MAX))
    .bind(h.nodes)
    .bind(h.nodes_up)
    .bind(h.agents_connected)
    .bind(h.route_streams)
    .bind(env!("CARGO_PKG_VERSION"))
    .execute(pool)
    .await?;
    Ok(())
}

/// Every replica with a heartbeat in the last day, by id.
pub async fn list(pool: &PgPool) -> Result<Vec<ReplicaRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, http_url, started_at_ms, vantage_now_ms() - seen_at_ms, role, term, nodes, \
         nodes_up, agents_connected, route_streams, agent_version FROM scheduler_replicas \
         WHERE seen_at_ms > vantage_now_ms() - 86400000 ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ReplicaRow {
                id: r.try_get(0)?,
                http_url: r.try_get(1)?,
                started_at_ms: r.try_get(2)?,
                seen_age_ms: r.try_get(3)?,
                role: r.try_get(4)?,
                term: u64::try_from(r.try_get::<i64, _>(5)?).unwrap_or(0),
                nodes: r.try_get(6)?,
                nodes_up: r.try_get(7)?,
                agents_connected: r.try_get(8)?,
                route_streams: r.try_get(9)?,
                agent_version: r.try_get(10)?,
            })
        })
        .collect()
}

/// A replica is healthy while its heartbeat is younger than this.
pub const HEALTHY_WITHIN_MS: i64 = 3_000;
