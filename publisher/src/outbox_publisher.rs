//! The outbox publisher: every committed event to JetStream, in log order, once.
//!
//! - **One active publisher.** An instance publishes only while it holds a session
//!   advisory lock on a dedicated Postgres connection; the others retry every second,
//!   so when the leader dies (its connection closes) another takes over within seconds.
//! - **In order, pipelined.** A batch of up to [`WINDOW`] events is published without
//!   waiting, then the acks are awaited in order. Every message says what must precede
//!   it: the first of a fresh batch the stream's last sequence, the others the previous
//!   event's id (`Nats-Expected-Last-Sequence` / `-Msg-Id`). If an earlier publish was
//!   lost, the server refuses the later ones instead of storing them out of order.
//! - **Exactly once in the stream, the log's order.** `Nats-Msg-Id` = event id dedups
//!   retries inside the duplicate window. Beyond it, a new leader reads the stream's last
//!   message and resumes after the position it carries, moving the checkpoint to it:
//!   forward after a crash between ack and checkpoint, backward when JetStream lost its
//!   tail (the missing events are published again, in order). An empty stream that never
//!   held a message (new, or deleted and recreated) is filled from the start of the log.
//! - **Wake-up.** Appends NOTIFY `keel_appended`; the publisher also polls every second,
//!   so a lost notification only delays, never loses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio_util::sync::CancellationToken;

use crate::message::{Expect, Message};
use crate::progress::Progress;
use crate::stream::{EventStream, StreamError};
use domain::ids::Position;
use events::{event_log, outbox};

/// Events published per batch before the acks are awaited.
pub const WINDOW: i64 = 1024;
/// How often a follower tries to become the leader, and the leader polls when idle.
pub const POLL: Duration = Duration::from_secs(1);
/// How long the leader's session may stay silent before Postgres ends it.
pub const LEADER_IDLE: Duration = Duration::from_secs(5);
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

/// Where publishing resumes: the last published position, and the stream's last
/// sequence (what the next fresh batch expects to follow).
pub struct ResumePoint {
    pub position: Position,
    pub last_sequence: u64,
    /// The next batch, read and built while the previous one's acks were awaited.
    ahead: Option<Prepared>,
}

impl ResumePoint {
    pub fn new(position: Position, last_sequence: u64) -> Self {
        Self {
            position,
            last_sequence,
            ahead: None,
        }
    }
}

/// A batch ready to send: its messages, chained, and where it ends.
struct Prepared {
    messages: Vec<Message>,
    last_position: Position,
    last_msg_id: String,
}

/// What the first message of a batch expects to follow.
enum After {
    /// The stream's last sequence (a fresh batch).
    Sequence(u64),
    /// The previous batch's last message (a batch read ahead).
    MsgId(String),
}

