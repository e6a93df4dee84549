//! Opening Keel's database: create it when missing, migrate, connect with timeouts.
//! Every binary starts here, so any of them can come up first on an empty server.
//! TLS comes from the URL: `?sslmode=verify-full&sslrootcert=<CA file>` (rustls).

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

/// Applies the migrations through `migrate_url` (the schema's owner) when given, else
/// through `url`, and connects a pool to `url`. A process whose `url` holds only the rights
/// of `scripts/postgres-roles.sql` starts on a schema that is up to date without trying
/// to change it, so only the owner needs DDL rights.
pub async fn open(
    url: &str,
    migrate_url: Option<&str>,
    pool_size: u32,
) -> Result<PgPool, OpenError> {
    migrate(migrate_url.unwrap_or(url)).await?;
    connect(url, pool_size).await
}

/// Creates the database if it is missing and applies the migrations not applied yet.
pub async fn migrate(url: &str) -> Result<(), OpenError> {
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
    let pool = connect(url, 1).await?;
    let migrated = match is_current(&pool).await {
        Ok(true) => Ok(()),
        Ok(false) => crate::MIGRATOR.run(&pool).await.map_err(OpenError::Migrate),
        Err(e) => Err(OpenError::Database(e)),
    };
    pool.close().await;
    migrated
}

/// A pool on `url`, without migrating.
pub async fn connect(url: &str, pool_size: u32) -> Result<PgPool, OpenError> {
    PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(3))
        // A broken connection fails its query (and the caller retries); pinging before
        // every acquire would add a round trip to every batch.
        .test_before_acquire(false)
        .connect_with(connect_options(url)?)
        .await
        .map_err(OpenError::Database)
}

/// Whether every migration is applied already. Read only: the migrator itself would first
/// create its table, which a role without DDL rights may not even when it exists.
async fn is_current(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            Err(e) if has_code(&e, "42P01") => return Ok(false), // undefined_table
            Err(e) => return Err(e),
        };
    Ok(crate::MIGRATOR.iter().all(|migration| {
        applied.iter().any(|(version, checksum)| {
            *version == migration.version && **checksum == *migration.checksum
        })
    }))
}

/// The URL's options, plus timeouts: a stalled server or a stuck lock fails the work
/// (which is retried) instead of hanging it.
fn connect_options(url: &str) -> Result<PgConnectOptions, OpenError> {
    let options: PgConnectOptions = url.parse().map_err(OpenError::Database)?;
    Ok(options.options([("statement_timeout", "10s"), ("lock_timeout", "5s")]))
}

fn is_duplicate_database(error: &sqlx::Error) -> bool {
    has_code(error, "42P04") || has_code(error, "23505")
}

fn has_code(error: &sqlx::Error, sqlstate: &str) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == sqlstate)
}
