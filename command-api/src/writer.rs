//! The writer: one task that appends the commands arriving together in one Postgres
//! transaction (group commit), each checked against its own stream.
//!
//! Handlers hand a [`Submission`] to the writer and await its reply. The writer drains
//! what is queued (up to [`MAX_BATCH`]) and, in one transaction holding the log's
//! append lock:
//! 1. takes the lock and refreshes its cached aggregate states with the events they
//!    have not seen (one query; another instance may have appended);
//! 2. looks up the batch's idempotency keys (one query);
//! 3. decides each command in order against the current state (`If-Match`, then the
//!    aggregate's `decide`), so a conflict fails only its own command;
//! 4. inserts all new events and idempotency records (two statements) and commits.
//!
//! Replies go out only after the commit: nothing is acknowledged before it is durable.
//! If the transaction fails, every command of the batch gets "unavailable" and the
//! touched cache entries are dropped; a client that retries with the same
//! `Idempotency-Key` gets exactly one outcome.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use events::domain::{Actor, Command, DomainError, State};
use events::event_log::{self, Metadata, NewEvent};
use events::ids::{EventId, Position, StreamId, UserId, Version};

/// Most commands in one transaction.
pub const MAX_BATCH: usize = 512;
/// Submissions waiting for the writer before handlers wait to enqueue.
pub const QUEUE_CAPACITY: usize = 4096;
/// Longest a handler waits for the writer's answer. The database timeouts (statement
/// 10 s, lock 5 s) normally answer first; past this the outcome is unknown (503), and a
/// retry with the same `Idempotency-Key` resolves it.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Aggregates kept in memory; past this the cache starts over. A post keeps its title and
/// body (for no-op detection and full `post.updated` payloads), up to ~80 KB each, so
/// this bounds the cache to under a gigabyte in the worst case, far less in practice.
pub const CACHE_CAPACITY: usize = 10_000;

/// A command with everything the writer needs to decide and record it.
pub struct Submission {
    pub principal: UserId,
    pub admin: bool,
    pub command: Command,
    pub if_match: Option<Version>,
    pub idempotency: Option<IdempotencyKey>,
    pub metadata: Metadata,
    /// 201 for commands that create something, else 200.
    pub created_status: bool,
    pub location: Option<String>,
    /// Extra response fields (e.g. the new comment's id).
    pub extra: Vec<(&'static str, serde_json::Value)>,
    /// Adds `created_at` to the response: when its last event was recorded (now, when
    /// the command appended nothing).
    pub stamped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of method, path and body: the same key with another request is refused.
    pub request_hash: Vec<u8>,
}

/// What the client is told about an accepted command.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: u16,
    pub body: serde_json::Value,
    pub location: Option<String>,
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the stream is at version {current}")]
    PreconditionFailed { current: Version },
    #[error("this idempotency key was used with a different request")]
    IdempotencyKeyReused,
    #[error("the event log is unavailable")]
    Unavailable,
    #[error("a stream this command needs holds an event that cannot be decoded")]
    Unreadable,
}

#[derive(Serialize)]
struct AppendedEvent {
    id: EventId,
    #[serde(rename = "type")]
    event_type: &'static str,
    version: Version,
    position: Position,
}

/// The handle handlers use; cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::Sender<(Submission, oneshot::Sender<Result<Outcome, CommandError>>)>,
}

impl WriterHandle {
    pub async fn submit(&self, submission: Submission) -> Result<Outcome, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((submission, reply))
            .await
            .map_err(|_| CommandError::Unavailable)?;
        match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            _ => Err(CommandError::Unavailable),
        }
    }
}

type Pending = (Submission, oneshot::Sender<Result<Outcome, CommandError>>);

struct Cached {
    state: State,
    version: Version,
    /// Position of the stream's newest event.
    position: Position,
}

pub struct Writer {
    pool: PgPool,
    queue: mpsc::Receiver<Pending>,
    cache: HashMap<StreamId, Cached>,
}

