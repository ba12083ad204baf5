//! What can go wrong in the store.

use vantage_shared::score::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported database URL {url}: expected sqlite://PATH[?mode=rwc] or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl { url: String },
    /// Connecting failed. `url` has its password masked.
    #[error("cannot open database URL {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply the database migrations to {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A value cannot be stored (non-finite float, integer beyond i64) or read back.
    #[error("invalid value for {what}: {detail}")]
    InvalidValue { what: &'static str, detail: String },
    #[error("invalid weights: {0}")]
    InvalidWeights(#[from] WeightsError),
    #[error("could not assign a weight set version after {attempts} attempts (concurrent writers)")]
    VersionConflict { attempts: u32 },
    #[error("the database writer task has stopped")]
    WriterStopped,
    /// The database is unreachable: `pending` queued writes wait for it.
    #[error("the database is unavailable ({pending} queued writes wait for it): {last_error}")]
    Unavailable { pending: u64, last_error: String },
    /// Queued writes that never reached the database since the previous `flush`.
    #[error("{ops} queued database writes were lost: {last_error}")]
    WritesLost { ops: u64, last_error: String },
}

impl StoreError {
    /// Whether trying the same operation again later may succeed (connection trouble, busy
    /// database, pool timeout) as opposed to a configuration or data problem.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Open { source, .. } | StoreError::Query { source, .. } => {
                is_transient_sqlx(source)
            }
            StoreError::VersionConflict { .. }
            | StoreError::Unavailable { .. }
            | StoreError::WriterStopped
            | StoreError::WritesLost { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { what, source }
    }
}

pub(crate) fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6); PostgreSQL: serialization failure,
        // deadlock, admin shutdown / cannot connect now.
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("5" | "6" | "40001" | "40P01" | "57P01" | "57P03")
        ),
        _ => false,
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Masks the password of a `scheme://user:password@host/...` URL for logs and errors.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x?sslmode=require"),
            "postgres://u:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u@db/x"),
            "postgres://u@db/x",
            "no password, nothing to hide"
        );
        assert_eq!(
            redact_url("sqlite:///tmp/a@b:c.db?mode=rwc"),
            "sqlite:///tmp/a@b:c.db?mode=rwc",
            "an @ in a path is not userinfo"
        );
    }
}
