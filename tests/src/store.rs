//! Which store a scheduler under test uses, and the per-test PostgreSQL
//! databases.
//!
//! Each end-to-end test exists twice, `sqlite_*` and `postgres_*`
//! ([`crate::store_tests!`]). The PostgreSQL variant needs
//! `VANTAGE_TEST_POSTGRES_URL`, an admin URL (`scripts/postgres.sh` exports
//! one); every scheduler gets a fresh database `vantage_e2e_<random>` created
//! from it and dropped (best effort) when the scheduler handle is dropped.
//! Without the variable the test prints `SKIPPED …` and passes, except under
//! `CI=true`, where a missing database is a failure.

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::time::Duration;

/// Environment variable holding the PostgreSQL admin URL.
pub const POSTGRES_URL_ENV: &str = "VANTAGE_TEST_POSTGRES_URL";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// The default: `<data-dir>/vantage.db`.
    Sqlite,
    /// A fresh database created from this admin URL.
    Postgres { admin_url: String },
}

/// Whether the run is a CI run (`CI=true`), where optional peers are required.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Prints the standard skip line, or panics under CI.
pub fn skip(test: &str, why: &str) {
    if is_ci() {
        panic!("{test}: {why}; CI=true requires it");
    }
    eprintln!("SKIPPED {test}: {why}");
}

impl Store {
    pub fn sqlite() -> Store {
        Store::Sqlite
    }

    /// The PostgreSQL store, or `None` after printing a skip message when
    /// `VANTAGE_TEST_POSTGRES_URL` is unset (panics instead under CI).
    pub fn postgres_or_skip(test: &str) -> Option<Store> {
        match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.is_empty() => Some(Store::Postgres { admin_url: url }),
            _ => {
                skip(
                    test,
                    &format!("{POSTGRES_URL_ENV} not set (run scripts/test.sh)"),
                );
                None
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres { .. } => "postgres",
        }
    }
}

/// A database created for one scheduler; dropped with it.
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    /// Creates `vantage_e2e_<random>` on the server of `admin_url`.
    pub async fn create(admin_url: &str) -> PgDatabase {
        let name = format!("vantage_e2e_{:016x}", rand::random::<u64>());
        let mut conn = connect(admin_url).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        let mut url = url::Url::parse(admin_url)
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_ENV} is not a URL: {e}"));
        url.set_path(&format!("/{name}"));
        PgDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        }
    }

    /// URL for `--database-url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names of the tables in the `public` schema of this database.
    pub async fn tables(&self) -> Vec<String> {
        let mut conn = connect(&self.url).await;
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("listing tables of {}: {e}", self.name));
        let _ = conn.close().await;
        rows.into_iter().map(|(t,)| t).collect()
    }
}

async fn connect(admin_url: &str) -> PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(admin_url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("cannot connect to {POSTGRES_URL_ENV}: {e}"),
        Err(_) => panic!("connecting to {POSTGRES_URL_ENV} timed out"),
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if std::env::var_os("VANTAGE_TEST_KEEP").is_some() {
            eprintln!("keeping database {} (VANTAGE_TEST_KEEP)", self.name);
            return;
        }
        // Drop may run inside a runtime: use a thread with its own.
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        let job = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let fut = async {
                    let mut conn = PgConnection::connect(&admin).await.ok()?;
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    sqlx::query(&sql).execute(&mut conn).await.ok()?;
                    conn.close().await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), fut).await;
            });
        });
        let _ = job.join();
    }
}