/// Creates the writer and its handle. Run [`Writer::run`] on a task; it stops when every
/// handle is dropped and the queue is drained.
pub fn writer(pool: PgPool) -> (Writer, WriterHandle) {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    (
        Writer {
            pool,
            queue: receiver,
            cache: HashMap::new(),
        },
        WriterHandle { queue: sender },
    )
}

impl Writer {
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.write_batch(std::mem::take(&mut batch)).await;
        }
        tracing::info!("writer stopped");
    }

    /// Decides and appends one batch, then replies to each submission.
    #[tracing::instrument(skip_all, fields(commands = batch.len()))]
    pub async fn write_batch(&mut self, batch: Vec<Pending>) {
        let (submissions, replies): (Vec<Submission>, Vec<_>) = batch.into_iter().unzip();
        let results = match self.decide_and_append(&submissions).await {
            Ok(results) => results,
            Err(error) => {
                tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "appending a batch failed");
                for s in &submissions {
                    self.cache.remove(&s.command.stream_id());
                    self.cache.remove(&StreamId::user(s.principal));
                }
                vec![Err(CommandError::Unavailable); submissions.len()]
            }
        };
        for (reply, result) in replies.into_iter().zip(results) {
            // The client may have gone away; its command stands.
            let _ = reply.send(result);
        }
        if self.cache.len() > CACHE_CAPACITY {
            self.cache.clear();
        }
    }

    async fn decide_and_append(
        &mut self,
        submissions: &[Submission],
    ) -> Result<Vec<Result<Outcome, CommandError>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let unreadable = self.lock_and_refresh(&mut tx, submissions).await?;
        let stored = stored_responses(&mut tx, submissions).await?;

        let mut results: Vec<Result<Outcome, CommandError>> = Vec::with_capacity(submissions.len());
        let mut rows: Vec<NewEvent> = Vec::new();
        // Per accepted submission: its rows (index range), stream version and position.
        let mut accepted: Vec<Option<(std::ops::Range<usize>, Version, Position)>> =
            Vec::with_capacity(submissions.len());
        // Idempotency keys first used in this batch -> submission index.
        let mut first_use: HashMap<(UserId, &str), usize> = HashMap::new();
        let mut replays: Vec<(usize, usize)> = Vec::new();

        for (i, s) in submissions.iter().enumerate() {
            accepted.push(None);
            if let Some(key) = &s.idempotency {
                if let Some((hash, outcome)) = stored.get(&(s.principal, key.key.clone())) {
                    results.push(if *hash == key.request_hash {
                        Ok(outcome.clone())
                    } else {
                        Err(CommandError::IdempotencyKeyReused)
                    });
                    continue;
                }
                if let Some(&first) = first_use.get(&(s.principal, key.key.as_str())) {
                    if submissions[first]
                        .idempotency
                        .as_ref()
                        .map(|k| &k.request_hash)
                        == Some(&key.request_hash)
                    {
                        replays.push((i, first));
                        // Filled in with the first submission's outcome below.
                        results.push(Err(CommandError::Unavailable));
                    } else {
                        results.push(Err(CommandError::IdempotencyKeyReused));
                    }
                    continue;
                }
            }
            let stream = s.command.stream_id();
            if unreadable.contains(&stream) || unreadable.contains(&StreamId::user(s.principal)) {
                results.push(Err(CommandError::Unreadable));
                continue;
            }
            let standing = self
                .cache
                .get(&StreamId::user(s.principal))
                .map_or(events::domain::Standing::Unregistered, |c| {
                    c.state.standing()
                });
            let actor = Actor {
                id: s.principal,
                admin: s.admin,
                standing,
            };
            let Some(entry) = self.cache.get_mut(&stream) else {
                results.push(Err(CommandError::Unavailable));
                continue;
            };
            if let Some(expected) = s.if_match
                && expected != entry.version
            {
                results.push(Err(CommandError::PreconditionFailed {
                    current: entry.version,
                }));
                continue;
            }
            let decided = match entry.state.decide(&actor, &s.command) {
                Ok(decided) => decided,
                Err(error) => {
                    results.push(Err(error.into()));
                    continue;
                }
            };
            let start = rows.len();
            for event in decided {
                entry.state.apply(&event);
                entry.version = entry.version.next();
                rows.push(NewEvent {
                    event_id: EventId::new(),
                    stream_id: stream.clone(),
                    version: entry.version,
                    event,
                    metadata: s.metadata.clone(),
                });
            }
            accepted[i] = Some((start..rows.len(), entry.version, entry.position));
            if let Some(key) = &s.idempotency {
                first_use.insert((s.principal, key.key.as_str()), i);
            }
            // Filled in with the outcome once the events have positions.
            results.push(Err(CommandError::Unavailable));
        }

        let appended = match event_log::insert(&mut tx, &rows).await {
            Ok(appended) => appended,
            Err(event_log::AppendError::Database(e)) => return Err(e),
            // The lock makes this impossible unless the cache is wrong: start over.
            Err(conflict @ event_log::AppendError::Conflict { .. }) => {
                tracing::error!(error = %conflict, "cached stream version was stale");
                self.cache.clear();
                return Err(sqlx::Error::Protocol(conflict.to_string()));
            }
        };

        let mut records = Vec::new();
        for (i, s) in submissions.iter().enumerate() {
            let Some((range, version, last_position)) = accepted[i].clone() else {
                continue;
            };
            let events: Vec<AppendedEvent> = rows[range.clone()]
                .iter()
                .zip(&appended[range.clone()])
                .map(|(row, a)| AppendedEvent {
                    id: row.event_id,
                    event_type: row.event.event_type(),
                    version: row.version,
                    position: a.position,
                })
                .collect();
            let position = events.last().map_or(last_position, |e| e.position);
            let stream = s.command.stream_id();
            if let Some(entry) = self.cache.get_mut(&stream) {
                entry.position = entry.position.max(position);
            }
            let mut body = serde_json::json!({
                "id": stream.aggregate_id(),
                "stream_id": stream.to_string(),
                "version": version,
                "position": position,
                "events": events,
            });
            if let Some(fields) = body.as_object_mut() {
                for (name, value) in &s.extra {
                    fields.insert((*name).to_owned(), value.clone());
                }
                if s.stamped {
                    let recorded_at = appended[range.clone()]
                        .last()
                        .map_or_else(chrono::Utc::now, |a| a.recorded_at);
                    fields.insert("created_at".to_owned(), serde_json::json!(recorded_at));
                }
            }
            let outcome = Outcome {
                // A command that creates something but appended nothing (a repeated
                // revocation) created nothing.
                status: if s.created_status && !range.is_empty() {
                    201
                } else {
                    200
                },
                body,
                location: s.location.clone(),
                replayed: false,
            };
            if let Some(key) = &s.idempotency {
                records.push((s.principal, key, outcome.clone()));
            }
            results[i] = Ok(outcome);
        }
        for (i, first) in replays {
            results[i] = match &results[first] {
                Ok(outcome) => Ok(Outcome {
                    replayed: true,
                    ..outcome.clone()
                }),
                Err(error) => Err(error.clone()),
            };
        }
        store_responses(&mut tx, &records).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// Takes the append lock and brings every stream the batch touches (targets and
    /// actors) up to date.
    /// Streams holding an event this code cannot decode are returned (and left out of
    /// the cache): only their commands fail, not the batch.
    async fn lock_and_refresh(
        &mut self,
        tx: &mut sqlx::PgConnection,
        submissions: &[Submission],
    ) -> Result<HashSet<StreamId>, sqlx::Error> {
        let mut known: Vec<(StreamId, Version)> = Vec::new();
        for s in submissions {
            for stream in [s.command.stream_id(), StreamId::user(s.principal)] {
                let entry = self.cache.entry(stream.clone()).or_insert_with(|| Cached {
                    state: State::initial(&stream),
                    version: Version::NONE,
                    position: Position(0),
                });
                if !known.iter().any(|(k, _)| *k == stream) {
                    known.push((stream, entry.version));
                }
            }
        }
        let mut unreadable = HashSet::new();
        for recorded in event_log::lock_and_read_newer(tx, &known).await? {
            if unreadable.contains(&recorded.stream_id) {
                continue;
            }
            match recorded.decode() {
                Ok(event) => {
                    if let Some(entry) = self.cache.get_mut(&recorded.stream_id) {
                        entry.state.apply(&event);
                        entry.version = recorded.version;
                        entry.position = recorded.position;
                    }
                }
                Err(error) => {
                    tracing::error!(
                        error = %error,
                        stream_id = %recorded.stream_id,
                        position = recorded.position.0,
                        "an event of this stream cannot be decoded; its commands fail"
                    );
                    self.cache.remove(&recorded.stream_id);
                    unreadable.insert(recorded.stream_id.clone());
                }
            }
        }
        Ok(unreadable)
    }
}

