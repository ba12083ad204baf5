//! The leader lease: one row of `scheduler_lease`, timed by the database's
//! clock (`vantage_now_ms()`), so replicas whose clocks disagree still
//! agree on who leads. Every statement is a single atomic UPDATE.

use sqlx::{PgPool, Row};

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn term_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Takes the lease if it lapsed (or was never held): `Some(new term)`.
/// The new term is one more than the last one, or than the highest term an
/// agent reported holding (`term_floor`), whichever is larger.
pub async fn acquire(
    pool: &PgPool,
    holder: &str,
    replica_id: &str,
    lease: std::time::Duration,
) -> Result<Option<u64>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE scheduler_lease SET holder = $1, replica_id = $2, \
         term = GREATEST(term, term_floor) + 1, \
         expires_at_ms = vantage_now_ms() + $3, acquired_at_ms = vantage_now_ms() \
         WHERE id = 1 AND expires_at_ms < vantage_now_ms() RETURNING term",
    )
    .bind(holder)
    .bind(replica_id)
    .bind(ms(lease))
    .fetch_optional(pool)
    .await?;
    row.map(|r| r.try_get::<i64, _>(0).map(term_of)).transpose()
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours; the highest term an agent reported holding.
    Held { floor: u64 },
    /// Lapsed or taken: this replica no longer leads.
    Lost,
}

/// Extends our lease, if it is still ours and has not lapsed.
pub async fn renew(
    pool: &PgPool,
    holder: &str,
    term: u64,
    lease: std::time::Duration,
) -> Result<Renewal, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE scheduler_lease SET expires_at_ms = vantage_now_ms() + $3 \
         WHERE id = 1 AND holder = $1 AND term = $2 AND expires_at_ms >= vantage_now_ms() \
         RETURNING term_floor",
    )
    .bind(holder)
    .bind(i64::try_from(term).unwrap_or(i64::MAX))
    .bind(ms(lease))
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some(r) => Renewal::Held {
            floor: term_of(r.try_get(0)?),
        },
        None => Renewal::Lost,
    })
}

/// Moves our lease to a term past `term_floor` (an agent holds a table of a
/// term newer than ours: the database lost terms, e.g. it was restored from
/// a backup). `Some(new term)`, or `None` if the lease is no longer ours.
pub async fn bump(
    pool: &PgPool,
    holder: &str,
    term: u64,
    lease: std::time::Duration,
) -> Result<Option<u64>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE scheduler_lease SET term = term_floor + 1, expires_at_ms = vantage_now_ms() + $3 \
         WHERE id = 1 AND holder = $1 AND term = $2 AND expires_at_ms >= vantage_now_ms() \
         AND term_floor >= term RETURNING term",
    )
    .bind(holder)
    .bind(i64::try_from(term).unwrap_or(i64::MAX))
    .bind(ms(lease))
    .fetch_optional(pool)
    .await?;
    row.map(|r| r.try_get::<i64, _>(0).map(term_of)).transpose()
}

/// Gives the lease up (a clean stop): another replica takes over at its
/// next attempt instead of waiting for the lease to lapse.
pub async fn release(pool: &PgPool, holder: &str, term: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE scheduler_lease SET expires_at_ms = 0 WHERE id = 1 AND holder = $1 AND term = $2",
    )
    .bind(holder)
    .bind(i64::try_from(term).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// The lease row as followers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub replica_id: String,
    pub holder: String,
    pub term: u64,
    /// Time left by the database's clock (negative: lapsed).
    pub remaining_ms: i64,
}

pub async fn read(pool: &PgPool) -> Result<LeaseRow, sqlx::Error> {
    let r = sqlx::query(
        "SELECT replica_id, holder, term, expires_at_ms - vantage_now_ms() \
         FROM scheduler_lease WHERE id = 1",
    )
    .fetch_one(pool)
    .await?;
    Ok(LeaseRow {
        replica_id: r.try_get(0)?,
        holder: r.try_get(1)?,
        term: term_of(r.try_get(2)?),
        remaining_ms: r.try_get(3)?,
    })
}

/// Records that an agent holds a table of `term`, newer than the lease's:
/// the leader moves past it at its next renewal.
pub async fn raise_floor(pool: &PgPool, term: u64) -> Result<(), sqlx::Error> {
    let t = i64::try_from(term).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE scheduler_lease SET term_floor = $1 WHERE id = 1 AND term_floor < $1 AND term < $1",
    )
    .bind(t)
    .execute(pool)
    .await?;
    Ok(())
}
