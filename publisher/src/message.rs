//! One event as a NATS message: a structured-mode CloudEvent with `Nats-Msg-Id` (the
//! event id) and, when chained, the expected last sequence or message id.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::stream::EventStream;
use domain::envelope;
use domain::recorded::RecordedEvent;

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

impl Message {
    /// The message of `event` on `stream`, chained by `expect` when given.
    pub fn new(stream: &EventStream, event: &RecordedEvent, expect: Option<Expect<'_>>) -> Self {
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
        Self {
            subject: stream.subject(&event.event_type, &event.stream_id),
            headers,
            payload: Bytes::from(body),
        }
    }
}
