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
//!
//! The reply is a typed [`Outcome`]; what a client is told of it (status, headers,
//! body) is the HTTP layer's (`crate::commands`).
//!
//! - [`aggregate_cache`]: the aggregates' states, refreshed from the log.
//! - [`idempotency`]: the keys, the responses kept under them, their purge.

pub mod aggregate_cache;
pub mod idempotency;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use aggregate_cache::AggregateCache;
use domain::ids::{EventId, Position, StreamId, UserId, Version};
use domain::recorded::Metadata;
use domain::{Actor, Command, DomainError};
use events::event_log::{self, NewEvent};
use idempotency::{Idempotent, StoredResponse};

/// Most commands in one transaction.
pub const MAX_BATCH: usize = 512;
/// Submissions waiting for the writer before handlers wait to enqueue.
pub const QUEUE_CAPACITY: usize = 4096;
/// Longest a handler waits for the writer's answer. The database timeouts (statement
/// 10 s, lock 5 s) normally answer first; past this the outcome is unknown (503), and a
/// retry with the same `Idempotency-Key` resolves it.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A command with everything the writer needs to decide and record it.
pub struct Submission {
    pub principal: UserId,
    pub admin: bool,
    pub command: Command,
    pub if_match: Option<Version>,
    pub idempotency: Option<Idempotent>,
    pub metadata: Metadata,
}

/// What became of an accepted command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Decided now; its events (none, when it changed nothing) are durable.
    Recorded(Recorded),
    /// The same request came before with the same `Idempotency-Key`: what it was
    /// answered then.
    Replayed(StoredResponse),
}

/// A command decided and durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub stream: StreamId,
    /// The stream's version after the command.
    pub version: Version,
    /// Position of the stream's newest event (the command's last, if it appended any).
    pub position: Position,
    /// The events the command appended, in order.
    pub events: Vec<AppendedEvent>,
    /// When its last event was recorded (now, when it appended nothing).
    pub recorded_at: DateTime<Utc>,
}

/// One event a command appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedEvent {
    pub id: EventId,
    pub event_type: &'static str,
    pub version: Version,
    pub position: Position,
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

type Reply = Result<Outcome, CommandError>;
type Pending = (Submission, oneshot::Sender<Reply>);

/// The handle handlers use; cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::Sender<Pending>,
}

impl WriterHandle {
    pub async fn submit(&self, submission: Submission) -> Reply {
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

pub struct Writer {
    pool: PgPool,
    queue: mpsc::Receiver<Pending>,
    cache: AggregateCache,
}

/// Creates the writer and its handle. Run [`Writer::run`] on a task; it stops when every
/// handle is dropped and the queue is drained.
pub fn writer(pool: PgPool) -> (Writer, WriterHandle) {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    (
        Writer {
            pool,
            queue: receiver,
            cache: AggregateCache::default(),
        },
        WriterHandle { queue: sender },
    )
}

/// An accepted submission before its events have positions: its rows (index range),
/// the stream's version after it, and the stream's newest position before it.
type Accepted = (std::ops::Range<usize>, Version, Position);

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
                    self.cache.forget(&s.command.stream_id());
                    self.cache.forget(&StreamId::user(s.principal));
                }
                vec![Err(CommandError::Unavailable); submissions.len()]
            }
        };
        for (reply, result) in replies.into_iter().zip(results) {
            // The client may have gone away; its command stands.
            let _ = reply.send(result);
        }
        self.cache.bound();
    }

    async fn decide_and_append(
        &mut self,
        submissions: &[Submission],
    ) -> Result<Vec<Reply>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let streams = submissions
            .iter()
            .flat_map(|s| [s.command.stream_id(), StreamId::user(s.principal)]);
        let unreadable = self.cache.lock_and_refresh(&mut tx, streams).await?;
        let keys: Vec<(UserId, &str)> = submissions
            .iter()
            .filter_map(|s| {
                s.idempotency
                    .as_ref()
                    .map(|i| (s.principal, i.key.key.as_str()))
            })
            .collect();
        let stored = idempotency::stored_responses(&mut tx, &keys).await?;

        let mut results: Vec<Reply> = Vec::with_capacity(submissions.len());
        let mut rows: Vec<NewEvent> = Vec::new();
        let mut accepted: Vec<Option<Accepted>> = Vec::with_capacity(submissions.len());
        // Idempotency keys first used in this batch -> submission index.
        let mut first_use: HashMap<(UserId, &str), usize> = HashMap::new();
        let mut replays: Vec<(usize, usize)> = Vec::new();

        for (i, s) in submissions.iter().enumerate() {
            accepted.push(None);
            if let Some(key) = s.idempotency.as_ref().map(|i| &i.key) {
                if let Some((hash, response)) = stored.get(&(s.principal, key.key.clone())) {
                    results.push(if *hash == key.request_hash {
                        Ok(Outcome::Replayed(response.clone()))
                    } else {
                        Err(CommandError::IdempotencyKeyReused)
                    });
                    continue;
                }
                if let Some(&first) = first_use.get(&(s.principal, key.key.as_str())) {
                    if submissions[first]
                        .idempotency
                        .as_ref()
                        .map(|i| &i.key.request_hash)
                        == Some(&key.request_hash)
                    {
                        replays.push((i, first));
                        // Filled in with the first submission's response below.
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
            let actor = Actor {
                id: s.principal,
                admin: s.admin,
                standing: self.cache.standing(s.principal),
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
            if let Some(idempotent) = &s.idempotency {
                first_use.insert((s.principal, idempotent.key.key.as_str()), i);
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
        // The response kept for each idempotent submission recorded now.
        let mut kept: Vec<Option<StoredResponse>> = vec![None; submissions.len()];
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
            self.cache.advance(&stream, position);
            let recorded = Recorded {
                stream,
                version,
                position,
                events,
                recorded_at: appended[range]
                    .last()
                    .map_or_else(Utc::now, |a| a.recorded_at),
            };
            if let Some(idempotent) = &s.idempotency {
                let response = (idempotent.render)(&recorded);
                records.push((s.principal, &idempotent.key, response.clone()));
                kept[i] = Some(response);
            }
            results[i] = Ok(Outcome::Recorded(recorded));
        }
        // A key's first use in the batch was accepted, so its response is kept.
        for (i, first) in replays {
            results[i] = kept[first]
                .clone()
                .map(Outcome::Replayed)
                .ok_or(CommandError::Unavailable);
        }
        idempotency::store_responses(&mut tx, &records).await?;
        tx.commit().await?;
        Ok(results)
    }
}