pub struct Publisher {
    pub pool: PgPool,
    pub database_url: String,
    pub jetstream: jetstream::Context,
    pub stream: EventStream,
    /// Updated as it leads and publishes; the host process exports it.
    pub progress: Arc<Progress>,
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
            self.progress.set_leader(false);
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Runs until `shutdown` resolves (the publisher as its own process).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        tokio::join!(self.run(stop), async move {
            shutdown.await;
            stopping.cancel();
        });
    }

    async fn lead(&self, stop: &CancellationToken) -> Result<(), PublishError> {
        let mut leader = PgConnection::connect(&self.database_url).await?;
        // The active leader queries at least every POLL, well within LEADER_IDLE.
        if !events::leader::acquire(&mut leader, LEADER_LOCK, LEADER_IDLE, POLL, stop).await? {
            return Ok(());
        }
        self.progress.set_leader(true);
        tracing::info!(stream = %self.stream.name, "this instance is the active publisher");
        let mut listener = PgListener::connect(&self.database_url).await?;
        listener.listen(outbox::APPENDED_CHANNEL).await?;
        let mut stream = self.stream.ensure(&self.jetstream).await?;
        let mut resume_point = resume(&mut stream, &mut leader).await?;
        while !stop.is_cancelled() {
            if let Some(from) = outbox::take_republish_request(&mut leader).await? {
                stream = self.stream.ensure(&self.jetstream).await?;
                let resumed = resume(&mut stream, &mut leader).await?;
                // Never behind what the stream already holds: that would store twice.
                let position = Position((from.0 - 1).max(0)).max(resumed.position);
                tracing::info!(from = position.0 + 1, "republishing the log");
                outbox::rewind(&mut leader, position).await?;
                resume_point = ResumePoint::new(position, resumed.last_sequence);
            }
            if self.publish_batch(&mut leader, &mut resume_point).await? == 0 {
                tokio::select! {
                    () = stop.cancelled() => {}
                    woke = listener.recv() => {
                        if woke.is_err() {
                            tokio::time::sleep(POLL).await;
                        }
                    }
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
        Ok(())
    }

    /// Reads the batch after `after` and builds its messages, the first one chained as
    /// `first`, each later one to its predecessor. `None` when the log has nothing new.
    async fn prepare(
        &self,
        after: Position,
        first: After,
    ) -> Result<Option<Prepared>, PublishError> {
        let batch = event_log::read_all(&self.pool, after, WINDOW).await?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        let mut messages = Vec::with_capacity(batch.len());
        let mut previous: Option<String> = None;
        for event in &batch {
            let expect = match (&previous, &first) {
                (Some(id), _) | (None, After::MsgId(id)) => Expect::LastMsgId(id),
                (None, After::Sequence(sequence)) => Expect::LastSequence(*sequence),
            };
            messages.push(Message::new(&self.stream, event, Some(expect)));
            previous = Some(event.event_id.to_string());
        }
        Ok(Some(Prepared {
            messages,
            last_position: last.position,
            last_msg_id: last.event_id.to_string(),
        }))
    }

    /// Publishes the next batch after `resume_point` and records the checkpoint; returns how
    /// many events were published (0 when the log has nothing new). While JetStream
    /// acknowledges the batch, the next one is read and built.
    pub async fn publish_batch(
        &self,
        checkpoint: &mut PgConnection,
        resume_point: &mut ResumePoint,
    ) -> Result<usize, PublishError> {
        let prepared = match resume_point.ahead.take() {
            Some(prepared) => prepared,
            None => match self
                .prepare(
                    resume_point.position,
                    After::Sequence(resume_point.last_sequence),
                )
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
            let mut last_sequence = None;
            for ack in acks {
                last_sequence = Some(ack.await?.sequence);
            }
            Ok::<_, PublishError>(last_sequence)
        };
        let (acknowledged, ahead) = tokio::join!(
            acknowledged,
            self.prepare(
                prepared.last_position,
                After::MsgId(prepared.last_msg_id.clone())
            )
        );
        if let Some(sequence) = acknowledged? {
            resume_point.last_sequence = sequence;
        }
        resume_point.ahead = ahead.ok().flatten();
        resume_point.position = prepared.last_position;
        self.progress.add_published(count as u64);
        outbox::advance(checkpoint, resume_point.position).await?;
        tracing::debug!(
            events = count,
            position = resume_point.position.0,
            "published"
        );
        Ok(count)
    }
}

/// The position carried by the stream's newest message. Messages at the end of the
/// stream may have been deleted, so it looks back, at most [`WINDOW`] messages.
async fn last_position(
    stream: &stream::Stream,
    first: u64,
    last: u64,
) -> Result<Option<Position>, PublishError> {
    let mut sequence = last;
    while sequence >= first.max(1) && last - sequence < WINDOW as u64 {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            return Ok(
                serde_json::from_slice::<serde_json::Value>(&message.payload)
                    .ok()
                    .and_then(|body| body.get("position").and_then(serde_json::Value::as_i64))
                    .map(Position),
            );
        }
        sequence -= 1;
    }
    Err(PublishError::LastMessage(
        format!("no readable message among the stream's last {WINDOW}").into(),
    ))
}

/// Where to resume, from the stream itself: after the position its last message
/// carries. The checkpoint is moved there (forward after a crash between ack and
/// checkpoint, backward if JetStream lost its tail). A stream that was purged (empty,
/// but with a sequence) keeps the checkpoint; one that never held a message starts at
/// the beginning of the log.
pub async fn resume(
    stream: &mut stream::Stream,
    checkpoint: &mut PgConnection,
) -> Result<ResumePoint, PublishError> {
    let saved = outbox::checkpoint(&mut *checkpoint).await?;
    let state = stream
        .info()
        .await
        .map_err(|e| PublishError::LastMessage(Box::new(e)))?
        .state
        .clone();
    let position = if state.messages == 0 {
        if state.last_sequence == 0 {
            Position(0)
        } else {
            saved
        }
    } else {
        last_position(stream, state.first_sequence, state.last_sequence)
            .await?
            .unwrap_or(saved)
    };
    if position < saved {
        tracing::warn!(
            stream_position = position.0,
            checkpoint = saved.0,
            "the stream is behind the log (JetStream lost data); publishing the missing events"
        );
    }
    if position != saved {
        outbox::rewind(&mut *checkpoint, position).await?;
    }
    Ok(ResumePoint::new(position, state.last_sequence))
}
