//! The CloudEvents 1.0 envelope of a logged event: built here and nowhere else.

use cloudevents::{Event as CloudEvent, EventBuilder, EventBuilderV10};

use crate::event_log::RecordedEvent;

/// The `source` attribute: which Keel service owns events of this type.
pub fn source(event_type: &str) -> &'static str {
    if event_type.starts_with("user.") {
        "/keel/users"
    } else {
        "/keel/blog"
    }
}

/// The `dataschema` attribute: names `schemas/events/<type>.v<version>.json`.
pub fn dataschema(event_type: &str, schema_version: i32) -> String {
    format!("urn:keel:schemas:events/{event_type}.v{schema_version}.json")
}

/// A stored event that cannot be expressed as a CloudEvent (e.g. a corrupt type name).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the CloudEvent of event {event_id}")]
pub struct EnvelopeError {
    pub event_id: uuid::Uuid,
    #[source]
    pub source: cloudevents::event::EventBuilderError,
}

/// The event as a structured-mode CloudEvent, with Keel's extensions: `position`,
/// `streamversion`, `correlationid`, `causationid` and, when known, `traceparent`.
pub fn cloud_event(event: &RecordedEvent) -> Result<CloudEvent, EnvelopeError> {
    let mut builder = EventBuilderV10::new()
        .id(event.event_id.to_string())
        .source(source(&event.event_type))
        .ty(event.event_type.as_str())
        .subject(event.stream_id.to_string())
        .time(event.recorded_at)
        .data_with_schema(
            "application/json",
            dataschema(&event.event_type, event.schema_version),
            event.data.clone(),
        )
        .extension("position", event.position.0)
        .extension("streamversion", event.version.0);
    let meta = &event.metadata;
    for (name, value) in [
        ("correlationid", &meta.correlation_id),
        ("causationid", &meta.causation_id),
        ("traceparent", &meta.traceparent),
    ] {
        if let Some(value) = value {
            builder = builder.extension(name, value.as_str());
        }
    }
    builder.build().map_err(|source| EnvelopeError {
        event_id: event.event_id.0,
        source,
    })
}

/// The event in the CloudEvents JSON format, serialized (the bus message body).
pub fn to_bytes(event: &RecordedEvent) -> Result<Vec<u8>, EnvelopeError> {
    let cloud_event = cloud_event(event)?;
    // A built CloudEvent is made of strings, numbers and a JSON payload.
    Ok(serde_json::to_vec(&cloud_event).unwrap_or_default())
}

/// The event in the CloudEvents JSON format (structured content mode).
pub fn to_json(event: &RecordedEvent) -> Result<serde_json::Value, EnvelopeError> {
    let cloud_event = cloud_event(event)?;
    // A built CloudEvent is made of strings, numbers and a JSON payload.
    Ok(serde_json::to_value(cloud_event).unwrap_or_default())
}
