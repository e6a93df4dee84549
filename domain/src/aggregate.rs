//! The deciders behind one interface: a command addressed to one aggregate, the state it
//! is decided against, who sends it and why it may be refused.
//!
//! `decide(state, actor, command) -> events` holds every business rule, including who
//! may do what; `apply(state, event)` folds an event into the state. No I/O, no clock:
//! ids and the actor come in as arguments, so both are tested as given/when/then.

use crate::event::Event;
use crate::ids::{AggregateKind, PostId, StreamId, TokenId, UserId};
use crate::post::{self, Post, PostCommand};
use crate::token::{self, Token, TokenCommand};
use crate::user::{self, User, UserCommand};

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
    pub(crate) fn ensure_not_deactivated(&self) -> Result<(), DomainError> {
        if self.standing == Standing::Deactivated {
            return Err(DomainError::Forbidden("your account is deactivated"));
        }
        Ok(())
    }

    pub(crate) fn ensure_active(&self) -> Result<(), DomainError> {
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
            AggregateKind::User => State::User(None),
            AggregateKind::Post => State::Post(None),
            AggregateKind::Token => State::Token(None),
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
