//! The Postgres event log: append with optimistic concurrency, read by stream or position.
//!
//! # Readers never skip an event
//!
//! Positions come from an identity sequence, and sequence values are handed out before
//! commit: with concurrent appenders, position 11 can commit before position 10, and a
//! reader tailing "everything after the last position I saw" would skip 10 forever.
//!
//! Keel serializes appends instead: every INSERT into `events` first takes one
//! transaction-scoped advisory lock (a statement trigger, so no writer can forget it),
//! and the lock is released only after the commit became visible. So positions become
//! visible in order, a reader may simply read `WHERE position > $cursor ORDER BY
//! position`, and a rolled-back append leaves a harmless gap, never a stall. The same
//! ordering makes the log its own outbox (see below) and `position` a valid
//! read-your-writes token.
//!
//! The cost: appends are one at a time across the whole cluster, each holding the lock
//! for its INSERT and COMMIT. Measured on the 2-core CI machine, a bare one-row INSERT
//! transaction at 32 clients reaches about 11k tx/s unlocked and loses most of that when
//! every client takes one global lock (PROMISES.md: -78 %). The command API therefore
//! never appends one command per transaction: its writer (`command-api::writer`) groups
//! the commands that arrive together into one transaction, so the lock is taken once per
//! batch and its cost is shared by every command in it.
//!
//! The alternative, a transaction-id horizon (`xid8` per row, readers stop below
//! `pg_snapshot_xmin`), needs no lock but orders the log by transaction id, not by
//! position: "the global log in position order" and "applied position N" would then no
//! longer mean one thing.
//!
//! # The log is the outbox
//!
//! Because committed positions only grow, the bus publisher (`command-api::publisher`)
//! finds every committed event by reading after its own checkpoint (`crate::outbox`):
//! one write per event instead of an event row plus an outbox row. Measured with pgbench
//! at 32 clients: 15.2k tx/s for one INSERT, 6.0–6.9k for an event plus an outbox row
//! (BENCHMARKS.md).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use domain::Event;
use domain::ids::{EventId, Position, StreamId, UserId, Version};
use domain::recorded::{Metadata, RecordedEvent};

/// An event about to be appended at an exact stream version.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: EventId,
    pub stream_id: StreamId,
    pub version: Version,
    pub event: Event,
    pub metadata: Metadata,
}

/// Where an appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub event_id: EventId,
    pub position: Position,
    pub recorded_at: DateTime<Utc>,
}

/// One row of the log as Postgres returns it ([`COLUMNS`]), before it is a
/// [`RecordedEvent`]: the domain's types know nothing of SQL.
#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    position: i64,
    event_id: Uuid,
    #[sqlx(try_from = "String")]
    stream_id: StreamId,
    version: i64,
    event_type: String,
    schema_version: i32,
    data: serde_json::Value,
    #[sqlx(json)]
    metadata: Metadata,
    recorded_at: DateTime<Utc>,
}

impl From<EventRow> for RecordedEvent {
    fn from(row: EventRow) -> Self {
        Self {
            position: Position(row.position),
            event_id: EventId(row.event_id),
            stream_id: row.stream_id,
            version: Version(row.version),
            event_type: row.event_type,
            schema_version: row.schema_version,
            data: row.data,
            metadata: row.metadata,
            recorded_at: row.recorded_at,
        }
    }
}

/// The rows of a `SELECT` of [`COLUMNS`], as recorded events.
pub(crate) fn recorded(rows: Vec<EventRow>) -> Vec<RecordedEvent> {
    rows.into_iter().map(RecordedEvent::from).collect()
}

/// What the appender believes about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    Any,
    NoStream,
    Exactly(Version),
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream_id} is at version {actual}, not at the expected {expected:?}")]
    Conflict {
        stream_id: StreamId,
        expected: ExpectedVersion,
        actual: Version,
    },
    #[error("appending to the event log failed")]
    Database(#[source] sqlx::Error),
}

/// The columns of [`RecordedEvent`], in a `SELECT`.
pub(crate) const COLUMNS: &str = "position, event_id, stream_id, version, event_type, schema_version, \
                       data, metadata, recorded_at";

/// Takes the append lock for the rest of the transaction. Needed before reading a
/// stream's version to decide on it; plain INSERTs take it by themselves.
pub async fn lock_appends(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT keel_lock_appends()")
        .execute(conn)
        .await
        .map(drop)
}

/// Appends `events` to one stream if it is at the expected version. Run it inside a
/// transaction: the events become visible, and the lock is released, at its commit.
pub async fn append(
    conn: &mut PgConnection,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: Vec<(Event, Metadata)>,
) -> Result<Vec<Appended>, AppendError> {
    lock_appends(conn).await.map_err(AppendError::Database)?;
    let actual = stream_version(&mut *conn, stream_id)
        .await
        .map_err(AppendError::Database)?;
    let matches = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => actual == Version::NONE,
        ExpectedVersion::Exactly(v) => actual == v,
    };
    if !matches {
        return Err(AppendError::Conflict {
            stream_id: stream_id.clone(),
            expected,
            actual,
        });
    }
    let mut version = actual;
    let rows: Vec<NewEvent> = events
        .into_iter()
        .map(|(event, metadata)| {
            version = version.next();
            NewEvent {
                event_id: EventId::new(),
                stream_id: stream_id.clone(),
                version,
                event,
                metadata,
            }
        })
        .collect();
    insert(conn, &rows).await
}

