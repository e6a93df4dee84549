//! The dead-letter stream `<KEEL_STREAM>_DLQ`: where a message that keeps failing a
//! consumer is published, with the consumer and the reason, before the consumer moves on.
//!
//! A projection's own `dead_letters` table is what `projectors dead-letters` lists and
//! replays; the stream is the bus-side record other tools can subscribe to. The command
//! API creates the stream beside the event stream (the projectors and the relay may only
//! publish to it); until it exists, publishing a dead letter fails and the consumer
//! retries, as after any other failure.

use async_nats::HeaderMap;
use async_nats::jetstream;
use domain::recorded::RecordedEvent;

/// Where dead letters go: stream `<KEEL_STREAM>_DLQ`, subjects `dlq.<prefix>.<consumer>`
/// (`events::nats`).
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    pub subjects: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("publishing to the dead-letter stream failed")]
    Publish(#[source] jetstream::context::PublishError),
}

/// What is known about the failed message.
pub struct Letter<'a> {
    pub consumer: &'a str,
    pub reason: &'a str,
    /// The event's id, when the message could be read as an event.
    pub event_id: Option<String>,
    pub position: Option<i64>,
    pub stream_sequence: u64,
    pub payload: bytes::Bytes,
}

impl<'a> Letter<'a> {
    /// The letter of the message at `stream_sequence`, which `consumer` gives up on for
    /// `reason`; `event` is the message read as an event, when it could be.
    pub fn new(
        consumer: &'a str,
        reason: &'a str,
        event: Option<&RecordedEvent>,
        stream_sequence: u64,
        payload: bytes::Bytes,
    ) -> Self {
        Self {
            consumer,
            reason,
            event_id: event.map(|e| e.event_id.to_string()),
            position: event.map(|e| e.position.0),
            stream_sequence,
            payload,
        }
    }
}

impl DeadLetterQueue {
    /// The dead letters of the events on `subject_prefix` (the command API makes their
    /// stream).
    pub fn of(subject_prefix: &str) -> Self {
        Self {
            subjects: events::nats::dead_letter_subjects(subject_prefix),
        }
    }

    fn subject(&self, consumer: &str) -> String {
        format!("{}.{consumer}", self.subjects)
    }

    /// Publishes the letter and waits for the server's ack. The message id makes a
    /// repeated attempt (after a crash) a duplicate the server drops.
    pub async fn publish(
        &self,
        context: &jetstream::Context,
        letter: Letter<'_>,
    ) -> Result<(), DeadLetterError> {
        let mut headers = HeaderMap::new();
        let id = match &letter.event_id {
            Some(event_id) => format!("{}:{event_id}", letter.consumer),
            None => format!("{}:seq-{}", letter.consumer, letter.stream_sequence),
        };
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        headers.insert("Keel-Consumer", letter.consumer);
        // A header value is one line.
        let reason: String = letter
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(500)
            .collect();
        headers.insert("Keel-Reason", reason.as_str());
        headers.insert(
            "Keel-Stream-Sequence",
            letter.stream_sequence.to_string().as_str(),
        );
        if let Some(position) = letter.position {
            headers.insert("Keel-Position", position.to_string().as_str());
        }
        headers.insert("content-type", "application/cloudevents+json");
        context
            .publish_with_headers(self.subject(letter.consumer), headers, letter.payload)
            .await
            .map_err(DeadLetterError::Publish)?
            .await
            .map(drop)
            .map_err(DeadLetterError::Publish)
    }
}
