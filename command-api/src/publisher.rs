//! The outbox publisher: every committed event to JetStream, in log order, once.
//!
//! - **One active publisher.** An instance publishes only while it holds a session
//!   advisory lock on a dedicated Postgres connection; the others retry every second,
//!   so when the leader dies (its connection closes) another takes over within seconds.
//! - **In order, pipelined.** A batch of up to [`WINDOW`] events is published without
//!   waiting, then the acks are awaited in order. Each message carries
//!   `Nats-Expected-Last-Msg-Id` = the previous event's id: if an earlier publish was
//!   lost, the server refuses the later ones instead of storing them out of order.
//! - **Exactly once in the stream.** `Nats-Msg-Id` = event id dedups retries inside the
//!   duplicate window. Beyond it, a new leader first reads the stream's last message and
//!   resumes after the position it carries (the checkpoint may lag the stream after a
//!   crash between ack and checkpoint).
//! - **Wake-up.** Appends NOTIFY `keel_appended`; the publisher also polls every second,
//!   so a lost notification only delays, never loses.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio_util::sync::CancellationToken;

use crate::bus::{self, Bus, StreamError};
use crate::metrics::Metrics;
use events::ids::Position;
use events::{event_log, outbox};

/// Events published per batch before the acks are awaited.
pub const WINDOW: i64 = 1024;
/// How often a follower tries to become the leader, and the leader polls when idle.
pub const POLL: Duration = Duration::from_secs(1);
/// The session advisory lock that makes one instance the publisher.
const LEADER_LOCK: i64 = 7_261_530_813_950_018;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the event log is unavailable")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("publishing to JetStream failed")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("reading the stream's last message failed")]
    LastMessage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where publishing resumes: the last published position, and the id of the stream's
/// last message (what the next publish expects to follow).
pub struct Cursor {
    pub position: Position,
    pub last_msg_id: Option<String>,
    /// The next batch, read and built while the previous one's acks were awaited.
    ahead: Option<Prepared>,
}

impl Cursor {
    pub fn new(position: Position, last_msg_id: Option<String>) -> Self {
        Self {
            position,
            last_msg_id,
            ahead: None,
        }
    }
}

/// A batch ready to send: its messages, chained, and where it ends.
struct Prepared {
    messages: Vec<bus::Message>,
    last_position: Position,
    last_msg_id: String,
}

pub struct Publisher {
    pub pool: PgPool,
    pub database_url: String,
    pub jetstream: jetstream::Context,
    pub bus: Bus,
    pub metrics: Arc<Metrics>,
}

impl Publisher {
    /// Leads when it can, follows otherwise, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let led = tokio::select! {
                // Dropping `lead` mid-way closes its connection, which releases the lock.
                () = stop.cancelled() => Ok(()),
                led = self.lead(&stop) => led,
            };
            if let Err(error) = led {
                tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "publisher stepped down; retrying");
            }
            self.metrics.set_leader(false);
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn lead(&self, stop: &CancellationToken) -> Result<(), PublishError> {
        let mut leader = PgConnection::connect(&self.database_url).await?;
        loop {
            let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut leader)
                .await?;
            if acquired {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(POLL) => {}
            }
        }
        self.metrics.set_leader(true);
        tracing::info!(stream = %self.bus.stream, "this instance is the active publisher");
        let mut listener = PgListener::connect(&self.database_url).await?;
        listener.listen(outbox::APPENDED_CHANNEL).await?;
        let mut stream = self.bus.ensure_stream(&self.jetstream).await?;
        let mut cursor = resume(&mut stream, &mut leader).await?;
        while !stop.is_cancelled() {
            if let Some(from) = outbox::take_republish_request(&mut leader).await? {
                tracing::info!(from = from.0, "republishing the log");
                stream = self.bus.ensure_stream(&self.jetstream).await?;
                let last_msg_id = resume(&mut stream, &mut leader).await?.last_msg_id;
                cursor = Cursor::new(Position(from.0 - 1), last_msg_id);
            }
            if self.publish_batch(&mut leader, &mut cursor).await? == 0 {
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = listener.recv() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
        Ok(())
    }

    /// Reads the batch after `after` and builds its messages, the first one chained to
    /// `expected_last`. `None` when the log has nothing new.
    async fn prepare(
        &self,
        after: Position,
        expected_last: Option<String>,
    ) -> Result<Option<Prepared>, PublishError> {
        let batch = event_log::read_all(&self.pool, after, WINDOW).await?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        let mut expected = expected_last;
        let mut messages = Vec::with_capacity(batch.len());
        for event in &batch {
            messages.push(bus::message(&self.bus, event, expected.as_deref()));
            expected = Some(event.event_id.to_string());
        }
        Ok(Some(Prepared {
            messages,
            last_position: last.position,
            last_msg_id: last.event_id.to_string(),
        }))
    }

    /// Publishes the next batch after `cursor` and records the checkpoint; returns how
    /// many events were published (0 when the log has nothing new). While JetStream
    /// acknowledges the batch, the next one is read and built.
    pub async fn publish_batch(
        &self,
        checkpoint: &mut PgConnection,
        cursor: &mut Cursor,
    ) -> Result<usize, PublishError> {
        let prepared = match cursor.ahead.take() {
            Some(prepared) => prepared,
            None => match self
                .prepare(cursor.position, cursor.last_msg_id.clone())
                .await?
            {
                Some(prepared) => prepared,
                None => return Ok(0),
            },
        };
        let count = prepared.messages.len();
        let mut acks = Vec::with_capacity(count);
        for message in prepared.messages {
            let ack = self
                .jetstream
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await?;
            acks.push(ack);
        }
        let acknowledged = async {
            for ack in acks {
                ack.await?;
            }
            Ok::<(), PublishError>(())
        };
        let (acknowledged, ahead) = tokio::join!(
            acknowledged,
            self.prepare(prepared.last_position, Some(prepared.last_msg_id.clone()))
        );
        acknowledged?;
        cursor.ahead = ahead.ok().flatten();
        cursor.position = prepared.last_position;
        cursor.last_msg_id = Some(prepared.last_msg_id);
        self.metrics.add_published(count as u64);
        outbox::advance(checkpoint, cursor.position).await?;
        tracing::debug!(events = count, position = cursor.position.0, "published");
        Ok(count)
    }
}

/// Where to resume: after the checkpoint, or after the stream's last message if the
/// stream is ahead (a crash between ack and checkpoint).
pub async fn resume(
    stream: &mut stream::Stream,
    checkpoint: &mut PgConnection,
) -> Result<Cursor, PublishError> {
    let saved = outbox::checkpoint(&mut *checkpoint).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| PublishError::LastMessage(Box::new(e)))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(Cursor::new(saved, None));
    }
    let last = stream
        .get_raw_message(state.last_sequence)
        .await
        .map_err(|e| PublishError::LastMessage(Box::new(e)))?;
    let last_msg_id = last
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|id| id.as_str().to_owned());
    let in_stream = serde_json::from_slice::<serde_json::Value>(&last.payload)
        .ok()
        .and_then(|body| body.get("position").and_then(serde_json::Value::as_i64))
        .map(Position);
    if let Some(in_stream) = in_stream
        && in_stream < saved
    {
        tracing::warn!(
            stream_position = in_stream.0,
            checkpoint = saved.0,
            "the stream is behind the log (JetStream lost data?): run `command-api republish --from {}`",
            in_stream.0 + 1
        );
    }
    Ok(Cursor::new(
        in_stream.map_or(saved, |p| p.max(saved)),
        last_msg_id,
    ))
}