type StoredResponses = HashMap<(UserId, String), (Vec<u8>, Outcome)>;

#[derive(sqlx::FromRow)]
struct StoredRow {
    #[sqlx(try_from = "uuid::Uuid")]
    principal: UserId,
    key: String,
    request_hash: Vec<u8>,
    status: i16,
    location: Option<String>,
    response: serde_json::Value,
}

/// The unexpired stored responses for the batch's idempotency keys.
async fn stored_responses(
    tx: &mut sqlx::PgConnection,
    submissions: &[Submission],
) -> Result<StoredResponses, sqlx::Error> {
    let (principals, keys): (Vec<uuid::Uuid>, Vec<&str>) = submissions
        .iter()
        .filter_map(|s| {
            s.idempotency
                .as_ref()
                .map(|k| (s.principal.0, k.key.as_str()))
        })
        .unzip();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT i.principal, i.key, i.request_hash, i.status, i.location, i.response
         FROM idempotency_keys i
         JOIN unnest($1::uuid[], $2::text[]) AS k(principal, key)
           ON i.principal = k.principal AND i.key = k.key
         WHERE i.created_at > now() - interval '24 hours'",
    )
    .bind(principals)
    .bind(keys)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let outcome = Outcome {
                status: r.status as u16,
                body: r.response,
                location: r.location,
                replayed: true,
            };
            ((r.principal, r.key), (r.request_hash, outcome))
        })
        .collect())
}

