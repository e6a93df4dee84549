//! The domain: one event enum and one pure decider per aggregate.
//!
//! `decide(state, actor, command) -> events` holds every business rule, including who
//! may do what; `apply(state, event)` folds an event into the state. No I/O, no clock:
//! ids and the actor come in as arguments, so both are tested as given/when/then.

pub mod post;
pub mod token;
pub mod user;
pub mod values;

use serde::{Deserialize, Serialize};

use crate::ids::{PostId, StreamId, TokenId, UserId};
pub use post::{Post, PostCommand, PostEvent, PostStatus};
pub use token::{Token, TokenCommand, TokenEvent};
pub use user::{User, UserCommand, UserEvent};
pub use values::{CommentBody, Email, Invalid, Jti, Name, PostBody, Role, Title};

/// Where the acting user stands in Keel's own records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Has a token but never registered.
    Unregistered,
    Active,
    Deactivated,
}

/// Who sends a command: the token's subject and roles, and the subject's own record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub id: UserId,
    pub admin: bool,
    pub standing: Standing,
}

impl Actor {
    /// Every command of a deactivated user is refused.
    fn ensure_not_deactivated(&self) -> Result<(), DomainError> {
        if self.standing == Standing::Deactivated {
            return Err(DomainError::Forbidden("your account is deactivated"));
        }
        Ok(())
    }

    fn ensure_active(&self) -> Result<(), DomainError> {
        self.ensure_not_deactivated()?;
        if self.standing == Standing::Unregistered {
            return Err(DomainError::Forbidden("register first (POST /api/users)"));
        }
        Ok(())
    }
}

/// Why a command was refused. The messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
}

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

/// A command addressed to one aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    User { id: UserId, command: UserCommand },
    Post { id: PostId, command: PostCommand },
    Token { id: TokenId, command: TokenCommand },
}

impl Command {
    pub fn stream_id(&self) -> StreamId {
        match self {
            Command::User { id, .. } => StreamId::user(*id),
            Command::Post { id, .. } => StreamId::post(*id),
            Command::Token { id, .. } => StreamId::token(*id),
        }
    }
}

/// The state of one aggregate, whichever kind it is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    User(Option<User>),
    Post(Option<Post>),
    Token(Option<Token>),
}

impl State {
    /// The state of a stream with no events yet.
    pub fn initial(stream: &StreamId) -> State {
        match stream.kind() {
            crate::ids::AggregateKind::User => State::User(None),
            crate::ids::AggregateKind::Post => State::Post(None),
            crate::ids::AggregateKind::Token => State::Token(None),
        }
    }

    /// Folds one event in. An event of the other aggregate's kind is ignored: the log
    /// never puts one in a stream (stream ids carry their kind).
    pub fn apply(&mut self, event: &Event) {
        match (self, event) {
            (State::User(state), Event::User(e)) => user::apply(state, e),
            (State::Post(state), Event::Post(e)) => post::apply(state, e),
            (State::Token(state), Event::Token(e)) => token::apply(state, e),
            _ => {}
        }
    }

    /// Decides a command against this state.
    pub fn decide(&self, actor: &Actor, command: &Command) -> Result<Vec<Event>, DomainError> {
        match (self, command) {
            (State::User(state), Command::User { id, command }) => {
                user::decide(state.as_ref(), actor, *id, command)
                    .map(|events| events.into_iter().map(Event::User).collect())
            }
            (State::Post(state), Command::Post { id, command }) => {
                post::decide(state.as_ref(), actor, *id, command)
                    .map(|events| events.into_iter().map(Event::Post).collect())
            }
            (State::Token(state), Command::Token { command, .. }) => {
                token::decide(state.as_ref(), actor, command)
                    .map(|events| events.into_iter().map(Event::Token).collect())
            }
            _ => Err(DomainError::NotFound("no such resource")),
        }
    }

    /// The acting user's standing, when this is that user's state.
    pub fn standing(&self) -> Standing {
        match self {
            State::User(Some(user)) if user.active => Standing::Active,
            State::User(Some(_)) => Standing::Deactivated,
            _ => Standing::Unregistered,
        }
    }
}
