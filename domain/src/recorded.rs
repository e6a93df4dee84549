//! An event as the log recorded it: its place, its payload and where it came from.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{DecodeError, Event};
use crate::ids::{EventId, Position, StreamId, UserId, Version};

/// Where an event came from, stored beside it and carried on the bus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// One event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: Position,
    pub event_id: EventId,
    pub stream_id: StreamId,
    pub version: Version,
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    pub fn decode(&self) -> Result<Event, DecodeError> {
        Event::decode(&self.event_type, &self.data)
    }
}