/// Inserts events at the versions they name, in the given order (so positions follow
/// it). A version that is already taken fails the whole insert with `Conflict`.
pub async fn insert(
    conn: &mut PgConnection,
    rows: &[NewEvent],
) -> Result<Vec<Appended>, AppendError> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut streams = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut schema_versions = Vec::with_capacity(rows.len());
    let mut data = Vec::with_capacity(rows.len());
    let mut metadata = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(row.event_id.0);
        streams.push(row.stream_id.to_string());
        versions.push(row.version.0);
        types.push(row.event.event_type());
        schema_versions.push(row.event.schema_version());
        data.push(row.event.data());
        metadata.push(serde_json::to_value(&row.metadata).unwrap_or_default());
    }
    let appended: Vec<(Uuid, i64, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata)
         SELECT event_id, stream_id, version, event_type, schema_version, data, metadata
         FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[])
              WITH ORDINALITY AS t(event_id, stream_id, version, event_type, schema_version, data, metadata, n)
         ORDER BY n
         RETURNING event_id, position, recorded_at",
    )
    .bind(ids)
    .bind(streams)
    .bind(versions)
    .bind(types)
    .bind(schema_versions)
    .bind(data)
    .bind(metadata)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| conflict_or_database(e, rows))?;
    // RETURNING order is not promised by SQL: report in the order asked.
    Ok(rows
        .iter()
        .filter_map(|row| {
            appended
                .iter()
                .find(|(event_id, _, _)| *event_id == row.event_id.0)
                .map(|&(event_id, position, recorded_at)| Appended {
                    event_id: EventId(event_id),
                    position: Position(position),
                    recorded_at,
                })
        })
        .collect())
}

fn conflict_or_database(error: sqlx::Error, rows: &[NewEvent]) -> AppendError {
    let taken = error
        .as_database_error()
        .and_then(|db| db.constraint())
        .is_some_and(|c| c == "events_stream_version_key");
    match rows.first() {
        Some(row) if taken => AppendError::Conflict {
            stream_id: row.stream_id.clone(),
            expected: ExpectedVersion::Exactly(Version(row.version.0 - 1)),
            actual: Version(row.version.0),
        },
        _ => AppendError::Database(error),
    }
}

/// The stream's current version (0 when it has no events).
pub async fn stream_version(
    executor: impl PgExecutor<'_>,
    stream_id: &StreamId,
) -> Result<Version, sqlx::Error> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
            .bind(stream_id.to_string())
            .fetch_one(executor)
            .await?;
    Ok(Version(version.unwrap_or(0)))
}

/// The name a user had just before `position` (from its latest `user.registered` or
/// `user.updated`), or `None` if it had registered no profile by then.
pub async fn user_name_before(
    executor: impl PgExecutor<'_>,
    user: UserId,
    position: Position,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT data->>'name' FROM events
         WHERE stream_id = $1 AND position < $2
           AND event_type IN ('user.registered', 'user.updated')
         ORDER BY version DESC LIMIT 1",
    )
    .bind(StreamId::user(user).to_string())
    .bind(position.0)
    .fetch_optional(executor)
    .await
    .map(Option::flatten)
}

/// A stream's events after `after`, in version order.
pub async fn read_stream(
    executor: impl PgExecutor<'_>,
    stream_id: &StreamId,
    after: Version,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND version > $2
         ORDER BY version LIMIT $3"
    ))
    .bind(stream_id.to_string())
    .bind(after.0)
    .bind(limit)
    .fetch_all(executor)
    .await
    .map(recorded)
}

/// The global log after `after`, in position order. Never skips a committed event.
pub async fn read_all(
    executor: impl PgExecutor<'_>,
    after: Position,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
    ))
    .bind(after.0)
    .bind(limit)
    .fetch_all(executor)
    .await
    .map(recorded)
}

/// Takes the append lock, then returns every event of the given streams newer than the
/// version the caller already knows, in position order: one round trip to make a set of
/// cached aggregates current and keep them so until commit.
pub async fn lock_and_read_newer(
    conn: &mut PgConnection,
    known: &[(StreamId, Version)],
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let streams: Vec<String> = known.iter().map(|(s, _)| s.to_string()).collect();
    let versions: Vec<i64> = known.iter().map(|(_, v)| v.0).collect();
    sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {COLUMNS} FROM keel_lock_and_read_newer($1::text[], $2::bigint[])"
    ))
    .bind(streams)
    .bind(versions)
    .fetch_all(conn)
    .await
    .map(recorded)
}

/// The position of the newest event (0 for an empty log).
pub async fn head(executor: impl PgExecutor<'_>) -> Result<Position, sqlx::Error> {
    let head: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(executor)
        .await?;
    Ok(Position(head.unwrap_or(0)))
}