/// Records responses for idempotency keys; an expired record of the same key is replaced.
async fn store_responses(
    tx: &mut sqlx::PgConnection,
    records: &[(UserId, &IdempotencyKey, Outcome)],
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let principals: Vec<uuid::Uuid> = records.iter().map(|(p, _, _)| p.0).collect();
    let keys: Vec<&str> = records.iter().map(|(_, k, _)| k.key.as_str()).collect();
    let hashes: Vec<&[u8]> = records
        .iter()
        .map(|(_, k, _)| k.request_hash.as_slice())
        .collect();
    let statuses: Vec<i16> = records.iter().map(|(_, _, o)| o.status as i16).collect();
    let locations: Vec<Option<&str>> = records
        .iter()
        .map(|(_, _, o)| o.location.as_deref())
        .collect();
    let bodies: Vec<&serde_json::Value> = records.iter().map(|(_, _, o)| &o.body).collect();
    sqlx::query(
        "INSERT INTO idempotency_keys (principal, key, request_hash, status, location, response)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::int2[], $5::text[], $6::jsonb[])
         ON CONFLICT (principal, key) DO UPDATE
           SET request_hash = excluded.request_hash, status = excluded.status,
               location = excluded.location, response = excluded.response, created_at = now()
           WHERE idempotency_keys.created_at <= now() - interval '24 hours'",
    )
    .bind(principals)
    .bind(keys)
    .bind(hashes)
    .bind(statuses)
    .bind(locations)
    .bind(bodies)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes idempotency records older than 24 hours.
pub async fn purge_expired_keys(pool: &PgPool) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= now() - interval '24 hours'")
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}
