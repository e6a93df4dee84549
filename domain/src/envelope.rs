//! The CloudEvents 1.0 envelope of a logged event (structured content mode, JSON event
//! format): built here and nowhere else.
//!
//! Serialized directly from a borrowed view of the event, with no intermediate builder:
//! the publisher builds one per event on its hot path. Tests parse the output with
//! cloudevents-sdk to prove it is a valid CloudEvent.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ids::EventId;
use crate::recorded::RecordedEvent;

/// The `source` attribute: which Keel service owns events of this type.
pub fn source(event_type: &str) -> &'static str {
    if event_type.starts_with("user.") || event_type.starts_with("token.") {
        "/keel/users"
    } else {
        "/keel/blog"
    }
}

/// The `dataschema` attribute: names `schemas/events/<type>.v<version>.json`.
pub fn dataschema(event_type: &str, schema_version: i32) -> String {
    format!("urn:keel:schemas:events/{event_type}.v{schema_version}.json")
}

/// The attributes, Keel's extensions (`position`, `streamversion`, `correlationid`,
/// `causationid`, and `traceparent` when known) and the data.
#[derive(Serialize)]
struct Structured<'a> {
    specversion: &'static str,
    id: EventId,
    source: &'static str,
    #[serde(rename = "type")]
    event_type: &'a str,
    subject: String,
    time: DateTime<Utc>,
    datacontenttype: &'static str,
    dataschema: String,
    position: i64,
    streamversion: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    data: &'a serde_json::Value,
}

fn structured(event: &RecordedEvent) -> Structured<'_> {
    let meta = &event.metadata;
    Structured {
        specversion: "1.0",
        id: event.event_id,
        source: source(&event.event_type),
        event_type: &event.event_type,
        subject: event.stream_id.to_string(),
        time: event.recorded_at,
        datacontenttype: "application/json",
        dataschema: dataschema(&event.event_type, event.schema_version),
        position: event.position.0,
        streamversion: event.version.0,
        correlationid: meta.correlation_id.as_deref(),
        causationid: meta.causation_id.as_deref(),
        traceparent: meta.traceparent.as_deref(),
        data: &event.data,
    }
}

/// The event in the CloudEvents JSON format, serialized (the bus message body).
pub fn to_bytes(event: &RecordedEvent) -> Vec<u8> {
    // Strings, integers, a timestamp and a JSON value: serializing cannot fail.
    serde_json::to_vec(&structured(event)).unwrap_or_default()
}

/// The event in the CloudEvents JSON format, as a JSON value.
pub fn to_json(event: &RecordedEvent) -> serde_json::Value {
    serde_json::to_value(structured(event)).unwrap_or_default()
}

/// A bus message that is not a Keel CloudEvent.
#[derive(Debug, thiserror::Error)]
#[error("not a Keel CloudEvent")]
pub struct NotAnEvent(#[source] serde_json::Error);

/// The attributes a consumer needs back from a message body.
#[derive(serde::Deserialize)]
struct Incoming {
    id: EventId,
    #[serde(rename = "type")]
    event_type: String,
    subject: crate::ids::StreamId,
    time: DateTime<Utc>,
    #[serde(default)]
    dataschema: Option<String>,
    position: i64,
    streamversion: i64,
    #[serde(default)]
    correlationid: Option<String>,
    #[serde(default)]
    causationid: Option<String>,
    #[serde(default)]
    traceparent: Option<String>,
    data: serde_json::Value,
}

/// Reads a message body (what [`to_bytes`] wrote) back into the logged event.
pub fn from_bytes(body: &[u8]) -> Result<RecordedEvent, NotAnEvent> {
    let incoming: Incoming = serde_json::from_slice(body).map_err(NotAnEvent)?;
    let schema_version = incoming
        .dataschema
        .as_deref()
        .and_then(|s| s.rsplit_once(".v"))
        .and_then(|(_, rest)| rest.strip_suffix(".json"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Ok(RecordedEvent {
        position: crate::ids::Position(incoming.position),
        event_id: incoming.id,
        stream_id: incoming.subject,
        version: crate::ids::Version(incoming.streamversion),
        event_type: incoming.event_type,
        schema_version,
        data: incoming.data,
        metadata: crate::recorded::Metadata {
            correlation_id: incoming.correlationid,
            causation_id: incoming.causationid,
            actor_id: None,
            request_id: None,
            traceparent: incoming.traceparent,
        },
        recorded_at: incoming.time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Position, StreamId, UserId, Version};
    use crate::recorded::Metadata;

    #[test]
    fn a_message_body_reads_back_into_the_logged_event() {
        let user = UserId::new();
        let event = RecordedEvent {
            position: Position(42),
            event_id: EventId::new(),
            stream_id: StreamId::user(user),
            version: Version(3),
            event_type: "user.updated".to_owned(),
            schema_version: 1,
            data: serde_json::json!({"id": user, "email": "a@b.test", "name": "A"}),
            metadata: Metadata {
                correlation_id: Some("c-1".to_owned()),
                ..Metadata::default()
            },
            recorded_at: Utc::now(),
        };
        assert_eq!(from_bytes(&to_bytes(&event)).unwrap(), event);
        assert!(from_bytes(b"{\"id\": 1}").is_err());
    }
}
