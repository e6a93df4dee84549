//! Exactly-once, in-order effects: each model records the last version it applied per
//! stream, in the same transaction as the effects. An arriving event is then exactly one
//! of: a duplicate (its version is already applied: acknowledged, no effect), the next one
//! (applied), or early (an earlier event of its stream has not been applied yet, e.g. it
//! failed or a crash left it to a later redelivery). An early event's predecessors are
//! taken from the log and applied before it, so nothing is applied out of order, nothing
//! waits on JetStream's redelivery order, and the predecessors' own deliveries are then
//! duplicates.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::models;
use domain::ids::UserId;
use domain::ids::Version;
use domain::recorded::RecordedEvent;
use domain::{DecodeError, Event};
use events::event_log;
use events::read_model::Projection;

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Early,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot decode the event at position {position}")]
    Decode {
        position: i64,
        #[source]
        source: DecodeError,
    },
    #[error("applying the events at positions {first} to {last} failed")]
    Model {
        first: i64,
        last: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("the read model's bookkeeping failed")]
    Bookkeeping(#[source] sqlx::Error),
    #[error("this instance no longer owns the partition")]
    LeaseLost,
}

impl ApplyError {
    /// The database is away or busy (connection lost, shutting down, lock timeout…): no
    /// event is to blame, so the work is retried without counting against any event.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ApplyError::Decode { .. } => false,
            ApplyError::LeaseLost => true,
            ApplyError::Model { source, .. } | ApplyError::Bookkeeping(source) => {
                is_unavailable(source)
            }
        }
    }
}

/// Errors that say nothing about the event being applied.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // connection, operator intervention (shutdown, statement timeout), resources,
            // system (I/O), transaction rollback (serialization, deadlock), lock not
            // available, read-only transaction (a failover in progress)
            ["08", "57", "53", "58", "40"]
                .iter()
                .any(|c| code.starts_with(c))
                || code == "55P03"
                || code == "25006"
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Serializes the writers of one projection's model (live batches, a rebuild's swap, a
/// dead-letter replay) for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, projection: Projection) -> Result<(), sqlx::Error> {
    const BASE: i64 = 7_261_530_813_950_100;
    let key = BASE
        + Projection::ALL
            .iter()
            .take_while(|p| **p != projection)
            .count() as i64;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(conn)
        .await
        .map(drop)
}

/// Applies `events`, in order, to the model in `schema` inside the caller's transaction,
/// and records the versions applied. Events of streams the projection does not read are
/// duplicates by definition (nothing to do). Users whose cached dashboard became stale
/// are pushed onto `stale`.
pub async fn apply(
    conn: &mut PgConnection,
    projection: Projection,
    schema: &str,
    events: &[&RecordedEvent],
    stale: &mut Vec<UserId>,
) -> Result<Vec<Outcome>, ApplyError> {
    let mut applied = applied_versions(conn, schema, events)
        .await
        .map_err(ApplyError::Bookkeeping)?;
    // Classify each event; an early one whose predecessors have not been applied (they
    // failed, or a crash left them to a later redelivery) gets them from the log first:
    // events reach the bus only after they commit, so the log has them.
    let mut touched: HashMap<String, i64> = HashMap::new();
    let mut outcomes = Vec::with_capacity(events.len());
    let mut predecessors: Vec<Vec<RecordedEvent>> = Vec::with_capacity(events.len());
    for recorded in events {
        let stream = recorded.stream_id.to_string();
        let current = applied.get(&stream).copied().unwrap_or(0);
        let mut missing = Vec::new();
        let outcome = if !projection.reads(&stream) || recorded.version.0 <= current {
            Outcome::Duplicate
        } else {
            let gap = recorded.version.0 - current - 1;
            if gap > 0 {
                missing =
                    event_log::read_stream(&mut *conn, &recorded.stream_id, Version(current), gap)
                        .await
                        .map_err(ApplyError::Bookkeeping)?;
            }
            if missing.len() as i64 == gap {
                applied.insert(stream.clone(), recorded.version.0);
                touched.insert(stream, recorded.version.0);
                Outcome::Applied
            } else {
                missing.clear();
                Outcome::Early
            }
        };
        outcomes.push(outcome);
        predecessors.push(missing);
    }
    let mut batch = Vec::with_capacity(events.len());
    for ((recorded, outcome), missing) in events.iter().zip(&outcomes).zip(&predecessors) {
        if *outcome == Outcome::Applied {
            for predecessor in missing {
                batch.push((predecessor, decode(predecessor)?));
            }
            batch.push((*recorded, decode(recorded)?));
        }
    }
    if let (Some((first, _)), Some((last, _))) = (batch.first(), batch.last()) {
        let (first, last) = (first.position.0, last.position.0);
        models::apply(conn, projection, schema, &batch, stale)
            .await
            .map_err(|source| ApplyError::Model {
                first,
                last,
                source,
            })?;
    }
    record_versions(conn, schema, touched)
        .await
        .map_err(ApplyError::Bookkeeping)?;
    Ok(outcomes)
}

/// Whether `recorded` is the next event of its stream for the model in `schema`.
pub async fn is_next(
    conn: &mut PgConnection,
    schema: &str,
    recorded: &RecordedEvent,
) -> Result<bool, sqlx::Error> {
    let current: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(max(version), 0) FROM {schema}.applied WHERE stream_id = $1"
    ))
    .bind(recorded.stream_id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(recorded.version.0 == current + 1)
}

/// Gives up on an event that keeps failing: records it as a dead letter and counts its
/// version as applied, so its stream moves on. Returns false (and records nothing) if it
/// is not the next event of its stream.
pub async fn dead_letter(
    conn: &mut PgConnection,
    schema: &str,
    recorded: &RecordedEvent,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    if !is_next(&mut *conn, schema, recorded).await? {
        return Ok(false);
    }
    let stream = recorded.stream_id.to_string();
    sqlx::query(&format!(
        "INSERT INTO {schema}.dead_letters
             (event_id, position, stream_id, version, event_type, reason)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING"
    ))
    .bind(recorded.event_id.0)
    .bind(recorded.position.0)
    .bind(&stream)
    .bind(recorded.version.0)
    .bind(&recorded.event_type)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    record_versions(conn, schema, HashMap::from([(stream, recorded.version.0)])).await?;
    Ok(true)
}

pub fn decode(recorded: &RecordedEvent) -> Result<Event, ApplyError> {
    recorded.decode().map_err(|source| ApplyError::Decode {
        position: recorded.position.0,
        source,
    })
}

async fn applied_versions(
    conn: &mut PgConnection,
    schema: &str,
    events: &[&RecordedEvent],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut streams: Vec<String> = events.iter().map(|e| e.stream_id.to_string()).collect();
    streams.sort_unstable();
    streams.dedup();
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT stream_id, version FROM {schema}.applied WHERE stream_id = ANY($1)"
    ))
    .bind(streams)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn record_versions(
    conn: &mut PgConnection,
    schema: &str,
    versions: HashMap<String, i64>,
) -> Result<(), sqlx::Error> {
    if versions.is_empty() {
        return Ok(());
    }
    let (streams, versions): (Vec<String>, Vec<i64>) = versions.into_iter().unzip();
    sqlx::query(&format!(
        "INSERT INTO {schema}.applied (stream_id, version)
         SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version"
    ))
    .bind(streams)
    .bind(versions)
    .execute(conn)
    .await
    .map(drop)
}
