//! The JetStream side of the outbox: the stream Keel publishes to, and each event as a
//! structured-mode CloudEvent message.
//!
//! Durability (PROMISES P18): the stream uses file storage, a duplicate window of at
//! least two minutes, and discards nothing by itself (no limits; `DiscardPolicy::New`
//! refuses rather than silently drops if an operator adds limits). The server's
//! `sync_interval` is not visible to clients: Debian's nats-server syncs every two
//! minutes by default, so an OS crash can lose acknowledged messages. Postgres stays the
//! source of truth, and `command-api republish` rebuilds the stream from the log.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use events::envelope;
use events::event_log::RecordedEvent;

/// The shortest duplicate window Keel accepts on its stream.
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Where events go: the stream and the subject prefix (`<prefix>.<type>`).
#[derive(Debug, Clone)]
pub struct Bus {
    pub stream: String,
    pub subject_prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create JetStream stream {stream}")]
    Create {
        stream: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("JetStream stream {stream} exists but is incompatible: {reason}")]
    Incompatible { stream: String, reason: String },
    #[error("cannot read JetStream stream {stream}")]
    Read {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Bus {
    pub fn subject(&self, event_type: &str) -> String {
        format!("{}.{event_type}", self.subject_prefix)
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            duplicate_window: MIN_DUPLICATE_WINDOW,
            num_replicas: 1,
            allow_direct: true,
            ..Default::default()
        }
    }

    /// Creates the stream and its dead-letter stream, or checks and updates existing
    /// ones. An existing stream with memory storage, or that cannot take Keel's subjects,
    /// is an error. The command API manages both: the projectors and the relay may only
    /// consume the one and publish to the other.
    pub async fn ensure_stream(
        &self,
        context: &jetstream::Context,
    ) -> Result<stream::Stream, StreamError> {
        let stream = self.ensure_event_stream(context).await?;
        self.ensure_dead_letter_stream(context).await?;
        Ok(stream)
    }

    /// The dead-letter stream `<stream>_DLQ` on `dlq.<prefix>.>`: file storage, kept
    /// until removed, created if missing.
    async fn ensure_dead_letter_stream(
        &self,
        context: &jetstream::Context,
    ) -> Result<(), StreamError> {
        let name = events::nats::dead_letter_stream(&self.stream);
        let subjects = events::nats::dead_letter_subjects(&self.subject_prefix);
        context
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{subjects}.>")],
                storage: stream::StorageType::File,
                duplicate_window: MIN_DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|source| StreamError::Create {
                stream: name,
                source,
            })
    }

    async fn ensure_event_stream(
        &self,
        context: &jetstream::Context,
    ) -> Result<stream::Stream, StreamError> {
        let wanted = self.config();
        let Ok(mut existing) = context.get_stream(&self.stream).await else {
            return context
                .create_stream(wanted)
                .await
                .map_err(|source| StreamError::Create {
                    stream: self.stream.clone(),
                    source,
                });
        };
        let current = existing
            .info()
            .await
            .map_err(|source| StreamError::Read {
                stream: self.stream.clone(),
                source: Box::new(source),
            })?
            .config
            .clone();
        if current.storage != stream::StorageType::File {
            return Err(self.incompatible("it uses memory storage, Keel needs file storage"));
        }
        if current.retention != stream::RetentionPolicy::Limits || current.sealed {
            return Err(self.incompatible(
                "its retention is not `limits` (or it is sealed): events could be dropped",
            ));
        }
        if current.subjects != wanted.subjects || current.duplicate_window < MIN_DUPLICATE_WINDOW {
            let updated = stream::Config {
                subjects: wanted.subjects.clone(),
                duplicate_window: current.duplicate_window.max(MIN_DUPLICATE_WINDOW),
                ..current
            };
            context
                .update_stream(updated)
                .await
                .map_err(|e| self.incompatible(&e.to_string()))?;
        }
        context
            .get_stream(&self.stream)
            .await
            .map_err(|source| StreamError::Read {
                stream: self.stream.clone(),
                source: Box::new(source),
            })
    }

    fn incompatible(&self, reason: &str) -> StreamError {
        StreamError::Incompatible {
            stream: self.stream.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// The NATS message of one event: headers and CloudEvents JSON body.
pub struct Message {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// What the server must find at the end of the stream before it stores a message: a gap
/// (a lost earlier publish) is refused instead of stored out of order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// The stream's last sequence: for the first message after a (re)start or a pause.
    /// The server keeps this across restarts, unlike the last message id, which it
    /// rebuilds only from messages inside the duplicate window.
    LastSequence(u64),
    /// The previous message's id: within a batch, where sequences are not known yet.
    LastMsgId(&'a str),
}

/// Builds the message, chained by `expect` when given.
pub fn message(bus: &Bus, event: &RecordedEvent, expect: Option<Expect<'_>>) -> Message {
    let body = envelope::to_bytes(event);
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        event.event_id.to_string().as_str(),
    );
    headers.insert("content-type", "application/cloudevents+json");
    match expect {
        Some(Expect::LastSequence(sequence)) => headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            sequence.to_string().as_str(),
        ),
        Some(Expect::LastMsgId(id)) => {
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID, id)
        }
        None => {}
    }
    Message {
        subject: bus.subject(&event.event_type),
        headers,
        payload: Bytes::from(body),
    }
}
