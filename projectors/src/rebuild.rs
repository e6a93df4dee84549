//! `projectors rebuild <name>`: replays the Postgres log (the source of truth; JetStream
//! may keep less) into a fresh copy of a model and swaps it in, while the live projector
//! and the API keep running.
//!
//! 1. A fresh schema `rm_<name>_next` is made by `keel_create_read_model`.
//! 2. The log is applied to it page by page, each page one transaction, with the same
//!    code and bookkeeping as the live path (an event that fails is dead-lettered there).
//! 3. The swap: under the projection's lock (live batches wait), the last events up to
//!    the log's head are applied, the checkpoint set, the old schema dropped and the new
//!    one renamed into its place, in one transaction. Readers see the old model until
//!    that commit and the new one after it, never a half-built one. The live projector's
//!    next batch finds the new model's versions, so what the rebuild already applied is a
//!    duplicate to it, and what it has not is applied once.

use sqlx::{Connection, PgConnection, PgPool};

use crate::ledger::{self, ApplyError, Outcome};
use crate::ui_cache::UiCache;
use bus::chain;
use domain::ids::Position;
use domain::recorded::RecordedEvent;
use events::event_log;
use events::read_model::{self, Projection};

/// Events read from the log per transaction (bounds the memory a rebuild holds: events
/// are at most a few KiB each).
pub const PAGE: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("another rebuild of {0} is running")]
    Busy(Projection),
    #[error("the database failed during the rebuild")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub events: u64,
    pub dead_letters: u64,
    pub position: Position,
}

/// Rebuilds `projection` from the log and swaps the result in.
pub async fn rebuild(
    pool: &PgPool,
    projection: Projection,
    cache: &UiCache,
) -> Result<Rebuilt, RebuildError> {
    let live = projection.schema();
    let next = format!("{live}_next");
    // One rebuild per projection at a time: a session lock on a connection of its own.
    let mut guard = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(&next)
        .fetch_one(&mut guard)
        .await?;
    if !locked {
        return Err(RebuildError::Busy(projection));
    }
    let result = replay_and_swap(pool, projection, live, &next).await;
    let _ = guard.close().await;
    let rebuilt = result?;
    if projection == Projection::Dashboard {
        cache.invalidate_all().await;
    }
    Ok(rebuilt)
}

async fn replay_and_swap(
    pool: &PgPool,
    projection: Projection,
    live: &str,
    next: &str,
) -> Result<Rebuilt, RebuildError> {
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {next} CASCADE"))
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT keel_create_read_model($1, $2)")
        .bind(projection.name())
        .bind(next)
        .execute(&mut *conn)
        .await?;
    let mut totals = Rebuilt {
        events: 0,
        dead_letters: 0,
        position: Position(0),
    };
    loop {
        let mut tx = conn.begin().await?;
        let page = replay_page(&mut tx, projection, next, &mut totals).await?;
        tx.commit().await?;
        if page < PAGE {
            break;
        }
    }
    let mut tx = conn.begin().await?;
    ledger::lock(&mut tx, projection).await?;
    while replay_page(&mut tx, projection, next, &mut totals).await? == PAGE {}
    totals.position = read_model::advance_checkpoint(&mut *tx, projection, next).await?;
    // Readers lock the tables they read before their snapshot, in byte order; locking them
    // here in the same order makes them wait for the swap instead of deadlocking with it.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
         WHERE table_schema = $1 ORDER BY table_name COLLATE \"C\"",
    )
    .bind(live)
    .fetch_all(&mut *tx)
    .await?;
    if !tables.is_empty() {
        sqlx::query(&format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            tables.join(", ")
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!("DROP SCHEMA {live} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("ALTER SCHEMA {next} RENAME TO {live}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(totals)
}

/// Applies the next page of the log after `totals.position`; returns how many events it
/// read.
async fn replay_page(
    conn: &mut PgConnection,
    projection: Projection,
    schema: &str,
    totals: &mut Rebuilt,
) -> Result<i64, RebuildError> {
    let page = event_log::read_all(&mut *conn, totals.position, PAGE).await?;
    let Some(last) = page.last() else {
        return Ok(0);
    };
    let read = page.len() as i64;
    totals.position = last.position;
    let mine: Vec<&RecordedEvent> = page
        .iter()
        .filter(|e| projection.reads(&e.stream_id.to_string()))
        .collect();
    // The rebuild's model is nobody's cache source until the swap: nothing is stale.
    let mut stale = Vec::new();
    let mut savepoint = conn.begin().await?;
    match ledger::apply(&mut savepoint, projection, schema, &mine, &mut stale).await {
        Ok(outcomes) => {
            savepoint.commit().await?;
            totals.events += outcomes.iter().filter(|o| **o == Outcome::Applied).count() as u64;
        }
        Err(error) if error.is_unavailable() => return Err(error.into()),
        Err(_) => {
            savepoint.rollback().await?;
            for event in mine {
                apply_or_bury(conn, projection, schema, event, totals).await?;
            }
        }
    }
    Ok(read)
}

/// Applies one event under a savepoint; if it fails, records it as a dead letter.
async fn apply_or_bury(
    conn: &mut PgConnection,
    projection: Projection,
    schema: &str,
    event: &RecordedEvent,
    totals: &mut Rebuilt,
) -> Result<(), RebuildError> {
    let mut stale = Vec::new();
    let mut savepoint = conn.begin().await?;
    match ledger::apply(&mut savepoint, projection, schema, &[event], &mut stale).await {
        Ok(_) => {
            savepoint.commit().await?;
            totals.events += 1;
        }
        Err(error) if error.is_unavailable() => return Err(error.into()),
        Err(error) => {
            savepoint.rollback().await?;
            let reason = chain(&error);
            tracing::error!(
                projection = %projection,
                event_id = %event.event_id,
                position = event.position.0,
                reason,
                "event dead-lettered during rebuild"
            );
            ledger::dead_letter(&mut *conn, schema, event, &reason).await?;
            totals.dead_letters += 1;
        }
    }
    Ok(())
}
