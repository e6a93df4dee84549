//! Opening Keel's database: create it when missing, connect with timeouts, migrate.
//! Every binary starts here, so any of them can come up first on an empty server.

use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create or reach the database")]
    Database(#[source] sqlx::Error),
    #[error("cannot apply the schema migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Creates the database if it is missing, then connects a pool and applies the migrations.
pub async fn open(url: &str, pool_size: u32) -> Result<PgPool, OpenError> {
    let exists = sqlx::Postgres::database_exists(url)
        .await
        .map_err(OpenError::Database)?;
    if !exists {
        match sqlx::Postgres::create_database(url).await {
            Ok(()) => tracing::info!("database created"),
            // Another process created it first.
            Err(e) if is_duplicate_database(&e) => {}
            Err(e) => return Err(OpenError::Database(e)),
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(3))
        // A broken connection fails its query (and the caller retries); pinging before
        // every acquire would add a round trip to every batch.
        .test_before_acquire(false)
        .connect_with(connect_options(url)?)
        .await
        .map_err(OpenError::Database)?;
    crate::MIGRATOR
        .run(&pool)
        .await
        .map_err(OpenError::Migrate)?;
    Ok(pool)
}

/// The URL's options, plus timeouts: a stalled server or a stuck lock fails the work
/// (which is retried) instead of hanging it.
fn connect_options(url: &str) -> Result<PgConnectOptions, OpenError> {
    let options: PgConnectOptions = url.parse().map_err(OpenError::Database)?;
    Ok(options.options([("statement_timeout", "10s"), ("lock_timeout", "5s")]))
}

fn is_duplicate_database(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "42P04" || code == "23505")
}
