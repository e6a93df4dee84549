//! Every domain event as one enum, and its stored form: a type string and a JSON payload.

use serde::{Deserialize, Serialize};

use crate::post::PostEvent;
use crate::token::TokenEvent;
use crate::user::UserEvent;

/// Every domain event, as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Event {
    User(UserEvent),
    Post(PostEvent),
    Token(TokenEvent),
}

/// An event type or payload the code does not know.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode event of type {event_type:?}")]
pub struct DecodeError {
    pub event_type: String,
    #[source]
    pub source: serde_json::Error,
}

impl Event {
    /// The CloudEvents `type`, e.g. `user.registered`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::User(e) => e.event_type(),
            Event::Post(e) => e.event_type(),
            Event::Token(e) => e.event_type(),
        }
    }

    /// Version of the payload's JSON Schema (`schemas/events/<type>.v<n>.json`).
    pub fn schema_version(&self) -> i32 {
        1
    }

    /// The payload (`data`) alone.
    pub fn data(&self) -> serde_json::Value {
        let tagged = match self {
            Event::User(e) => serde_json::to_value(e),
            Event::Post(e) => serde_json::to_value(e),
            Event::Token(e) => serde_json::to_value(e),
        };
        match tagged {
            Ok(serde_json::Value::Object(mut fields)) => {
                fields.remove("data").unwrap_or(serde_json::Value::Null)
            }
            // Events are plain structs of strings, ids and lists: serializing cannot fail.
            _ => serde_json::Value::Null,
        }
    }

    /// Rebuilds an event from its stored type and payload.
    pub fn decode(event_type: &str, data: &serde_json::Value) -> Result<Event, DecodeError> {
        let tagged = serde_json::json!({ "type": event_type, "data": data });
        let decoded = if event_type.starts_with("user.") {
            serde_json::from_value(tagged).map(Event::User)
        } else if event_type.starts_with("token.") {
            serde_json::from_value(tagged).map(Event::Token)
        } else {
            serde_json::from_value(tagged).map(Event::Post)
        };
        decoded.map_err(|source| DecodeError {
            event_type: event_type.to_owned(),
            source,
        })
    }
}
